/*
 * qg_simd.h - internal helpers of the kernel library: window clipping, word loads of int8 data and
 * the Arm DSP (SIMD within a register) instructions the kernels use where the core has them.
 *
 * QG_DSP is 1 when the target has the DSP extension (__ARM_FEATURE_DSP: Cortex-M4, M7, M33, M55):
 * then the kernels multiply two int16 pairs per instruction with SMLAD (acc + a.lo*b.lo + a.hi*b.hi).
 * Elsewhere (M0+, M3, the host) QG_DSP is 0 and the kernels use their plain C paths; the results
 * are the same integers either way, because integer sums do not depend on their order.
 *
 * Packing convention (little-endian, as every Cortex-M): a word holding int8 x0..x3 (x0 in the low
 * byte) unpacks into two int16 pairs, qg_sxtb16(v) = (x0, x2) and qg_sxtb16_ror8(v) = (x1, x3).
 * Multiplying two such unpacked words with SMLAD therefore pairs x0 with w0 and x2 with w2, and
 * x1 with w1 and x3 with w3: a 4-element dot product in 2 SMLADs plus 4 unpacks, with no reordering.
 * Buffers that hold pre-unpacked int16 data store each group of 4 as (x0, x2, x1, x3).
 *
 * Loads go through memcpy: it compiles to one LDR on ARMv7-M and later (which allows unaligned
 * word loads) and never faults on ARMv6-M, where the DSP paths are not compiled anyway.
 */
#ifndef QG_SIMD_H
#define QG_SIMD_H

#include <stdint.h>
#include <string.h>

#include "qg_fixed.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define QG_DSP 1
#else
#define QG_DSP 0
#endif

/* The taps of a window that fall inside the image: [k0, k1) along one axis, for origin i0
 * (pooling and the int16-activation kernels clip each window once, not per tap). */
static inline void qg_clip_window(int32_t i0, int32_t k, int32_t size, int32_t *k0, int32_t *k1)
{
    *k0 = i0 < 0 ? -i0 : 0;
    *k1 = i0 + k > size ? size - i0 : k;
}

/* The same for a dilated window (taps at i0 + t * d, t in [0, k)): no division when d == 1. The range
 * is empty (k0 >= k1) when every tap falls in the padding. */
static inline void qg_clip_window_dilated(int32_t i0, int32_t k, int32_t d, int32_t size, int32_t *k0, int32_t *k1)
{
    if (d == 1) {
        qg_clip_window(i0, k, size, k0, k1);
        return;
    }
    *k0 = i0 < 0 ? (d - 1 - i0) / d : 0;
    *k1 = i0 + (k - 1) * d < size ? k : (size - i0 > 0 ? (size - i0 + d - 1) / d : 0);
}

/* Four int8 values as one 32-bit word (x0 in the low byte on a little-endian core). */
static inline int32_t qg_load_s8x4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline int32_t qg_load_s16x2(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void qg_store_s16x2(int16_t *p, int32_t v)
{
    memcpy(p, &v, sizeof v);
}

/* Element i of an int16 buffer given as untyped arena bytes (add/concat operands of either width, the
 * int16 input quantiser): through memcpy, never an int16_t lvalue on memory declared int8_t. */
static inline int32_t qg_load_s16_at(const void *p, int32_t i)
{
    int16_t v;
    memcpy(&v, (const int8_t *)p + 2 * i, sizeof v);
    return v;
}

static inline void qg_store_s16_at(void *p, int32_t i, int16_t v)
{
    memcpy((int8_t *)p + 2 * i, &v, sizeof v);
}

/* n bytes from src to dst (no overlap): layout copies (slice, concat, block transposes). Cores that load
 * unaligned words (ARMv7-M and later) move short or misaligned runs a word per LDR/STR, 0.6 instructions
 * per byte (16 per loop pass), where a memcpy call costs ~20 instructions and newlib's misaligned path goes by bytes; aligned
 * runs of 64 bytes or more go to memcpy (16 words per loop pass). Elsewhere memcpy. */
static inline void qg_copy_s8(int8_t *dst, const int8_t *src, int32_t n)
{
#if defined(__ARM_FEATURE_UNALIGNED) && __ARM_FEATURE_UNALIGNED
    if (n >= 64 && (((uintptr_t)dst | (uintptr_t)src) & 3u) == 0) {
        memcpy(dst, src, (size_t)n);
        return;
    }
    {
        const int8_t *const end = src + (n & ~15);
        while (src != end) {
            int32_t w0, w1, w2, w3;
            memcpy(&w0, src, 4);
            memcpy(&w1, src + 4, 4);
            memcpy(&w2, src + 8, 4);
            memcpy(&w3, src + 12, 4);
            memcpy(dst, &w0, 4);
            memcpy(dst + 4, &w1, 4);
            memcpy(dst + 8, &w2, 4);
            memcpy(dst + 12, &w3, 4);
            src += 16;
            dst += 16;
        }
        n &= 15;
    }
    if (n >= 8) {
        int32_t w0, w1;
        memcpy(&w0, src, 4);
        memcpy(&w1, src + 4, 4);
        memcpy(dst, &w0, 4);
        memcpy(dst + 4, &w1, 4);
        n -= 8;
        src += 8;
        dst += 8;
    }
    if (n >= 4) {
        int32_t w;
        memcpy(&w, src, 4);
        memcpy(dst, &w, 4);
        n -= 4;
        src += 4;
        dst += 4;
    }
    if (n >= 2) {
        int16_t h;
        memcpy(&h, src, 2);
        memcpy(dst, &h, 2);
        n -= 2;
        src += 2;
        dst += 2;
    }
    if (n > 0) {
        *dst = *src;
    }
#else
    memcpy(dst, src, (size_t)n);
#endif
}

#if defined(__GNUC__) || defined(__clang__)
/* A word of a 4-byte aligned scratch buffer that is also accessed as int8/int16: direct loads of
 * this type may be paired into LDRD (memcpy loads may not, as they might be unaligned). */
typedef int32_t qg_word_t __attribute__((may_alias, aligned(4)));
#else
typedef int32_t qg_word_t;
#endif

#if QG_DSP
/* (x0, x2) of a word of four int8, sign-extended to int16 each. */
static inline int32_t qg_sxtb16(int32_t v)
{
    return __sxtb16(v);
}

/* Two consecutive words at *p (4-byte aligned), then *p += 2 words: one LDRD with post-increment.
 * GCC 12 splits such loads into two LDRs, even from an aligned int64; the "m" operand tells it which
 * memory the load reads. */
static inline void qg_load_pair(const qg_word_t **p, int32_t *lo, int32_t *hi)
{
    __asm__("ldrd %0, %1, [%2], #8" : "=r"(*lo), "=r"(*hi), "+r"(*p) : "m"(*(const qg_word_t(*)[2]) * p));
}

/* (x1, x3): SXTB16 with its built-in rotation (GCC does not fold a C rotate into it). */
static inline int32_t qg_sxtb16_ror8(int32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* acc + (x1, x3) per int16 lane: SXTAB16 with its rotation (pooling sums four channels per word). */
static inline int32_t qg_sxtab16_ror8(int32_t acc, int32_t v)
{
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(v));
    return r;
}

/* acc + (x1, x3) zero-extended per int16 lane: UXTAB16 with its rotation (4 x 4 byte transposes). */
static inline uint32_t qg_uxtab16_ror8(uint32_t acc, uint32_t v)
{
    uint32_t r;
    __asm__("uxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(acc), "r"(v));
    return r;
}

/* mask & (v << 8) in one instruction (GCC uses two for a constant mask) */
static inline uint32_t qg_and_lsl8(uint32_t mask, uint32_t v)
{
    uint32_t r;
    __asm__("and %0, %1, %2, lsl #8" : "=r"(r) : "r"(mask), "r"(v));
    return r;
}

/* (lo.lo, hi.lo) and (lo.hi, hi.hi) as int16 pairs: PKHBT / PKHTB (GCC 12 does not form them from C). */
static inline int32_t qg_pkhbt(int32_t lo, int32_t hi)
{
    int32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
    return r;
}

static inline int32_t qg_pkhtb(int32_t hi, int32_t lo)
{
    int32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(hi), "r"(lo));
    return r;
}
#endif

/* Requantisation for shift >= 1, given shift - 1: the same int8 as qg_requantize_s8.
 * Rounding as ((acc >> (shift - 1)) + 1) >> 1, which equals floor(acc / 2^shift + 1/2) (the bit
 * below the kept ones decides). The +1 saturates on DSP cores (QADD), so for acc = INT32_MAX with
 * shift 1 it gives 2^30 - 1 instead of 2^30: both clamp to act_max <= 127, the result is the same.
 * Without DSP the two-term form of qg_round_shift is used. The clamp kind lets DSP cores clamp in
 * one instruction for the two common activation ranges: none (SSAT) and ReLU (USAT); callers pass
 * a constant kind so that each use compiles to one variant. tests/test_kernels_fast.py checks all
 * of this against qg_requantize_s8 on every shift and on edge accumulators, on the target cores. */
enum { QG_CLAMP_ANY = 0, QG_CLAMP_S8 = 1, QG_CLAMP_RELU = 2 };

static inline int32_t qg_clamp_kind(int32_t act_min, int32_t act_max)
{
    if (act_max == 127 && (act_min == -128 || act_min == 0)) {
        return act_min == 0 ? QG_CLAMP_RELU : QG_CLAMP_S8;
    }
    return QG_CLAMP_ANY;
}

static inline int8_t qg_requantize_pos_s8(int32_t acc, int32_t shift_m1, int32_t kind, int32_t act_min,
                                          int32_t act_max)
{
#if QG_DSP
    int32_t r = __qadd(acc >> shift_m1, 1) >> 1;
    /* the builtins behind ACLE's __ssat/__usat: the macros trip -Wsign-conversion in GCC 12 */
    if (kind == QG_CLAMP_S8) {
        return (int8_t)(int32_t)__builtin_arm_ssat(r, 8);
    }
    if (kind == QG_CLAMP_RELU) {
        return (int8_t)(int32_t)__builtin_arm_usat(r, 7);
    }
#else
    int32_t r = (acc >> (shift_m1 + 1)) + ((acc >> shift_m1) & 1);
    (void)kind;
#endif
    r = r < act_min ? act_min : r;
    r = r > act_max ? act_max : r;
    return (int8_t)r;
}

#endif /* QG_SIMD_H */
