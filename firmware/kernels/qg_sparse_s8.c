/* Sparse convolution and fully connected layers: only nonzero int8 weights are stored and multiplied.
 * Format: see "compressed weight formats" in qg_kernels.h; encoder: codegen/emit/weight_formats.py. */
#include "qg_kernels.h"

/* Where the walk through one output channel's weights stands. */
typedef struct {
    const uint8_t *map;
    const uint8_t *index;
    const int8_t *values;
} qg_sparse_cursor_t;

/* Position of the lowest set bit of a nonzero byte. */
static inline int32_t qg_lowest_bit(uint32_t m)
{
#if defined(__ARM_FEATURE_CLZ) || defined(__x86_64__) || defined(__i386__) || defined(__aarch64__)
    return (int32_t)__builtin_ctz(m);
#else
    int32_t bit = 0; /* ARMv6-M has no CLZ: a short scan beats a library call */
    while ((m & 1u) == 0u) {
        m >>= 1;
        bit++;
    }
    return bit;
#endif
}

/* acc += sum of x_i8[c] * w[c] over the nonzero weights of one segment (in_c channels); advances c. */
static int32_t qg_sparse_segment_dot(const qg_conv2d_sparse_params_t *p, qg_sparse_cursor_t *c,
                                     const int8_t *x_i8, int32_t acc_i32)
{
    const int32_t in_c = p->conv.in_c;
    const int8_t *w_i8 = c->values;
    int32_t base;
    if (p->format == QG_SPARSE_BITMAP) {
        const uint8_t *map = c->map;
        for (base = 0; base < in_c; base += 8) {
            uint32_t m = qg_wu8(map++);
            while (m != 0u) {
                acc_i32 += (int32_t)x_i8[base + qg_lowest_bit(m)] * (int32_t)qg_w8(w_i8++);
                m &= m - 1u;
            }
        }
        c->map = map;
    } else {
        const uint8_t *idx = c->index;
        const uint8_t *counts = c->map;
        for (base = 0; base < in_c; base += QG_SPARSE_CHUNK) {
            const int8_t *x_chunk = x_i8 + base;
            int32_t n = qg_wu8(counts++);
            while (n-- > 0) {
                acc_i32 += (int32_t)x_chunk[qg_wu8(idx++)] * (int32_t)qg_w8(w_i8++);
            }
        }
        c->map = counts;
        c->index = idx;
    }
    c->values = w_i8;
    return acc_i32;
}

/* Step over one segment without reading the input (a tap that falls into the zero padding). */
static void qg_sparse_segment_skip(const qg_conv2d_sparse_params_t *p, qg_sparse_cursor_t *c)
{
    const int32_t in_c = p->conv.in_c;
    int32_t base, nonzero = 0;
    if (p->format == QG_SPARSE_BITMAP) {
        for (base = 0; base < in_c; base += 8) {
            uint32_t m = qg_wu8(c->map++);
            while (m != 0u) {
                m &= m - 1u;
                nonzero++;
            }
        }
    } else {
        for (base = 0; base < in_c; base += QG_SPARSE_CHUNK) {
            nonzero += qg_wu8(c->map++);
        }
        c->index += nonzero;
    }
    c->values += nonzero;
}

/* Output channel outer, pixels inner: each pixel walks the channel's weights from the same start,
 * so no per-channel offsets need to be stored. */
void qg_conv2d_sparse_s8(const qg_conv2d_sparse_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                         int8_t *restrict scratch)
{
    const qg_conv2d_params_t *g = &p->conv;
    qg_sparse_cursor_t row = {p->map, p->index, p->values};
    qg_sparse_cursor_t c = row;
    int32_t oc, oy, ox, ky, kx;
    (void)scratch;
    for (oc = 0; oc < g->out_c; oc++) {
        for (oy = 0; oy < g->out_h; oy++) {
            const int32_t iy0 = oy * g->stride_h - g->pad_top;
            for (ox = 0; ox < g->out_w; ox++) {
                const int32_t ix0 = ox * g->stride_w - g->pad_left;
                int32_t acc_i32 = qg_w32(&g->bias[oc]);
                c = row;
                for (ky = 0; ky < g->k_h; ky++) {
                    const int32_t iy = iy0 + ky;
                    for (kx = 0; kx < g->k_w; kx++) {
                        const int32_t ix = ix0 + kx;
                        if (iy < 0 || iy >= g->in_h || ix < 0 || ix >= g->in_w) {
                            qg_sparse_segment_skip(p, &c); /* zero padding contributes nothing */
                        } else {
                            acc_i32 = qg_sparse_segment_dot(p, &c, in + (iy * g->in_w + ix) * g->in_c, acc_i32);
                        }
                    }
                }
                out[(oy * g->out_w + ox) * g->out_c + oc] =
                    qg_requantize_s8(acc_i32, qg_w8(&g->shift[oc]), g->act_min, g->act_max);
            }
        }
        row = c; /* every pixel ended at the start of the next channel's weights */
    }
}

void qg_fully_connected_sparse_s8(const qg_conv2d_sparse_params_t *p, const int8_t *restrict in,
                                  int8_t *restrict out, int8_t *restrict scratch)
{
    qg_conv2d_sparse_s8(p, in, out, scratch); /* a 1x1 convolution on a 1x1xIn input */
}
