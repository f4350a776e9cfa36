/*
 * qg_layout_s8.c - layout copies for int8 and int16: transpose (a physical permutation of up to 6 axes) and
 * slice (a block range along one axis).
 * They move elements only (no arithmetic, the Q-format is kept); reference: codegen/ops/matmul.py.
 *
 * The transpose walks the output in order and gathers from the input: the innermost output dim reads the
 * input at a constant stride, unrolled by 4 (on Cortex-M4 each gather is one post-indexed load and one
 * store).
 */
#include "qg_kernels.h"

#define QG_MAX_RANK 6

/* the params' dims padded with leading 1s to QG_MAX_RANK */
static void transpose_dims(const qg_transpose_params_t *p, int32_t n[QG_MAX_RANK], int32_t s[QG_MAX_RANK])
{
    int32_t k, lead = QG_MAX_RANK - p->rank;
    for (k = 0; k < QG_MAX_RANK; k++) {
        n[k] = 1;
        s[k] = 0;
    }
    for (k = 0; k < p->rank; k++) {
        n[lead + k] = p->out_shape[k];
        s[lead + k] = p->in_stride[k];
    }
}

/* one body for both element types: T is the element type */
#define QG_TRANSPOSE_BODY(T)                                                                            \
    int32_t n[QG_MAX_RANK], s[QG_MAX_RANK], i0, i1, i2, i3, i4;                                         \
    transpose_dims(p, n, s);                                                                            \
    for (i0 = 0; i0 < n[0]; i0++)                                                                       \
        for (i1 = 0; i1 < n[1]; i1++)                                                                   \
            for (i2 = 0; i2 < n[2]; i2++)                                                               \
                for (i3 = 0; i3 < n[3]; i3++)                                                           \
                    for (i4 = 0; i4 < n[4]; i4++) {                                                     \
                        const T *src = in + i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3] + i4 * s[4];  \
                        const int32_t stride = s[5];                                                    \
                        int32_t j = n[5];                                                               \
                        if (stride == 1) {                                                              \
                            for (; j > 0; j--) *out++ = *src++;                                         \
                            continue;                                                                   \
                        }                                                                               \
                        for (; j >= 4; j -= 4) {                                                        \
                            T a = *src; src += stride;                                                  \
                            T b = *src; src += stride;                                                  \
                            T c = *src; src += stride;                                                  \
                            T d = *src; src += stride;                                                  \
                            out[0] = a; out[1] = b; out[2] = c; out[3] = d;                             \
                            out += 4;                                                                   \
                        }                                                                               \
                        for (; j > 0; j--) {                                                            \
                            *out++ = *src;                                                              \
                            src += stride;                                                              \
                        }                                                                               \
                    }

void qg_transpose_s8(const qg_transpose_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    QG_TRANSPOSE_BODY(int8_t)
}

void qg_transpose_s16(const qg_transpose_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    QG_TRANSPOSE_BODY(int16_t)
}

/* slice: a block copy per outer index (memcpy-like: the compiler's word copies where it can) */
#define QG_SLICE_BODY(T)                                                 \
    int32_t o, i;                                                        \
    const T *src = in + p->offset;                                       \
    for (o = 0; o < p->outer; o++, src += p->in_block)                   \
        for (i = 0; i < p->out_block; i++) *out++ = src[i];

void qg_slice_s8(const qg_slice_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    QG_SLICE_BODY(int8_t)
}

void qg_slice_s16(const qg_slice_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    QG_SLICE_BODY(int16_t)
}
