/* Clustered (weight-shared) convolutions and fully connected layers: each weight is a b-bit index
 * into an int8 codebook, decoded on the fly. Format: see "compressed weight formats" in qg_kernels.h;
 * encoder: codegen/emit/weight_formats.py. */
#include "qg_kernels.h"

/* Weight number k (in storage order): its `bits`-bit index starts at bit k*bits of the packed stream
 * (LSB first) and spans at most two bytes; the padding byte keeps the second read inside the array. */
static inline int32_t qg_cluster_weight(const qg_conv2d_cluster_params_t *p, int32_t k)
{
    const uint32_t bit = (uint32_t)k * p->bits;
    const uint8_t *byte = p->indices + (bit >> 3);
    const uint32_t pair = (uint32_t)qg_wu8(&byte[0]) | ((uint32_t)qg_wu8(&byte[1]) << 8);
    return qg_w8(&p->codebook[(pair >> (bit & 7u)) & ((1u << p->bits) - 1u)]);
}

void qg_conv2d_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                          int8_t *restrict scratch)
{
    const qg_conv2d_params_t *g = &p->conv;
    const int32_t in_c = g->in_c, k_w = g->k_w;
    int32_t oy, ox, oc, ky, kx, ic;
    (void)scratch;
    for (oy = 0; oy < g->out_h; oy++) {
        const int32_t iy0 = oy * g->stride_h - g->pad_top;
        for (ox = 0; ox < g->out_w; ox++) {
            const int32_t ix0 = ox * g->stride_w - g->pad_left;
            for (oc = 0; oc < g->out_c; oc++) {
                int32_t acc_i32 = qg_w32(&g->bias[oc]);
                for (ky = 0; ky < g->k_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= g->in_h) {
                        continue; /* zero padding contributes nothing */
                    }
                    for (kx = 0; kx < k_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        const int32_t k0 = ((oc * g->k_h + ky) * k_w + kx) * in_c;
                        const int8_t *x_i8;
                        if (ix < 0 || ix >= g->in_w) {
                            continue;
                        }
                        x_i8 = in + (iy * g->in_w + ix) * in_c;
                        for (ic = 0; ic < in_c; ic++) {
                            acc_i32 += (int32_t)x_i8[ic] * qg_cluster_weight(p, k0 + ic);
                        }
                    }
                }
                out[(oy * g->out_w + ox) * g->out_c + oc] =
                    qg_requantize_s8(acc_i32, qg_w8(&g->shift[oc]), g->act_min, g->act_max);
            }
        }
    }
}

void qg_depthwise_conv2d_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in,
                                    int8_t *restrict out, int8_t *restrict scratch)
{
    const qg_conv2d_params_t *g = &p->conv;
    const int32_t in_c = g->in_c, mult = g->out_c / g->in_c;
    int32_t oy, ox, oc, ky, kx;
    (void)scratch;
    for (oy = 0; oy < g->out_h; oy++) {
        const int32_t iy0 = oy * g->stride_h - g->pad_top;
        for (ox = 0; ox < g->out_w; ox++) {
            const int32_t ix0 = ox * g->stride_w - g->pad_left;
            for (oc = 0; oc < g->out_c; oc++) {
                const int32_t ic = oc / mult;
                const int32_t k0 = oc * g->k_h * g->k_w;
                int32_t acc_i32 = qg_w32(&g->bias[oc]);
                for (ky = 0; ky < g->k_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= g->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < g->k_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (ix < 0 || ix >= g->in_w) {
                            continue;
                        }
                        acc_i32 += (int32_t)in[(iy * g->in_w + ix) * in_c + ic] *
                                   qg_cluster_weight(p, k0 + ky * g->k_w + kx);
                    }
                }
                out[(oy * g->out_w + ox) * g->out_c + oc] =
                    qg_requantize_s8(acc_i32, qg_w8(&g->shift[oc]), g->act_min, g->act_max);
            }
        }
    }
}

void qg_fully_connected_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in,
                                   int8_t *restrict out, int8_t *restrict scratch)
{
    qg_conv2d_cluster_s8(p, in, out, scratch); /* a 1x1 convolution on a 1x1xIn input */
}
