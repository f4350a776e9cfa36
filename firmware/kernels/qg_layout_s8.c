/*
 * qg_layout_s8.c - layout copies for int8 and int16: transpose (a physical permutation of up to 6 axes) and
 * slice (a block range along one axis).
 * They move elements only (no arithmetic, the Q-format is kept); reference: codegen/ops/matmul.py.
 *
 * The transpose walks the output in order and gathers from the input: the innermost output dim reads the
 * input at a constant stride, unrolled by 4 (on Cortex-M4 each gather is one post-indexed load and one
 * store).
 */
#include <string.h>

#include "qg_kernels.h"

#define QG_MAX_RANK 6

/* the params' loop dims padded with leading 1s to QG_MAX_RANK */
static void transpose_dims(const qg_transpose_params_t *p, int32_t n[QG_MAX_RANK], int32_t s[QG_MAX_RANK],
                           int32_t o[QG_MAX_RANK])
{
    int32_t k, lead = QG_MAX_RANK - p->rank;
    for (k = 0; k < QG_MAX_RANK; k++) {
        n[k] = 1;
        s[k] = 0;
        o[k] = 0;
    }
    for (k = 0; k < p->rank; k++) {
        n[lead + k] = p->shape[k];
        s[lead + k] = p->in_stride[k];
        o[lead + k] = p->out_stride[k];
    }
}

/* One body for both element types (T). The generator orders the loops so that the innermost one is a
 * contiguous run on both sides (a block copy) or else the longest dim: there each element is one load and
 * one store, both post-indexed by a register stride on Cortex-M3/M4 (unrolled by 4). */
#define QG_TRANSPOSE_BODY(T)                                                                            \
    int32_t n[QG_MAX_RANK], s[QG_MAX_RANK], o[QG_MAX_RANK], i0, i1, i2, i3, i4;                         \
    transpose_dims(p, n, s, o);                                                                         \
    for (i0 = 0; i0 < n[0]; i0++)                                                                       \
        for (i1 = 0; i1 < n[1]; i1++)                                                                   \
            for (i2 = 0; i2 < n[2]; i2++)                                                               \
                for (i3 = 0; i3 < n[3]; i3++)                                                           \
                    for (i4 = 0; i4 < n[4]; i4++) {                                                     \
                        const T *src = in + i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3] + i4 * s[4];  \
                        T *dst = out + i0 * o[0] + i1 * o[1] + i2 * o[2] + i3 * o[3] + i4 * o[4];       \
                        const int32_t si = s[5], so = o[5];                                             \
                        int32_t j = n[5];                                                               \
                        if (si == 1 && so == 1) {                                                       \
                            memcpy(dst, src, (size_t)j * sizeof(T));                                    \
                            continue;                                                                   \
                        }                                                                               \
                        for (; j >= 4; j -= 4) {                                                        \
                            T a = *src; src += si; *dst = a; dst += so;                                 \
                            a = *src; src += si; *dst = a; dst += so;                                   \
                            a = *src; src += si; *dst = a; dst += so;                                   \
                            a = *src; src += si; *dst = a; dst += so;                                   \
                        }                                                                               \
                        for (; j > 0; j--) {                                                            \
                            *dst = *src;                                                                \
                            src += si;                                                                  \
                            dst += so;                                                                  \
                        }                                                                               \
                    }

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* A 2-D byte transpose by 4 x 4 tiles: the generator puts the dim contiguous in the input (length `rows`, output
 * stride `os`) second-innermost and the dim contiguous in the output (length `cols`, input stride `is`)
 * innermost. Four word loads (four input rows of 4 bytes), 16 ALU operations, four word stores; two columns
 * (a 2-group channel shuffle): two word loads, two 8-byte stores. */
static inline void transpose_tiles_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows, int32_t cols,
                               int32_t is, int32_t os)
{
    const uint32_t even = 0x00FF00FFu;
    int32_t r, c;
    if (cols == 2 && os == 2) {  /* interleave two rows (a channel shuffle of 2 groups): 8 bytes per step */
        for (r = 0; r + 4 <= rows; r += 4) {
            uint32_t a, b, t0, t1, w[2];
            memcpy(&a, in + r, 4);
            memcpy(&b, in + is + r, 4);
            t0 = (a & even) | ((b & even) << 8);
            t1 = ((a >> 8) & even) | (b & ~even);
            w[0] = (t0 & 0xFFFFu) | (t1 << 16);
            w[1] = (t0 >> 16) | (t1 & 0xFFFF0000u);
            memcpy(out + 2 * r, w, 8);
        }
        for (; r < rows; r++) {
            out[2 * r] = in[r];
            out[2 * r + 1] = in[is + r];
        }
        return;
    }
    for (r = 0; r + 4 <= rows; r += 4) {
        for (c = 0; c + 4 <= cols; c += 4) {
            uint32_t r0, r1, r2, r3, t0, t1, t2, t3, w;
            const int8_t *src = in + c * is + r;  /* input row c + k holds out[r..r+3][c + k] */
            memcpy(&r0, src, 4);
            memcpy(&r1, src + is, 4);
            memcpy(&r2, src + 2 * is, 4);
            memcpy(&r3, src + 3 * is, 4);
            t0 = (r0 & even) | ((r1 & even) << 8);
            t1 = ((r0 >> 8) & even) | (r1 & ~even);
            t2 = (r2 & even) | ((r3 & even) << 8);
            t3 = ((r2 >> 8) & even) | (r3 & ~even);
            w = (t0 & 0xFFFFu) | (t2 << 16);
            memcpy(out + r * os + c, &w, 4);
            w = (t1 & 0xFFFFu) | (t3 << 16);
            memcpy(out + (r + 1) * os + c, &w, 4);
            w = (t0 >> 16) | (t2 & 0xFFFF0000u);
            memcpy(out + (r + 2) * os + c, &w, 4);
            w = (t1 >> 16) | (t3 & 0xFFFF0000u);
            memcpy(out + (r + 3) * os + c, &w, 4);
        }
        for (; c < cols; c++) {
            int32_t k;
            for (k = 0; k < 4; k++) out[(r + k) * os + c] = in[c * is + r + k];
        }
    }
    for (; r < rows; r++)
        for (c = 0; c < cols; c++) out[r * os + c] = in[c * is + r];
}
#define QG_HAVE_TILES 1
#endif

#ifdef QG_HAVE_TILES
/* 1 if the loops end in a tile-able 2-D transpose (then it is done), else 0 */
static int transpose_by_tiles(const qg_transpose_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    int32_t n[QG_MAX_RANK], s[QG_MAX_RANK], o[QG_MAX_RANK], i0, i1, i2, i3;
    transpose_dims(p, n, s, o);
    if (p->rank < 2 || s[4] != 1 || o[5] != 1 || n[4] < 4 || n[5] < 2) {
        return 0;
    }
    for (i0 = 0; i0 < n[0]; i0++)
        for (i1 = 0; i1 < n[1]; i1++)
            for (i2 = 0; i2 < n[2]; i2++)
                for (i3 = 0; i3 < n[3]; i3++)
                    transpose_tiles_s8(in + i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3],
                                       out + i0 * o[0] + i1 * o[1] + i2 * o[2] + i3 * o[3], n[4], n[5], s[5], o[4]);
    return 1;
}
#endif

void qg_transpose_s8(const qg_transpose_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
#ifdef QG_HAVE_TILES
    if (transpose_by_tiles(p, in, out)) {
        return;
    }
#endif
    {
        QG_TRANSPOSE_BODY(int8_t)
    }
}

void qg_transpose_s16(const qg_transpose_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    QG_TRANSPOSE_BODY(int16_t)
}

/* slice: one block copy per outer index */
#define QG_SLICE_BODY(T)                                                 \
    int32_t o;                                                           \
    const T *src = in + p->offset;                                       \
    for (o = 0; o < p->outer; o++, src += p->in_block, out += p->out_block) \
        memcpy(out, src, (size_t)p->out_block * sizeof(T));

void qg_slice_s8(const qg_slice_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    QG_SLICE_BODY(int8_t)
}

void qg_slice_s16(const qg_slice_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    QG_SLICE_BODY(int16_t)
}
