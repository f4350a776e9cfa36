/* Element-wise kernels (residual add with per-input alignment, clamp, table lookup, softmax), pad and
 * concat copies, and the float conversions at the model boundary. */
#include "qg_kernels.h"
#include "qg_mve.h"
#include "qg_simd.h"

#if QG_MVE
/* Helium, alignment shifts >= -7: 8 elements in int16 lanes (each aligned value within 128 * 2^7, their sum within
 * int16), as add_4_mve below; VQRSHL.S16's saturating left shift and the clamp give the int8 result of the rule. */
QG_MVE_INLINE void add_8_mve(const int8_t *a, const int8_t *b, int8_t *out, int16x8_t neg_a, int16x8_t neg_b,
                             int16x8_t neg_shift, int16x8_t lo, int16x8_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp16q((uint32_t)left);
    const int16x8_t x = full ? vldrbq_s16(a) : vldrbq_z_s16(a, p), y = full ? vldrbq_s16(b) : vldrbq_z_s16(b, p);
    const int16x8_t sum_i16 = vaddq_s16(vrshlq_s16(x, neg_a), vrshlq_s16(y, neg_b));
    const int16x8_t r = vminq_s16(vmaxq_s16(vqrshlq_s16(sum_i16, neg_shift), lo), hi);
    if (full) {
        vstrbq_s16(out, r);
    } else {
        vstrbq_p_s16(out, r, p);
    }
}

/* Helium: 4 elements of add (the first `left` under a VCTP predicate when `full` is 0, a constant): VRSHL by
 * -shift is qg_round_shift for either sign (a rounding right shift, or an exact left shift), then the rule. */
QG_MVE_INLINE void add_4_mve(const int8_t *a, const int8_t *b, int8_t *out, int32x4_t neg_a, int32x4_t neg_b,
                             int32x4_t neg_shift, int32x4_t lo, int32x4_t hi, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp32q((uint32_t)left);
    const int32x4_t x = full ? vldrbq_s32(a) : vldrbq_z_s32(a, p), y = full ? vldrbq_s32(b) : vldrbq_z_s32(b, p);
    const int32x4_t sum_i32 = vaddq_s32(vrshlq_s32(x, neg_a), vrshlq_s32(y, neg_b));
    const int32x4_t r = vminq_s32(vmaxq_s32(vqrshlq_s32(sum_i32, neg_shift), lo), hi);
    if (full) {
        vstrbq_s32(out, r);
    } else {
        vstrbq_p_s32(out, r, p);
    }
}
#endif

#if defined(__ARM_ARCH_6M__)
/* ARMv6-M: the alignments as one multiply (exact left shift), one add and one shift (rounding right shift:
 * round_shift(x, r) = (x + 2^(r-1)) >> r), the sum requantised as (sum + 2^(s-1)) >> s: ~30 instructions per
 * element (14 without right-shift alignments), GCC's code of the general loop took 48. Valid for shift_a, shift_b in [-22, 30] and shift in [1, 30]:
 * then |a * 2^22| <= 2^29, so neither sum nor rounding term overflows; qg_add_s8 checks. Inputs walked by
 * pointer, each element read before its output is written (an in-place add may have out == a or b). */
static void add_m0(const int8_t *a, const int8_t *b, int8_t *out, int32_t size, int32_t sa, int32_t sb, int32_t s,
                   int32_t lo, int32_t hi)
{
    const int32_t ma = sa < 0 ? 1 << -sa : 1, ra = sa > 0 ? sa : 0, ha = ra > 0 ? 1 << (ra - 1) : 0;
    const int32_t mb = sb < 0 ? 1 << -sb : 1, rb = sb > 0 ? sb : 0, hb = rb > 0 ? 1 << (rb - 1) : 0;
    const int32_t hs = 1 << (s - 1);
    if (ra == 0 && rb == 0) { /* both aligned by left shifts or not at all (a ResNet's residual adds): 14 per element */
        for (; size > 0; size--) {
            const int32_t v = (*a++ * ma + *b++ * mb + hs) >> s;
            *out++ = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
        }
        return;
    }
    for (; size > 0; size--) {
        int32_t v = ((*a++ * ma + ha) >> ra) + ((*b++ * mb + hb) >> rb);
        v = (v + hs) >> s;
        *out++ = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
    }
}
#endif

void qg_add_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    int32_t i = 0;
#if defined(__ARM_ARCH_6M__)
    if (p->shift_a >= -22 && p->shift_a <= 30 && p->shift_b >= -22 && p->shift_b <= 30 && p->shift >= 1 &&
        p->shift <= 30) {
        add_m0(a, b, out, p->size, p->shift_a, p->shift_b, p->shift, p->act_min, p->act_max);
        return;
    }
#endif
#if QG_MVE
    const int32_t size = p->size;
    if (p->shift_a >= -7 && p->shift_b >= -7) {
        const int16x8_t neg_a = vdupq_n_s16((int16_t)-p->shift_a), neg_b = vdupq_n_s16((int16_t)-p->shift_b);
        const int16x8_t neg_shift = vdupq_n_s16((int16_t)-p->shift);
        const int16x8_t lo = vdupq_n_s16(p->act_min), hi = vdupq_n_s16(p->act_max);
        for (; i + 7 < size; i += 8) {
            add_8_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, 8, 1);
        }
        if (i < size) {
            add_8_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, size - i, 0);
        }
        return;
    }
    {
        const int32x4_t neg_a = vdupq_n_s32(-p->shift_a), neg_b = vdupq_n_s32(-p->shift_b);
        const int32x4_t neg_shift = vdupq_n_s32(-p->shift), lo = vdupq_n_s32(p->act_min);
        const int32x4_t hi = vdupq_n_s32(p->act_max);
        for (; i + 3 < size; i += 4) {
            add_4_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, 4, 1);
        }
        if (i < size) {
            add_4_mve(a + i, b + i, out + i, neg_a, neg_b, neg_shift, lo, hi, size - i, 0);
        }
    }
#else
    for (; i < p->size; i++) {
        const int32_t sum_i32 = qg_round_shift(a[i], p->shift_a) + qg_round_shift(b[i], p->shift_b);
        out[i] = qg_requantize_s8(sum_i32, p->shift, p->act_min, p->act_max);
    }
#endif
}

void qg_clamp_s8(int32_t size, int8_t lo, int8_t hi, const int8_t *in, int8_t *out)
{
    int32_t i;
    for (i = 0; i < size; i++) {
        out[i] = (int8_t)qg_saturate(in[i], lo, hi);
    }
}

void qg_lut_s8(const qg_lut_params_t *p, const int8_t *in, int8_t *out)
{
    const int8_t *table = p->table;
    int32_t i;
    for (i = 0; i < p->size; i++) {
        out[i] = qg_w8(&table[in[i] + 128]);
    }
}

void qg_softmax_s8(const qg_softmax_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t row_size = p->row_size;
    const int16_t *exp_table = p->exp_table;
    int32_t r, i;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * row_size;
        int8_t *y = out + r * row_size;
        int32_t max_i32 = -128, sum_i32 = 0;
        for (i = 0; i < row_size; i++) {
            max_i32 = x[i] > max_i32 ? x[i] : max_i32;
        }
        for (i = 0; i < row_size; i++) {
            sum_i32 += qg_w16(&exp_table[max_i32 - x[i]]);
        }
        /* sum >= exp_table[0] = 16384 > 0; out = round_half_up(128 * e / sum) = (256 e + sum) / (2 sum) */
        for (i = 0; i < row_size; i++) {
            const int32_t e = qg_w16(&exp_table[max_i32 - x[i]]);
            const int32_t q = (256 * e + sum_i32) / (2 * sum_i32);
            y[i] = (int8_t)(q > 127 ? 127 : q);
        }
    }
}

/* Zero padding for any element width (int8, int16): rows are copied as bytes. Plain loops, no
 * memset/memcpy calls: MicroPython native modules link no C library. */
void qg_pad_elements(const qg_pad_params_t *p, const void *restrict in, void *restrict out, int32_t elem_bytes)
{
    const int32_t pixel = p->channels * elem_bytes;
    const int32_t out_w = p->in_w + p->pad_left + p->pad_right;
    const int32_t out_h = p->in_h + p->pad_top + p->pad_bottom;
    const uint8_t *src = (const uint8_t *)in;
    uint8_t *dst = (uint8_t *)out;
    int32_t y, i;
    for (i = 0; i < out_h * out_w * pixel; i++) {
        dst[i] = 0;
    }
    for (y = 0; y < p->in_h; y++) {
        const uint8_t *row = src + y * p->in_w * pixel;
        uint8_t *to = dst + ((y + p->pad_top) * out_w + p->pad_left) * pixel;
        for (i = 0; i < p->in_w * pixel; i++) {
            to[i] = row[i];
        }
    }
}

void qg_pad_s8(const qg_pad_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    qg_pad_elements(p, in, out, 1);
}

/* GCC would turn the short byte loop below into a memcpy call per block */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
void qg_concat_s8(const qg_concat_params_t *p, const int8_t *const *inputs, int8_t *out)
{
    /* input by input (each input's size, shift and pointer once, not once per block): the output blocks
     * take disjoint byte ranges. Order contract (codegen/kernels.py concat_overlap): the first input is copied
     * first, block by block in increasing order, so the planner may place it inside the upper part of `out`
     * (hence no `restrict` on `out`) */
    const int32_t outer = p->outer, out_block = p->out_block;
    int32_t b, k, i, at = 0;
    for (k = 0; k < p->n_inputs; k++) {
        const int32_t n = p->block_size[k], shift = p->shift[k];
        const int8_t *src = inputs[k];
        int8_t *dst = out + at;
        at += n;
        if (src == NULL) {
            continue; /* written in place by its producer (codegen/passes/concat_in_place.py) */
        }
#if defined(__ARM_FEATURE_UNALIGNED) && __ARM_FEATURE_UNALIGNED
        if (shift == 0 && (n & 3) == 0 && n < 64) {
            /* whole words per block (a ShuffleNet chunk: 24 channels per pixel), 4 instructions a word instead of
             * qg_copy_s8's block set-up; forward within the block, so the order contract above holds */
            for (b = 0; b < outer; b++, src += n, dst += out_block) {
                const int8_t *s = src;
                int8_t *d = dst;
                int32_t w = n >> 2;
                do {
                    int32_t v;
                    memcpy(&v, s, 4);
                    memcpy(d, &v, 4);
                    s += 4;
                    d += 4;
                } while (--w > 0);
            }
            continue;
        }
#endif
        for (b = 0; b < outer; b++, src += n, dst += out_block) {
            if (shift == 0 && n < 8) { /* a few channels per pixel */
                for (i = 0; i < n; i++) {
                    dst[i] = src[i];
                }
            } else if (shift == 0) {
                qg_copy_s8(dst, src, n);
            } else {
                for (i = 0; i < n; i++) {
                    dst[i] = qg_requantize_s8(src[i], shift, -128, 127);
                }
            }
        }
    }
}

/* (C, H, W) float -> (H, W, C) int8 or int16 (the model input's width), the rounding rule of qg_fixed.h */
static void quantize_chw_to_hwc(const float *in, void *out, int32_t c, int32_t h, int32_t w, float scale,
                                int32_t bits)
{
    const int32_t lo = bits == 16 ? -32768 : -128, hi = bits == 16 ? 32767 : 127;
    int32_t ci, y, x;
    for (ci = 0; ci < c; ci++) {
        for (y = 0; y < h; y++) {
            for (x = 0; x < w; x++) {
                const int32_t q = qg_quantize_f32_range(in[(ci * h + y) * w + x], scale, lo, hi);
                const int32_t at = (y * w + x) * c + ci;
                if (bits == 16) {
                    qg_store_s16_at(out, at, (int16_t)q);
                } else {
                    ((int8_t *)out)[at] = (int8_t)q;
                }
            }
        }
    }
}

void qg_quantize_chw_to_hwc_f32(const float *in, int8_t *out, int32_t c, int32_t h, int32_t w, float scale)
{
    quantize_chw_to_hwc(in, out, c, h, w, scale, 8);
}

void qg_quantize_chw_to_hwc_f32_s16(const float *in, int16_t *out, int32_t c, int32_t h, int32_t w, float scale)
{
    quantize_chw_to_hwc(in, out, c, h, w, scale, 16);
}

void qg_dequantize_hwc_to_chw_s8(const int8_t *in, float *out, int32_t c, int32_t h, int32_t w,
                                 float inv_scale)
{
    int32_t ci, y, x;
    for (ci = 0; ci < c; ci++) {
        for (y = 0; y < h; y++) {
            for (x = 0; x < w; x++) {
                out[(ci * h + y) * w + x] = (float)in[(y * w + x) * c + ci] * inv_scale;
            }
        }
    }
}
