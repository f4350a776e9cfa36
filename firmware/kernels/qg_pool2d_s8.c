/* Max and average pooling, channels-last. Padding cells are skipped (max) or count as zero (average,
 * PyTorch's count_include_pad=True: the divisor is always k_h * k_w). Output frac = input frac.
 * Output pixels are computed in increasing order, each from reads done before its writes and after
 * the previous pixel's: `out` may overlap the start of `in` (see qg_conv2d_s8.c), hence no `restrict`. */
#include "qg_kernels.h"
#include "qg_simd.h"

/* Max pooling walks only the window cells inside the image (no test per cell). With the DSP
 * extension it takes four channels per word: SSUB8 sets a per-byte "a >= b" flag and SEL picks
 * the larger bytes, 2 instructions per 4 maxima. */
void qg_maxpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky0, ky1;
        qg_clip_window(iy0, p->k_h, p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int32_t kx0, kx1;
            qg_clip_window(ix0, p->k_w, in_w, &kx0, &kx1);
            {
                const int8_t *x0 = in + ((iy0 + ky0) * in_w + ix0 + kx0) * ch;
                const int32_t row_step = (in_w - (kx1 - kx0)) * ch;
                c = 0;
#if QG_DSP
                for (; c + 3 < ch; c += 4) {
                    const int8_t *x_i8 = x0 + c;
                    uint32_t max_s8x4 = 0x80808080u; /* four times -128 */
                    for (ky = ky0; ky < ky1; ky++, x_i8 += row_step) {
                        for (kx = kx0; kx < kx1; kx++, x_i8 += ch) {
                            const uint32_t v = (uint32_t)qg_load_s8x4(x_i8);
                            (void)__ssub8((int32_t)max_s8x4, (int32_t)v);
                            max_s8x4 = __sel(max_s8x4, v);
                        }
                    }
                    memcpy(out + c, &max_s8x4, 4);
                }
#endif
                for (; c < ch; c++) {
                    const int8_t *x_i8 = x0 + c;
                    int32_t max_i32 = -128;
                    for (ky = ky0; ky < ky1; ky++, x_i8 += row_step) {
                        for (kx = kx0; kx < kx1; kx++, x_i8 += ch) {
                            const int32_t x = *x_i8;
                            max_i32 = x > max_i32 ? x : max_i32;
                        }
                    }
                    out[c] = (int8_t)max_i32;
                }
            }
        }
    }
}

void qg_avgpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out)
{
    /* parameters in locals: stores through `out` may alias *p (no restrict) */
    const int32_t ch = p->channels, in_h = p->in_h, in_w = p->in_w, k_h = p->k_h, k_w = p->k_w;
    const int32_t stride_h = p->stride_h, stride_w = p->stride_w, pad_top = p->pad_top, pad_left = p->pad_left;
    const int32_t avg_mult = p->avg_mult, avg_shift = p->avg_shift, act_min = p->act_min, act_max = p->act_max;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            for (c = 0; c < ch; c++) {
                int32_t sum_i32 = 0;
                for (ky = 0; ky < k_h; ky++) {
                    const int32_t iy = oy * stride_h - pad_top + ky;
                    if (iy < 0 || iy >= in_h) {
                        continue;
                    }
                    for (kx = 0; kx < k_w; kx++) {
                        const int32_t ix = ox * stride_w - pad_left + kx;
                        if (ix < 0 || ix >= in_w) {
                            continue;
                        }
                        sum_i32 += in[(iy * in_w + ix) * ch + c];
                    }
                }
                out[c] = qg_requantize_s8(sum_i32 * avg_mult, avg_shift, act_min, act_max);
            }
        }
    }
}
