/* Element-wise kernels: residual add with per-input alignment, clamp; boundary conversions. */
#include "qg_kernels.h"

void qg_add_s8(const qg_add_params_t *p, const int8_t *restrict a, const int8_t *restrict b,
               int8_t *restrict out)
{
    int32_t i;
    for (i = 0; i < p->size; i++) {
        const int32_t sum_i32 = qg_round_shift(a[i], p->shift_a) + qg_round_shift(b[i], p->shift_b);
        out[i] = qg_requantize_s8(sum_i32, p->shift, p->act_min, p->act_max);
    }
}

void qg_clamp_s8(int32_t size, int8_t lo, int8_t hi, const int8_t *restrict in, int8_t *restrict out)
{
    int32_t i;
    for (i = 0; i < size; i++) {
        out[i] = (int8_t)qg_saturate(in[i], lo, hi);
    }
}

void qg_quantize_chw_to_hwc_f32(const float *in, int8_t *out, int32_t c, int32_t h, int32_t w, float scale)
{
    int32_t ci, y, x;
    for (ci = 0; ci < c; ci++) {
        for (y = 0; y < h; y++) {
            for (x = 0; x < w; x++) {
                out[(y * w + x) * c + ci] = qg_quantize_f32(in[(ci * h + y) * w + x], scale);
            }
        }
    }
}

void qg_dequantize_hwc_to_chw_s8(const int8_t *in, float *out, int32_t c, int32_t h, int32_t w,
                                 float inv_scale)
{
    int32_t ci, y, x;
    for (ci = 0; ci < c; ci++) {
        for (y = 0; y < h; y++) {
            for (x = 0; x < w; x++) {
                out[(ci * h + y) * w + x] = (float)in[(y * w + x) * c + ci] * inv_scale;
            }
        }
    }
}
