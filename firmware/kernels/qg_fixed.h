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
    return x * (int32_t)(1u << (uint32_t)(-shift));
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

/* float -> Q-format int8: floor(x * scale + 0.5) saturated, scale = 2^frac. Computed as
 * v = x*scale (exact), q = floor(v), q += (v - q >= 0.5): no double rounding. NaN gives -128. */
static inline int8_t qg_quantize_f32(float x, float scale)
{
    float v = x * scale;
    int32_t q;
    if (!(v >= -129.0f)) {
        return -128;
    }
    if (v > 128.0f) {
        return 127;
    }
    q = (int32_t)v;
    if ((float)q > v) {
        q -= 1; /* truncation went up for negative non-integers: make it floor */
    }
    if (v - (float)q >= 0.5f) {
        q += 1;
    }
    return (int8_t)qg_saturate(q, -128, 127);
}

#endif /* QG_FIXED_H */
