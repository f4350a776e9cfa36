/*
 * qg_dot_s8.h - internal: int8 dot products of one input vector with one or two weight rows,
 * shared by the fully connected kernel and the plain C path of the convolution (whose im2col
 * column plays the input vector). Accumulators come in holding the bias and go out holding the sum.
 *
 * With the DSP extension each step takes 4 elements: one word load of inputs, unpacked once into
 * (x0, x2) and (x1, x3) int16 pairs, then per row one word load of weights, two unpacks, two SMLADs
 * (qg_simd.h). Without it, plain C: each input is loaded once for all rows. On ARMv6-M, LDRSB has
 * only a register offset, so a loop with one shared index and no unrolling is the shortest code
 * GCC finds (an unrolled loop needs a MOVS per constant offset).
 */
#ifndef QG_DOT_S8_H
#define QG_DOT_S8_H

#include <stdint.h>

#include "qg_simd.h"

/* *acc0 += x . w0, *acc1 += x . w1 over n elements. */
static inline void qg_dot_1x2_s8(const int8_t *restrict x, const int8_t *restrict w0,
                                 const int8_t *restrict w1, int32_t n, int32_t *acc0, int32_t *acc1)
{
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
}

/* acc + x . w over n elements. */
static inline int32_t qg_dot_1x1_s8(const int8_t *restrict x, const int8_t *restrict w, int32_t n, int32_t acc)
{
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
}

#endif /* QG_DOT_S8_H */
