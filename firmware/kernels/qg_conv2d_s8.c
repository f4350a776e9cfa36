/* Convolutions (standard and depthwise), int8 x int8 -> int32 -> int8, channels-last. */
#include "qg_kernels.h"

int32_t qg_conv2d_s8_buffer_size(const qg_conv2d_params_t *p)
{
    (void)p;
    return 0;
}

void qg_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                  int8_t *restrict scratch)
{
    const int32_t in_c = p->in_c, k_w = p->k_w;
    int32_t oy, ox, oc, ky, kx, ic;
    (void)scratch;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (oc = 0; oc < p->out_c; oc++) {
                int32_t acc_i32 = p->bias[oc];
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue; /* zero padding contributes nothing */
                    }
                    for (kx = 0; kx < k_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        const int8_t *x_i8;
                        const int8_t *w_i8;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        x_i8 = in + (iy * p->in_w + ix) * in_c;
                        w_i8 = p->weights + ((oc * p->k_h + ky) * k_w + kx) * in_c;
                        for (ic = 0; ic < in_c; ic++) {
                            acc_i32 += (int32_t)x_i8[ic] * (int32_t)w_i8[ic];
                        }
                    }
                }
                out[(oy * p->out_w + ox) * p->out_c + oc] =
                    qg_requantize_s8(acc_i32, p->shift[oc], p->act_min, p->act_max);
            }
        }
    }
}

int32_t qg_depthwise_conv2d_s8_buffer_size(const qg_conv2d_params_t *p)
{
    (void)p;
    return 0;
}

void qg_depthwise_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                            int8_t *restrict scratch)
{
    const int32_t in_c = p->in_c, mult = p->out_c / p->in_c;
    int32_t oy, ox, oc, ky, kx;
    (void)scratch;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            for (oc = 0; oc < p->out_c; oc++) {
                const int32_t ic = oc / mult;
                const int8_t *w_i8 = p->weights + oc * p->k_h * p->k_w;
                int32_t acc_i32 = p->bias[oc];
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        acc_i32 += (int32_t)in[(iy * p->in_w + ix) * in_c + ic] * (int32_t)w_i8[ky * p->k_w + kx];
                    }
                }
                out[(oy * p->out_w + ox) * p->out_c + oc] =
                    qg_requantize_s8(acc_i32, p->shift[oc], p->act_min, p->act_max);
            }
        }
    }
}
