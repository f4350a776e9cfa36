/*
 * qg_mve.h - internal: the Helium (M-profile Vector Extension, MVE) building blocks of the kernel library,
 * for cores with integer MVE (Cortex-M55, M85: __ARM_FEATURE_MVE bit 0). QG_MVE is 1 there and 0 elsewhere,
 * where the kernels keep their DSP (SMLAD) or plain C paths; the integers computed are the same either way.
 *
 * MVE only speeds up the int32 accumulation and the data movement. Requantisation is the one rule of
 * qg_fixed.h: VQRSHL by -shift is floor((acc + 2^(shift-1)) / 2^shift) for shift > 0, computed without
 * overflow (the rounding shift of qg_round_shift), and for shift < 0 a left shift that saturates to int32;
 * the clamp to [act_min, act_max] (a sub-range of int8) that follows makes that equal to qg_requantize_s8's
 * clamp-then-shift (both are monotonic and saturate beyond +-128). Shifts are within [-31, 31]
 * (codegen/fixed.py MAX_SHIFT), which VQRSHL reads from each lane's low byte.
 *
 * Only the explicitly typed intrinsics are used (vmladavaq_s8, not vmladavaq): the polymorphic names are
 * C11 _Generic macros and the kernels are C99.
 */
#ifndef QG_MVE_H
#define QG_MVE_H

#include <stdint.h>

#include "qg_fixed.h"

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>
#define QG_MVE 1
#else
#define QG_MVE 0
#endif

#if QG_MVE
/* out[0..3] = requantised acc (4 consecutive channels), shifts shift[0..3]; lo/hi: act_min/act_max dup'ed. */
static inline void qg_mve_requantize_4(int32x4_t acc, const int8_t *shift, int32x4_t lo, int32x4_t hi, int8_t *out)
{
    acc = vqrshlq_s32(acc, vnegq_s32(vldrbq_s32(shift)));
    vstrbq_s32(out, vminq_s32(vmaxq_s32(acc, lo), hi));
}

/* The same for the lanes of predicate p only (the others neither read their shift nor store). */
static inline void qg_mve_requantize_4_p(int32x4_t acc, const int8_t *shift, int32x4_t lo, int32x4_t hi, int8_t *out,
                                         mve_pred16_t p)
{
    acc = vqrshlq_s32(acc, vnegq_s32(vldrbq_z_s32(shift, p)));
    vstrbq_p_s32(out, vminq_s32(vmaxq_s32(acc, lo), hi), p);
}

/* out[0..7] = requantised channels 0..7 held as even = (0, 2, 4, 6) and odd = (1, 3, 5, 7) (VMULLB / VMULLT
 * products): VMOVLB / VMOVLT split the shifts the same way, VMOVNB / VMOVNT interleave the results back. */
static inline void qg_mve_requantize_8_eo(int32x4_t even, int32x4_t odd, const int8_t *shift, int32x4_t lo,
                                          int32x4_t hi, int8_t *out)
{
    const int16x8_t neg_shift = vnegq_s16(vldrbq_s16(shift));
    int16x8_t r = vdupq_n_s16(0);
    even = vqrshlq_s32(even, vmovlbq_s16(neg_shift));
    odd = vqrshlq_s32(odd, vmovltq_s16(neg_shift));
    r = vmovnbq_s32(r, vminq_s32(vmaxq_s32(even, lo), hi));
    r = vmovntq_s32(r, vminq_s32(vmaxq_s32(odd, lo), hi));
    vstrbq_s16(out, r);
}

/* Four int32 scalars as one vector (lane i = a_i). */
static inline int32x4_t qg_mve_vec4(int32_t a0, int32_t a1, int32_t a2, int32_t a3)
{
    int32x4_t v = vdupq_n_s32(a0);
    v = vsetq_lane_s32(a1, v, 1);
    v = vsetq_lane_s32(a2, v, 2);
    return vsetq_lane_s32(a3, v, 3);
}

/* acc + x . w over k values: 16 MACs per VMLADAVA; the last k % 16 values load under a tail predicate
 * (VCTP): zeros in the lanes past the end, nothing read beyond either array. */
static inline int32_t qg_mve_dot_1x1_s8(const int8_t *x, const int8_t *w, int32_t k, int32_t acc)
{
    int32_t n;
    for (n = k >> 4; n > 0; n--, x += 16, w += 16) {
        acc = vmladavaq_s8(acc, vldrbq_s8(x), vldrbq_s8(w));
    }
    if (k & 15) {
        const mve_pred16_t p = vctp8q((uint32_t)(k & 15));
        acc = vmladavaq_s8(acc, vldrbq_z_s8(x, p), vldrbq_z_s8(w, p));
    }
    return acc;
}

#if defined(__GNUC__) || defined(__clang__)
/* A compiler barrier for loads: nothing is emitted, but no memory access moves across it. */
#define QG_MVE_BARRIER() __asm__ volatile("" ::: "memory")
#define QG_MVE_INLINE static inline __attribute__((always_inline))
#define QG_MVE_NOINLINE __attribute__((noinline, unused)) /* unused: not every includer calls it */
#else
#define QG_MVE_BARRIER()
#define QG_MVE_INLINE static inline
#define QG_MVE_NOINLINE
#endif

/* Rows [0, rows - rows % 4) of qg_mve_dot_rows_s8, with has_tail = (k % 16 != 0) a constant: the loop without a
 * tail keeps more of its pointers in registers (measured: ~47 -> ~38 instructions of overhead per four rows; GCC 12
 * still spills some, ~22 would do). */
QG_MVE_INLINE const int8_t *qg_mve_rows_4(const int8_t *x, const int8_t *w, int32_t k, int32_t groups,
                                          const int32_t *bias, const int8_t *shift, int32x4_t lo, int32x4_t hi,
                                          int8_t *out, int32_t has_tail)
{
    for (; groups > 0; groups--, bias += 4, shift += 4, out += 4) {
        const int8_t *xp = x, *w0 = w, *w1 = w + k, *w2 = w1 + k, *w3 = w2 + k;
        int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
        int32_t n;
        for (n = k >> 4; n > 0; n--) {
            const int8x16_t xv = vldrbq_s8(xp);
            xp += 16;
            a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w0));
            w0 += 16;
            a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1));
            w1 += 16;
            a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2));
            w2 += 16;
            a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3));
            w3 += 16;
        }
        if (has_tail) {
            const mve_pred16_t p = vctp8q((uint32_t)(k & 15));
            const int8x16_t xv = vldrbq_z_s8(xp, p);
            a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w0, p));
            a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1, p));
            a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2, p));
            a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3, p));
        }
        w += 4 * k;
        qg_mve_requantize_4(qg_mve_vec4(a0, a1, a2, a3), shift, lo, hi, out);
    }
    return w;
}

/* qg_dot_rows_s8 on MVE: out[r] = requantised bias[r] + x . (row r of w), k values per row. Four rows per
 * pass: one input load feeds four VMLADAVA (64 MACs per 10 instructions with the loop's LE), the four
 * results are requantised as one vector. Not inlined: inside the convolution's pixel loop GCC would run
 * out of registers and spill the row pointers. */
static QG_MVE_NOINLINE void qg_mve_dot_rows_s8(const int8_t *x, const int8_t *w, int32_t k, int32_t rows,
                                               const int32_t *bias, const int8_t *shift, int32_t act_min,
                                               int32_t act_max, int8_t *out)
{
    const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
    const int32_t done = rows & ~3;
    int32_t r;
    if (k & 15) {
        w = qg_mve_rows_4(x, w, k, rows >> 2, bias, shift, lo, hi, out, 1);
    } else {
        w = qg_mve_rows_4(x, w, k, rows >> 2, bias, shift, lo, hi, out, 0);
    }
    for (r = done; r < rows; r++, w += k) {
        out[r] = qg_requantize_s8(qg_mve_dot_1x1_s8(x, w, k, bias[r]), shift[r], act_min, act_max);
    }
}

/* qg_dot_rows_s8 on MVE for k < 16, where a row is less than one vector and the VMLADAVA path is mostly its tail
 * and its per-row overhead: output channels in the lanes instead. Per input value x[i], 8 rows at a time: two
 * gather loads of w[r][i] (offsets 0, k, 2k, 3k) and two VMLA by the scalar, accumulating on the bias (8 MACs per
 * 8 instructions); the last rows % 8 through qg_mve_dot_rows_s8. */
static QG_MVE_NOINLINE void qg_mve_dot_rows_small_k_s8(const int8_t *x, const int8_t *w, int32_t k, int32_t rows,
                                                       const int32_t *bias, const int8_t *shift, int32_t act_min,
                                                       int32_t act_max, int8_t *out)
{
    const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
    const uint32x4_t offsets = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)k); /* 0, k, 2k, 3k */
    int32_t r, i;
    for (r = 0; r + 7 < rows; r += 8) {
        const int8_t *w0 = w + r * k, *w1 = w0 + 4 * k;
        int32x4_t a0 = vldrwq_s32(bias + r), a1 = vldrwq_s32(bias + r + 4);
        for (i = 0; i < k; i++) {
            const int32_t x_i = x[i];
            a0 = vmlaq_n_s32(a0, vldrbq_gather_offset_s32(w0 + i, offsets), x_i);
            a1 = vmlaq_n_s32(a1, vldrbq_gather_offset_s32(w1 + i, offsets), x_i);
        }
        qg_mve_requantize_4(a0, shift + r, lo, hi, out + r);
        qg_mve_requantize_4(a1, shift + r + 4, lo, hi, out + r + 4);
    }
    if (r < rows) {
        qg_mve_dot_rows_s8(x, w + r * k, k, rows - r, bias + r, shift + r, act_min, act_max, out + r);
    }
}

/* The 4-pixel convolution block (k >= QG_MVE_BLOCK_MIN_K): in scratch, per 16 k's (ceil(k / 16) blocks, the last
 * zero-padded) the 4 pixels' 16 values side by side (pixel c at 16 * c), so that one weight vector meets the four at
 * immediate offsets of one pointer: 4 * round_up(k, 16) bytes (+ k to gather a column into when k > 16; up to 16 it
 * is gathered into its slot). Below that k, 64 bytes would exceed the planner's DSP-sized reservation
 * (qg_conv2d_s8_buffer_size; codegen/kernels.py scratch_for mirrors this). */
#define QG_MVE_BLOCK_MIN_K 5

/* Slot c of the block <- the int8 column src (k values). */
static inline void qg_mve_block_fill_s8(const int8_t *src, int32_t k, int8_t *cols, int32_t c)
{
    int8_t *dst = cols + 16 * c;
    int32_t n;
    for (n = k >> 4; n > 0; n--, src += 16, dst += 64) {
        vstrbq_s8(dst, vldrbq_s8(src));
    }
    if (k & 15) {
        vstrbq_s8(dst, vldrbq_z_s8(src, vctp8q((uint32_t)(k & 15)))); /* zeros past the column */
    }
}

/* Rows [0, rows) of w (k values each) times the block's 4 columns, one row at a time: per 16 k's one weight load,
 * 4 input loads at immediate offsets, 4 VMLADAVA (64 MACs per 9 instructions); the row's last k % 16 weights load
 * under a predicate (zero weights against the zero padding). The 4 sums of a row are requantised as one vector
 * (the row's shift: VQRSHL + clamp, as qg_mve_requantize_4) and scattered to out[c * step + r] for the n_valid
 * first pixels (a predicated store). */
static QG_MVE_NOINLINE void qg_mve_block_s8(const int8_t *w, int32_t k, const int8_t *cols, int32_t n_valid,
                                            int32_t rows, const int32_t *bias, const int8_t *shift, int32_t act_min,
                                            int32_t act_max, int8_t *out, int32_t step)
{
    const mve_pred16_t tail = vctp8q((uint32_t)(k & 15)), valid = vctp32q((uint32_t)n_valid);
    const uint32x4_t at = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)step); /* 0, step, 2 step, 3 step */
    const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
    int32_t r, n;
    if (k <= 16) { /* one block: the 4 columns stay in registers for every row */
        const mve_pred16_t row = vctp8q((uint32_t)k);
        const int8x16_t x0 = vldrbq_s8(cols), x1 = vldrbq_s8(cols + 16), x2 = vldrbq_s8(cols + 32);
        const int8x16_t x3 = vldrbq_s8(cols + 48);
        for (r = 0; r < rows; r++, w += k) {
            const int8x16_t v = vldrbq_z_s8(w, row);
            const int32_t b = bias[r];
            const int32x4_t acc = qg_mve_vec4(vmladavaq_s8(b, x0, v), vmladavaq_s8(b, x1, v), vmladavaq_s8(b, x2, v),
                                              vmladavaq_s8(b, x3, v));
            vstrbq_scatter_offset_p_s32(out + r, at,
                                        vminq_s32(vmaxq_s32(vqrshlq_n_s32(acc, -(int32_t)shift[r]), lo), hi), valid);
        }
        return;
    }
    for (r = 0; r < rows; r++, w += k) {
        const int8_t *wp = w, *x = cols;
        int32_t a0 = bias[r], a1 = a0, a2 = a0, a3 = a0;
        int32x4_t acc;
        for (n = k >> 4; n > 0; n--, x += 64) {
            const int8x16_t v = vldrbq_s8(wp);
            wp += 16;
            a0 = vmladavaq_s8(a0, vldrbq_s8(x), v);
            a1 = vmladavaq_s8(a1, vldrbq_s8(x + 16), v);
            a2 = vmladavaq_s8(a2, vldrbq_s8(x + 32), v);
            a3 = vmladavaq_s8(a3, vldrbq_s8(x + 48), v);
        }
        if (k & 15) {
            const int8x16_t v = vldrbq_z_s8(wp, tail);
            a0 = vmladavaq_s8(a0, vldrbq_s8(x), v);
            a1 = vmladavaq_s8(a1, vldrbq_s8(x + 16), v);
            a2 = vmladavaq_s8(a2, vldrbq_s8(x + 32), v);
            a3 = vmladavaq_s8(a3, vldrbq_s8(x + 48), v);
        }
        acc = vqrshlq_n_s32(qg_mve_vec4(a0, a1, a2, a3), -(int32_t)shift[r]);
        vstrbq_scatter_offset_p_s32(out + r, at, vminq_s32(vmaxq_s32(acc, lo), hi), valid);
    }
}

/* dst[0, n) = src[0, n), n >= 0: up to 16 bytes in one predicated load/store (the short im2col runs: a window row
 * of a few channels, no loop set-up), longer runs 16 bytes per load/store pair and the last n % 16 predicated. */
static inline void qg_mve_copy_s8(int8_t *dst, const int8_t *src, int32_t n)
{
    if (n > 16) {
        for (; n >= 16; n -= 16, src += 16, dst += 16) {
            vstrbq_s8(dst, vldrbq_s8(src));
        }
    }
    if (n > 0) {
        const mve_pred16_t p = vctp8q((uint32_t)n);
        vstrbq_p_s8(dst, vldrbq_z_s8(src, p), p);
    }
}

/* dst[0, n) = 0, n >= 0 (as qg_mve_copy_s8). */
static inline void qg_mve_zero_s8(int8_t *dst, int32_t n)
{
    const int8x16_t z = vdupq_n_s8(0);
    if (n > 16) {
        for (; n >= 16; n -= 16, dst += 16) {
            vstrbq_s8(dst, z);
        }
    }
    if (n > 0) {
        vstrbq_p_s8(dst, z, vctp8q((uint32_t)n));
    }
}

/* int16 pooling (qg_wide.c, qg_pool2d_s16.c) over one clipped window: n_rows x width cells, x its first cell, `row`
 * elements from one window row to the next, `ch` from one cell to the next (the channel count). */

/* The max of channels [0, n) (8 lanes; n < 8 under a VCTP predicate when `full` is 0, a constant): VMAX per cell. */
QG_MVE_INLINE void qg_mve_max_8_s16(const int16_t *x, int32_t n_rows, int32_t width, int32_t row, int32_t ch,
                                    int16_t *out, int32_t n, int32_t full)
{
    const mve_pred16_t p = vctp16q((uint32_t)n);
    int16x8_t max_s16x8 = vdupq_n_s16(-32768);
    int32_t y, i;
    for (y = 0; y < n_rows; y++, x += row) {
        const int16_t *cell = x;
        for (i = 0; i < width; i++, cell += ch) {
            max_s16x8 = vmaxq_s16(max_s16x8, full ? vldrhq_s16(cell) : vldrhq_z_s16(cell, p));
        }
    }
    if (full) {
        vstrhq_s16(out, max_s16x8);
    } else {
        vstrhq_p_s16(out, max_s16x8, p);
    }
}

static inline void qg_mve_max_window_s16(const int16_t *x, int32_t n_rows, int32_t width, int32_t row, int32_t ch,
                                         int16_t *out)
{
    int32_t c;
    for (c = 0; c + 7 < ch; c += 8) {
        qg_mve_max_8_s16(x + c, n_rows, width, row, ch, out + c, 8, 1);
    }
    if (c < ch) {
        qg_mve_max_8_s16(x + c, n_rows, width, row, ch, out + c, ch - c, 0);
    }
}

/* out[0..3] (lanes of p) = qg_requantize_wide(sum * mult, shift, lo, hi) for 0 <= shift <= 31 and a result inside
 * int32 (an average): the 64-bit product as its high word (VMULH) and low word (VMUL); round_shift(P, shift) =
 * high * 2^(32 - shift) + round_shift(low as unsigned, shift) (VRSHL.U32: computed without overflow), exact
 * modulo 2^32, hence exact. */
QG_MVE_INLINE void qg_mve_avg_out_4_s16(int32x4_t sum, int32x4_t mult, int32_t shift, int32x4_t lo, int32x4_t hi,
                                        int16_t *out, mve_pred16_t p, int32_t full)
{
    const int32x4_t high = vshlq_r_s32(vmulhq_s32(sum, mult), 32 - shift);
    const uint32x4_t low = vrshlq_n_u32(vreinterpretq_u32_s32(vmulq_s32(sum, mult)), -shift);
    const int32x4_t r = vminq_s32(vmaxq_s32(vaddq_s32(high, vreinterpretq_s32_u32(low)), lo), hi);
    if (full) {
        vstrhq_s32(out, r);
    } else {
        vstrhq_p_s32(out, r, p);
    }
}

/* The average of channels [0, n) (8 = two int32 vectors of 4; n < 8 under VCTP predicates when `full` is 0) over a
 * window of at most 65535 cells (|sum| < 2^31): VLDRH.S32 + VADD per 4 channels per cell. */
QG_MVE_INLINE void qg_mve_avg_8_s16(const int16_t *x, int32_t n_rows, int32_t width, int32_t row, int32_t ch,
                                    int32x4_t mult, int32_t shift, int32x4_t lo, int32x4_t hi, int16_t *out, int32_t n,
                                    int32_t full)
{
    const mve_pred16_t p0 = vctp32q((uint32_t)n), p1 = vctp32q((uint32_t)(n > 4 ? n - 4 : 0));
    int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
    int32_t y, i;
    for (y = 0; y < n_rows; y++, x += row) {
        const int16_t *cell = x;
        for (i = 0; i < width; i++, cell += ch) {
            s0 = vaddq_s32(s0, full ? vldrhq_s32(cell) : vldrhq_z_s32(cell, p0));
            s1 = vaddq_s32(s1, full ? vldrhq_s32(cell + 4) : vldrhq_z_s32(cell + 4, p1));
        }
    }
    qg_mve_avg_out_4_s16(s0, mult, shift, lo, hi, out, p0, full);
    qg_mve_avg_out_4_s16(s1, mult, shift, lo, hi, out + 4, p1, full);
}

/* 1 when qg_mve_avg_window_s16 computes this window exactly (else the caller's int64 loop): |sum| < 2^31 (at most
 * 65535 cells) and |sum * mult| < 2^(31 + shift), so that the rounded result fits int32 (always so for an average:
 * mult = round(2^shift / d); checked for any parameters). */
static inline int32_t qg_mve_avg_fits_s16(int32_t n_rows, int32_t width, int32_t mult, int32_t shift)
{
    const int64_t cells = (int64_t)n_rows * width;
    return shift >= 0 && shift <= 31 && cells <= 65535 && mult >= 0 &&
           cells * 32768 * mult < ((int64_t)1 << (31 + shift));
}

static inline void qg_mve_avg_window_s16(const int16_t *x, int32_t n_rows, int32_t width, int32_t row, int32_t ch,
                                         int32_t mult, int32_t shift, int32_t act_min, int32_t act_max, int16_t *out)
{
    const int32x4_t m = vdupq_n_s32(mult), lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
    int32_t c;
    for (c = 0; c + 7 < ch; c += 8) {
        qg_mve_avg_8_s16(x + c, n_rows, width, row, ch, m, shift, lo, hi, out + c, 8, 1);
    }
    if (c < ch) {
        qg_mve_avg_8_s16(x + c, n_rows, width, row, ch, m, shift, lo, hi, out + c, ch - c, 0);
    }
}
#endif /* QG_MVE */

#endif /* QG_MVE_H */
