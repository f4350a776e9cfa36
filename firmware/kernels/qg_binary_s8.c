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

#if QG_MVE
/* Helium, alignment shifts >= -7 (each aligned value within 127 * 2^7, their difference within int16): 8 elements
 * in int16 lanes (VLDRB.S16; the first `left` under a VCTP predicate when `full` is 0, a constant). VRSHL by -shift
 * is qg_round_shift for either sign (computed without overflow, an exact left shift), then the op, VQRSHL (a
 * rounding right shift, or a left shift saturating to int16: after the clamp to the int8 sub-range
 * [act_min, act_max] the same value as qg_requantize_s8's clamp-then-shift) and the clamp. */
QG_MVE_INLINE void binary_8_mve(const int8_t *a, const int8_t *b, int8_t *out, int16x8_t neg_a, int16x8_t neg_b,
                                int16x8_t neg_shift, int16x8_t lo, int16x8_t hi, int32_t op, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp16q((uint32_t)left);
    const int16x8_t x = vrshlq_s16(full ? vldrbq_s16(a) : vldrbq_z_s16(a, p), neg_a);
    const int16x8_t y = vrshlq_s16(full ? vldrbq_s16(b) : vldrbq_z_s16(b, p), neg_b);
    const int16x8_t r_i16 = op == QG_SUB ? vsubq_s16(x, y) : (op == QG_MAXIMUM ? vmaxq_s16(x, y) : vminq_s16(x, y));
    const int16x8_t r = vminq_s16(vmaxq_s16(vqrshlq_s16(r_i16, neg_shift), lo), hi);
    if (full) {
        vstrbq_s16(out, r);
    } else {
        vstrbq_p_s16(out, r, p);
    }
}

/* The same in int32 lanes, 4 elements, for any alignment (|aligned| <= 2^29, as the C rule). */
QG_MVE_INLINE void binary_4_mve(const int8_t *a, const int8_t *b, int8_t *out, int32x4_t neg_a, int32x4_t neg_b,
                                int32x4_t neg_shift, int32x4_t lo, int32x4_t hi, int32_t op, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    const int32x4_t x = vrshlq_s32(full ? vldrbq_s32(a) : vldrbq_z_s32(a, p), neg_a);
    const int32x4_t y = vrshlq_s32(full ? vldrbq_s32(b) : vldrbq_z_s32(b, p), neg_b);
    const int32x4_t r_i32 = op == QG_SUB ? vsubq_s32(x, y) : (op == QG_MAXIMUM ? vmaxq_s32(x, y) : vminq_s32(x, y));
    const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(r_i32, neg_shift), lo), hi);
    if (full) {
        vstrbq_s32(out, r);
    } else {
        vstrbq_p_s32(out, r, p);
    }
}

/* Elements are read before they are written, 8 (or 4) at a time: out may be a or b. */
QG_MVE_INLINE void binary_mve(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out, int32_t op)
{
    const int32_t size = p->size;
    int32_t i = 0;
    if (p->shift_a >= -7 && p->shift_b >= -7) {
        const int16x8_t neg_a = vdupq_n_s16((int16_t)-p->shift_a), neg_b = vdupq_n_s16((int16_t)-p->shift_b);
        const int16x8_t neg_shift = vdupq_n_s16((int16_t)-p->shift);
        const int16x8_t lo = vdupq_n_s16(p->act_min), hi = vdupq_n_s16(p->act_max);
        for (; i + 7 < size; i += 8) {
            binary_8_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, op, 8, 1);
        }
        if (i < size) {
            binary_8_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, op, size - i, 0);
        }
    } else {
        const int32x4_t neg_a = vdupq_n_s32(-p->shift_a), neg_b = vdupq_n_s32(-p->shift_b);
        const int32x4_t neg_shift = vdupq_n_s32(-p->shift), lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
        for (; i + 3 < size; i += 4) {
            binary_4_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, op, 4, 1);
        }
        if (i < size) {
            binary_4_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, op, size - i, 0);
        }
    }
}
#define QG_BINARY(p, a, b, out, op) binary_mve(p, a, b, out, op)
#else
#define QG_BINARY(p, a, b, out, op) aligned_binary_s8(p, a, b, out, op)
#endif

void qg_sub_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    QG_BINARY(p, a, b, out, QG_SUB);
}

void qg_maximum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    QG_BINARY(p, a, b, out, QG_MAXIMUM);
}

void qg_minimum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    QG_BINARY(p, a, b, out, QG_MINIMUM);
}

#if QG_MVE
/* Helium: 8 elements of mul in int16 lanes (|a * b| <= 2^14: VMUL.I16 is exact), the first `left` under a VCTP
 * predicate when `full` is 0 (a constant), requantised by VQRSHL.S16 (a saturating int16 left shift for shift < 0:
 * with the int8 clamp, the rule) and the clamp. */
QG_MVE_INLINE void mul_8_mve(const int8_t *a, const int8_t *b, int8_t *out, int16x8_t neg_shift, int16x8_t lo,
                             int16x8_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp16q((uint32_t)left);
    const int16x8_t x = full ? vldrbq_s16(a) : vldrbq_z_s16(a, p), y = full ? vldrbq_s16(b) : vldrbq_z_s16(b, p);
    const int16x8_t r = vminq_s16(vmaxq_s16(vqrshlq_s16(vmulq_s16(x, y), neg_shift), lo), hi);
    if (full) {
        vstrbq_s16(out, r);
    } else {
        vstrbq_p_s16(out, r, p);
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
    const int16x8_t neg_shift = vdupq_n_s16((int16_t)-p->shift), lo = vdupq_n_s16(p->act_min);
    const int16x8_t hi = vdupq_n_s16(p->act_max);
    int32_t i, c;
    for (i = 0; i < size; i += b_size) { /* one pass over b per pixel when b is a broadcast pixel */
        for (c = 0; c + 7 < b_size; c += 8) {
            mul_8_mve(a + i + c, b + c, out + i + c, neg_shift, lo, hi, 8, 1);
        }
        if (c < b_size) {
            mul_8_mve(a + i + c, b + c, out + i + c, neg_shift, lo, hi, b_size - c, 0);
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

#if QG_MVE
/* Helium: 4 elements of x * mult + bias (VMLAS: one instruction), requantised by VQRSHL and the clamp. */
QG_MVE_INLINE void affine_4_mve(const int8_t *in, int8_t *out, int32x4_t mult, int32_t bias, int32x4_t neg_shift,
                                int32x4_t lo, int32x4_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    const int32x4_t acc = vmlasq_n_s32(full ? vldrbq_s32(in) : vldrbq_z_s32(in, p), mult, bias);
    const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(acc, neg_shift), lo), hi);
    if (full) {
        vstrbq_s32(out, r);
    } else {
        vstrbq_p_s32(out, r, p);
    }
}
#endif

void qg_affine_s8(const qg_affine_params_t *p, const int8_t *in, int8_t *out)
{
#if QG_MVE
    const int32_t size = p->size, bias = p->bias;
    const int32x4_t mult = vdupq_n_s32(p->mult), neg_shift = vdupq_n_s32(-p->shift);
    const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
    int32_t i = 0;
    for (; i + 3 < size; i += 4) {
        affine_4_mve(in + i, out + i, mult, bias, neg_shift, lo, hi, 4, 1);
    }
    if (i < size) {
        affine_4_mve(in + i, out + i, mult, bias, neg_shift, lo, hi, size - i, 0);
    }
#else
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
#endif
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

#if QG_MVE
/* Helium PReLU: channels c..c+3 (the first `left` under a VCTP predicate when `full` is 0, a constant) of `n`
 * pixels `step` elements apart, the 4 slopes and the shift in registers: x * (x >= 0 ? one : slope[c]) =
 * x * one + min(x, 0) * (slope[c] - one) (VMIN, VMUL, VMLA by the scalar one = 2^slope_frac; every term within
 * 128 * 49152: exact in int32), requantised by VQRSHL and the clamp. (A VCMP + VPSEL select costs GCC 12 three more
 * instructions: it sign-extends the predicate through a core register.) */
QG_MVE_INLINE void prelu_4_mve(const int8_t *in, int8_t *out, int32_t n, int32_t step, int32x4_t slope, int32_t one,
                               int32x4_t neg_shift, int32x4_t lo, int32x4_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    const int32x4_t zero = vdupq_n_s32(0), slope_minus_one = vsubq_n_s32(slope, one);
    for (; n > 0; n--, in += step, out += step) {
        const int32x4_t x = full ? vldrbq_s32(in) : vldrbq_z_s32(in, p);
        const int32x4_t acc = vmlaq_n_s32(vmulq_s32(vminq_s32(x, zero), slope_minus_one), x, one);
        const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(acc, neg_shift), lo), hi);
        if (full) {
            vstrbq_s32(out, r);
        } else {
            vstrbq_p_s32(out, r, p);
        }
    }
}
#endif

void qg_prelu_s8(const qg_prelu_params_t *p, const int8_t *in, int8_t *out)
{
#if QG_MVE
    /* channel-major: each 4 channels' slopes are loaded once; one channel (a single slope): 4 elements a step.
     * Each element is read before it is written: out may be in. */
    const int32_t size = p->size, channels = p->channels;
    const int32_t one = (int32_t)1 << p->slope_frac;
    const int32x4_t neg_shift = vdupq_n_s32(-p->shift);
    const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);
    int32_t c;
    if (channels == 1) {
        const int32x4_t slope = vdupq_n_s32(p->slope[0]);
        prelu_4_mve(in, out, size >> 2, 4, slope, one, neg_shift, lo, hi, 4, 1);
        if (size & 3) {
            c = size & ~3;
            prelu_4_mve(in + c, out + c, 1, 4, slope, one, neg_shift, lo, hi, size & 3, 0);
        }
        return;
    }
    for (c = 0; c + 3 < channels; c += 4) {
        prelu_4_mve(in + c, out + c, size / channels, channels, vldrhq_s32(p->slope + c), one, neg_shift, lo, hi, 4,
                    1);
    }
    if (c < channels) {
        const mve_pred16_t tail = vctp32q((uint32_t)(channels - c));
        prelu_4_mve(in + c, out + c, size / channels, channels, vldrhq_z_s32(p->slope + c, tail), one, neg_shift, lo,
                    hi, channels - c, 0);
    }
#else
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
#endif
}
