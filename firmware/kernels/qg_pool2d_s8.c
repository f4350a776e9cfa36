/* Max and average pooling, channels-last. Padding cells are skipped (max) or count as zero (average,
 * PyTorch's count_include_pad=True: the divisor is always k_h * k_w). Output frac = input frac. */
#include "qg_kernels.h"

void qg_maxpool2d_s8(const qg_pool2d_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    const int32_t ch = p->channels;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            for (c = 0; c < ch; c++) {
                int32_t max_i32 = -128;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                        int32_t x;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        x = in[(iy * p->in_w + ix) * ch + c];
                        max_i32 = x > max_i32 ? x : max_i32;
                    }
                }
                out[(oy * p->out_w + ox) * ch + c] = (int8_t)max_i32;
            }
        }
    }
}

void qg_avgpool2d_s8(const qg_pool2d_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    const int32_t ch = p->channels;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++) {
            for (c = 0; c < ch; c++) {
                int32_t sum_i32 = 0;
                for (ky = 0; ky < p->k_h; ky++) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < p->k_w; kx++) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        sum_i32 += in[(iy * p->in_w + ix) * ch + c];
                    }
                }
                out[(oy * p->out_w + ox) * ch + c] =
                    qg_requantize_s8(sum_i32 * p->avg_mult, p->avg_shift, p->act_min, p->act_max);
            }
        }
    }
}
