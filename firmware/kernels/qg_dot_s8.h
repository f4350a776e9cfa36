/*
 * qg_dot_s8.h - internal: int8 dot products of one input vector with one or two weight rows,
 * shared by the fully connected kernel and the plain C path of the convolution (whose im2col
 * column plays the input vector). Accumulators come in holding the bias and go out holding the sum.
 *
 * With the DSP extension each step takes 4 elements: one word load of inputs, unpacked once into
 * (x0, x2) and (x1, x3) int16 pairs, then per row one word load of weights, two unpacks, two SMLADs
 * (qg_simd.h). Without it, plain C: each input is loaded once for all rows. On ARMv6-M, LDRSB has
 * only a register offset, so a loop with one shared index and no unrolling is the shortest code
 * GCC finds (an unrolled loop needs a MOVS per constant offset); optimised ARMv6-M builds run four
 * rows per pass in assembly instead (qg_m0_dot_rows4). With Helium (QG_MVE, Cortex-M55) the
 * dot products are qg_mve.h's: 16 MACs per VMLADAVA, four rows per input load, a predicated tail.
 */
#ifndef QG_DOT_S8_H
#define QG_DOT_S8_H

#include <stdint.h>

#include "qg_kernels.h"
#include "qg_mve.h"
#include "qg_simd.h"

/* ARMv6-M (Cortex-M0/M0+): sums[r] = bias[r] + x . (w + r * k) for rows r in [0, rows), rows a multiple of 4 and
 * k >= 1 (qg_dot_rows_s8's four-row passes; it requantises the sums). ARMv6-M has 8 low registers for loads and
 * MULS, and LDRSB takes a register offset only; GCC's loop over two rows spent 11 instructions per 2 MACs (a base
 * kept in a high register and copied back every step). Here the four accumulators of a pass live in r8-r11 (ADD
 * reaches high registers), the input and the four rows are addressed from their ends by one negative index
 * counting up to 0 (its ADDS sets the loop's flags), so one input load serves four rows: 5 LDRSB + 4 MULS + 4 ADD +
 * ADDS per 4 MACs, the loop unrolled twice (an odd k enters at its second half), so 29 instructions per 8 MACs
 * (3.6 per MAC), and ~25 per pass around it (biases by LDM, sums by STM; the next pass's rows start where row 3
 * ended). A naked function (its whole body is assembly: no operand constraints for GCC to allocate), only in
 * optimised GCC/Clang builds for ARMv6-M; elsewhere QG_M0_ASM is 0 and the C loops run. */
#if defined(__ARM_ARCH_6M__) && defined(__OPTIMIZE__) && (defined(__GNUC__) || defined(__clang__))
#define QG_M0_ASM 1
#else
#define QG_M0_ASM 0
#endif

#if QG_M0_ASM
#define QG_M0_CHUNK 32 /* rows per call (the caller's int32 sums on its stack) */
#define QG_M0_ARG __attribute__((unused)) /* read by the assembly (r0-r3, then the stack), not by C */
__attribute__((naked, noinline, unused)) static void qg_m0_dot_rows4(QG_M0_ARG const int8_t *x,
                                                                      QG_M0_ARG const int8_t *w,
                                                                      QG_M0_ARG int32_t k, QG_M0_ARG int32_t rows,
                                                                      QG_M0_ARG const int32_t *bias,
                                                                      QG_M0_ARG int32_t *sums)
{
    __asm__(".syntax unified\n\t"
            "push   {r4, r5, r6, r7, lr}\n\t"
            "mov    r4, r8\n\t"
            "mov    r5, r9\n\t"
            "mov    r6, r10\n\t"
            "mov    r7, r11\n\t"
            "push   {r4, r5, r6, r7}\n\t"
            "ldr    r4, [sp, #36]\n\t"     /* bias (the fifth argument) */
            "ldr    r5, [sp, #40]\n\t"     /* sums */
            "mov    ip, r4\n\t"
            "mov    lr, r5\n\t"
            "lsls   r3, r3, #2\n\t"
            "adds   r3, r5, r3\n\t"        /* the end of sums */
            "sub    sp, #8\n\t"
            "str    r2, [sp, #0]\n\t"      /* k */
            "str    r3, [sp, #4]\n\t"
            "adds   r0, r0, r2\n\t"        /* the end of x */
            "movs   r2, r1\n\t"            /* row 0 of the pass */
            "1:\n\t"
            "mov    r7, ip\n\t"
            "ldm    r7!, {r3, r4, r5, r6}\n\t"
            "mov    ip, r7\n\t"
            "mov    r8, r3\n\t"
            "mov    r9, r4\n\t"
            "mov    r10, r5\n\t"
            "mov    r11, r6\n\t"
            "ldr    r6, [sp, #0]\n\t"
            "negs   r5, r6\n\t"            /* i = -k */
            "adds   r1, r2, r6\n\t"        /* the ends of rows 0, 1, 2, 3 */
            "adds   r3, r1, r6\n\t"
            "adds   r4, r3, r6\n\t"
            "adds   r2, r4, r6\n\t"
            "lsrs   r6, r6, #1\n\t"        /* an odd k enters the loop at its second half */
            "bcs    3f\n\t"
            "2:\n\t"
            "ldrsb  r6, [r0, r5]\n\t"
            "ldrsb  r7, [r1, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r8, r7\n\t"
            "ldrsb  r7, [r3, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r9, r7\n\t"
            "ldrsb  r7, [r4, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r10, r7\n\t"
            "ldrsb  r7, [r2, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r11, r7\n\t"
            "adds   r5, r5, #1\n\t"
            "3:\n\t"
            "ldrsb  r6, [r0, r5]\n\t"
            "ldrsb  r7, [r1, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r8, r7\n\t"
            "ldrsb  r7, [r3, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r9, r7\n\t"
            "ldrsb  r7, [r4, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r10, r7\n\t"
            "ldrsb  r7, [r2, r5]\n\t"
            "muls   r7, r6, r7\n\t"
            "add    r11, r7\n\t"
            "adds   r5, r5, #1\n\t"
            "bne    2b\n\t"
            "mov    r3, r8\n\t"
            "mov    r4, r9\n\t"
            "mov    r5, r10\n\t"
            "mov    r6, r11\n\t"
            "mov    r7, lr\n\t"
            "stm    r7!, {r3, r4, r5, r6}\n\t"
            "mov    lr, r7\n\t"
            "ldr    r6, [sp, #4]\n\t"
            "cmp    r7, r6\n\t"
            "bne    1b\n\t"
            "add    sp, #8\n\t"
            "pop    {r4, r5, r6, r7}\n\t"
            "mov    r8, r4\n\t"
            "mov    r9, r5\n\t"
            "mov    r10, r6\n\t"
            "mov    r11, r7\n\t"
            "pop    {r4, r5, r6, r7, pc}\n\t");
}

/* out[j] = qg_requantize_s8(sums[j], shift[j], act_min, act_max) for j in [0, n): the right shifts >= 2 as
 * ((acc >> (s - 1)) + 1) >> 1 (the rounding rule: floor((acc + 2^(s-1)) / 2^s); no overflow, |acc >> 1| < 2^30), one
 * compare per clamp side; other shifts the general code. A function of its own: inlined into the conv, GCC spilled
 * its registers (~22 instructions per output). */
__attribute__((noinline, unused)) static void qg_m0_requantize_rows(const int32_t *sums, const int8_t *shift,
                                                                    int32_t n, int32_t act_min, int32_t act_max,
                                                                    int8_t *out)
{
    const int8_t *const end = shift + n;
    while (shift != end) {
        int32_t acc = *sums++;
        const int32_t s = *shift++;
        if (s > 1) {
            acc = ((acc >> (s - 1)) + 1) >> 1;
            *out++ = (int8_t)(acc < act_min ? act_min : (acc > act_max ? act_max : acc));
        } else {
            *out++ = qg_requantize_s8(acc, s, act_min, act_max);
        }
    }
}
#endif

/* *acc0 += x . w0, *acc1 += x . w1 over n elements. */
static inline void qg_dot_1x2_s8(const int8_t *restrict x, const int8_t *restrict w0,
                                 const int8_t *restrict w1, int32_t n, int32_t *acc0, int32_t *acc1)
{
#if QG_MVE
    *acc0 = qg_mve_dot_1x1_s8(x, w0, n, *acc0);
    *acc1 = qg_mve_dot_1x1_s8(x, w1, n, *acc1);
#else
    int32_t a0 = *acc0, a1 = *acc1;
    int32_t i;
#if QG_DSP
    for (i = n >> 2; i > 0; i--) {
        const int32_t xv = qg_load_s8x4(x), wv0 = qg_load_s8x4(w0), wv1 = qg_load_s8x4(w1);
        const int32_t xe = qg_sxtb16(xv), xo = qg_sxtb16_ror8(xv);
        x += 4;
        w0 += 4;
        w1 += 4;
        a0 = __smlad(qg_sxtb16(wv0), xe, a0);
        a0 = __smlad(qg_sxtb16_ror8(wv0), xo, a0);
        a1 = __smlad(qg_sxtb16(wv1), xe, a1);
        a1 = __smlad(qg_sxtb16_ror8(wv1), xo, a1);
    }
    n &= 3;
#endif
    for (i = 0; i < n; i++) {
        const int32_t xi = x[i];
        a0 += xi * w0[i];
        a1 += xi * w1[i];
    }
    *acc0 = a0;
    *acc1 = a1;
#endif
}

/* acc + x . w over n elements. */
static inline int32_t qg_dot_1x1_s8(const int8_t *restrict x, const int8_t *restrict w, int32_t n, int32_t acc)
{
#if QG_MVE
    return qg_mve_dot_1x1_s8(x, w, n, acc);
#else
    int32_t i;
#if QG_DSP
    for (i = n >> 2; i > 0; i--) {
        const int32_t xv = qg_load_s8x4(x), wv = qg_load_s8x4(w);
        x += 4;
        w += 4;
        acc = __smlad(qg_sxtb16(wv), qg_sxtb16(xv), acc);
        acc = __smlad(qg_sxtb16_ror8(wv), qg_sxtb16_ror8(xv), acc);
    }
    n &= 3;
#endif
    for (i = 0; i < n; i++) {
        acc += (int32_t)x[i] * w[i];
    }
    return acc;
#endif
}

#if QG_FLASH_DATA
/* The weight rows, biases and shifts in flash (AVR, qg_kernels.h): the plain loops above with qg_w* loads of w. */
static inline void qg_dot_1x2_w8(const int8_t *restrict x, const int8_t *restrict w0,
                                 const int8_t *restrict w1, int32_t n, int32_t *acc0, int32_t *acc1)
{
    int32_t a0 = *acc0, a1 = *acc1;
    int32_t i;
    for (i = 0; i < n; i++) {
        const int32_t xi = x[i];
        a0 += xi * qg_w8(&w0[i]);
        a1 += xi * qg_w8(&w1[i]);
    }
    *acc0 = a0;
    *acc1 = a1;
}

static inline int32_t qg_dot_1x1_w8(const int8_t *restrict x, const int8_t *restrict w, int32_t n, int32_t acc)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        acc += (int32_t)x[i] * qg_w8(&w[i]);
    }
    return acc;
}
#else
#define qg_dot_1x2_w8 qg_dot_1x2_s8
#define qg_dot_1x1_w8 qg_dot_1x1_s8
#endif

/* out[r] = requantised bias[r] + x . (row r of w) for rows [0, rows), k values per row, two rows per pass: the
 * fully connected kernel and the plain C paths of the convolution and the transposed convolution. w, bias and
 * shift are the layer's constant data (in flash on AVR). */
static inline void qg_dot_rows_s8(const int8_t *x, const int8_t *w, int32_t k, int32_t rows, const int32_t *bias,
                                  const int8_t *shift, int32_t act_min, int32_t act_max, int8_t *out)
{
#if QG_MVE
    if (k < 16) {
        qg_mve_dot_rows_small_k_s8(x, w, k, rows, bias, shift, act_min, act_max, out); /* rows in the lanes */
    } else {
        qg_mve_dot_rows_s8(x, w, k, rows, bias, shift, act_min, act_max, out); /* four rows per pass */
    }
#else
    int32_t r = 0;
#if QG_M0_ASM /* ARMv6-M: four rows per input load (qg_m0_dot_rows4), up to QG_M0_CHUNK rows per call */
    if (k > 0) {
        int32_t sums[QG_M0_CHUNK];
        const int32_t rows4 = rows & ~3;
        while (r < rows4) {
            const int32_t n = rows4 - r < QG_M0_CHUNK ? rows4 - r : QG_M0_CHUNK;
            qg_m0_dot_rows4(x, w, k, n, bias + r, sums);
            qg_m0_requantize_rows(sums, shift + r, n, act_min, act_max, out + r);
            r += n;
            w += n * k;
        }
    }
#endif
    for (; r + 1 < rows; r += 2, w += 2 * k) {
        int32_t acc0 = qg_w32(&bias[r]), acc1 = qg_w32(&bias[r + 1]);
        qg_dot_1x2_w8(x, w, w + k, k, &acc0, &acc1);
        out[r] = qg_requantize_s8(acc0, qg_w8(&shift[r]), act_min, act_max);
        out[r + 1] = qg_requantize_s8(acc1, qg_w8(&shift[r + 1]), act_min, act_max);
    }
    if (r < rows) {
        out[r] = qg_requantize_s8(qg_dot_1x1_w8(x, w, k, qg_w32(&bias[r])), qg_w8(&shift[r]), act_min, act_max);
    }
#endif
}

#if QG_DSP
#define QG_BLOCK_COLS 4
#define QG_BLOCK_GROUP (4 * QG_BLOCK_COLS) /* int16 values per group of 4 k's, all pixels */

/* n int8 values (a run of one pixel's column starting at a multiple of 4) -> its int16 slots, interleaved by
 * groups of 4 ((x0, x2), (x1, x3) per group, the pixels' groups side by side; the last n % 4 values plain). */
static inline void qg_widen_s16(int16_t *dst, const int8_t *src, int32_t n)
{
    int32_t i;
    for (i = n >> 2; i > 0; i--) {
        const int32_t v = qg_load_s8x4(src);
        src += 4;
        qg_store_s16x2(dst, qg_sxtb16(v));
        qg_store_s16x2(dst + 2, qg_sxtb16_ror8(v));
        dst += QG_BLOCK_GROUP;
    }
    for (i = 0; i < (n & 3); i++) {
        dst[i] = src[i];
    }
}

/* n_groups groups of one pixel's slots -> 0 (taps outside the input) */
static inline void qg_zero_s16(int16_t *dst, int32_t n_groups)
{
    for (; n_groups > 0; n_groups--, dst += QG_BLOCK_GROUP) {
        qg_store_s16x2(dst, 0);
        qg_store_s16x2(dst + 2, 0);
    }
}

/* One weight pair (we, wo: SXTB16 halves of 4 weights) against the next 4 interleaved columns at x: each column's
 * two int16 pairs (xe, xo) accumulate into a0..a3. A macro, not a function: the callers' accumulators stay in
 * registers (qg_block_rows_1x4 here, the int4 block in qg_conv2d_s4.c). */
#define QG_SMLAD_4COLS(we, wo, x, a0, a1, a2, a3) \
    do { \
        int32_t xe_, xo_; \
        qg_load_pair(&(x), &xe_, &xo_); \
        (a0) = __smlad((we), xe_, (a0)); \
        (a0) = __smlad((wo), xo_, (a0)); \
        qg_load_pair(&(x), &xe_, &xo_); \
        (a1) = __smlad((we), xe_, (a1)); \
        (a1) = __smlad((wo), xo_, (a1)); \
        qg_load_pair(&(x), &xe_, &xo_); \
        (a2) = __smlad((we), xe_, (a2)); \
        (a2) = __smlad((wo), xo_, (a2)); \
        qg_load_pair(&(x), &xe_, &xo_); \
        (a3) = __smlad((we), xe_, (a3)); \
        (a3) = __smlad((wo), xo_, (a3)); \
    } while (0)

/* Requantise and store the 4 outputs of one channel: same shift (>= 1), `kind` a constant. */
static inline void qg_store_1x4(const int32_t acc[QG_BLOCK_COLS], int32_t shift_m1, int32_t kind, int32_t act_min,
                             int32_t act_max, int8_t *out, int32_t stride)
{
    out[0] = qg_requantize_pos_s8(acc[0], shift_m1, kind, act_min, act_max);
    out[stride] = qg_requantize_pos_s8(acc[1], shift_m1, kind, act_min, act_max);
    out[2 * stride] = qg_requantize_pos_s8(acc[2], shift_m1, kind, act_min, act_max);
    out[3 * stride] = qg_requantize_pos_s8(acc[3], shift_m1, kind, act_min, act_max);
}

#if defined(__GNUC__) || defined(__clang__)
#define QG_BLOCK_INLINE inline __attribute__((always_inline))
#define QG_BLOCK_NOINLINE __attribute__((noinline, unused)) /* unused: not every includer calls it */
#else
#define QG_BLOCK_INLINE inline
#define QG_BLOCK_NOINLINE
#endif

/* Rows [0, rows) of the block for a constant clamp `kind`, or kind -1: only the first n_valid pixels stored (the
 * last block of a layer); has_tail a constant, 0 when k is a multiple of 4 (no tail test per row). Row r: weights w + r * k against the 4 interleaved columns, bias[r], shift[r]; pixel c's
 * value goes to out[c * step + r]. Everything a row needs is a local or walks by pointer, so that the row loop
 * around the 17-instruction SMLAD step (one weight word: load, two unpacks, 4 LDRD, 8 SMLAD, loop test) costs
 * about 30 instructions per row (short dot products: a transposed conv's phases, 1x1 and grouped convs). */
static QG_BLOCK_INLINE void qg_block_rows_1x4(const int8_t *w, int32_t k, const int16_t *cols, int32_t n_valid,
                                              int32_t rows, const int32_t *bias, const int8_t *shift, int32_t kind,
                                              int32_t act_min, int32_t act_max, int8_t *out, int32_t step,
                                              int32_t has_tail)
{
    const int32_t k4_bytes = k & ~3, tail = has_tail ? k & 3 : 0;
    const int8_t *const w_end = w + rows * k;
    while (w != w_end) {
        const qg_word_t *x = (const qg_word_t *)(const void *)cols; /* scratch: 4-byte aligned */
        const int8_t *const w_k4 = w + k4_bytes;
        int32_t a0 = *bias++, a1 = a0, a2 = a0, a3 = a0, i, s;
        while (w != w_k4) {
            const int32_t wv = qg_load_s8x4(w);
            const int32_t we = qg_sxtb16(wv), wo = qg_sxtb16_ror8(wv);
            w += 4;
            QG_SMLAD_4COLS(we, wo, x, a0, a1, a2, a3);
        }
        if (tail) { /* the last k % 4 values of each column sit in plain order */
            const int16_t *xt = (const int16_t *)(const void *)x;
            for (i = 0; i < tail; i++) {
                const int32_t wi = *w++;
                a0 += wi * xt[i];
                a1 += wi * xt[4 + i];
                a2 += wi * xt[8 + i];
                a3 += wi * xt[12 + i];
            }
        }
        s = *shift++; /* here, not before the loop: one register fewer across it */
        if (kind >= 0 && s > 0) {
            int8_t *o = out;
            *o = qg_requantize_pos_s8(a0, s - 1, kind, act_min, act_max);
            o += step;
            *o = qg_requantize_pos_s8(a1, s - 1, kind, act_min, act_max);
            o += step;
            *o = qg_requantize_pos_s8(a2, s - 1, kind, act_min, act_max);
            o += step;
            *o = qg_requantize_pos_s8(a3, s - 1, kind, act_min, act_max);
        } else {
            const int32_t acc[QG_BLOCK_COLS] = {a0, a1, a2, a3};
            const int32_t n = kind >= 0 ? QG_BLOCK_COLS : n_valid;
            for (i = 0; i < n; i++) {
                out[i * step] = qg_requantize_s8(acc[i], s, act_min, act_max);
            }
        }
        out++;
    }
}

/* Output rows [0, rows) of the n_valid (1..4) pixels whose k-long columns are in `cols`: row r has weights
 * w + r * k, bias[r], shift[r]; pixel c's value goes to out[c * step + r]. The clamp kind is decided once per
 * block, and the rows run in a function of their own (inlined into the conv, GCC spilled the row loop's
 * pointers: 60 instructions per row around the SMLAD step instead of 30).
 * The conv's and the transposed conv's DSP block (qg_conv2d_s8.c, qg_upsample_s8.c). */
static QG_BLOCK_NOINLINE void qg_block_1x4_s8(const int8_t *w, int32_t k, const int16_t *cols, int32_t n_valid,
                                              int32_t rows, const int32_t *bias, const int8_t *shift,
                                              int32_t act_min, int32_t act_max, int8_t *out, int32_t step)
{
    const int32_t kind = n_valid == QG_BLOCK_COLS ? qg_clamp_kind(act_min, act_max) : -1;
    if (kind == QG_CLAMP_S8 && (k & 3) == 0) { /* the common cases without a tail: 3 instructions fewer per row */
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, QG_CLAMP_S8, act_min, act_max, out, step, 0);
    } else if (kind == QG_CLAMP_RELU && (k & 3) == 0) {
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, QG_CLAMP_RELU, act_min, act_max, out, step, 0);
    } else if (kind == QG_CLAMP_S8) {
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, QG_CLAMP_S8, act_min, act_max, out, step, 1);
    } else if (kind == QG_CLAMP_RELU) {
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, QG_CLAMP_RELU, act_min, act_max, out, step, 1);
    } else if (kind == QG_CLAMP_ANY) {
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, QG_CLAMP_ANY, act_min, act_max, out, step, 1);
    } else {
        qg_block_rows_1x4(w, k, cols, n_valid, rows, bias, shift, -1, act_min, act_max, out, step, 1);
    }
}
#endif /* QG_DSP */

#endif /* QG_DOT_S8_H */
