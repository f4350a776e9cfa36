/* Normalisation kernels: layer norm / group norm (one kernel, sets of rows x groups) and the per-channel
 * affine of a BatchNorm that cannot be folded. The integer rules, Q formats and bounds are written in
 * codegen/ops/norm.py (norm_int, affine_int): this file computes the same integers. */
#include "qg_kernels.h"
#include "qg_mve.h"

/* floor(sqrt(v)) for any uint64 v (the same value as Python's math.isqrt): digit by digit, two bits of v
 * per step from the top. The first 16 steps read the high word, where root < 2^16 and the remainder
 * (<= 2 root) < 2^18 fit 32 bits; the last 16 need 64-bit remainders (root < 2^32). */
static uint32_t qg_isqrt64(uint64_t v)
{
    uint32_t hi = (uint32_t)(v >> 32), lo = (uint32_t)v, root = 0, rem32 = 0;
    uint64_t rem, trial;
    int32_t i;
    for (i = 0; i < 16; i++) {
        const uint32_t trial32 = (root << 2) | 1u; /* 2 * (2 root) + 1 */
        rem32 = (rem32 << 2) | (hi >> 30);
        hi <<= 2;
        root <<= 1;
        if (rem32 >= trial32) {
            rem32 -= trial32;
            root |= 1u;
        }
    }
    rem = rem32;
    for (i = 0; i < 16; i++) {
        trial = ((uint64_t)root << 2) | 1u;
        rem = (rem << 2) | (lo >> 30);
        lo <<= 2;
        root <<= 1;
        if (rem >= trial) {
            rem -= trial;
            root |= 1u;
        }
    }
    return root;
}

/* 1/sqrt(w) ~= inv * 2^(*e - 60) for 1 <= w < 2^62 (codegen/ops/norm.py rsqrt_q): w * 4^e in [2^60, 2^62),
 * s = isqrt(w * 4^e) in [2^30, 2^31), inv = floor((2^60 + floor(s / 2)) / s) in [2^29, 2^30]. */
static int32_t qg_norm_rsqrt(uint64_t w, int32_t *e)
{
    uint32_t s;
    *e = 0;
    while (w < ((uint64_t)1 << 44)) { /* coarse steps first: none overshoots 2^60, e ends the same */
        w <<= 16;
        *e += 8;
    }
    while (w < ((uint64_t)1 << 56)) {
        w <<= 4;
        *e += 2;
    }
    while (w < ((uint64_t)1 << 60)) {
        w <<= 2;
        *e += 1;
    }
    s = qg_isqrt64(w);
    return (int32_t)((((uint64_t)1 << 60) + (s >> 1)) / s);
}

/* qg_round_shift64(acc, shift) for a result that fits int32 (x-hat: |x-hat| < 2^31), from the two 32-bit
 * halves: a loop-invariant branch and 32-bit shifts instead of a generic 64-bit shift. For shift >= 33 it
 * is qg_round_shift(hi, shift - 32) (bits below 2^32 cannot reach the result or its rounding bit). */
static inline int32_t qg_norm_shift_i32(int64_t acc, int32_t shift)
{
    const uint32_t lo = (uint32_t)acc;
    const int32_t hi = (int32_t)(acc >> 32);
    if (shift >= 33) {
        return qg_round_shift(hi, shift - 32);
    }
    if (shift == 32) {
        return hi + (int32_t)(lo >> 31);
    }
    if (shift > 0) {
        return (int32_t)((lo >> shift) | ((uint32_t)hi << (32 - shift))) + (int32_t)((lo >> (shift - 1)) & 1u);
    }
    return (int32_t)lo;
}

/* The reciprocal square root of one statistics set: W = count^2 * (var + eps) * 2^(2 in_frac) (>= 1, < 2^62:
 * norm_params checks the bound), inv and the x-hat shift 60 - e - xhat_frac (0..60). */
static inline int32_t qg_norm_set_rsqrt(const qg_norm_params_t *p, int32_t count, int32_t sum_i32, int64_t sumsq_i64,
                                        int32_t *shift)
{
    const uint64_t w = (uint64_t)((int64_t)count * sumsq_i64 - (int64_t)sum_i32 * sum_i32 + p->eps);
    int32_t e;
    const int32_t inv_i32 = qg_norm_rsqrt(w, &e);
    *shift = 60 - e - p->xhat_frac;
    return inv_i32;
}

/* One output from d = count * (x - mean) (exact): x-hat in int32, x-hat * gamma + beta << bias_shift in
 * int64, then the one requantisation (out_shift >= 33, the usual case: qg_round_shift64 on the high word). */
static inline int32_t qg_norm_element(int32_t d_i32, int32_t inv_i32, int32_t shift, int32_t gamma, int32_t beta,
                                      int32_t bias_scale, int32_t out_shift, int32_t act_min, int32_t act_max)
{
    const int32_t xhat_i32 = qg_norm_shift_i32((int64_t)d_i32 * inv_i32, shift);
    const int64_t acc_i64 = (int64_t)xhat_i32 * gamma + (int64_t)beta * bias_scale;
    if (out_shift >= 33) {
        return qg_saturate(qg_round_shift((int32_t)(acc_i64 >> 32), out_shift - 32), act_min, act_max);
    }
    return qg_requantize_wide(acc_i64, out_shift, act_min, act_max);
}

/* int8 in and out. Bounds (codegen/ops/norm.py MAX_SET, count <= 2^22): |sum| <= 2^29,
 * |count * x - sum| <= 255 count < 2^31, x^2 <= 2^14. */
void qg_norm_s8(const qg_norm_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t pixels = p->pixels, channels = p->channels, cg = channels / p->groups;
    const int32_t count = pixels * cg, out_shift = p->out_shift, act_min = p->act_min, act_max = p->act_max;
    const int32_t bias_scale = (int32_t)((uint32_t)1 << (uint32_t)p->bias_shift); /* bias_shift <= 24 */
    const int16_t *gamma = p->gamma;
    const int32_t *beta = p->beta;
    int32_t r, g, px, c;
    for (r = 0; r < p->rows; r++) {
        for (g = 0; g < p->groups; g++) {
            const int32_t first = r * pixels * channels + g * cg, c0 = g * cg;
            int32_t sum_i32 = 0, inv_i32, shift;
            int64_t sumsq_i64 = 0;
            for (px = 0; px < pixels; px++) {
                const int8_t *x = in + first + px * channels;
                for (c = 0; c < cg; c++) {
                    sum_i32 += x[c];
                    sumsq_i64 += (int32_t)x[c] * x[c];
                }
            }
            inv_i32 = qg_norm_set_rsqrt(p, count, sum_i32, sumsq_i64, &shift);
            for (px = 0; px < pixels; px++) {
                const int32_t at = first + px * channels;
                for (c = 0; c < cg; c++) {
                    out[at + c] = (int8_t)qg_norm_element(count * in[at + c] - sum_i32, inv_i32, shift,
                                                          qg_w16(&gamma[c0 + c]), qg_w32(&beta[c0 + c]), bias_scale,
                                                          out_shift, act_min, act_max);
                }
            }
        }
    }
}

static inline int32_t qg_norm_load(const void *x, int32_t i, int32_t bits)
{
    return bits == 16 ? ((const int16_t *)x)[i] : ((const int8_t *)x)[i];
}

/* any mix of int8 / int16 (in_bits, out_bits). Bounds (MAX_SET, count <= 2^15 with int16 input):
 * |sum| <= 2^30, |count * x - sum| <= 65535 count < 2^31, x^2 <= 2^30 (int64 sums). */
void qg_norm_wide(const qg_norm_params_t *p, const void *in, void *out)
{
    const int32_t pixels = p->pixels, channels = p->channels, cg = channels / p->groups;
    const int32_t count = pixels * cg, out_shift = p->out_shift, act_min = p->act_min, act_max = p->act_max;
    const int32_t in_bits = p->in_bits, out_bits = p->out_bits;
    const int32_t bias_scale = (int32_t)((uint32_t)1 << (uint32_t)p->bias_shift);
    int32_t r, g, px, c;
    for (r = 0; r < p->rows; r++) {
        for (g = 0; g < p->groups; g++) {
            const int32_t first = r * pixels * channels + g * cg, c0 = g * cg;
            int32_t sum_i32 = 0, inv_i32, shift;
            int64_t sumsq_i64 = 0;
            for (px = 0; px < pixels; px++) {
                for (c = 0; c < cg; c++) {
                    const int32_t x = qg_norm_load(in, first + px * channels + c, in_bits);
                    sum_i32 += x;
                    sumsq_i64 += (int64_t)x * x;
                }
            }
            inv_i32 = qg_norm_set_rsqrt(p, count, sum_i32, sumsq_i64, &shift);
            for (px = 0; px < pixels; px++) {
                const int32_t at = first + px * channels;
                for (c = 0; c < cg; c++) {
                    const int32_t d_i32 = (int32_t)((int64_t)count * qg_norm_load(in, at + c, in_bits) - sum_i32);
                    const int32_t y = qg_norm_element(d_i32, inv_i32, shift, qg_w16(&p->gamma[c0 + c]),
                                                      qg_w32(&p->beta[c0 + c]), bias_scale, out_shift, act_min,
                                                      act_max);
                    if (out_bits == 16) {
                        ((int16_t *)out)[at + c] = (int16_t)y;
                    } else {
                        ((int8_t *)out)[at + c] = (int8_t)y;
                    }
                }
            }
        }
    }
}

#if QG_MVE
/* Helium: channels c..c+3 (the first `left` under a VCTP predicate when `full` is 0, a constant) of `n` pixels `step`
 * elements apart, their scales, offsets and shifts in registers: x * scale + offset (VMUL + VADD, exact in int32:
 * affine_int's bound), requantised by VQRSHL by -shift (qg_mve.h: with the clamp, qg_requantize_s8) and the clamp. */
QG_MVE_INLINE void channel_affine_4_mve(const int8_t *in, int8_t *out, int32_t n, int32_t step, int32x4_t scale,
                                        int32x4_t offset, int32x4_t neg_shift, int32x4_t lo, int32x4_t hi,
                                        int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    for (; n > 0; n--, in += step, out += step) {
        const int32x4_t acc = vaddq_s32(vmulq_s32(full ? vldrbq_s32(in) : vldrbq_z_s32(in, p), scale), offset);
        const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(acc, neg_shift), lo), hi);
        if (full) {
            vstrbq_s32(out, r);
        } else {
            vstrbq_p_s32(out, r, p);
        }
    }
}

/* Channel-major (each 4 channels' parameters loaded once, then every pixel); one channel: 4 elements a step. Each
 * element is read before it is written: out may be in. */
void qg_channel_affine_s8(const qg_channel_affine_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t size = p->size, channels = p->channels;
    const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
    int32_t c;
    if (channels == 1) {
        const int32x4_t scale = vdupq_n_s32(p->scale[0]), offset = vdupq_n_s32(p->offset[0]);
        const int32x4_t neg_shift = vdupq_n_s32(-p->shift[0]);
        channel_affine_4_mve(in, out, size >> 2, 4, scale, offset, neg_shift, lo, hi, 4, 1);
        if (size & 3) {
            c = size & ~3;
            channel_affine_4_mve(in + c, out + c, 1, 4, scale, offset, neg_shift, lo, hi, size & 3, 0);
        }
        return;
    }
    for (c = 0; c + 3 < channels; c += 4) {
        channel_affine_4_mve(in + c, out + c, size / channels, channels, vldrhq_s32(p->scale + c),
                             vldrwq_s32(p->offset + c), vnegq_s32(vldrbq_s32(p->shift + c)), lo, hi, 4, 1);
    }
    if (c < channels) {
        const mve_pred16_t tail = vctp32q((uint32_t)(channels - c));
        channel_affine_4_mve(in + c, out + c, size / channels, channels, vldrhq_z_s32(p->scale + c, tail),
                             vldrwq_z_s32(p->offset + c, tail), vnegq_s32(vldrbq_z_s32(p->shift + c, tail)), lo, hi,
                             channels - c, 0);
    }
}
#else
void qg_channel_affine_s8(const qg_channel_affine_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t size = p->size, channels = p->channels, act_min = p->act_min, act_max = p->act_max;
    const int16_t *scale = p->scale;
    const int32_t *offset = p->offset;
    const int8_t *shift = p->shift;
    int32_t base, c;
    for (base = 0; base < size; base += channels) {
        for (c = 0; c < channels; c++) {
            const int32_t acc_i32 = in[base + c] * (int32_t)qg_w16(&scale[c]) + qg_w32(&offset[c]);
            out[base + c] = qg_requantize_s8(acc_i32, qg_w8(&shift[c]), act_min, act_max);
        }
    }
}
#endif
