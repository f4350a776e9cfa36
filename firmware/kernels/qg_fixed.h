/*
 * qg_fixed.h - qgen's fixed-point primitives: the one rounding rule and the one saturation rule.
 *
 * C twin of codegen/fixed.py (same names without the qg_ prefix); tests/test_fixed.py checks every
 * function here against the Python definition on exhaustive and random inputs.
 *
 * Rounding rule:  qg_round_shift(x, s) = floor((x + 2^(s-1)) / 2^s) for s > 0 (round half up),
 *                 x for s == 0, x * 2^-s for s < 0 (exact; caller keeps it inside int32).
 * Saturation:     clamp to the destination range.
 *
 * Right shifts of negative values are arithmetic on every compiler qgen targets (GCC, Clang);
 * C99 leaves them implementation-defined, never undefined.
 */
#ifndef QG_FIXED_H
#define QG_FIXED_H

#include <stdint.h>

/* floor((x + 2^(s-1)) / 2^s) computed without the addition, so it cannot overflow for any int32 x:
 * with x = q*2^s + r, (x >> s) = q and bit (s-1) of x is 1 exactly when r >= 2^(s-1). */
static inline int32_t qg_round_shift(int32_t x, int32_t shift)
{
    if (shift > 0) {
        return (x >> shift) + ((x >> (shift - 1)) & 1);
    }
    return x * (int32_t)((uint32_t)1 << (uint32_t)(-shift));
}

static inline int32_t qg_saturate(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

/* Requantise an int32 accumulator to int8 with the rounding rule, then clamp to [act_min, act_max]
 * (a fused ReLU/ReLU6 narrows the int8 range). For a left shift the accumulator is first clamped to
 * [-128, 128] and the shift capped at 23: neither changes a saturated int8 result, and together they
 * keep the product inside int32. */
static inline int8_t qg_requantize_s8(int32_t acc, int32_t shift, int32_t act_min, int32_t act_max)
{
    if (shift < 0) {
        acc = qg_saturate(acc, -128, 128);
        shift = shift < -23 ? -23 : shift;
    }
    return (int8_t)qg_saturate(qg_round_shift(acc, shift), act_min, act_max);
}

/* Requantise an int32 value to any range [lo, hi] inside int32 (lo > INT32_MIN) with the rounding rule: the
 * recurrent kernels' alignment to +-2^24 and their int16 state. A left shift never overflows: a value whose
 * shifted form would leave [lo, hi] is saturated before the shift (acc * 2^s > hi exactly when
 * acc > floor(hi / 2^s), acc * 2^s < lo exactly when acc < ceil(lo / 2^s)). */
static inline int32_t qg_requantize_s32(int32_t acc, int32_t shift, int32_t lo, int32_t hi)
{
    if (shift < 0) {
        const int32_t s = -shift;
        if (acc > (hi >> s)) {
            return hi;
        }
        if (acc < -((-lo) >> s)) {
            return lo;
        }
        return qg_round_shift(acc, shift);
    }
    return qg_saturate(qg_round_shift(acc, shift), lo, hi);
}

/* The rounding rule on int64, for the wide accumulators of int16 activations (same definition as
 * qg_round_shift; a left shift is exact while the caller keeps the result inside int64). */
static inline int64_t qg_round_shift64(int64_t x, int32_t shift)
{
    if (shift > 0) {
        return (x >> shift) + ((x >> (shift - 1)) & 1);
    }
    return x * (int64_t)(1ull << (uint32_t)(-shift));
}

/* Requantise an accumulator to [act_min, act_max] (a sub-range of int16: int8 or int16 outputs) with
 * the rounding rule. For a left shift the accumulator is first clamped to [-32768, 32768] and the
 * shift capped at 15: neither changes a saturated int16 result, and the product stays small. */
static inline int32_t qg_requantize_wide(int64_t acc, int32_t shift, int32_t act_min, int32_t act_max)
{
    if (shift < 0) {
        acc = acc < -32768 ? -32768 : (acc > 32768 ? 32768 : acc);
        shift = shift < -15 ? -15 : shift;
    }
    acc = qg_round_shift64(acc, shift);
    return acc < act_min ? act_min : (acc > act_max ? act_max : (int32_t)acc);
}

/* float -> Q-format integer in [lo, hi]: floor(x * scale + 0.5) saturated, scale = 2^frac. Computed as
 * v = x*scale (exact), q = floor(v), q += (v - q >= 0.5): no double rounding. NaN gives lo. */
static inline int32_t qg_quantize_f32_range(float x, float scale, int32_t lo, int32_t hi)
{
    float v = x * scale;
    int32_t q;
    if (!(v >= (float)lo - 1.0f)) {
        return lo;
    }
    if (v > (float)hi + 1.0f) {
        return hi;
    }
    q = (int32_t)v;
    if ((float)q > v) {
        q -= 1; /* truncation went up for negative non-integers: make it floor */
    }
    if (v - (float)q >= 0.5f) {
        q += 1;
    }
    return qg_saturate(q, lo, hi);
}

static inline int8_t qg_quantize_f32(float x, float scale)
{
    return (int8_t)qg_quantize_f32_range(x, scale, -128, 127);
}

static inline int16_t qg_quantize_f32_s16(float x, float scale)
{
    return (int16_t)qg_quantize_f32_range(x, scale, -32768, 32767);
}

#endif /* QG_FIXED_H */
