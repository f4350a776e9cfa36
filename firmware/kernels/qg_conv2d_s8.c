/* Convolutions (standard and depthwise), int8 x int8 -> int32 -> int8, channels-last.
 *
 * Standard convolution = im2col + matrix product. For each output pixel the receptive field
 * (k_h x k_w x in_c values, zeros where it hangs over the padding) is gathered into one contiguous
 * column of K = k_h*k_w*in_c values, the same order as a weight row (out_c, k_h, k_w, in_c), so every
 * output is a K-long dot product of a weight row with a column.
 *   DSP (M4/M7/M33/M55): four columns at a time, widened to int16 in the (x0, x2, x1, x3) order of
 *   qg_simd.h and interleaved, times one weight row: each weight word is loaded and unpacked once
 *   for 4 pixels, i.e. 16 MACs per 1 weight load + 2 unpacks + 4 LDRD + 8 SMLAD (+ loop test).
 *   Plain C (M0+/M3/host): one int8 column (pointing straight into the input for an unpadded 1x1
 *   convolution) times two weight rows at a time (qg_dot_s8.h); optimised ARMv6-M builds four rows per pass in
 *   assembly (qg_m0_dot_rows4) and gather the column with word moves (copy_s8 / zero_s8).
 *   Helium (M55, QG_MVE), K >= QG_MVE_BLOCK_MIN_K (5): 4 output pixels per block (conv2d_blocks_mve): the 4
 *   int8 columns side by side in 16-value blocks, each weight row loaded once for the 4 (16 MACs per VMLADAVA,
 *   64 per 9 instructions), the row's 4 results requantised as one vector; K < 5: the plain path's structure
 *   with qg_mve.h's dot products (rows in the lanes).
 * Scratch (qg_conv2d_s8_buffer_size): 4 int16 columns of K rounded up to 4, plus one int8 column
 * to gather into when in_c is not a multiple of 4; the plain path uses its first K bytes, the Helium blocks
 * 4 * round_up(K, 16) (+ K when K > 16), within that for K >= 5.
 * Dilation: the gather steps by dil_h rows and dil_w pixels between taps (a window row is one copy only
 * when dil_w is 1). Groups: K = k_h*k_w*(in_c/groups); each pixel block is gathered and multiplied once
 * per group, the column taking the group's channels and the group's out_c/groups weight rows, so a
 * grouped conv costs per MAC what a dense conv of in_c/groups -> out_c/groups channels costs.
 *
 * Depthwise convolution (multiplier 1, any dilation): the weights are first transposed into scratch as
 * (k_h, k_w, channels), so that one tap of four neighbouring channels is one word, like the input.
 * Each output pixel then walks the taps that fall inside the image (no per-tap bounds test) for
 * four channels at a time: with DSP one word load of inputs and one of weights, unpacked to int16
 * pairs and multiplied with SMLABB/SMLATT. With Helium (QG_MVE) 16 channels at a time: int16 loads, VMULLB /
 * VMULLT products of the even and odd channels into int32 accumulators (dw_8x_mve), the last ch % 8 channels
 * four at a time under a predicate. A multiplier other than 1 takes the generic path.
 *
 * Order contract (the memory planner relies on it, codegen/kernel_abi.py: overlap_distance): every
 * path here computes output pixels in increasing order, and once it has written output pixel p it
 * reads input only for pixels >= p (4-pixel blocks read all four before writing any). A grouped conv
 * on the DSP path does not keep it (group 1 of a block is gathered after group 0 is written), so the
 * planner gives grouped convs no overlap (codegen/kernels.py). The planner may
 * therefore place `out` partly over the start of a dying `in`, so `in` and `out` are not `restrict`
 * here (parameters are read into locals instead; same instruction counts, see bench/kernels.py).
 */
#include "qg_kernels.h"
#include "qg_dot_s8.h"

static int32_t round_up4(int32_t n)
{
    return (n + 3) & ~3;
}

int32_t qg_conv2d_s8_buffer_size(const qg_conv2d_params_t *p)
{
    /* 4 int16 columns, and an int8 column to gather into when a group's in_c is not a multiple of 4 */
    const int32_t cg = p->in_c / p->groups, k4 = round_up4((int32_t)p->k_h * p->k_w * cg);
    return 8 * k4 + ((cg & 3) != 0 ? k4 : 0);
}

/* ARMv6-M (strict alignment): memcpy(&v, p, 4) is a library call there (two per word, the plain conv's im2col
 * took ~1 instruction per MAC of a 16-channel 3x3 conv), and GCC turns byte loops into memcpy/memset calls: copies
 * and zeros of a column run as aligned word moves, or byte loops (9-byte rows of an RGB stem). */
#if defined(__ARM_ARCH_6M__) && (defined(__GNUC__) || defined(__clang__))
#define QG_M0_COPY 1
#if defined(__GNUC__) && !defined(__clang__)
#define QG_M0_COPY_ATTR __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define QG_M0_COPY_ATTR
#endif
#else
#define QG_M0_COPY 0
#define QG_M0_COPY_ATTR
#endif

/* Copy n int8 values; word copies when n and both addresses allow them (Helium: 16 bytes per vector). */
QG_M0_COPY_ATTR static void copy_s8(int8_t *restrict dst, const int8_t *restrict src, int32_t n)
{
#if QG_MVE
    qg_mve_copy_s8(dst, src, n);
#elif QG_M0_COPY
    if (((n | (int32_t)(uintptr_t)dst | (int32_t)(uintptr_t)src) & 3) == 0) {
        const qg_word_t *s = (const qg_word_t *)(const void *)src;
        qg_word_t *d = (qg_word_t *)(void *)dst;
        for (n >>= 2; n > 0; n--) {
            *d++ = *s++;
        }
    } else {
        for (; n > 0; n--) {
            *dst++ = *src++;
        }
    }
#else
    int32_t i;
    if (((n | (int32_t)(uintptr_t)dst | (int32_t)(uintptr_t)src) & 3) == 0) {
        for (i = 0; i < n; i += 4) {
            int32_t v;
            memcpy(&v, src + i, 4);
            memcpy(dst + i, &v, 4);
        }
    } else {
        for (i = 0; i < n; i++) {
            dst[i] = src[i];
        }
    }
#endif
}

QG_M0_COPY_ATTR static void zero_s8(int8_t *dst, int32_t n)
{
#if QG_MVE
    qg_mve_zero_s8(dst, n);
#elif QG_M0_COPY
    if (((n | (int32_t)(uintptr_t)dst) & 3) == 0) {
        qg_word_t *d = (qg_word_t *)(void *)dst;
        for (n >>= 2; n > 0; n--) {
            *d++ = 0;
        }
    } else {
        for (; n > 0; n--) {
            *dst++ = 0;
        }
    }
#else
    int32_t i;
    for (i = 0; i < n; i++) {
        dst[i] = 0;
    }
#endif
}

/* Gather the receptive field of output pixel (oy, ox) into col (K int8 values): the cg channels from c0
 * of each tap (cg = in_c / groups). The body is forced inline into the DSP block's column fill (fill_col: once
 * per pixel of a conv on few channels, where a call cost ~20 instructions a pixel: the demo's 1-channel conv
 * +4 %); the other callers share the out-of-line im2col_s8. */
#if QG_DSP && !QG_MVE && (defined(__GNUC__) || defined(__clang__))
#define QG_IM2COL_INLINE inline __attribute__((always_inline))
#else
#define QG_IM2COL_INLINE /* other cores: GCC's choice, as before */
#endif
static QG_IM2COL_INLINE void im2col_body(const qg_conv2d_params_t *p, const int8_t *restrict in, int32_t oy,
                                         int32_t ox, int32_t c0, int32_t cg, int8_t *restrict col)
{
    const int32_t in_c = p->in_c, k_w = p->k_w, dil_h = p->dil_h, dil_w = p->dil_w, row_len = k_w * cg;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    /* the taps of a window row that are inside the image are one run of the input ([kx0, kx1) of the row) */
    const int32_t contiguous = dil_w == 1 && cg == in_c;
    const int32_t run = contiguous && ix0 >= 0 && ix0 + k_w - 1 < p->in_w; /* the whole row */
    int32_t ky, kx, kx0 = 0, kx1 = k_w;
    if (contiguous && !run) {
        qg_clip_window(ix0, k_w, p->in_w, &kx0, &kx1);
        kx0 = kx0 < k_w ? kx0 : k_w;
        kx1 = kx1 > kx0 ? kx1 : kx0;
    }
    in += c0;
    for (ky = 0; ky < p->k_h; ky++, col += row_len) {
        const int32_t iy = iy0 + ky * dil_h;
        if (iy < 0 || iy >= p->in_h) {
            zero_s8(col, row_len);
        } else if (run) {
            copy_s8(col, in + (iy * p->in_w + ix0) * in_c, row_len);
        } else if (contiguous) { /* padding, the run, padding */
            zero_s8(col, kx0 * cg);
            copy_s8(col + kx0 * cg, in + (iy * p->in_w + ix0 + kx0) * in_c, (kx1 - kx0) * cg);
            zero_s8(col + kx1 * cg, (k_w - kx1) * cg);
        } else {
            for (kx = 0; kx < k_w; kx++) {
                const int32_t ix = ix0 + kx * dil_w;
                if (ix < 0 || ix >= p->in_w) {
                    zero_s8(col + kx * cg, cg);
                } else {
                    copy_s8(col + kx * cg, in + (iy * p->in_w + ix) * in_c, cg);
                }
            }
        }
    }
}

static void im2col_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int32_t oy, int32_t ox,
                      int32_t c0, int32_t cg, int8_t *restrict col)
{
    im2col_body(p, in, oy, ox, c0, cg, col);
}

#if QG_DSP && !QG_MVE
/* DSP path: QG_COLS output pixels at a time. Their columns are widened to int16 and interleaved by
 * groups of 4 values: group g of pixel c is the words (x0, x2) and (x1, x3) at int16 index
 * g * 4 * QG_COLS + 4 * c (qg_simd.h order), so one weight word (unpacked once) meets the 4 pixels'
 * words at consecutive addresses. The last K % 4 values of each pixel sit in plain order in a
 * final group. This 1 channel x 4 pixel block needs 11 registers in its inner loop (4 accumulators,
 * 2 unpacked weights, 2 column words, 3 pointers): 17 instructions per 16 MACs, no spills. A 2x2
 * block needs 15 registers and GCC spills 3 of them per iteration (25 per 16 MACs, measured). */
#define QG_COLS QG_BLOCK_COLS
#define QG_GROUP QG_BLOCK_GROUP /* int16 values per group of 4 k's, all pixels (qg_dot_s8.h) */

/* The int8 column of output pixel (oy, ox), channels [c0, c0 + cg), tap by tap, when a window row is not one run of
 * the input (groups or dilation) and cg is not a multiple of 4. The window is clipped once (zeros first when it
 * hangs over the padding); in each window row the taps inside the image move as (cg + 3) / 4 whole unaligned words
 * (ARMv7E-M's LDR/STR allow them), in increasing order, while the up to 3 bytes a word copy writes past its tap
 * fall on taps of the same row that are copied after it (`span` taps: 3 for cg = 1, else 1); the rest of the row
 * moves byte by byte (nothing written past the row's last tap, which is the only one that can be the input's last
 * pixel: nothing read past the input). Was a copy call per tap: 3 channels per group cost 1.48x the dense conv of
 * one group's channels. GCC: the short byte loops stay loops (not memcpy/memset
 * calls). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
static void gather_taps_s8(const qg_conv2d_params_t *p, const int8_t *in, int32_t oy, int32_t ox, int32_t c0,
                           int32_t cg, int8_t *col)
{
    const int32_t in_c = p->in_c, k_w = p->k_w, k_h = p->k_h, dil_h = p->dil_h, dil_w = p->dil_w;
    const int32_t n_bytes = 4 * ((cg + 3) >> 2), x_step = dil_w * in_c, x_row = dil_h * p->in_w * in_c;
    const int32_t span = (n_bytes - 1) / cg; /* the later taps a word copy writes into */
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    int32_t ky, kx, ky0, ky1, kx0, kx1, j;
    qg_clip_window_dilated(iy0, k_h, dil_h, p->in_h, &ky0, &ky1);
    qg_clip_window_dilated(ix0, k_w, dil_w, p->in_w, &kx0, &kx1);
    if (ky0 > 0 || ky1 < k_h || kx0 > 0 || kx1 < k_w) {
        zero_s8(col, k_h * k_w * cg);
    }
    if (ky0 >= ky1 || kx0 >= kx1) {
        return;
    }
    {
        const int8_t *src_row = in + ((iy0 + ky0 * dil_h) * p->in_w + ix0 + kx0 * dil_w) * in_c + c0;
        int8_t *dst_row = col + (ky0 * k_w + kx0) * cg;
        for (ky = ky0; ky < ky1; ky++, src_row += x_row, dst_row += k_w * cg) {
            const int8_t *src = src_row;
            int8_t *dst = dst_row;
            for (kx = kx0; kx + span < kx1; kx++, src += x_step, dst += cg) {
                for (j = 0; j < n_bytes; j += 4) {
                    const int32_t v = qg_load_s8x4(src + j);
                    memcpy(dst + j, &v, 4);
                }
            }
            for (; kx < kx1; kx++, src += x_step, dst += cg) {
                for (j = 0; j < cg; j++) {
                    dst[j] = src[j];
                }
            }
        }
    }
}

/* Column slot `c` (0..QG_COLS-1) of `cols` <- output pixel (oy, ox), channels [c0, c0 + cg). With cg a
 * multiple of 4 every window cell is a whole number of groups and is widened straight from the input;
 * otherwise the int8 column is gathered into `stage` first (im2col_s8 when a window row is one run of the input,
 * else gather_taps_s8). */

static void fill_col(const qg_conv2d_params_t *p, const int8_t *restrict in, int32_t oy, int32_t ox,
                     int32_t c0, int32_t cg, int16_t *cols, int32_t c, int8_t *stage)
{
    const int32_t in_c = p->in_c, k_w = p->k_w;
    int16_t *dst = cols + 4 * c;
    if ((cg & 3) == 0) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
        const int32_t cell = (cg >> 2) * QG_GROUP, dil_h = p->dil_h, dil_w = p->dil_w;
        int32_t ky, kx, iy, ix;
        in += c0;
        for (ky = 0, iy = iy0; ky < p->k_h; ky++, iy += dil_h) {
            for (kx = 0, ix = ix0; kx < k_w; kx++, ix += dil_w, dst += cell) {
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    qg_zero_s16(dst, cg >> 2);
                } else {
                    qg_widen_s16(dst, in + (iy * p->in_w + ix) * in_c, cg);
                }
            }
        }
    } else {
        if (cg == in_c && p->dil_w == 1) {
            im2col_body(p, in, oy, ox, c0, cg, stage);
        } else {
            gather_taps_s8(p, in, oy, ox, c0, cg, stage);
        }
        qg_widen_s16(dst, stage, p->k_h * k_w * cg);
    }
}

/* RGB stem (3x3 window, 3 input channels, K = 27, groups 1, no dilation): the general DSP block gathers each
 * column through im2col_s8 (byte copies of 9-byte rows) and widens it, which cost more than the MACs (3.5
 * instructions per MAC). Here a window row is 9 input bytes: its first 8 are 2 words, widened straight from the
 * input (the pixel's window inside the image) or from the zero-padded int8 column (border pixels); the rows' ninth
 * bytes form a seventh group ((x8, x17), (x26, 0)). A weight row (27 int8 in flash) is read in the same order: words
 * at 0, 4, 9, 13, 18, 22, then (w8, w17) and w26 (whose upper half meets the column's 0). 4 pixels x 1 channel per
 * pass (the block of qg_dot_s8.h): 7 x (4 LDRD + 8 SMLAD) + 22 weight instructions per 108 MACs. */
static QG_BLOCK_INLINE void stem_fill_row(int16_t *dst, const int8_t *row)
{
    const int32_t v0 = qg_load_s8x4(row), v1 = qg_load_s8x4(row + 4);
    qg_store_s16x2(dst, qg_sxtb16(v0));
    qg_store_s16x2(dst + 2, qg_sxtb16_ror8(v0));
    qg_store_s16x2(dst + QG_GROUP, qg_sxtb16(v1));
    qg_store_s16x2(dst + QG_GROUP + 2, qg_sxtb16_ror8(v1));
}

static QG_BLOCK_INLINE void stem_fill(int16_t *dst, const int8_t *r0, const int8_t *r1, const int8_t *r2)
{
    stem_fill_row(dst, r0);
    stem_fill_row(dst + 2 * QG_GROUP, r1);
    stem_fill_row(dst + 4 * QG_GROUP, r2);
    qg_store_s16x2(dst + 6 * QG_GROUP, qg_pkhbt(r0[8], r1[8]));
    qg_store_s16x2(dst + 6 * QG_GROUP + 2, (int32_t)(uint16_t)r2[8]);
}

static QG_BLOCK_INLINE void stem_rows(const int8_t *w, const int16_t *cols, int32_t n_valid, int32_t rows,
                                      const int32_t *bias, const int8_t *shift, int32_t kind, int32_t act_min,
                                      int32_t act_max, int8_t *out, int32_t step)
{
    const int8_t *const w_end = w + 27 * rows;
    int32_t i, s;
    for (; w != w_end; w += 27, out++) {
        const qg_word_t *x = (const qg_word_t *)(const void *)cols;
        int32_t a0 = *bias++, a1 = a0, a2 = a0, a3 = a0, wv;
        wv = qg_load_s8x4(w);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        wv = qg_load_s8x4(w + 4);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        wv = qg_load_s8x4(w + 9);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        wv = qg_load_s8x4(w + 13);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        wv = qg_load_s8x4(w + 18);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        wv = qg_load_s8x4(w + 22);
        QG_SMLAD_4COLS(qg_sxtb16(wv), qg_sxtb16_ror8(wv), x, a0, a1, a2, a3);
        QG_SMLAD_4COLS(qg_pkhbt(w[8], w[17]), (int32_t)w[26], x, a0, a1, a2, a3);
        s = *shift++;
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
            const int32_t acc[QG_COLS] = {a0, a1, a2, a3};
            const int32_t n = kind >= 0 ? QG_COLS : n_valid;
            for (i = 0; i < n; i++) {
                out[i * step] = qg_requantize_s8(acc[i], s, act_min, act_max);
            }
        }
    }
}

static QG_BLOCK_NOINLINE void stem_block(const int8_t *w, const int16_t *cols, int32_t n_valid, int32_t rows,
                                         const int32_t *bias, const int8_t *shift, int32_t act_min, int32_t act_max,
                                         int8_t *out, int32_t step)
{
    const int32_t kind = n_valid == QG_COLS ? qg_clamp_kind(act_min, act_max) : -1;
    if (kind == QG_CLAMP_S8) {
        stem_rows(w, cols, n_valid, rows, bias, shift, QG_CLAMP_S8, act_min, act_max, out, step);
    } else if (kind == QG_CLAMP_RELU) {
        stem_rows(w, cols, n_valid, rows, bias, shift, QG_CLAMP_RELU, act_min, act_max, out, step);
    } else {
        stem_rows(w, cols, n_valid, rows, bias, shift, -1, act_min, act_max, out, step);
    }
}

static QG_BLOCK_NOINLINE void conv2d_stem_dsp(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out,
                                              int8_t *scratch)
{
    const int32_t out_w = p->out_w, n_pix = p->out_h * out_w, in_w = p->in_w, in_h = p->in_h;
    const int32_t out_stride = p->out_stride ? p->out_stride : p->out_c, row_bytes = 3 * in_w;
    const int32_t stride_h = p->stride_h, stride_w = p->stride_w, x_step = 3 * stride_w;
    int16_t *cols = (int16_t *)(void *)scratch;
    int8_t *stage = scratch + 2 * QG_COLS * 28;
    int32_t pix, c, oy = 0, ox = 0, iy0 = -p->pad_top, ix0 = -p->pad_left;
    int32_t x = (iy0 * in_w + ix0) * 3; /* offset of pixel (oy, ox)'s window origin in the input (maybe outside) */
    for (pix = 0; pix < n_pix; pix += QG_COLS) {
        const int32_t n_valid = n_pix - pix < QG_COLS ? n_pix - pix : QG_COLS;
        for (c = 0; c < QG_COLS; c++) { /* past the last pixel, slots repeat it: computed, not stored */
            /* the window inside the input (in_h, in_w >= 3: the caller's test) */
            if ((uint32_t)iy0 <= (uint32_t)(in_h - 3) && (uint32_t)ix0 <= (uint32_t)(in_w - 3)) {
                const int8_t *r0 = in + x;
                stem_fill(cols + 4 * c, r0, r0 + row_bytes, r0 + 2 * row_bytes);
            } else {
                im2col_s8(p, in, oy, ox, 0, 3, stage);
                stem_fill(cols + 4 * c, stage, stage + 9, stage + 18);
            }
            if (c + 1 < n_valid || c + 1 == QG_COLS) { /* the next pixel */
                ix0 += stride_w;
                x += x_step;
                if (++ox == out_w) {
                    ox = 0;
                    oy++;
                    iy0 += stride_h;
                    ix0 = -p->pad_left;
                    x = (iy0 * in_w + ix0) * 3;
                }
            }
        }
        stem_block(p->weights, cols, n_valid, p->out_c, p->bias, p->shift, p->act_min, p->act_max,
                   out + pix * out_stride, out_stride);
    }
}

/* Pointwise rows for k = 8 and 16 (VWW's 8- and 16-channel layers), all 4 pixels valid, every shift >= 1, int8 or
 * ReLU clamp: GCC's row loop around the short SMLAD steps spent ~44 instructions per row on the bias, the
 * requantisation and spilled pointers (76 per row for k = 8). Here one naked function per (k, clamp) with the whole
 * row loop in assembly (no operand constraints for GCC to allocate; optimised GCC/Clang builds only, else the C
 * block): per row the bias, per group of 4 k one weight word unpacked (SXTB16) and 4 LDRD + 8 SMLAD against the 4
 * interleaved columns (the block layout of qg_dot_s8.h), then for each pixel qg_requantize_pos_s8's ASR, QADD 1,
 * SSAT/USAT with ASR #1, STRB: 54 instructions per row for k = 8. Registers: r0 w, r1 cols, r2 bias, r3 shift,
 * r4 out, r5 step, r6-r9 the 4 accumulators, r10/r11 the unpacked weights, r12/lr a column pair; the end of the
 * weights on the stack. */
#if QG_DSP && !QG_MVE && defined(__OPTIMIZE__) && (defined(__GNUC__) || defined(__clang__))
#define QG_PW_ASM 1
#define QG_PW_ARG __attribute__((unused)) /* read by the assembly */
#define QG_PW_STR(x) #x
#define QG_PW_ACC(a, off) \
    "ldrd   r12, lr, [r1, #" QG_PW_STR(off) "]\n\t" \
    "smlad  " a ", r10, r12, " a "\n\t" \
    "smlad  " a ", r11, lr, " a "\n\t"
#define QG_PW_GROUP(o0, o1, o2, o3) /* a group after the first: its 4 pixels' column pairs at these offsets */ \
    "ldr    r10, [r0], #4\n\t" \
    "sxtb16 r11, r10, ror #8\n\t" \
    "sxtb16 r10, r10\n\t" \
    QG_PW_ACC("r6", o0) QG_PW_ACC("r7", o1) QG_PW_ACC("r8", o2) QG_PW_ACC("r9", o3)
#define QG_PW_ROWS(name, k_shift, more_groups, sat) \
    __attribute__((naked, noinline)) static void name(QG_PW_ARG const int8_t *w, QG_PW_ARG const int16_t *cols, \
                                                      QG_PW_ARG const int32_t *bias, QG_PW_ARG const int8_t *shift, \
                                                      QG_PW_ARG int8_t *out, QG_PW_ARG int32_t step, \
                                                      QG_PW_ARG int32_t rows) \
    { \
        __asm__(".syntax unified\n\t" \
                "push   {r4, r5, r6, r7, r8, r9, r10, r11, lr}\n\t" \
                "ldr    r4, [sp, #36]\n\t" \
                "ldr    r5, [sp, #40]\n\t" \
                "ldr    r6, [sp, #44]\n\t" \
                "add    r6, r0, r6, lsl #" QG_PW_STR(k_shift) "\n\t" \
                "sub    sp, sp, #8\n\t" \
                "str    r6, [sp]\n\t" \
                "1:\n\t" \
                "ldr    r6, [r2], #4\n\t" \
                "ldr    r10, [r0], #4\n\t" \
                "ldrd   r12, lr, [r1, #8]\n\t" \
                "sxtb16 r11, r10, ror #8\n\t" \
                "sxtb16 r10, r10\n\t" \
                "smlad  r7, r10, r12, r6\n\t" \
                "smlad  r7, r11, lr, r7\n\t" \
                "ldrd   r12, lr, [r1, #16]\n\t" \
                "smlad  r8, r10, r12, r6\n\t" \
                "smlad  r8, r11, lr, r8\n\t" \
                "ldrd   r12, lr, [r1, #24]\n\t" \
                "smlad  r9, r10, r12, r6\n\t" \
                "smlad  r9, r11, lr, r9\n\t" \
                "ldrd   r12, lr, [r1, #0]\n\t" \
                "smlad  r6, r10, r12, r6\n\t" \
                "smlad  r6, r11, lr, r6\n\t" \
                more_groups \
                "ldrsb  r10, [r3], #1\n\t" \
                "subs   r10, r10, #1\n\t" \
                "asr    r6, r6, r10\n\t" \
                "asr    r7, r7, r10\n\t" \
                "asr    r8, r8, r10\n\t" \
                "asr    r9, r9, r10\n\t" \
                "movs   r11, #1\n\t" \
                "qadd   r6, r6, r11\n\t" \
                "qadd   r7, r7, r11\n\t" \
                "qadd   r8, r8, r11\n\t" \
                "qadd   r9, r9, r11\n\t" \
                sat("r6") sat("r7") sat("r8") sat("r9") \
                "strb   r6, [r4]\n\t" \
                "strb   r7, [r4, r5]\n\t" \
                "add    r12, r4, r5, lsl #1\n\t" \
                "strb   r8, [r12]\n\t" \
                "strb   r9, [r12, r5]\n\t" \
                "adds   r4, r4, #1\n\t" \
                "ldr    r12, [sp]\n\t" \
                "cmp    r0, r12\n\t" \
                "bne    1b\n\t" \
                "add    sp, sp, #8\n\t" \
                "pop    {r4, r5, r6, r7, r8, r9, r10, r11, pc}\n\t"); \
    }
#define QG_PW_SSAT(r) "ssat   " r ", #8, " r ", asr #1\n\t"
#define QG_PW_USAT(r) "usat   " r ", #7, " r ", asr #1\n\t"
#define QG_PW_G1 QG_PW_GROUP(32, 40, 48, 56)
#define QG_PW_G123 QG_PW_G1 QG_PW_GROUP(64, 72, 80, 88) QG_PW_GROUP(96, 104, 112, 120)
QG_PW_ROWS(pw8_rows_s8, 3, QG_PW_G1, QG_PW_SSAT)
QG_PW_ROWS(pw8_rows_relu, 3, QG_PW_G1, QG_PW_USAT)
QG_PW_ROWS(pw16_rows_s8, 4, QG_PW_G123, QG_PW_SSAT)
QG_PW_ROWS(pw16_rows_relu, 4, QG_PW_G123, QG_PW_USAT)
#else
#define QG_PW_ASM 0
#endif

/* 1x1 convolution without padding, groups 1, in_c a multiple of 4 (MobileNet's pointwise layers): a pixel's column
 * is its input channels, widened straight from the input into its slot (no window walk, no bounds tests). */
static void conv2d_pointwise_dsp(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out, int8_t *scratch)
{
    const int32_t out_w = p->out_w, n_pix = p->out_h * out_w, in_c = p->in_c, in_w = p->in_w;
    const int32_t out_stride = p->out_stride ? p->out_stride : p->out_c;
    const int32_t x_step = p->stride_w * in_c, row_skip = (p->stride_h * in_w - out_w * p->stride_w) * in_c;
    int16_t *cols = (int16_t *)(void *)scratch;
    const int8_t *x = in;
    int32_t pix, c, g, ox = 0;
#if QG_PW_ASM
    /* k = 8 / 16 rows in assembly when every shift is >= 1 and the clamp is int8 or ReLU */
    void (*asm_rows)(const int8_t *, const int16_t *, const int32_t *, const int8_t *, int8_t *, int32_t, int32_t) = 0;
    const int32_t kind = qg_clamp_kind(p->act_min, p->act_max);
    if ((in_c == 8 || in_c == 16) && kind != QG_CLAMP_ANY) {
        for (c = 0; c < p->out_c && p->shift[c] > 0; c++) {
        }
        if (c == p->out_c) {
            asm_rows = in_c == 8 ? (kind == QG_CLAMP_RELU ? pw8_rows_relu : pw8_rows_s8)
                                 : (kind == QG_CLAMP_RELU ? pw16_rows_relu : pw16_rows_s8);
        }
    }
#endif
    for (pix = 0; pix < n_pix; pix += QG_COLS) {
        const int32_t n_valid = n_pix - pix < QG_COLS ? n_pix - pix : QG_COLS;
        if (n_valid <= 2) { /* the last 1 or 2 pixels one at a time (a 4-pixel block would compute 2 or 3 more) */
            for (c = 0; c < n_valid; c++) {
                qg_dot_rows_s8(x, p->weights, in_c, p->out_c, p->bias, p->shift, p->act_min, p->act_max,
                               out + (pix + c) * out_stride);
                x += x_step;
                if (++ox == out_w) {
                    ox = 0;
                    x += row_skip;
                }
            }
            break;
        }
        for (c = 0; c < QG_COLS; c++) { /* past the last pixel, slots repeat it: computed, not stored */
            int16_t *dst = cols + 4 * c;
            for (g = 0; g < in_c; g += 4, dst += QG_GROUP) {
                const int32_t v = qg_load_s8x4(x + g);
                qg_store_s16x2(dst, qg_sxtb16(v));
                qg_store_s16x2(dst + 2, qg_sxtb16_ror8(v));
            }
            if (c + 1 < n_valid) {
                x += x_step;
                if (++ox == out_w) {
                    ox = 0;
                    x += row_skip;
                }
            }
        }
#if QG_PW_ASM
        if (n_valid == QG_COLS && asm_rows != 0) {
            asm_rows(p->weights, cols, p->bias, p->shift, out + pix * out_stride, out_stride, p->out_c);
        } else
#endif
        {
            qg_block_1x4_s8(p->weights, in_c, cols, n_valid, p->out_c, p->bias, p->shift, p->act_min, p->act_max,
                            out + pix * out_stride, out_stride);
        }
        x += x_step;
        if (++ox == out_w) {
            ox = 0;
            x += row_skip;
        }
    }
}

#endif /* QG_DSP && !QG_MVE */

#if QG_MVE
/* Helium, k >= QG_MVE_BLOCK_MIN_K: 4 output pixels per block (qg_mve.h qg_mve_block_s8). Each pixel's column
 * (gathered into the stage after the block, or the input pixel of an unpadded 1x1; a column of up to 16 values is
 * gathered straight into its slot) is copied once into the block
 * layout, then every weight row meets the 4 pixels: the per-row costs are shared by 4 pixels instead of the
 * per-4-rows costs being paid per pixel (which weighed most in short rows: RGB stems, 8-channel pointwise). The 4
 * pixels' windows are read before any of their outputs is written (the order contract above). */
static void conv2d_blocks_mve(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch,
                              int32_t k)
{
    const int32_t out_w = p->out_w, n_pix = p->out_h * out_w, groups = p->groups, cg = p->in_c / groups;
    const int32_t og = p->out_c / groups, out_stride = p->out_stride ? p->out_stride : p->out_c;
    const int32_t direct = p->k_h == 1 && p->k_w == 1;
    int8_t *stage = scratch + 4 * ((k + 15) & ~15);
    int32_t pix, oy = 0, ox = 0, gi, c;
    for (pix = 0; pix < n_pix; pix += 4) {
        const int32_t n_valid = n_pix - pix < 4 ? n_pix - pix : 4;
        const int32_t oy0 = oy, ox0 = ox;
        for (gi = 0; gi < groups; gi++) {
            oy = oy0;
            ox = ox0;
            for (c = 0; c < 4; c++) { /* past the last pixel, slots repeat it: computed, not stored */
                const int32_t iy = oy * p->stride_h - p->pad_top, ix = ox * p->stride_w - p->pad_left;
                if (direct && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w) {
                    qg_mve_block_fill_s8(in + (iy * p->in_w + ix) * p->in_c + gi * cg, k, scratch, c);
                } else if (k <= 16) { /* one block: the column is gathered into its slot */
                    im2col_s8(p, in, oy, ox, gi * cg, cg, scratch + 16 * c);
                    qg_mve_zero_s8(scratch + 16 * c + k, 16 - k);
                } else {
                    im2col_s8(p, in, oy, ox, gi * cg, cg, stage);
                    qg_mve_block_fill_s8(stage, k, scratch, c);
                }
                if (c + 1 < n_valid && ++ox == out_w) {
                    ox = 0;
                    oy++;
                }
            }
            qg_mve_block_s8(p->weights + gi * og * k, k, scratch, n_valid, og, p->bias + gi * og,
                            p->shift + gi * og, p->act_min, p->act_max, out + pix * out_stride + gi * og, out_stride);
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
}
#endif

void qg_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch)
{
    const int32_t out_w = p->out_w, out_c = p->out_c, n_pix = p->out_h * out_w;
    const int32_t groups = p->groups, cg = p->in_c / groups, og = out_c / groups; /* per group */
    const int32_t out_stride = p->out_stride ? p->out_stride : out_c; /* a concat's slice: wider */
    const int32_t k = p->k_h * p->k_w * cg;
    int32_t pix, oy = 0, ox = 0, gi;
#if QG_DSP && !QG_MVE
    int16_t *cols = (int16_t *)(void *)scratch;
    int8_t *stage = scratch + 2 * QG_COLS * round_up4(k);
    if (p->in_c == 3 && p->k_h == 3 && p->k_w == 3 && groups == 1 && p->dil_h == 1 && p->dil_w == 1 &&
        p->in_h >= 3 && p->in_w >= 3) {
        conv2d_stem_dsp(p, in, out, scratch);
        return;
    }
    if (k == p->in_c && (k & 3) == 0 && p->pad_top == 0 && p->pad_left == 0 /* 1x1, groups 1: every pixel inside */
        && (p->out_h - 1) * p->stride_h < p->in_h && (p->out_w - 1) * p->stride_w < p->in_w) {
        conv2d_pointwise_dsp(p, in, out, scratch);
        return;
    }
    for (pix = 0; pix < n_pix; pix += QG_COLS) {
        const int32_t n_valid = n_pix - pix < QG_COLS ? n_pix - pix : QG_COLS;
        const int32_t oy0 = oy, ox0 = ox;
        for (gi = 0; gi < groups; gi++) {
            int32_t c;
            oy = oy0;
            ox = ox0;
            for (c = 0; c < QG_COLS; c++) {
                /* past the last pixel, slots repeat it: their results are computed and dropped */
                fill_col(p, in, oy, ox, gi * cg, cg, cols, c, stage);
                if (c + 1 < n_valid && ++ox == out_w) {
                    ox = 0;
                    oy++;
                }
            }
            qg_block_1x4_s8(p->weights + gi * og * k, k, cols, n_valid, og, p->bias + gi * og, p->shift + gi * og,
                            p->act_min, p->act_max, out + pix * out_stride + gi * og, out_stride);
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
#else
    const int32_t in_c = p->in_c, act_min = p->act_min, act_max = p->act_max;
    const int32_t *bias = p->bias;
    const int8_t *shift = p->shift;
    const int32_t direct = p->k_h == 1 && p->k_w == 1; /* 1x1: a column is one input pixel's channels */
#if QG_MVE
    if (k >= QG_MVE_BLOCK_MIN_K) {
        conv2d_blocks_mve(p, in, out, scratch, k);
        return;
    }
#endif
    for (pix = 0; pix < n_pix; pix++, out += out_stride) {
        const int32_t iy = oy * p->stride_h - p->pad_top, ix = ox * p->stride_w - p->pad_left;
        const int32_t inside = direct && iy >= 0 && iy < p->in_h && ix >= 0 && ix < p->in_w;
        const int8_t *w = p->weights;
        int32_t oc = 0;
        for (gi = 0; gi < groups; gi++) {
            const int8_t *col;
            if (inside) {
                col = in + (iy * p->in_w + ix) * in_c + gi * cg;
            } else {
                im2col_s8(p, in, oy, ox, gi * cg, cg, scratch);
                col = scratch;
            }
            qg_dot_rows_s8(col, w, k, og, bias + oc, shift + oc, act_min, act_max, out + oc);
            oc += og;
            w += og * k;
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
#endif
}

/* ------------------------------------------------------------------------------------ depthwise */

int32_t qg_depthwise_conv2d_s8_buffer_size(const qg_conv2d_params_t *p)
{
    /* transposed weights, multiplier 1 only: int8 on the plain and Helium paths; on the DSP path per 4 channels
     * the biases and shifts - 1 (5 words) and the taps as int16 (depthwise_dsp). The larger size is the one
     * reported; codegen/kernels.py scratch_for gives the plain and Helium cores less. */
    return p->out_c == p->in_c ? 2 * round_up4((int32_t)p->k_h * p->k_w * p->out_c) + 5 * round_up4(p->out_c) : 0;
}

/* Any multiplier: output channel c * mult + m reads input channel c; weights (out_c, k_h, k_w). */
static void depthwise_generic(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t in_c = p->in_c, mult = p->out_c / p->in_c, k_w = p->k_w, taps = p->k_h * k_w;
    const int32_t dil_h = p->dil_h, dil_w = p->dil_w, x_step = dil_w * in_c;
    int32_t oy, ox, c, m, ky, kx, ky0, ky1, kx0, kx1;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        qg_clip_window_dilated(iy0, p->k_h, dil_h, p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int32_t oc = 0;
            qg_clip_window_dilated(ix0, k_w, dil_w, p->in_w, &kx0, &kx1);
            for (c = 0; c < in_c; c++) {
                for (m = 0; m < mult; m++, oc++) {
                    const int8_t *w_i8 = p->weights + oc * taps;
                    int32_t acc_i32 = qg_w32(&p->bias[oc]);
                    for (ky = ky0; ky < ky1; ky++) {
                        const int8_t *x_i8 = in + ((iy0 + ky * dil_h) * p->in_w + ix0) * in_c + c;
                        for (kx = kx0; kx < kx1; kx++) {
                            acc_i32 += (int32_t)x_i8[kx * x_step] * qg_w8(&w_i8[ky * k_w + kx]);
                        }
                    }
                    *out++ = qg_requantize_s8(acc_i32, qg_w8(&p->shift[oc]), p->act_min, p->act_max);
                }
            }
        }
    }
}

/* Requantise 4 neighbouring channels (one shift each); a constant `kind` picks the clamp. */
static inline void store_4_kind(int32_t a0, int32_t a1, int32_t a2, int32_t a3, const int8_t *shift, int32_t kind,
                                int32_t act_min, int32_t act_max, int8_t *out)
{
    const int32_t s0 = qg_w8(&shift[0]), s1 = qg_w8(&shift[1]), s2 = qg_w8(&shift[2]), s3 = qg_w8(&shift[3]);
    if (s0 > 0 && s1 > 0 && s2 > 0 && s3 > 0) {
        out[0] = qg_requantize_pos_s8(a0, s0 - 1, kind, act_min, act_max);
        out[1] = qg_requantize_pos_s8(a1, s1 - 1, kind, act_min, act_max);
        out[2] = qg_requantize_pos_s8(a2, s2 - 1, kind, act_min, act_max);
        out[3] = qg_requantize_pos_s8(a3, s3 - 1, kind, act_min, act_max);
    } else {
        out[0] = qg_requantize_s8(a0, s0, act_min, act_max);
        out[1] = qg_requantize_s8(a1, s1, act_min, act_max);
        out[2] = qg_requantize_s8(a2, s2, act_min, act_max);
        out[3] = qg_requantize_s8(a3, s3, act_min, act_max);
    }
}

static void store_4(int32_t a0, int32_t a1, int32_t a2, int32_t a3, const int8_t *shift, int32_t kind,
                    int32_t act_min, int32_t act_max, int8_t *out)
{
    if (kind == QG_CLAMP_S8) {
        store_4_kind(a0, a1, a2, a3, shift, QG_CLAMP_S8, act_min, act_max, out);
    } else if (kind == QG_CLAMP_RELU) {
        store_4_kind(a0, a1, a2, a3, shift, QG_CLAMP_RELU, act_min, act_max, out);
    } else {
        store_4_kind(a0, a1, a2, a3, shift, QG_CLAMP_ANY, act_min, act_max, out);
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define QG_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define QG_ALWAYS_INLINE inline
#endif

/* One output pixel of the multiplier-1 depthwise conv: n_ky rows of n_kx taps from x0 / w0 (inputs x_step
 * apart, weights ch apart), four channels at a time. The plain path inlines it twice, so that without
 * dilation (x_step == ch) ARMv6-M keeps one step register (measured: 16.1 -> 15.8 instructions per MAC);
 * the DSP path once (two copies cost it registers elsewhere: 7.2 -> 7.6). */
static QG_ALWAYS_INLINE void dw_pixel(const int8_t *x0, const int8_t *w0, int32_t ch, int32_t x_step, int32_t n_kx,
                                      int32_t n_ky, int32_t x_row_step, int32_t w_row_step, const int32_t *bias,
                                      const int8_t *shift, int32_t kind, int32_t act_min, int32_t act_max, int8_t *out)
{
    int32_t c, ky, kx;
    for (c = 0; c + 3 < ch; c += 4) {
        const int8_t *x_i8 = x0 + c, *w_i8 = w0 + c;
        int32_t a0 = qg_w32(&bias[c]), a1 = qg_w32(&bias[c + 1]);
        int32_t a2 = qg_w32(&bias[c + 2]), a3 = qg_w32(&bias[c + 3]);
        for (ky = 0; ky < n_ky; ky++, x_i8 += x_row_step, w_i8 += w_row_step) {
            for (kx = 0; kx < n_kx; kx++, x_i8 += x_step, w_i8 += ch) {
#if QG_DSP
                const int32_t xv = qg_load_s8x4(x_i8), wv = qg_load_s8x4(w_i8);
                const int32_t xe = qg_sxtb16(xv), we = qg_sxtb16(wv);
                const int32_t xo = qg_sxtb16_ror8(xv), wo = qg_sxtb16_ror8(wv);
                a0 = __smlabb(xe, we, a0);
                a2 = __smlatt(xe, we, a2);
                a1 = __smlabb(xo, wo, a1);
                a3 = __smlatt(xo, wo, a3);
#else
                a0 += x_i8[0] * w_i8[0];
                a1 += x_i8[1] * w_i8[1];
                a2 += x_i8[2] * w_i8[2];
                a3 += x_i8[3] * w_i8[3];
#endif
            }
        }
        store_4(a0, a1, a2, a3, shift + c, kind, act_min, act_max, out + c);
    }
    for (; c < ch; c++) {
        const int8_t *x_i8 = x0 + c, *w_i8 = w0 + c;
        int32_t acc_i32 = qg_w32(&bias[c]);
        for (ky = 0; ky < n_ky; ky++, x_i8 += x_row_step, w_i8 += w_row_step) {
            for (kx = 0; kx < n_kx; kx++, x_i8 += x_step, w_i8 += ch) {
                acc_i32 += x_i8[0] * w_i8[0];
            }
        }
        out[c] = qg_requantize_s8(acc_i32, qg_w8(&shift[c]), act_min, act_max);
    }
}

/* The depthwise DSP path is inline asm with 9+ register operands: GCC cannot allocate them unoptimised (at -O0 it
 * loops or reports impossible constraints), so -O0 builds take the plain C path (same results). */
#if QG_DSP && !QG_MVE && defined(__OPTIMIZE__)
#define QG_DW_ASM 1
#else
#define QG_DW_ASM 0
#endif
#if QG_DW_ASM
/* Scratch words per group of 4 channels before its taps: the 4 biases, then the 4 shifts - 1 as int8. */
#define QG_DW_HEAD 5

/* One tap of 4 channels on the DSP path: one word of int8 inputs at x_i8 unpacked into (x0, x2) and (x1, x3), times
 * the tap's weights unpacked in scratch, (w0, w2) (w1, w3) at w (then w += 2 words): 4 MACs with SMLABB/SMLATT in
 * 8 instructions (LDR, LDRD, 2 SXTB16, 4 SMLAxy). One asm block per tap, loads included: given C builtins and loads,
 * GCC 12 reorders an unrolled window accumulator by accumulator, or hoists the input loads, and spills (4.4-5.6
 * instead of ~3 instructions per MAC). The input word may be unaligned (LDR allows it on ARMv7E-M; the
 * scratch weights are word aligned for LDRD). */
#define QG_DW_TAP4_ASM(load, ...)                                                                                   \
    __asm__(load "\n\t"                                                                                             \
            "ldrd %[we], %[wo], [%[w]], #8\n\t"                                                                     \
            "sxtb16 %[xe], %[xv]\n\t"                                                                               \
            "sxtb16 %[xv], %[xv], ror #8\n\t"                                                                       \
            "smlabb %[a0], %[xe], %[we], %[a0]\n\t"                                                                 \
            "smlatt %[a2], %[xe], %[we], %[a2]\n\t"                                                                 \
            "smlabb %[a1], %[xv], %[wo], %[a1]\n\t"                                                                 \
            "smlatt %[a3], %[xv], %[wo], %[a3]"                                                                     \
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xe] "=&r"(xe_), [xv] "=&r"(xv_),        \
              [we] "=&r"(we_), [wo] "=&r"(wo_), [w] "+r"(w)                                                         \
            : [x] "r"(x_), "m"(*(const qg_word_t(*)[2])(w)), __VA_ARGS__)

/* The tap at x_i8 + off (off: a register, so that GCC keeps one input pointer per 4 channels instead of one per tap,
 * which it spilled). The "m" operand at x_i8 (not x_i8 + off, which costs GCC a register it does not have) tells it
 * the asm reads the input: the int8 output stores may alias it, so they are not moved across. */
#define QG_DW_TAP4(x_i8, off, w)                                                                                    \
    do {                                                                                                            \
        const int8_t *x_ = (x_i8);                                                                                  \
        const int32_t o_ = (off);                                                                                   \
        int32_t xv_, xe_, we_, wo_;                                                                                 \
        QG_DW_TAP4_ASM("ldr %[xv], [%[x], %[o]]", [o] "r"(o_), "m"(*x_));                                       \
    } while (0)

/* The tap at x_i8 itself. */
#define QG_DW_TAP4_0(x_i8, w)                                                                                       \
    do {                                                                                                            \
        const int8_t *x_ = (x_i8);                                                                                  \
        int32_t xv_, xe_, we_, wo_;                                                                                 \
        QG_DW_TAP4_ASM("ldr %[xv], [%[x]]", "m"(*x_));                                                          \
    } while (0)

/* 4 channels of one output pixel: n_ky window rows (x_row bytes apart) of n_kx taps (x_step bytes apart) from
 * x_i8; g: the group's scratch (biases, shifts - 1, then k_w taps of 2 words per window row; the window's first
 * tap w_first words after them); requantised with shifts >= 1 and the constant clamp kind (QG_CLAMP_S8 or
 * QG_CLAMP_RELU). kx_n > 0: n_kx == kx_n, the row unrolled; kx_n == 3 and ky_n == 3: the
 * whole 3x3 window unrolled, 9 taps in 72 instructions plus 2 row steps. */
static QG_ALWAYS_INLINE void dw_4_dsp(const int8_t *x_i8, const qg_word_t *g, int32_t w_first, int32_t x_step,
                                      int32_t x_row, int32_t w_skip, int32_t n_kx, int32_t n_ky, int8_t *out,
                                      int32_t kx_n, int32_t ky_n, int32_t kind)
{
    const int32_t x_step2 = 2 * x_step;
    const int8_t *shift_m1 = (const int8_t *)(const void *)(g + 4);
    const qg_word_t *w = g + QG_DW_HEAD + w_first;
    int32_t a0 = g[0], a1 = g[1], a2 = g[2], a3 = g[3];
    int32_t ky, kx;
    if (kx_n == 3 && ky_n == 3) {
        QG_DW_TAP4_0(x_i8, w);
        QG_DW_TAP4(x_i8, x_step, w);
        QG_DW_TAP4(x_i8, x_step2, w);
        x_i8 += x_row;
        QG_DW_TAP4_0(x_i8, w);
        QG_DW_TAP4(x_i8, x_step, w);
        QG_DW_TAP4(x_i8, x_step2, w);
        x_i8 += x_row;
        QG_DW_TAP4_0(x_i8, w);
        QG_DW_TAP4(x_i8, x_step, w);
        QG_DW_TAP4(x_i8, x_step2, w);
    } else {
        for (ky = 0; ky < n_ky; ky++, x_i8 += x_row, w += w_skip) {
            if (kx_n == 0) {
                const int8_t *xk = x_i8;
                for (kx = 0; kx < n_kx; kx++, xk += x_step) {
                    QG_DW_TAP4_0(xk, w);
                }
            } else {
                QG_DW_TAP4_0(x_i8, w);
                if (kx_n >= 2) {
                    QG_DW_TAP4(x_i8, x_step, w);
                }
                if (kx_n >= 3) {
                    QG_DW_TAP4(x_i8, x_step2, w);
                }
            }
        }
    }
    out[0] = qg_requantize_pos_s8(a0, shift_m1[0], kind, -128, 127);
    out[1] = qg_requantize_pos_s8(a1, shift_m1[1], kind, -128, 127);
    out[2] = qg_requantize_pos_s8(a2, shift_m1[2], kind, -128, 127);
    out[3] = qg_requantize_pos_s8(a3, shift_m1[3], kind, -128, 127);
}

/* The ch % 4 last channels (from c4) of one output pixel, with the int8 weights (out_c, k_h, k_w) as they are. Out
 * of line: one copy instead of one per dw_run_dsp variant. */
static void dw_tail_dsp(const int8_t *x0, int32_t c4, int32_t t0, const qg_conv2d_params_t *p, int32_t x_step,
                        int32_t x_row, int32_t n_kx, int32_t n_ky, int8_t *out)
{
    const int32_t k_w = p->k_w, taps = p->k_h * k_w;
    int32_t c, ky, kx;
    for (c = c4; c < p->in_c; c++) {
        const int8_t *w_i8 = p->weights + c * taps + t0;
        int32_t acc_i32 = p->bias[c];
        for (ky = 0; ky < n_ky; ky++) {
            for (kx = 0; kx < n_kx; kx++) {
                acc_i32 += x0[ky * x_row + kx * x_step + c] * w_i8[ky * k_w + kx];
            }
        }
        out[c] = qg_requantize_s8(acc_i32, p->shift[c], p->act_min, p->act_max);
    }
}

/* n_pix output pixels x_pix input bytes apart (from x0, out) with the same clipped window (t0: its first tap): every
 * group of 4 channels (dw_4_dsp, scratch w16), then the ch % 4 last ones (dw_tail_dsp). */
static QG_ALWAYS_INLINE void dw_run_dsp(const int8_t *x0, int32_t x_pix, int32_t n_pix, const qg_word_t *w16,
                                        int32_t t0, const qg_conv2d_params_t *p, int32_t x_step, int32_t x_row,
                                        int32_t n_kx, int32_t n_ky, int8_t *out, int32_t kx_n, int32_t ky_n,
                                        int32_t kind)
{
    const int32_t ch = p->in_c, ch4 = ch & ~3, k_w = p->k_w, taps = p->k_h * k_w, w_skip = 2 * (k_w - n_kx);
    int32_t i, c;
    for (i = 0; i < n_pix; i++, x0 += x_pix, out += ch) {
        const qg_word_t *g = w16;
        for (c = 0; c < ch4; c += 4, g += QG_DW_HEAD + 2 * taps) {
            dw_4_dsp(x0 + c, g, 2 * t0, x_step, x_row, w_skip, n_kx, n_ky, out + c, kx_n, ky_n, kind);
        }
        if (ch4 < ch) {
            dw_tail_dsp(x0, ch4, t0, p, x_step, x_row, n_kx, n_ky, out);
        }
    }
}

/* dw_run_dsp with the clamp kind and, for a 3-wide window, the row length (3 or 2 taps) and a full 3x3 window as
 * constants (without the 2-tap rows VWW's depthwise layers on 6x6 maps take 4.0-4.5 instead of 3.6-4.1
 * instructions per MAC: half their pixels are border pixels). */
static void dw_run(const int8_t *x0, int32_t x_pix, int32_t n_pix, const qg_word_t *w16, int32_t t0,
                   const qg_conv2d_params_t *p, int32_t x_step, int32_t x_row, int32_t n_kx, int32_t n_ky, int8_t *out,
                   int32_t kind)
{
    const int32_t rows3 = p->k_w == 3 ? n_kx : 0, full = rows3 == 3 && n_ky == 3 && p->k_h == 3;
    if (kind == QG_CLAMP_S8) {
        if (full) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 3, 3, out, 3, 3, QG_CLAMP_S8);
        } else if (rows3 == 3) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 3, n_ky, out, 3, 0, QG_CLAMP_S8);
        } else if (rows3 == 2) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 2, n_ky, out, 2, 0, QG_CLAMP_S8);
        } else {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, n_kx, n_ky, out, 0, 0, QG_CLAMP_S8);
        }
    } else {
        if (full) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 3, 3, out, 3, 3, QG_CLAMP_RELU);
        } else if (rows3 == 3) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 3, n_ky, out, 3, 0, QG_CLAMP_RELU);
        } else if (rows3 == 2) {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, 2, n_ky, out, 2, 0, QG_CLAMP_RELU);
        } else {
            dw_run_dsp(x0, x_pix, n_pix, w16, t0, p, x_step, x_row, n_kx, n_ky, out, 0, 0, QG_CLAMP_RELU);
        }
    }
}

/* The multiplier-1 depthwise conv on the DSP path when every shift is >= 1 and the clamp is int8 or ReLU (kind; else
 * it returns 0 and the caller takes the general path). Scratch, filled once per call: per group of 4 channels c..c+3
 * their biases (4 words) and shifts - 1 (4 int8 in one word), then per tap t the int8 weights w[c..c+3][t] unpacked
 * into the word pair (w0, w2) (w1, w3). Per output row the window rows are
 * clipped once; the pixels whose window lies inside the image horizontally run as one dw_run (with a 3x3 window
 * inside the image: all 9 taps unrolled), each border pixel as one dw_run of its clipped window. */
static int32_t depthwise_dsp(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out, qg_word_t *w16, int32_t kind)
{
    const int32_t ch = p->in_c, ch4 = ch & ~3, k_w = p->k_w, taps = p->k_h * k_w;
    const int32_t dil_h = p->dil_h, dil_w = p->dil_w, x_step = dil_w * ch, x_row = dil_h * p->in_w * ch;
    const int32_t stride_w = p->stride_w, pad_left = p->pad_left, out_w = p->out_w;
    /* output columns [ox_lo, ox_hi) have every tap inside the image: ix0 >= 0 and ix0 + (k_w - 1) dil_w < in_w */
    const int32_t last = p->in_w - 1 - (k_w - 1) * dil_w + pad_left;
    const int32_t ox_lo = (pad_left + stride_w - 1) / stride_w;
    const int32_t ox_hi = last < 0 ? 0 : (last / stride_w + 1 < out_w ? last / stride_w + 1 : out_w);
    const int8_t *shift = p->shift;
    int32_t oy, ox, c, t, ky0, ky1, kx0, kx1;
    qg_word_t *w = w16;
    if (kind == QG_CLAMP_ANY) {
        return 0;
    }
    for (c = 0; c < ch; c++) {
        if (shift[c] < 1) {
            return 0;
        }
    }
    for (c = 0; c < ch4; c += 4) {
        const int8_t *w_i8 = p->weights + c * taps;
        int8_t *head_m1 = (int8_t *)(void *)(w + 4);
        for (t = 0; t < 4; t++) {
            w[t] = p->bias[c + t];
            head_m1[t] = (int8_t)(shift[c + t] - 1);
        }
        for (w += QG_DW_HEAD, t = 0; t < taps; t++, w += 2) {
            const uint32_t v = (uint32_t)(uint8_t)w_i8[t] | (uint32_t)(uint8_t)w_i8[taps + t] << 8 |
                               (uint32_t)(uint8_t)w_i8[2 * taps + t] << 16 |
                               (uint32_t)(uint8_t)w_i8[3 * taps + t] << 24;
            w[0] = qg_sxtb16((int32_t)v);
            w[1] = qg_sxtb16_ror8((int32_t)v);
        }
    }
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        qg_clip_window_dilated(iy0, p->k_h, dil_h, p->in_h, &ky0, &ky1);
        const int8_t *x_rows = in + (iy0 + ky0 * dil_h) * p->in_w * ch; /* the first window row inside */
        for (ox = 0; ox < out_w;) {
            const int32_t ix0 = ox * stride_w - pad_left;
            if (ox == ox_lo && ox_hi > ox_lo) { /* the run of windows inside the image horizontally */
                dw_run(x_rows + ix0 * ch, stride_w * ch, ox_hi - ox_lo, w16, ky0 * k_w, p, x_step, x_row, k_w,
                       ky1 - ky0, out, kind);
                out += (ox_hi - ox_lo) * ch;
                ox = ox_hi;
                continue;
            }
            qg_clip_window_dilated(ix0, k_w, dil_w, p->in_w, &kx0, &kx1);
            dw_run(x_rows + (ix0 + kx0 * dil_w) * ch, 0, 1, w16, ky0 * k_w + kx0, p, x_step, x_row, kx1 - kx0,
                   ky1 - ky0, out, kind);
            out += ch;
            ox++;
        }
    }
    return 1;
}
#endif /* QG_DSP && !QG_MVE */

#if QG_MVE
/* Channels [c, c + 8 * halves) (halves = 1 or 2, a constant) of one output pixel of the multiplier-1 depthwise conv
 * on Helium, from x_i8 / w_i8 (their channel c). Per tap and 8 channels: one VLDRB.S16 of inputs and one of
 * weights (sign-extended to int16), VMULLB / VMULLT (the even and the odd channels' exact int32 products) and two
 * VADD into the accumulators of the even and odd channels: 16 MACs per 12 instructions. */
QG_MVE_INLINE void dw_8x_mve(const int8_t *x_i8, const int8_t *w_i8, int32_t ch, int32_t x_step, int32_t n_kx,
                             int32_t n_ky, int32_t x_row_step, int32_t w_row_step, const int32_t *bias,
                             const int8_t *shift, int32x4_t lo, int32x4_t hi, int8_t *out, int32_t halves)
{
    const int32x4x2_t b0 = vld2q_s32(bias); /* (even, odd) channels */
    const int32x4x2_t b1 = halves == 2 ? vld2q_s32(bias + 8) : b0;
    int32x4_t e0 = b0.val[0], o0 = b0.val[1], e1 = b1.val[0], o1 = b1.val[1];
    int32_t ky, kx;
    for (ky = 0; ky < n_ky; ky++, x_i8 += x_row_step, w_i8 += w_row_step) {
        for (kx = 0; kx < n_kx; kx++, x_i8 += x_step, w_i8 += ch) {
            /* one half after the other (the barrier keeps GCC from hoisting the second half's loads): 4
             * accumulators + 3 temporaries fit the 8 Q registers, 4 + 4 loaded values do not */
            int16x8_t xv = vldrbq_s16(x_i8), wv = vldrbq_s16(w_i8);
            e0 = vaddq_s32(e0, vmullbq_int_s16(xv, wv));
            o0 = vaddq_s32(o0, vmulltq_int_s16(xv, wv));
            if (halves == 2) {
                QG_MVE_BARRIER();
                xv = vldrbq_s16(x_i8 + 8);
                wv = vldrbq_s16(w_i8 + 8);
                e1 = vaddq_s32(e1, vmullbq_int_s16(xv, wv));
                o1 = vaddq_s32(o1, vmulltq_int_s16(xv, wv));
            }
        }
    }
    qg_mve_requantize_8_eo(e0, o0, shift, lo, hi, out);
    if (halves == 2) {
        qg_mve_requantize_8_eo(e1, o1, shift + 8, lo, hi, out + 8);
    }
}

/* Channels [c, c + 4) (the first `left` of them, 1..4, under a VCTP predicate), as dw_8x_mve: VLDRB.S32 of 4
 * inputs and 4 weights, VMUL, VADD. The channels after the last multiple of 16. */
static inline void dw_4_mve(const int8_t *x_i8, const int8_t *w_i8, int32_t ch, int32_t x_step, int32_t n_kx,
                            int32_t n_ky, int32_t x_row_step, int32_t w_row_step, const int32_t *bias,
                            const int8_t *shift, int32x4_t lo, int32x4_t hi, int8_t *out, int32_t left)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    int32x4_t acc = vldrwq_z_s32(bias, p);
    int32_t ky, kx;
    for (ky = 0; ky < n_ky; ky++, x_i8 += x_row_step, w_i8 += w_row_step) {
        for (kx = 0; kx < n_kx; kx++, x_i8 += x_step, w_i8 += ch) {
            acc = vaddq_s32(acc, vmulq_s32(vldrbq_z_s32(x_i8, p), vldrbq_z_s32(w_i8, p)));
        }
    }
    qg_mve_requantize_4_p(acc, shift, lo, hi, out, p);
}

/* dw_pixel on Helium: every channel of one output pixel, 16 at a time, then 8, then 4 at a time (the last
 * predicated). */
static void dw_pixel_mve(const int8_t *x0, const int8_t *w0, int32_t ch, int32_t x_step, int32_t n_kx, int32_t n_ky,
                         int32_t x_row_step, int32_t w_row_step, const int32_t *bias, const int8_t *shift,
                         int32x4_t lo, int32x4_t hi, int8_t *out)
{
    int32_t c;
    for (c = 0; c + 15 < ch; c += 16) {
        dw_8x_mve(x0 + c, w0 + c, ch, x_step, n_kx, n_ky, x_row_step, w_row_step, bias + c, shift + c, lo, hi,
                  out + c, 2);
    }
    if (c + 7 < ch) {
        dw_8x_mve(x0 + c, w0 + c, ch, x_step, n_kx, n_ky, x_row_step, w_row_step, bias + c, shift + c, lo, hi,
                  out + c, 1);
        c += 8;
    }
    for (; c < ch; c += 4) {
        dw_4_mve(x0 + c, w0 + c, ch, x_step, n_kx, n_ky, x_row_step, w_row_step, bias + c, shift + c, lo, hi, out + c,
                 ch - c < 4 ? ch - c : 4);
    }
}
#endif /* QG_MVE */

void qg_depthwise_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch)
{
    const int32_t ch = p->in_c, k_w = p->k_w, taps = p->k_h * k_w;
    const int32_t dil_h = p->dil_h, dil_w = p->dil_w, x_step = dil_w * ch; /* input bytes between taps */
    const int32_t act_min = p->act_min, act_max = p->act_max, kind = qg_clamp_kind(act_min, act_max);
    const int8_t *shift = p->shift;
    const int32_t *bias = p->bias;
    int8_t *w_t = scratch; /* (k_h, k_w, ch) */
    int32_t oy, ox, c, t, ky0, ky1, kx0, kx1;
#if QG_MVE
    const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
#endif
    if (p->out_c != ch) {
        depthwise_generic(p, in, out);
        return;
    }
#if QG_DW_ASM
    if (depthwise_dsp(p, in, out, (qg_word_t *)(void *)scratch, kind)) { /* scratch: 4-byte aligned */
        return;
    }
#endif
    for (c = 0; c < ch; c++) {
        for (t = 0; t < taps; t++) {
            w_t[t * ch + c] = qg_w8(&p->weights[c * taps + t]); /* from flash on AVR: the pixels read w_t */
        }
    }
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        qg_clip_window_dilated(iy0, p->k_h, dil_h, p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            qg_clip_window_dilated(ix0, k_w, dil_w, p->in_w, &kx0, &kx1);
            /* first tap inside the image, and the step from the end of one window row to the next */
            const int8_t *x0 = in + ((iy0 + ky0 * dil_h) * p->in_w + ix0 + kx0 * dil_w) * ch;
            const int8_t *w0 = w_t + (ky0 * k_w + kx0) * ch;
            const int32_t x_row_step = dil_h * p->in_w * ch - (kx1 - kx0) * x_step;
            const int32_t w_row_step = (k_w - (kx1 - kx0)) * ch;
#if QG_MVE
            dw_pixel_mve(x0, w0, ch, x_step, kx1 - kx0, ky1 - ky0, x_row_step, w_row_step, bias, shift, lo, hi, out);
            (void)kind;
#else
            if (!QG_DSP && dil_w == 1) { /* plain C (few registers): one step for inputs and weights */
                dw_pixel(x0, w0, ch, ch, kx1 - kx0, ky1 - ky0, x_row_step, w_row_step, bias, shift, kind, act_min,
                         act_max, out);
            } else {
                dw_pixel(x0, w0, ch, x_step, kx1 - kx0, ky1 - ky0, x_row_step, w_row_step, bias, shift, kind, act_min,
                         act_max, out);
            }
#endif
        }
    }
}
