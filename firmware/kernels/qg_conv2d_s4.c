/* Packed int4 weights: convolution, depthwise convolution and fully connected, int8 activations.
 *
 * Weights are 4-bit two's complement (q in [-8, 7], value q * 2^-frac[c]), two per byte, low nibble first:
 * byte j of a row holds weight 2j in bits 0-3 and weight 2j+1 in bits 4-7. Conv and fully connected rows
 * (one per output channel, k_h*k_w*in_c/groups or in_features weights) each start on a byte (an odd row
 * ends with a zero nibble); depthwise packs the whole (out_c, k_h, k_w) tensor as one stream. Encoder:
 * codegen/weight_storage.py encode_int4. Bias, shift and requantisation as the int8 kernels.
 *
 * Plain C (M0+/M3/host): a nibble is sign-extended where it is used, ((uint32_t)b << 28) >> 28 (arith.)
 * for the low one and b >> 4 of the int8 byte for the high one; two weight rows per pass share the input.
 * DSP (M4/M7/M33/M55): one word load gives 8 weights. (v << 4) & 0xF0F0F0F0 and v & 0xF0F0F0F0 hold the
 * even and the odd nibbles as 16 * w in each byte (exact: the low nibble is zero), and SXTB16 / SXTB16
 * ror 8 spread each into two int16 pairs: (w0, w4), (w2, w6), (w1, w5), (w3, w7). The input is widened
 * once into the same pairing, (x0, x4), (x2, x6), (x1, x5), (x3, x7) per group of 8 (PKHBT/PKHTB), so
 * 8 MACs are 1 weight load + 3 ALU + 4 SXTB16 + 4 SMLAD, as int8's 2 loads + 4 SXTB16 + 4 SMLAD. The
 * sums are 16 * (w . x): exactly divisible by 16, shifted back (exact) before the bias is added.
 * codegen/passes/quantize.py weight_formats proves 16 * sum|w| * 128 < 2^31 for int4 layers.
 * The last k % 8 values of a row go through the plain nibble loop.
 *
 * Helium (QG_MVE, M55): 32 weights per step: one 16-byte load of packed weights, v << 4 and v & 0xF0 per int8 lane
 * give 16 * the even and 16 * the odd weights (exact, one instruction each; the sums are 16 * (w . x) as on the
 * DSP path), against the input's even and odd positions, two VMLADAVA. Fully connected: VLD2 deinterleaves the
 * input, 4 rows per pass share it, the tail runs predicated (the odd lanes' gather stops at n). Convolution: 4
 * output pixels per block (s4_block_mve): each pixel's int8 column (gathered, or the input pixel of an unpadded
 * 1x1) is deinterleaved once into scratch, 32 values per block and the 4 pixels side by side, so one row's
 * unpacked weights meet the 4 pixels at immediate offsets: 128 MACs per ~20 instructions, one vector
 * requantisation per row and block (same shift), a predicated scatter store of the valid pixels.
 *
 * Depthwise: the weights (few: out_c * k_h * k_w) are unpacked into scratch once per call and the int8
 * depthwise kernel runs on them (same instructions per MAC as int8; it also gets the MVE path).
 *
 * Order contract: conv and depthwise keep the one of qg_conv2d_s8.c (output pixels in increasing order, the
 * DSP block reads its 4 pixels' windows before writing any), so the planner may overlap their `out` with a
 * dying `in` (codegen/kernels.py ORDERED): `in` and `out` are not `restrict` there.
 */
#include "qg_kernels.h"
#include "qg_dot_s8.h"
#include "qg_mve.h"

static int32_t round_up(int32_t n, int32_t m)
{
    return (n + m - 1) / m * m;
}

/* The low (bits 0-3) and high (bits 4-7) nibble of byte b (read as int8), sign-extended. */
static inline int32_t nib_lo(int32_t b)
{
    return (int32_t)((uint32_t)b << 28) >> 28;
}

static inline int32_t nib_hi(int32_t b)
{
    return b >> 4;
}

/* Weight i of a packed row. */
static inline int32_t nib_at(const int8_t *row, int32_t i)
{
    const int32_t b = qg_w8(&row[i >> 1]);
    return (i & 1) ? nib_hi(b) : nib_lo(b);
}

/* *acc0 += x . row0, *acc1 += x . row1 over n values (rows packed, starting on a byte). */
static inline void s4_dot_1x2(const int8_t *restrict x, const int8_t *restrict w0, const int8_t *restrict w1,
                              int32_t n, int32_t *acc0, int32_t *acc1)
{
    int32_t a0 = *acc0, a1 = *acc1;
    int32_t i;
    const int32_t pairs = n >> 1;
    for (i = 0; i < pairs; i++) {
        const int32_t x0 = x[2 * i], x1 = x[2 * i + 1];
        const int32_t b0 = qg_w8(&w0[i]), b1 = qg_w8(&w1[i]);
        a0 += x0 * nib_lo(b0) + x1 * nib_hi(b0);
        a1 += x0 * nib_lo(b1) + x1 * nib_hi(b1);
    }
    if (n & 1) {
        const int32_t xl = x[n - 1];
        a0 += xl * nib_lo(qg_w8(&w0[pairs]));
        a1 += xl * nib_lo(qg_w8(&w1[pairs]));
    }
    *acc0 = a0;
    *acc1 = a1;
}

static inline int32_t s4_dot_1x1(const int8_t *restrict x, const int8_t *restrict w, int32_t n, int32_t acc)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        acc += x[i] * nib_at(w, i);
    }
    return acc;
}

#if QG_MVE
/* 16 * the low-nibble (even) weights of 16 packed bytes, and 16 * the high-nibble (odd) ones: one instruction each,
 * exact in int8 (16 * [-8, 7] = [-128, 112]). Sums of these are 16 * (w . x), shifted back (exactly) at the end. */
#define S4_LO16(v) vshlq_n_s8(v, 4)
#define S4_HI16(v, mask) vandq_s8(v, mask)

/* 16 * (x . row) over n values (the row packed, starting on a byte), added to acc16. */
static inline int32_t s4_dot16_mve(const int8_t *x, const int8_t *w, int32_t n, int32_t acc16)
{
    const int8x16_t mask = vdupq_n_s8((int8_t)0xF0);
    for (; n >= 32; n -= 32, x += 32, w += 16) {
        const int8x16x2_t xv = vld2q_s8(x);
        const int8x16_t v = vldrbq_s8(w);
        acc16 = vmladavaq_s8(acc16, xv.val[0], S4_LO16(v));
        acc16 = vmladavaq_s8(acc16, xv.val[1], S4_HI16(v, mask));
    }
    if (n > 0) {
        const mve_pred16_t even = vctp8q((uint32_t)(n + 1) >> 1), odd = vctp8q((uint32_t)n >> 1);
        const uint8x16_t at_even = vidupq_n_u8(0, 2);
        const int8x16_t v = vldrbq_z_s8(w, even);
        const int8x16_t x_even = vldrbq_gather_offset_z_s8(x, at_even, even);
        const int8x16_t x_odd = vldrbq_gather_offset_z_s8(x, vaddq_n_u8(at_even, 1), odd);
        acc16 = vmladavaq_s8(acc16, x_even, S4_LO16(v));
        acc16 = vmladavaq_s8(acc16, x_odd, S4_HI16(v, mask));
    }
    return acc16;
}

/* bias + x . row r for the 4 rows w, w + row_bytes, ...: the input is deinterleaved once for the four, each packed
 * byte vector costs one load and two unpacks for 32 MACs. */
static inline int32x4_t s4_dot_4_mve(const int8_t *x, const int8_t *w, int32_t row_bytes, int32_t n,
                                     const int32_t *bias)
{
    const int8x16_t mask = vdupq_n_s8((int8_t)0xF0);
    const int8_t *w1 = w + row_bytes, *w2 = w1 + row_bytes, *w3 = w2 + row_bytes;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int8x16_t v;
    for (; n >= 32; n -= 32, x += 32, w += 16, w1 += 16, w2 += 16, w3 += 16) {
        const int8x16x2_t xv = vld2q_s8(x);
        v = vldrbq_s8(w);
        a0 = vmladavaq_s8(vmladavaq_s8(a0, xv.val[0], S4_LO16(v)), xv.val[1], S4_HI16(v, mask));
        v = vldrbq_s8(w1);
        a1 = vmladavaq_s8(vmladavaq_s8(a1, xv.val[0], S4_LO16(v)), xv.val[1], S4_HI16(v, mask));
        v = vldrbq_s8(w2);
        a2 = vmladavaq_s8(vmladavaq_s8(a2, xv.val[0], S4_LO16(v)), xv.val[1], S4_HI16(v, mask));
        v = vldrbq_s8(w3);
        a3 = vmladavaq_s8(vmladavaq_s8(a3, xv.val[0], S4_LO16(v)), xv.val[1], S4_HI16(v, mask));
    }
    if (n > 0) { /* zero weights in the lanes past the row, zero inputs past x: nothing read beyond either */
        const mve_pred16_t even = vctp8q((uint32_t)(n + 1) >> 1), odd = vctp8q((uint32_t)n >> 1);
        const uint8x16_t at_even = vidupq_n_u8(0, 2);
        const int8x16_t x_even = vldrbq_gather_offset_z_s8(x, at_even, even);
        const int8x16_t x_odd = vldrbq_gather_offset_z_s8(x, vaddq_n_u8(at_even, 1), odd);
        v = vldrbq_z_s8(w, even);
        a0 = vmladavaq_s8(vmladavaq_s8(a0, x_even, S4_LO16(v)), x_odd, S4_HI16(v, mask));
        v = vldrbq_z_s8(w1, even);
        a1 = vmladavaq_s8(vmladavaq_s8(a1, x_even, S4_LO16(v)), x_odd, S4_HI16(v, mask));
        v = vldrbq_z_s8(w2, even);
        a2 = vmladavaq_s8(vmladavaq_s8(a2, x_even, S4_LO16(v)), x_odd, S4_HI16(v, mask));
        v = vldrbq_z_s8(w3, even);
        a3 = vmladavaq_s8(vmladavaq_s8(a3, x_even, S4_LO16(v)), x_odd, S4_HI16(v, mask));
    }
    return vaddq_s32(vshrq_n_s32(qg_mve_vec4(a0, a1, a2, a3), 4), vldrwq_s32(bias));
}
#endif

#if !QG_DSP || QG_MVE
/* out[r] = requantised bias[r] + x . row r for rows [0, rows): the plain and Helium paths of conv and fully
 * connected. */
static void s4_dot_rows(const int8_t *x, const int8_t *w, int32_t k, int32_t rows, const int32_t *bias,
                        const int8_t *shift, int32_t act_min, int32_t act_max, int8_t *out)
{
    const int32_t row_bytes = (k + 1) >> 1;
    int32_t r = 0;
#if QG_MVE
    {
        const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
        for (; r + 3 < rows; r += 4, w += 4 * row_bytes) {
            qg_mve_requantize_4(s4_dot_4_mve(x, w, row_bytes, k, bias + r), shift + r, lo, hi, out + r);
        }
    }
    for (; r < rows; r++, w += row_bytes) {
        out[r] = qg_requantize_s8(bias[r] + (s4_dot16_mve(x, w, k, 0) >> 4), shift[r], act_min, act_max);
    }
#endif
    for (; r + 1 < rows; r += 2, w += 2 * row_bytes) {
        int32_t acc0 = qg_w32(&bias[r]), acc1 = qg_w32(&bias[r + 1]);
        s4_dot_1x2(x, w, w + row_bytes, k, &acc0, &acc1);
        out[r] = qg_requantize_s8(acc0, qg_w8(&shift[r]), act_min, act_max);
        out[r + 1] = qg_requantize_s8(acc1, qg_w8(&shift[r + 1]), act_min, act_max);
    }
    if (r < rows) {
        out[r] = qg_requantize_s8(s4_dot_1x1(x, w, k, qg_w32(&bias[r])), qg_w8(&shift[r]), act_min, act_max);
    }
}
#endif

/* The receptive field of output pixel (oy, ox), channels [c0, c0 + cg) of each tap, as one int8 column of
 * k_h * k_w * cg values (zeros over the padding), in weight-row order. */
#if !QG_MVE
static void s4_gather(const qg_conv2d_params_t *p, const int8_t *in, int32_t oy, int32_t ox, int32_t c0, int32_t cg,
                      int8_t *restrict col)
{
    const int32_t in_c = p->in_c, iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    int32_t ky, kx, c;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h;
        for (kx = 0; kx < p->k_w; kx++, col += cg) {
            const int32_t ix = ix0 + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (c = 0; c < cg; c++) {
                    col[c] = 0;
                }
            } else {
                const int8_t *src = in + (iy * p->in_w + ix) * in_c + c0;
                for (c = 0; c < cg; c++) {
                    col[c] = src[c];
                }
            }
        }
    }
}
#else
/* s4_gather with vector copies; a window row whose taps are contiguous in the input (dil_w 1, one group) is one
 * run: zeros over the left padding, one copy, zeros over the right padding. */
static void s4_gather_mve(const qg_conv2d_params_t *p, const int8_t *in, int32_t oy, int32_t ox, int32_t c0,
                          int32_t cg, int8_t *restrict col)
{
    const int32_t in_c = p->in_c, k_w = p->k_w, row_len = k_w * cg;
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
    const int32_t contiguous = p->dil_w == 1 && cg == in_c;
    int32_t ky, kx, kx0 = 0, kx1 = k_w;
    if (contiguous) {
        qg_clip_window(ix0, k_w, p->in_w, &kx0, &kx1);
        kx0 = kx0 < k_w ? kx0 : k_w;
        kx1 = kx1 > kx0 ? kx1 : kx0;
    }
    in += c0;
    for (ky = 0; ky < p->k_h; ky++, col += row_len) {
        const int32_t iy = iy0 + ky * p->dil_h;
        if (iy < 0 || iy >= p->in_h) {
            qg_mve_zero_s8(col, row_len);
        } else if (contiguous) {
            qg_mve_zero_s8(col, kx0 * cg);
            qg_mve_copy_s8(col + kx0 * cg, in + (iy * p->in_w + ix0 + kx0) * in_c, (kx1 - kx0) * cg);
            qg_mve_zero_s8(col + kx1 * cg, (k_w - kx1) * cg);
        } else {
            for (kx = 0; kx < k_w; kx++) {
                const int32_t ix = ix0 + kx * p->dil_w;
                if (ix < 0 || ix >= p->in_w) {
                    qg_mve_zero_s8(col + kx * cg, cg);
                } else {
                    qg_mve_copy_s8(col + kx * cg, in + (iy * p->in_w + ix) * in_c, cg);
                }
            }
        }
    }
}
#endif

#if QG_DSP
#define S4_MASK ((int32_t)0xF0F0F0F0u)

/* 8 int8 values -> the int16 pairs (x0, x4), (x2, x6) at even[0..1] and (x1, x5), (x3, x7) at odd[0..1]. */
static inline void s4_widen8(const int8_t *src, qg_word_t *even, qg_word_t *odd)
{
    const int32_t a = qg_load_s8x4(src), b = qg_load_s8x4(src + 4);
    const int32_t ae = qg_sxtb16(a), ao = qg_sxtb16_ror8(a), be = qg_sxtb16(b), bo = qg_sxtb16_ror8(b);
    even[0] = qg_pkhbt(ae, be);
    even[1] = qg_pkhtb(be, ae);
    odd[0] = qg_pkhbt(ao, bo);
    odd[1] = qg_pkhtb(bo, ao);
}

/* acc + 16 * (the 8 weights of packed word v) . (the 8 inputs as widened by s4_widen8) */
static inline int32_t s4_mac8(int32_t v, int32_t x04, int32_t x26, int32_t x15, int32_t x37, int32_t acc)
{
    const int32_t lo = (int32_t)((uint32_t)v << 4) & S4_MASK, hi = v & S4_MASK;
    acc = __smlad(qg_sxtb16(lo), x04, acc);
    acc = __smlad(qg_sxtb16_ror8(lo), x26, acc);
    acc = __smlad(qg_sxtb16(hi), x15, acc);
    return __smlad(qg_sxtb16_ror8(hi), x37, acc);
}
#endif

/* ------------------------------------------------------------------------------------ fully connected */

int32_t qg_fully_connected_s4_buffer_size(const qg_conv2d_s4_params_t *p)
{
#if QG_DSP && !QG_MVE
    return 2 * round_up(p->conv.in_c, 8); /* the input widened to int16 pairs */
#else
    (void)p;
    return 0;
#endif
}

#if QG_DSP && !QG_MVE
/* DSP fully connected: x widened once into `xw` (groups of 8 as 4 words, then the tail values as int16),
 * two rows per pass. */
static void s4_fc_dsp(const qg_conv2d_s4_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                      qg_word_t *restrict xw)
{
    const int32_t k = p->conv.in_c, rows = p->conv.out_c, groups8 = k >> 3, tail = k & 7;
    const int32_t row_bytes = (k + 1) >> 1, act_min = p->conv.act_min, act_max = p->conv.act_max;
    const int32_t *bias = p->conv.bias;
    const int8_t *shift = p->conv.shift;
    const int8_t *w = (const int8_t *)p->weights;
    const int8_t *x_tail = in + 8 * groups8;
    int32_t g, r;
    for (g = 0; g < groups8; g++) {
        s4_widen8(in + 8 * g, xw + 4 * g, xw + 4 * g + 2);
    }
    for (r = 0; r < rows; r += 2, w += 2 * row_bytes) {
        const int32_t two = r + 1 < rows;
        const int8_t *w0 = w, *w1 = two ? w + row_bytes : w;
        const qg_word_t *x = (const qg_word_t *)(const void *)xw;
        int32_t a0 = 0, a1 = 0, t0 = bias[r], t1 = two ? bias[r + 1] : 0, i;
#if defined(__OPTIMIZE__) /* inline asm: GCC cannot allocate its operands at -O0 */
        if (groups8 > 0) {
            /* s4_mac8 for both rows in one loop GCC cannot spill from (it kept the row pointers on the stack: ~35
             * instructions per 16 MACs, here 28): per group of 8, the two weight words, the input's (x0, x4),
             * (x2, x6) words for the low nibbles (VLSL #4, mask) of both rows, then (x1, x5), (x3, x7) for the high
             * nibbles (mask). */
            int32_t n = groups8, v0, v1, xa, xb, t, u;
            __asm__("1:\n\t"
                    "ldr %[v0], [%[w0]], #4\n\t"
                    "ldr %[v1], [%[w1]], #4\n\t"
                    "ldrd %[xa], %[xb], [%[xp]], #8\n\t"
                    "lsl %[t], %[v0], #4\n\t"
                    "and %[t], %[t], #0xF0F0F0F0\n\t"
                    "sxtb16 %[u], %[t]\n\t"
                    "smlad %[a0], %[u], %[xa], %[a0]\n\t"
                    "sxtb16 %[t], %[t], ror #8\n\t"
                    "smlad %[a0], %[t], %[xb], %[a0]\n\t"
                    "lsl %[t], %[v1], #4\n\t"
                    "and %[t], %[t], #0xF0F0F0F0\n\t"
                    "sxtb16 %[u], %[t]\n\t"
                    "smlad %[a1], %[u], %[xa], %[a1]\n\t"
                    "sxtb16 %[t], %[t], ror #8\n\t"
                    "smlad %[a1], %[t], %[xb], %[a1]\n\t"
                    "ldrd %[xa], %[xb], [%[xp]], #8\n\t"
                    "and %[t], %[v0], #0xF0F0F0F0\n\t"
                    "sxtb16 %[u], %[t]\n\t"
                    "smlad %[a0], %[u], %[xa], %[a0]\n\t"
                    "sxtb16 %[t], %[t], ror #8\n\t"
                    "smlad %[a0], %[t], %[xb], %[a0]\n\t"
                    "and %[t], %[v1], #0xF0F0F0F0\n\t"
                    "sxtb16 %[u], %[t]\n\t"
                    "smlad %[a1], %[u], %[xa], %[a1]\n\t"
                    "sxtb16 %[t], %[t], ror #8\n\t"
                    "smlad %[a1], %[t], %[xb], %[a1]\n\t"
                    "subs %[n], %[n], #1\n\t"
                    "bne 1b"
                    : [a0] "+r"(a0), [a1] "+r"(a1), [xp] "+r"(x), [w0] "+r"(w0), [w1] "+r"(w1), [n] "+r"(n),
                      [v0] "=&r"(v0), [v1] "=&r"(v1), [xa] "=&r"(xa), [xb] "=&r"(xb), [t] "=&r"(t), [u] "=&r"(u)
                    :
                    : "cc", "memory");
        }
#else
        for (g = groups8; g > 0; g--) {
            const int32_t v0 = qg_load_s8x4(w0), v1 = qg_load_s8x4(w1);
            int32_t x04, x26, x15, x37;
            w0 += 4;
            w1 += 4;
            qg_load_pair(&x, &x04, &x26);
            qg_load_pair(&x, &x15, &x37);
            a0 = s4_mac8(v0, x04, x26, x15, x37, a0);
            a1 = s4_mac8(v1, x04, x26, x15, x37, a1);
        }
#endif
        for (i = 0; i < tail; i++) {
            t0 += x_tail[i] * nib_at(w0, i);
            t1 += x_tail[i] * nib_at(w1, i);
        }
        out[r] = qg_requantize_s8(t0 + (a0 >> 4), shift[r], act_min, act_max);
        if (two) {
            out[r + 1] = qg_requantize_s8(t1 + (a1 >> 4), shift[r + 1], act_min, act_max);
        }
    }
}
#endif

void qg_fully_connected_s4(const qg_conv2d_s4_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                           int8_t *restrict scratch)
{
#if QG_DSP && !QG_MVE
    s4_fc_dsp(p, in, out, (qg_word_t *)(void *)scratch);
#else
    (void)scratch;
    s4_dot_rows(in, (const int8_t *)p->weights, p->conv.in_c, p->conv.out_c, p->conv.bias, p->conv.shift,
                p->conv.act_min, p->conv.act_max, out);
#endif
}

/* ------------------------------------------------------------------------------------ convolution */

#define S4_COLS 4 /* output pixels per DSP block */

int32_t qg_conv2d_s4_buffer_size(const qg_conv2d_s4_params_t *p)
{
    const int32_t k8 = round_up((int32_t)p->conv.k_h * p->conv.k_w * (p->conv.in_c / p->conv.groups), 8);
#if QG_DSP && !QG_MVE
    return 2 * S4_COLS * k8 + k8; /* S4_COLS widened columns (int16) + the int8 column they are gathered into */
#elif QG_MVE
    return S4_COLS * round_up(k8, 32) + k8; /* S4_COLS deinterleaved columns + the int8 column gathered into */
#else
    return k8;
#endif
}

#if QG_DSP && !QG_MVE
/* Block layout in scratch, per group of 8 k's: the S4_COLS pixels' (x0, x4), (x2, x6) words, then their
 * (x1, x5), (x3, x7) words (16 words); after the k / 8 groups, each pixel's k % 8 last values as int16
 * (8 slots per pixel). */
static void s4_fill_col(const int8_t *col, int32_t k, qg_word_t *cols, int32_t c)
{
    const int32_t groups8 = k >> 3;
    void *tail = cols + 16 * groups8; /* int16 slots 8 * c + i, through memcpy (qg_simd.h) */
    int32_t g, i;
    for (g = 0; g < groups8; g++) {
        s4_widen8(col + 8 * g, cols + 16 * g + 2 * c, cols + 16 * g + 8 + 2 * c);
    }
    for (i = 0; i < (k & 7); i++) {
        qg_store_s16_at(tail, 8 * c + i, col[8 * groups8 + i]);
    }
}

/* Slot c <- output pixel (oy, ox), channels [c0, c0 + cg) with cg a multiple of 8: every window cell is whole
 * groups, widened straight from the input (no int8 column to gather first). */
static void s4_fill_direct(const qg_conv2d_params_t *p, const int8_t *in, int32_t oy, int32_t ox, int32_t c0,
                           int32_t cg, qg_word_t *cols, int32_t c)
{
    const int32_t iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left, per_cell = cg >> 3;
    int32_t ky, kx, j, g = 0;
    for (ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = iy0 + ky * p->dil_h;
        for (kx = 0; kx < p->k_w; kx++, g += per_cell) {
            const int32_t ix = ix0 + kx * p->dil_w;
            qg_word_t *dst = cols + 16 * g + 2 * c;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (j = 0; j < per_cell; j++, dst += 16) {
                    dst[0] = dst[1] = dst[8] = dst[9] = 0;
                }
            } else {
                const int8_t *src = in + (iy * p->in_w + ix) * p->in_c + c0;
                for (j = 0; j < per_cell; j++, dst += 16, src += 8) {
                    s4_widen8(src, dst, dst + 8);
                }
            }
        }
    }
}

/* Rows [0, rows) times the block's S4_COLS columns; pixel c's output r goes to out[c * step + r]. */
static void s4_block(const int8_t *w, int32_t k, const qg_word_t *cols, int32_t n_valid, int32_t rows,
                     const int32_t *bias, const int8_t *shift, int32_t act_min, int32_t act_max, int8_t *out,
                     int32_t step)
{
    const int32_t kind = n_valid == S4_COLS ? qg_clamp_kind(act_min, act_max) : -1;
    const int32_t groups8 = k >> 3, tail = k & 7, row_bytes = (k + 1) >> 1;
    const void *tails = cols + 16 * groups8;
    int32_t r, c, i, g;
    for (r = 0; r < rows; r++, w += row_bytes) {
        const int32_t s = shift[r];
        const qg_word_t *x = (const qg_word_t *)(const void *)cols;
        const int8_t *wp = w;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        int32_t acc[S4_COLS];
        for (g = groups8; g > 0; g--) {
            const int32_t v = qg_load_s8x4(wp);
            int32_t we = qg_sxtb16((int32_t)((uint32_t)v << 4) & S4_MASK);
            int32_t wo = qg_sxtb16_ror8((int32_t)((uint32_t)v << 4) & S4_MASK);
            wp += 4;
            QG_SMLAD_4COLS(we, wo, x, a0, a1, a2, a3); /* the low nibbles (shifted up: 16 x w) */
            we = qg_sxtb16(v & S4_MASK);
            wo = qg_sxtb16_ror8(v & S4_MASK);
            QG_SMLAD_4COLS(we, wo, x, a0, a1, a2, a3); /* the high nibbles (16 x w) */
        }
        acc[0] = bias[r] + (a0 >> 4);
        acc[1] = bias[r] + (a1 >> 4);
        acc[2] = bias[r] + (a2 >> 4);
        acc[3] = bias[r] + (a3 >> 4);
        for (i = 0; i < tail; i++) {
            const int32_t wi = nib_at(wp, i);
            for (c = 0; c < S4_COLS; c++) {
                acc[c] += wi * qg_load_s16_at(tails, 8 * c + i);
            }
        }
        if (s > 0 && kind == QG_CLAMP_S8) {
            qg_store_1x4(acc, s - 1, QG_CLAMP_S8, act_min, act_max, out + r, step);
        } else if (s > 0 && kind == QG_CLAMP_RELU) {
            qg_store_1x4(acc, s - 1, QG_CLAMP_RELU, act_min, act_max, out + r, step);
        } else if (s > 0 && kind == QG_CLAMP_ANY) {
            qg_store_1x4(acc, s - 1, QG_CLAMP_ANY, act_min, act_max, out + r, step);
        } else {
            for (c = 0; c < n_valid; c++) {
                out[c * step + r] = qg_requantize_s8(acc[c], s, act_min, act_max);
            }
        }
    }
}
#endif

#if QG_MVE
/* Helium block layout in scratch: per 32 k's (ceil(k / 32) blocks, the last one zero-padded), the S4_COLS pixels'
 * 16 even-position then 16 odd-position values (pixel c at 32 * c), so that one unpacked vector of packed weights
 * meets the four pixels at immediate offsets of one pointer. S4_COLS * round_up(k, 32) bytes. */
static QG_MVE_NOINLINE void s4_fill_mve(const int8_t *src, int32_t k, int8_t *cols, int32_t c)
{
    const int32_t rem = k & 31;
    int8_t *dst = cols + 32 * c;
    int32_t n;
    for (n = k >> 5; n > 0; n--, src += 32, dst += 32 * S4_COLS) {
        const int8x16x2_t v = vld2q_s8(src);
        vstrbq_s8(dst, v.val[0]);
        vstrbq_s8(dst + 16, v.val[1]);
    }
    if (rem) { /* ceil(rem / 2) even and floor(rem / 2) odd values, zeros in the other lanes */
        const uint8x16_t at_even = vidupq_n_u8(0, 2);
        const mve_pred16_t even = vctp8q((uint32_t)(rem + 1) >> 1), odd = vctp8q((uint32_t)rem >> 1);
        vstrbq_s8(dst, vldrbq_gather_offset_z_s8(src, at_even, even));
        vstrbq_s8(dst + 16, vldrbq_gather_offset_z_s8(src, vaddq_n_u8(at_even, 1), odd));
    }
}

/* 32 k's of one row (packed bytes v) against the block's four pixels at x: 2 unpacks, 8 loads, 8 VMLADAVA. */
#define S4_STEP_4COLS(v, mask, x, a0, a1, a2, a3)                                                                  \
    do {                                                                                                            \
        const int8x16_t w_lo_ = S4_LO16(v), w_hi_ = S4_HI16(v, mask);                                               \
        a0 = vmladavaq_s8(vmladavaq_s8(a0, vldrbq_s8(x), w_lo_), vldrbq_s8((x) + 16), w_hi_);                       \
        a1 = vmladavaq_s8(vmladavaq_s8(a1, vldrbq_s8((x) + 32), w_lo_), vldrbq_s8((x) + 48), w_hi_);                \
        a2 = vmladavaq_s8(vmladavaq_s8(a2, vldrbq_s8((x) + 64), w_lo_), vldrbq_s8((x) + 80), w_hi_);                \
        a3 = vmladavaq_s8(vmladavaq_s8(a3, vldrbq_s8((x) + 96), w_lo_), vldrbq_s8((x) + 112), w_hi_);               \
    } while (0)

/* Rows [0, rows) times the block's S4_COLS columns, one row at a time: per 32 k's one load of 16 packed bytes and
 * S4_STEP_4COLS (128 MACs per ~20 instructions); the row's last ceil((k % 32) / 2) bytes load under a predicate
 * (zero weights against the zero padding). The 4 sums of a row are requantised as one vector with the row's shift
 * and scattered to out[c * step + r] (the n_valid first pixels only: a predicated store). */
static QG_MVE_NOINLINE void s4_block_mve(const int8_t *w, int32_t k, const int8_t *cols, int32_t n_valid,
                                         int32_t rows, const int32_t *bias, const int8_t *shift, int32_t act_min,
                                         int32_t act_max, int8_t *out, int32_t step)
{
    const int32_t blocks = k >> 5, row_bytes = (k + 1) >> 1;
    const mve_pred16_t tail = vctp8q((uint32_t)((k & 31) + 1) >> 1), valid = vctp32q((uint32_t)n_valid);
    const uint32x4_t at = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)step); /* 0, step, 2 step, 3 step */
    const int32x4_t lo = vdupq_n_s32(act_min), hi = vdupq_n_s32(act_max);
    const int8x16_t mask = vdupq_n_s8((int8_t)0xF0);
    int32_t r, n;
    for (r = 0; r < rows; r++, w += row_bytes) {
        const int8_t *wp = w, *x = cols;
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        int32x4_t acc;
        for (n = blocks; n > 0; n--, wp += 16, x += 32 * S4_COLS) {
            const int8x16_t v = vldrbq_s8(wp);
            S4_STEP_4COLS(v, mask, x, a0, a1, a2, a3);
        }
        if (k & 31) {
            const int8x16_t v = vldrbq_z_s8(wp, tail);
            S4_STEP_4COLS(v, mask, x, a0, a1, a2, a3);
        }
        acc = vaddq_n_s32(vshrq_n_s32(qg_mve_vec4(a0, a1, a2, a3), 4), bias[r]);
        acc = vminq_s32(vmaxq_s32(vqrshlq_n_s32(acc, -(int32_t)shift[r]), lo), hi);
        vstrbq_scatter_offset_p_s32(out + r, at, acc, valid);
    }
}
#endif

void qg_conv2d_s4(const qg_conv2d_s4_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch)
{
    const qg_conv2d_params_t *q = &p->conv;
    const int32_t out_w = q->out_w, out_c = q->out_c, n_pix = q->out_h * out_w;
    const int32_t groups = q->groups, cg = q->in_c / groups, og = out_c / groups;
    const int32_t k = q->k_h * q->k_w * cg, row_bytes = (k + 1) >> 1;
    const int8_t *weights = (const int8_t *)p->weights;
    int32_t pix, oy = 0, ox = 0, gi;
#if QG_DSP && !QG_MVE
    const int32_t k8 = round_up(k, 8);
    qg_word_t *cols = (qg_word_t *)(void *)scratch;
    int8_t *stage = scratch + 2 * S4_COLS * k8;
    for (pix = 0; pix < n_pix; pix += S4_COLS) {
        const int32_t n_valid = n_pix - pix < S4_COLS ? n_pix - pix : S4_COLS;
        const int32_t oy0 = oy, ox0 = ox;
        for (gi = 0; gi < groups; gi++) {
            int32_t c;
            oy = oy0;
            ox = ox0;
            for (c = 0; c < S4_COLS; c++) {
                /* past the last pixel, slots repeat it: their results are computed and dropped */
                if ((cg & 7) == 0) {
                    s4_fill_direct(q, in, oy, ox, gi * cg, cg, cols, c);
                } else {
                    s4_gather(q, in, oy, ox, gi * cg, cg, stage);
                    s4_fill_col(stage, k, cols, c);
                }
                if (c + 1 < n_valid && ++ox == out_w) {
                    ox = 0;
                    oy++;
                }
            }
            s4_block(weights + gi * og * row_bytes, k, cols, n_valid, og, q->bias + gi * og, q->shift + gi * og,
                     q->act_min, q->act_max, out + pix * out_c + gi * og, out_c);
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
#elif QG_MVE
    const int32_t direct = q->k_h == 1 && q->k_w == 1 && groups == 1; /* a column is one input pixel */
    int8_t *stage = scratch + S4_COLS * round_up(k, 32);
    for (pix = 0; pix < n_pix; pix += S4_COLS) {
        const int32_t n_valid = n_pix - pix < S4_COLS ? n_pix - pix : S4_COLS;
        const int32_t oy0 = oy, ox0 = ox;
        for (gi = 0; gi < groups; gi++) {
            int32_t c;
            oy = oy0;
            ox = ox0;
            for (c = 0; c < S4_COLS; c++) {
                /* past the last pixel, slots repeat it: their results are computed and not stored */
                const int32_t iy = oy * q->stride_h - q->pad_top, ix = ox * q->stride_w - q->pad_left;
                const int8_t *col = stage;
                if (direct && iy >= 0 && iy < q->in_h && ix >= 0 && ix < q->in_w) {
                    col = in + (iy * q->in_w + ix) * q->in_c;
                } else {
                    s4_gather_mve(q, in, oy, ox, gi * cg, cg, stage);
                }
                s4_fill_mve(col, k, scratch, c);
                if (c + 1 < n_valid && ++ox == out_w) {
                    ox = 0;
                    oy++;
                }
            }
            s4_block_mve(weights + gi * og * row_bytes, k, scratch, n_valid, og, q->bias + gi * og,
                         q->shift + gi * og, q->act_min, q->act_max, out + pix * out_c + gi * og, out_c);
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
#else
    const int32_t direct = q->k_h == 1 && q->k_w == 1 && groups == 1; /* a column is one input pixel */
    for (pix = 0; pix < n_pix; pix++, out += out_c) {
        const int32_t iy = oy * q->stride_h - q->pad_top, ix = ox * q->stride_w - q->pad_left;
        for (gi = 0; gi < groups; gi++) {
            const int8_t *col = scratch;
            if (direct && iy >= 0 && iy < q->in_h && ix >= 0 && ix < q->in_w) {
                col = in + (iy * q->in_w + ix) * q->in_c;
            } else {
                s4_gather(q, in, oy, ox, gi * cg, cg, scratch);
            }
            s4_dot_rows(col, weights + gi * og * row_bytes, k, og, q->bias + gi * og, q->shift + gi * og,
                        q->act_min, q->act_max, out + gi * og);
        }
        if (++ox == out_w) {
            ox = 0;
            oy++;
        }
    }
#endif
}

/* ------------------------------------------------------------------------------------ depthwise */

int32_t qg_depthwise_conv2d_s4_buffer_size(const qg_conv2d_s4_params_t *p)
{
    const int32_t n = (int32_t)p->conv.out_c * p->conv.k_h * p->conv.k_w;
    return round_up(n, 4) + qg_depthwise_conv2d_s8_buffer_size(&p->conv);
}

#if QG_FLASH_DATA
/* AVR: the packed weights, biases and shifts are in flash (qg_kernels.h) and qg_depthwise_conv2d_s8 reads its
 * weights from flash too, so it cannot take them unpacked in scratch: one plain pass over the clipped windows
 * (qg_conv2d_s8.c depthwise_generic's), each weight's nibble read with LPM. */
static void depthwise_s4_flash(const qg_conv2d_s4_params_t *p, const int8_t *in, int8_t *out)
{
    const qg_conv2d_params_t *g = &p->conv;
    const int8_t *packed = (const int8_t *)p->weights;
    const int32_t in_c = g->in_c, mult = g->out_c / g->in_c, k_w = g->k_w, taps = g->k_h * k_w;
    const int32_t dil_h = g->dil_h, dil_w = g->dil_w, x_step = dil_w * in_c;
    int32_t oy, ox, c, m, ky, kx, ky0, ky1, kx0, kx1;
    for (oy = 0; oy < g->out_h; oy++) {
        const int32_t iy0 = oy * g->stride_h - g->pad_top;
        qg_clip_window_dilated(iy0, g->k_h, dil_h, g->in_h, &ky0, &ky1);
        for (ox = 0; ox < g->out_w; ox++) {
            const int32_t ix0 = ox * g->stride_w - g->pad_left;
            int32_t oc = 0;
            qg_clip_window_dilated(ix0, k_w, dil_w, g->in_w, &kx0, &kx1);
            for (c = 0; c < in_c; c++) {
                for (m = 0; m < mult; m++, oc++) {
                    int32_t acc_i32 = qg_w32(&g->bias[oc]);
                    for (ky = ky0; ky < ky1; ky++) {
                        const int8_t *x_i8 = in + ((iy0 + ky * dil_h) * g->in_w + ix0) * in_c + c;
                        for (kx = kx0; kx < kx1; kx++) {
                            acc_i32 += (int32_t)x_i8[kx * x_step] * nib_at(packed, oc * taps + ky * k_w + kx);
                        }
                    }
                    *out++ = qg_requantize_s8(acc_i32, qg_w8(&g->shift[oc]), g->act_min, g->act_max);
                }
            }
        }
    }
}
#endif

void qg_depthwise_conv2d_s4(const qg_conv2d_s4_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch)
{
#if QG_FLASH_DATA
    (void)scratch;
    depthwise_s4_flash(p, in, out);
#else
    const int32_t n = (int32_t)p->conv.out_c * p->conv.k_h * p->conv.k_w;
    const int8_t *packed = (const int8_t *)p->weights;
    qg_conv2d_params_t unpacked = p->conv;
    int32_t i;
    for (i = 0; i + 1 < n; i += 2) {
        const int32_t b = packed[i >> 1];
        scratch[i] = (int8_t)nib_lo(b);
        scratch[i + 1] = (int8_t)nib_hi(b);
    }
    if (n & 1) {
        scratch[n - 1] = (int8_t)nib_lo(packed[n >> 1]);
    }
    unpacked.weights = scratch;
    qg_depthwise_conv2d_s8(&unpacked, in, out, scratch + round_up(n, 4));
#endif
}
