/* Element-wise arithmetic on int8 activations: sub, maximum, minimum (aligned like add), mul of two
 * activations (the second may be one (1, 1, C) pixel repeated over every pixel), scalar affine
 * x * scale + offset, and PReLU. The integer rules are written once, in codegen/ops/eltwise.py (the
 * reference); the int16 twins are in qg_wide.c. Each output element is computed from the same element
 * of a (and element i % b_size of b) read before it is written, so out may be the input a. */
#include "qg_kernels.h"
#include "qg_mve.h"
#include "qg_simd.h"

enum { QG_SUB = 0, QG_MAXIMUM = 1, QG_MINIMUM = 2 };

/* The loops below take the op and the clamp kind as constant arguments: forced inline, each call site is one
 * loop specialised for them (GCC otherwise keeps some of them out of line, with the tests inside the loop). */
#if defined(__GNUC__) || defined(__clang__)
#define QG_SPECIALISED static inline __attribute__((always_inline))
#else
#define QG_SPECIALISED static inline
#endif

/* requantisation with the fast path of qg_simd.h where `kind` >= 0 (shift >= 1), else the general rule */
QG_SPECIALISED int8_t requantize_kind(int32_t acc, int32_t shift, int32_t kind, int32_t lo, int32_t hi)
{
    return kind < 0 ? qg_requantize_s8(acc, shift, lo, hi) : qg_requantize_pos_s8(acc, shift - 1, kind, lo, hi);
}


/* Both inputs aligned to a common frac (qg_round_shift: an exact left shift unless the fracs differ by
 * more than 22, so |aligned| <= 2^29), combined in int32 (no overflow, -(-128) included), requantised. */
QG_SPECIALISED int32_t combine(int32_t x, int32_t y, int32_t op)
{
    if (op == QG_SUB) {
        return x - y;
    }
    if (op == QG_MAXIMUM) {
        return x > y ? x : y;
    }
    return x < y ? x : y;
}

/* The common case: both alignments exact left shifts (multipliers 2^-shift_a, 2^-shift_b) and a right
 * requantisation shift; `kind` is a constant (qg_simd.h), so each call is one specialised loop. */
QG_SPECIALISED void aligned_fast_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out,
                                   int32_t op, int32_t kind)
{
    const int32_t mul_a = (int32_t)1 << -p->shift_a, mul_b = (int32_t)1 << -p->shift_b;
    const int32_t size = p->size, shift_m1 = p->shift - 1, lo = p->act_min, hi = p->act_max;
    int32_t i;
    for (i = 0; i < size; i++) { /* parameters in locals: int8 stores may alias *p */
        out[i] = qg_requantize_pos_s8(combine(a[i] * mul_a, b[i] * mul_b, op), shift_m1, kind, lo, hi);
    }
}

QG_SPECIALISED void aligned_binary_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out,
                                     int32_t op)
{
    int32_t i;
    if (p->shift_a <= 0 && p->shift_b <= 0 && p->shift >= 1) {
        switch (qg_clamp_kind(p->act_min, p->act_max)) {
        case QG_CLAMP_S8:
            aligned_fast_s8(p, a, b, out, op, QG_CLAMP_S8);
            return;
        case QG_CLAMP_RELU:
            aligned_fast_s8(p, a, b, out, op, QG_CLAMP_RELU);
            return;
        default:
            aligned_fast_s8(p, a, b, out, op, QG_CLAMP_ANY);
            return;
        }
    }
    {
        const int32_t size = p->size, shift_a = p->shift_a, shift_b = p->shift_b, shift = p->shift;
        const int32_t lo = p->act_min, hi = p->act_max;
        for (i = 0; i < size; i++) {
            const int32_t r_i32 = combine(qg_round_shift(a[i], shift_a), qg_round_shift(b[i], shift_b), op);
            out[i] = qg_requantize_s8(r_i32, shift, lo, hi);
        }
    }
}

void qg_sub_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    aligned_binary_s8(p, a, b, out, QG_SUB);
}

void qg_maximum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    aligned_binary_s8(p, a, b, out, QG_MAXIMUM);
}

void qg_minimum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    aligned_binary_s8(p, a, b, out, QG_MINIMUM);
}

#if QG_MVE
/* Helium: 4 elements of mul (the first `left` under a VCTP predicate when `full` is 0, a constant): VMUL of the
 * sign-extended int8 (exact), requantised by VQRSHL and the clamp (qg_mve.h). */
QG_MVE_INLINE void mul_4_mve(const int8_t *a, const int8_t *b, int8_t *out, int32x4_t neg_shift, int32x4_t lo,
                             int32x4_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    const int32x4_t x = full ? vldrbq_s32(a) : vldrbq_z_s32(a, p), y = full ? vldrbq_s32(b) : vldrbq_z_s32(b, p);
    const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(vmulq_s32(x, y), neg_shift), lo), hi);
    if (full) {
        vstrbq_s32(out, r);
    } else {
        vstrbq_p_s32(out, r, p);
    }
}
#endif

/* a * b (|product| <= 2^14, exact) requantised once; b_size < size: b is one pixel used for every pixel */
QG_SPECIALISED void mul_s8(const qg_mul_params_t *p, const int8_t *a, const int8_t *b, int8_t *out, int32_t kind)
{
    const int32_t size = p->size, b_size = p->b_size, shift = p->shift, lo = p->act_min, hi = p->act_max;
    int32_t i, c;
    for (i = 0; i < size; i += b_size) {
        const int8_t *x = a + i;
        int8_t *y = out + i;
        for (c = 0; c < b_size; c++) {
            y[c] = requantize_kind((int32_t)x[c] * b[c], shift, kind, lo, hi);
        }
    }
}

void qg_mul_s8(const qg_mul_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
#if QG_MVE
    const int32_t size = p->size, b_size = p->b_size;
    const int32x4_t neg_shift = vdupq_n_s32(-p->shift), lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
    int32_t i, c;
    for (i = 0; i < size; i += b_size) { /* one pass over b per pixel when b is a broadcast pixel */
        for (c = 0; c + 3 < b_size; c += 4) {
            mul_4_mve(a + i + c, b + c, out + i + c, neg_shift, lo, hi, 4, 1);
        }
        if (c < b_size) {
            mul_4_mve(a + i + c, b + c, out + i + c, neg_shift, lo, hi, b_size - c, 0);
        }
    }
#else
    const int32_t kind = p->shift < 1 ? -1 : qg_clamp_kind(p->act_min, p->act_max);
    if (kind == QG_CLAMP_S8) {
        mul_s8(p, a, b, out, QG_CLAMP_S8);
    } else if (kind == QG_CLAMP_RELU) {
        mul_s8(p, a, b, out, QG_CLAMP_RELU);
    } else if (kind == QG_CLAMP_ANY) {
        mul_s8(p, a, b, out, QG_CLAMP_ANY);
    } else {
        mul_s8(p, a, b, out, -1);
    }
#endif
}

/* |x * mult| <= 2^22 and |bias| < 2^29: the int32 sum cannot overflow */
QG_SPECIALISED void affine_s8(const qg_affine_params_t *p, const int8_t *in, int8_t *out, int32_t kind)
{
    const int32_t size = p->size, mult = p->mult, bias = p->bias, shift = p->shift, lo = p->act_min, hi = p->act_max;
    int32_t i;
    for (i = 0; i < size; i++) {
        out[i] = requantize_kind(in[i] * mult + bias, shift, kind, lo, hi);
    }
}

void qg_affine_s8(const qg_affine_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t kind = p->shift < 1 ? -1 : qg_clamp_kind(p->act_min, p->act_max);
    if (kind == QG_CLAMP_S8) {
        affine_s8(p, in, out, QG_CLAMP_S8);
    } else if (kind == QG_CLAMP_RELU) {
        affine_s8(p, in, out, QG_CLAMP_RELU);
    } else if (kind == QG_CLAMP_ANY) {
        affine_s8(p, in, out, QG_CLAMP_ANY);
    } else {
        affine_s8(p, in, out, -1);
    }
}

/* Both branches are exact in int32 (|x| * 2^14 and |x| * 2^15) and share one requantisation. */
QG_SPECIALISED void prelu_s8(const qg_prelu_params_t *p, const int8_t *in, int8_t *out, int32_t kind)
{
    const int32_t size = p->size, channels = p->channels, one = (int32_t)1 << p->slope_frac;
    const int32_t shift = p->shift, lo = p->act_min, hi = p->act_max;
    const int16_t *slope = p->slope;
    int32_t i, c;
    for (i = 0; i < size; i += channels) {
        const int8_t *x = in + i;
        int8_t *y = out + i;
        for (c = 0; c < channels; c++) {
            const int32_t v = x[c];
            y[c] = requantize_kind(v * (v >= 0 ? one : qg_w16(&slope[c])), shift, kind, lo, hi);
        }
    }
}

void qg_prelu_s8(const qg_prelu_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t kind = p->shift < 1 ? -1 : qg_clamp_kind(p->act_min, p->act_max);
    if (kind == QG_CLAMP_S8) {
        prelu_s8(p, in, out, QG_CLAMP_S8);
    } else if (kind == QG_CLAMP_RELU) {
        prelu_s8(p, in, out, QG_CLAMP_RELU);
    } else if (kind == QG_CLAMP_ANY) {
        prelu_s8(p, in, out, QG_CLAMP_ANY);
    } else {
        prelu_s8(p, in, out, -1);
    }
}
