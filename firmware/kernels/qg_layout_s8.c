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
#include "qg_simd.h"

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
                            qg_copy_s8((int8_t *)dst, (const int8_t *)src, j * (int32_t)sizeof(T));     \
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

/* Not on ARMv6-M (Cortex-M0+): without unaligned word access each 4-byte memcpy is a library call or four
 * byte loads, and the plain gather (one LDRB/STRB pair per byte) is 4x faster there. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && \
    !(defined(__ARM_ARCH) && !(defined(__ARM_FEATURE_UNALIGNED) && __ARM_FEATURE_UNALIGNED))
#if QG_DSP
/* out rows 0..3 (bytes 0..3, `os` apart) = the transpose of in rows 0..3 (bytes 0..3, `is` apart) */
static inline void tile_4x4_s8(const int8_t *s0, int32_t is, int8_t *dst, int32_t os)
{
    const uint32_t odd = 0xFF00FF00u;
    const int8_t *s2 = s0 + 2 * is;
    int8_t *dst2 = dst + 2 * os;
    const int32_t r0 = qg_load_s8x4(s0), r1 = qg_load_s8x4(s0 + is), r2 = qg_load_s8x4(s2), r3 = qg_load_s8x4(s2 + is);
    const uint32_t u0 = (uint32_t)qg_pkhbt(r0, r2), u1 = (uint32_t)qg_pkhtb(r2, r0);
    const uint32_t u2 = (uint32_t)qg_pkhbt(r1, r3), u3 = (uint32_t)qg_pkhtb(r3, r1);
    const uint32_t w0 = __uxtab16(qg_and_lsl8(odd, u2), u0), w1 = qg_uxtab16_ror8(u2 & odd, u0);
    const uint32_t w2 = __uxtab16(qg_and_lsl8(odd, u3), u1), w3 = qg_uxtab16_ror8(u3 & odd, u1);
    memcpy(dst2, &w2, 4);
    memcpy(dst2 + os, &w3, 4);
    memcpy(dst + os, &w1, 4);
    memcpy(dst, &w0, 4);
}
#endif

/* A 2-D byte transpose by 4 x 4 tiles: the generator puts the dim contiguous in the input (length `rows`, output
 * stride `os`) second-innermost and the dim contiguous in the output (length `cols`, input stride `is`)
 * innermost. Four word loads (four input rows of 4 bytes), 16 ALU operations, four word stores; two columns
 * (a 2-group channel shuffle): two word loads, two 8-byte stores. */
static inline void transpose_tiles_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows, int32_t cols,
                               int32_t is, int32_t os)
{
#if !QG_DSP
    const uint32_t even = 0x00FF00FFu;
#endif
    int32_t r, c;
    if (cols == 2 && os == 2) {  /* interleave two rows (a channel shuffle of 2 groups): 8 bytes per step */
        r = 0;
#if !QG_DSP /* DSP cores: interleave_rows_s8 */
        for (; r + 4 <= rows; r += 4) {
            uint32_t a, b, t0, t1, w[2];
            memcpy(&a, in + r, 4);
            memcpy(&b, in + is + r, 4);
            t0 = (a & even) | ((b & even) << 8);
            t1 = ((a >> 8) & even) | (b & ~even);
            w[0] = (t0 & 0xFFFFu) | (t1 << 16);
            w[1] = (t0 >> 16) | (t1 & 0xFFFF0000u);
            memcpy(out + 2 * r, w, 8);
        }
#endif
        for (; r < rows; r++) {
            out[2 * r] = in[r];
            out[2 * r + 1] = in[is + r];
        }
        return;
    }
#if QG_DSP
    /* 12 ALU operations per tile: PKHBT/PKHTB pair the half-rows (a0 a1 c0 c1), (a2 a3 c2 c3), (b0 b1 d0 d1),
     * (b2 b3 d2 d3); UXTAB16 adds bytes 0 and 2 (rotated: 1 and 3) of one to the other's bytes masked into
     * positions 1 and 3: (a0 b0 c0 d0) ... (a3 b3 c3 d3). The tiles walk along the longer side. */
    if (cols >= rows) {
        for (r = 0; r + 4 <= rows; r += 4) { /* output rows r..r+3, written along: [c..c+3] per step */
            const int8_t *s0 = in + r;
            int8_t *dst = out + r * os, *const dst_end = dst + (cols & ~3);
            while (dst != dst_end) {
                tile_4x4_s8(s0, is, dst, os);
                s0 += 4 * is;
                dst += 4;
            }
        }
    } else {
        for (c = 0; c + 4 <= cols; c += 4) { /* input rows c..c+3, read along: [r..r+3] per step */
            const int8_t *s0 = in + c * is, *const s0_end = s0 + (rows & ~3);
            int8_t *dst = out + c;
            while (s0 != s0_end) {
                tile_4x4_s8(s0, is, dst, os);
                s0 += 4;
                dst += 4 * os;
            }
        }
    }
    for (r = 0; r + 4 <= rows; r += 4) { /* the last cols % 4 columns */
        for (c = cols & ~3; c < cols; c++) {
            int32_t k;
            for (k = 0; k < 4; k++) out[(r + k) * os + c] = in[c * is + r + k];
        }
    }
#else
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
#endif
    for (; r < rows; r++)
        for (c = 0; c < cols; c++) out[r * os + c] = in[c * is + r];
}
#define QG_HAVE_TILES 1
#endif

#if QG_DSP
/* The block loops below are big enough to want their own registers: kept out of qg_transpose_s8 (inlined there,
 * the tile loop reloaded its strides from the stack every tile). */
#if defined(__GNUC__) || defined(__clang__)
#define QG_LAYOUT_NOINLINE __attribute__((noinline))
#else
#define QG_LAYOUT_NOINLINE
#endif

/* 8 output bytes (a0 b0 a1 b1 a2 b2 a3 b3) of the 4-byte words a, b: (a0 b0 a2 b2) and (a1 b1 a3 b3) by UXTAB16 as
 * in the 4 x 4 tiles, then PKHBT/PKHTB: 6 ALU operations */
static inline void interleave_8_s8(uint32_t a, uint32_t b, int8_t *dst)
{
    const uint32_t odd = 0xFF00FF00u;
    const uint32_t x = __uxtab16(qg_and_lsl8(odd, b), a), y = qg_uxtab16_ror8(b & odd, a);
    const int32_t w0 = qg_pkhbt((int32_t)x, (int32_t)y), w1 = qg_pkhtb((int32_t)y, (int32_t)x);
    memcpy(dst, &w0, 4);
    memcpy(dst + 4, &w1, 4);
}

/* n_blocks two-row interleaves (a channel shuffle of 2 groups: one block per pixel, blocks s_block and o_block
 * apart): out[2 r + g] = in[g * is + r], 8 output bytes per step; the block loop is the outer loop of the same
 * function (a block is often 16-64 bytes). */
static void interleave_rows_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows, int32_t is,
                               int32_t n_blocks, int32_t s_block, int32_t o_block)
{
    const int32_t rows4 = rows & ~3;
    int32_t k, r;
    for (k = 0; k < n_blocks; k++, in += s_block, out += o_block) {
        const int8_t *src = in, *const src_end = in + rows4;
        int8_t *dst = out;
        while (src != src_end) {
            interleave_8_s8((uint32_t)qg_load_s8x4(src), (uint32_t)qg_load_s8x4(src + is), dst);
            src += 4;
            dst += 8;
        }
        for (r = rows4; r < rows; r++) {
            out[2 * r] = in[r];
            out[2 * r + 1] = in[is + r];
        }
    }
}

/* The same for rows a multiple of 8 (8, 16, 24... channels per group): 16 output bytes per step, no tails, out
 * of line for its own registers (23 instructions per 16 bytes on the M4, 1.9 per byte on a 24x24x64 map). */
static QG_LAYOUT_NOINLINE void interleave_rows8_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows,
                                                   int32_t is, int32_t n_blocks, int32_t s_block, int32_t o_block)
{
    for (; n_blocks > 0; n_blocks--, in += s_block, out += o_block) {
        const int8_t *src = in, *const end = in + rows;
        int8_t *dst = out;
        do {
            const uint32_t a0 = (uint32_t)qg_load_s8x4(src), b0 = (uint32_t)qg_load_s8x4(src + is);
            const uint32_t a1 = (uint32_t)qg_load_s8x4(src + 4), b1 = (uint32_t)qg_load_s8x4(src + is + 4);
            interleave_8_s8(a0, b0, dst);
            interleave_8_s8(a1, b1, dst + 8);
            src += 8;
            dst += 16;
        } while (src != end);
    }
}
#endif

#if QG_DSP
/* n_blocks 2-D transposes whose sides are multiples of 4 (a 4-group shuffle: one small block per pixel): whole
 * tiles only, walking along the longer side, the block loop in the same function (no per-block set-up). */
static void tiles_exact_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows, int32_t cols, int32_t is,
                           int32_t os, int32_t n_blocks, int32_t s_block, int32_t o_block)
{
    int32_t k, r, c;
    for (k = 0; k < n_blocks; k++, in += s_block, out += o_block) {
        if (cols >= rows) {
            for (r = 0; r < rows; r += 4) {
                const int8_t *s0 = in + r;
                int8_t *dst = out + r * os, *const dst_end = dst + cols;
                do {
                    tile_4x4_s8(s0, is, dst, os);
                    s0 += 4 * is;
                    dst += 4;
                } while (dst != dst_end);
            }
        } else {
            for (c = 0; c < cols; c += 4) {
                const int8_t *s0 = in + c * is, *const s0_end = s0 + rows;
                int8_t *dst = out + c;
                do {
                    tile_4x4_s8(s0, is, dst, os);
                    s0 += 4;
                    dst += 4 * os;
                } while (s0 != s0_end);
            }
        }
    }
}
#endif

#if QG_DSP
/* n_blocks (rows, 4) -> (4, rows) transposes, rows a multiple of 4 (a 4-group channel shuffle, one block per
 * pixel): each tile's 4 output rows are 16 contiguous bytes (constant store offsets), out of line for its own
 * registers. */
static QG_LAYOUT_NOINLINE void tiles_cols4_s8(const int8_t *restrict in, int8_t *restrict out, int32_t rows,
                                              int32_t is, int32_t n_blocks, int32_t s_block, int32_t o_block)
{
    int32_t k;
    for (k = 0; k < n_blocks; k++, in += s_block, out += o_block) {
        const int8_t *s0 = in, *const s0_end = in + rows;
        int8_t *dst = out;
        do {
            tile_4x4_s8(s0, is, dst, 4);
            s0 += 4;
            dst += 16;
        } while (s0 != s0_end);
    }
}
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
    {
        /* the tile dims and the innermost outer loop in locals (a channel shuffle runs one small 2-D block per
         * pixel: its set-up is per-pixel cost) */
        const int32_t rows = n[4], cols = n[5], is = s[5], os = o[4], n3 = n[3], s3 = s[3], o3 = o[3];
        for (i0 = 0; i0 < n[0]; i0++)
            for (i1 = 0; i1 < n[1]; i1++)
                for (i2 = 0; i2 < n[2]; i2++) {
                    const int8_t *src = in + i0 * s[0] + i1 * s[1] + i2 * s[2];
                    int8_t *dst = out + i0 * o[0] + i1 * o[1] + i2 * o[2];
#if QG_DSP
                    if (cols == 2 && os == 2) {
                        if ((rows & 7) == 0) {
                            interleave_rows8_s8(src, dst, rows, is, n3, s3, o3);
                        } else {
                            interleave_rows_s8(src, dst, rows, is, n3, s3, o3);
                        }
                        continue;
                    }
                    if (cols == 4 && os == 4 && (rows & 3) == 0) {
                        tiles_cols4_s8(src, dst, rows, is, n3, s3, o3);
                        continue;
                    }
                    if (((rows | cols) & 3) == 0) {
                        tiles_exact_s8(src, dst, rows, cols, is, os, n3, s3, o3);
                        continue;
                    }
#endif
                    for (i3 = 0; i3 < n3; i3++, src += s3, dst += o3) {
                        transpose_tiles_s8(src, dst, rows, cols, is, os);
                    }
                }
    }
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

/* slice: one block copy per outer index (qg_copy_s8: short blocks, e.g. a few channels per pixel, inline) */
#define QG_SLICE_BODY(T)                                                                   \
    int32_t o;                                                                             \
    const int32_t in_block = p->in_block, out_block = p->out_block, outer = p->outer;      \
    const T *src = in + p->offset;                                                         \
    for (o = 0; o < outer; o++, src += in_block, out += out_block)                         \
        qg_copy_s8((int8_t *)out, (const int8_t *)src, out_block * (int32_t)sizeof(T));

/* GCC would turn the short word and byte loops below back into a memcpy call per block */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
void qg_slice_s8(const qg_slice_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
#if defined(__ARM_FEATURE_UNALIGNED) && __ARM_FEATURE_UNALIGNED
    /* short blocks (a few channels per pixel): whole words per block, 4 instructions per word. A block's
     * last word may run up to 3 bytes past it: into the next output block, which is written after it (the
     * output blocks are contiguous), reading input bytes that lie before the next input block's end; the
     * last block is copied exactly. */
    if (p->out_block >= 4 && p->out_block < 64) {
        const int32_t in_block = p->in_block, out_block = p->out_block, words = (out_block + 3) >> 2;
        const int8_t *src = in + p->offset;
        int32_t o;
        for (o = 0; o + 1 < p->outer; o++, src += in_block, out += out_block) {
            const int8_t *s = src;
            int8_t *d = out;
            int32_t k = words;
            do {
                int32_t w;
                memcpy(&w, s, 4);
                memcpy(d, &w, 4);
                s += 4;
                d += 4;
            } while (--k > 0);
        }
        qg_copy_s8(out, src, out_block);
        return;
    }
#endif
    if (p->out_block < 4) { /* one to three channels per pixel: bytes */
        const int32_t in_block = p->in_block, out_block = p->out_block;
        const int8_t *src = in + p->offset;
        int32_t o, i;
        for (o = 0; o < p->outer; o++, src += in_block, out += out_block) {
            for (i = 0; i < out_block; i++) {
                out[i] = src[i];
            }
        }
        return;
    }
    {
        QG_SLICE_BODY(int8_t)
    }
}

void qg_slice_s16(const qg_slice_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    QG_SLICE_BODY(int16_t)
}
