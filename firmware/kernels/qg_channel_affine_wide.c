/*
 * qg_channel_affine_wide.c - per-channel affine over any int8 / int16 input and output (mixed precision):
 * out = clamp(round_shift(x * scale[c] + offset[c], shift[c])), c = index % channels. The sum is exact in int32
 * (|x * scale| <= 2^30 for int16 x, |offset| <= 2^31 - 2^30 - 1: codegen/ops/norm.py affine_params); requantised
 * with the rounding rule (qg_requantize_wide). Element-wise: out may be in. Reference: norm.py affine_int.
 */
#include "qg_kernels.h"
#include "qg_simd.h"

void qg_channel_affine_wide(const qg_channel_affine_wide_params_t *p, const void *in, void *out)
{
    const int32_t size = p->size, channels = p->channels, in16 = p->in_bits == 16, out16 = p->out_bits == 16;
    int32_t base, c;
    for (base = 0; base < size; base += channels) {
        for (c = 0; c < channels; c++) {
            const int32_t x = in16 ? qg_load_s16_at(in, base + c) : ((const int8_t *)in)[base + c];
            const int32_t acc_i32 = x * (int32_t)p->scale[c] + p->offset[c];
            const int32_t y = qg_requantize_wide(acc_i32, p->shift[c], p->act_min, p->act_max);
            if (out16) {
                qg_store_s16_at(out, base + c, (int16_t)y);
            } else {
                ((int8_t *)out)[base + c] = (int8_t)y;
            }
        }
    }
}
