/* Max and average pooling, channels-last (the rules: codegen/ops/pool.py). Output frac = input frac.
 * Uniform windows (qg_maxpool2d_s8, qg_avgpool2d_s8): padding cells are skipped (max) or count as zero
 * (average, PyTorch's count_include_pad=True: the divisor is always k_h * k_w). Their output pixels are
 * computed in increasing order, each from reads done before its writes and after the previous pixel's:
 * `out` may overlap the start of `in` (see qg_conv2d_s8.c), hence no `restrict`.
 * Explicit windows (the *_windows_s8 kernels): ceil mode, count_include_pad=False, adaptive pooling;
 * every window clipped to the image and its own divisor; `in` and `out` never overlap. */
#include "qg_kernels.h"
#include "qg_mve.h"
#include "qg_simd.h"

/* avg_window_s8 is specialised per clamp kind: GCC would otherwise keep one out-of-line copy */
#if defined(__GNUC__) || defined(__clang__)
#define QG_POOL_INLINE static inline __attribute__((always_inline))
#else
#define QG_POOL_INLINE static inline
#endif

#if QG_MVE
/* Helium: the max of 16 channels (the first `left` under a VCTP predicate when `full` is 0, a constant) over
 * the window, one VLDRB + VMAX per cell. */
QG_POOL_INLINE void max_16_mve(const int8_t *x_i8, int32_t n_rows, int32_t row_len, int32_t row_step, int32_t ch,
                               int8_t *out, int32_t left, int32_t full)
{
    const mve_pred16_t p = vctp8q((uint32_t)left);
    int8x16_t max_s8x16 = vdupq_n_s8(-128);
    int32_t ky = n_rows;
    do {
        const int8_t *row_end = x_i8 + row_len;
        do {
            max_s8x16 = vmaxq_s8(max_s8x16, full ? vldrbq_s8(x_i8) : vldrbq_z_s8(x_i8, p));
            x_i8 += ch;
        } while (x_i8 != row_end);
        x_i8 += row_step;
    } while (--ky > 0);
    if (full) {
        vstrbq_s8(out, max_s8x16);
    } else {
        vstrbq_p_s8(out, max_s8x16, p);
    }
}

/* Helium: the average of 16 channels (the first `left` under VCTP predicates when `full` is 0) over a window of
 * 1..256 cells: VLDRB.S16 + VADD per 8 channels per cell into int16 lanes (|sum| <= 2^15), then the average rule
 * on the even and odd channels' int32 lanes (VMOVLB / VMOVLT; VMUL, VADD, VSHL, clamp) and VMOVNB / VMOVNT back. */
QG_POOL_INLINE void avg_16_mve(const int8_t *x_i8, int32_t n_rows, int32_t row_len, int32_t row_step, int32_t ch,
                               int32_t mult, int32_t rnd, int32_t shift, int32_t lo, int32_t hi, int8_t *out,
                               int32_t left, int32_t full)
{
    const mve_pred16_t p0 = vctp16q((uint32_t)left), p1 = vctp16q((uint32_t)(left > 8 ? left - 8 : 0));
    int16x8_t s0 = vdupq_n_s16(0), s1 = vdupq_n_s16(0);
    int32_t ky = n_rows, half;
    do {
        const int8_t *row_end = x_i8 + row_len;
        do {
            s0 = vaddq_s16(s0, full ? vldrbq_s16(x_i8) : vldrbq_z_s16(x_i8, p0));
            s1 = vaddq_s16(s1, full ? vldrbq_s16(x_i8 + 8) : vldrbq_z_s16(x_i8 + 8, p1));
            x_i8 += ch;
        } while (x_i8 != row_end);
        x_i8 += row_step;
    } while (--ky > 0);
    for (half = 0; half < 2; half++, out += 8) {
        const int16x8_t sum = half ? s1 : s0;
        int32x4_t even = vaddq_n_s32(vmulq_n_s32(vmovlbq_s16(sum), mult), rnd);
        int32x4_t odd = vaddq_n_s32(vmulq_n_s32(vmovltq_s16(sum), mult), rnd);
        int16x8_t r = vdupq_n_s16(0);
        even = vminq_s32(vmaxq_s32(vshlq_r_s32(even, -shift), vdupq_n_s32(lo)), vdupq_n_s32(hi));
        odd = vminq_s32(vmaxq_s32(vshlq_r_s32(odd, -shift), vdupq_n_s32(lo)), vdupq_n_s32(hi));
        r = vmovntq_s32(vmovnbq_s32(r, even), odd);
        if (full) {
            vstrbq_s16(out, r);
        } else {
            vstrbq_p_s16(out, r, half ? p1 : p0);
        }
    }
}
#endif

/* The max of every channel over a window of n_rows x width pixels starting at x0 (channels-last, `ch`
 * channels, input rows in_w pixels long). Max pooling walks only the window cells inside the image (no
 * test per cell; a max window is never empty: check_pool). With the DSP extension it takes four channels
 * per word, eight per pass: SSUB8 sets a per-byte "a >= b" flag and SEL picks the larger bytes,
 * 2 instructions per 4 maxima. Writes follow the reads of the same channels (within one pixel: the order
 * contract). */
static inline void max_window_s8(const int8_t *x0, int32_t n_rows, int32_t width, int32_t in_w, int32_t ch,
                                 int8_t *out)
{
    const int32_t row_len = width * ch, in_row = in_w * ch;
    int32_t c = 0, ky;
#if QG_MVE
    for (; c + 15 < ch; c += 16) {
        max_16_mve(x0 + c, n_rows, row_len, in_row - row_len, ch, out + c, 16, 1);
    }
    if (c < ch) {
        max_16_mve(x0 + c, n_rows, row_len, in_row - row_len, ch, out + c, ch - c, 0);
        return;
    }
#elif QG_DSP
    const int32_t row_step = in_row - row_len;
    for (; c + 7 < ch; c += 8) { /* two words per cell: half the loop overhead per channel */
        const int8_t *x_i8 = x0 + c;
        uint32_t max0_s8x4 = 0x80808080u, max1_s8x4 = 0x80808080u; /* four times -128 */
        ky = n_rows;
        do {
            const int8_t *row_end = x_i8 + row_len;
            do {
                const uint32_t v0 = (uint32_t)qg_load_s8x4(x_i8), v1 = (uint32_t)qg_load_s8x4(x_i8 + 4);
                x_i8 += ch;
                (void)__ssub8((int32_t)max0_s8x4, (int32_t)v0);
                max0_s8x4 = __sel(max0_s8x4, v0);
                (void)__ssub8((int32_t)max1_s8x4, (int32_t)v1);
                max1_s8x4 = __sel(max1_s8x4, v1);
            } while (x_i8 != row_end);
            x_i8 += row_step;
        } while (--ky > 0);
        memcpy(out + c, &max0_s8x4, 4);
        memcpy(out + c + 4, &max1_s8x4, 4);
    }
    for (; c + 3 < ch; c += 4) {
        const int8_t *x_i8 = x0 + c;
        uint32_t max_s8x4 = 0x80808080u;
        ky = n_rows;
        do {
            const int8_t *row_end = x_i8 + row_len;
            do {
                const uint32_t v = (uint32_t)qg_load_s8x4(x_i8);
                x_i8 += ch;
                (void)__ssub8((int32_t)max_s8x4, (int32_t)v);
                max_s8x4 = __sel(max_s8x4, v);
            } while (x_i8 != row_end);
            x_i8 += row_step;
        } while (--ky > 0);
        memcpy(out + c, &max_s8x4, 4);
    }
#endif
    for (; c < ch; c++) { /* one index per row: ARMv6-M's LDRSB takes a register offset only */
        const int8_t *x_row = x0 + c;
        int32_t max_i32 = -128, i;
        for (ky = 0; ky < n_rows; ky++, x_row += in_row) {
            for (i = 0; i < row_len; i += ch) {
                const int32_t x = x_row[i];
                max_i32 = x > max_i32 ? x : max_i32;
            }
        }
        out[c] = (int8_t)max_i32;
    }
}

/* The average rule (codegen/ops/pool.py): out = round_shift(sum * mult, shift), clamped to [lo, hi],
 * computed as (sum * mult + rnd) >> shift with rnd = 2^(shift-1) (0 for shift 0), the same round half up
 * as qg_round_shift. No overflow: |sum| <= 128 * d and mult <= round(2^shift / d), so
 * |sum * mult| + rnd <= 2^30 + 64 * d + 2^22 < 2^31 (codegen/fixed.py AVG_SHIFT). The clamp kind is a
 * constant at each call (qg_clamp_kind): SSAT / USAT for the two common ranges on DSP cores. */
static inline int8_t avg_out_s8(int32_t sum_i32, int32_t mult, int32_t rnd, int32_t shift, int32_t kind,
                                int32_t lo, int32_t hi)
{
    int32_t r = (sum_i32 * mult + rnd) >> shift;
#if QG_DSP
    if (kind == QG_CLAMP_S8) {
        return (int8_t)(int32_t)__builtin_arm_ssat(r, 8);
    }
    if (kind == QG_CLAMP_RELU) {
        return (int8_t)(int32_t)__builtin_arm_usat(r, 7);
    }
#else
    (void)kind;
#endif
    r = r < lo ? lo : r;
    r = r > hi ? hi : r;
    return (int8_t)r;
}

#if QG_DSP
/* The averages of 4 channels from their int16 lane sums (c, c + 2) and (c + 1, c + 3). */
static inline void avg_out_s8x4(int32_t s02_i16x2, int32_t s13_i16x2, int32_t mult, int32_t rnd, int32_t shift,
                                int32_t kind, int32_t lo, int32_t hi, int8_t *out)
{
    out[0] = avg_out_s8((int16_t)s02_i16x2, mult, rnd, shift, kind, lo, hi);
    out[1] = avg_out_s8((int16_t)s13_i16x2, mult, rnd, shift, kind, lo, hi);
    out[2] = avg_out_s8(s02_i16x2 >> 16, mult, rnd, shift, kind, lo, hi);
    out[3] = avg_out_s8(s13_i16x2 >> 16, mult, rnd, shift, kind, lo, hi);
}
#endif

/* The average of every channel over a window of n_rows x width pixels starting at x0 (as max_window_s8;
 * n_rows = 0 for a window that reads no input cell: its sum is 0). With the DSP extension it sums four
 * channels per word: SXTAB16 adds the sign-extended bytes 0 and 2 (rotated by 8: 1 and 3) of a word to
 * two int16 lanes, 3 instructions per window cell for 4 channels, two cells per loop pass. An int16 lane
 * holds the sum of up to 256 int8 values (|sum| <= 2^15), so larger windows (global pooling of large
 * maps) take the plain loop. Writes follow the reads of the same channels (the order contract above). */
QG_POOL_INLINE void avg_window_s8(const int8_t *x0, int32_t n_rows, int32_t width, int32_t in_w, int32_t ch,
                                  int32_t mult, int32_t rnd, int32_t shift, int32_t kind, int32_t lo, int32_t hi,
                                  int8_t *out)
{
    const int32_t row_len = width * ch, in_row = in_w * ch;
    int32_t c = 0, ky;
#if QG_MVE
    if (n_rows > 0 && width > 0 && n_rows * width <= 256) {
        for (; c + 15 < ch; c += 16) {
            avg_16_mve(x0 + c, n_rows, row_len, in_row - row_len, ch, mult, rnd, shift, lo, hi, out + c, 16, 1);
        }
        if (c < ch) {
            avg_16_mve(x0 + c, n_rows, row_len, in_row - row_len, ch, mult, rnd, shift, lo, hi, out + c, ch - c, 0);
            return;
        }
    }
#elif QG_DSP
    if (ch > 3 && n_rows > 0 && width > 0 && n_rows * width <= 256) {
        const int32_t row_step = in_row - row_len;
        for (; c + 7 < ch; c += 8) { /* 8 channels: lanes (c, c + 2), (c + 1, c + 3), (c + 4, c + 6), ... */
            const int8_t *x_i8 = x0 + c;
            int32_t s02 = 0, s13 = 0, s46 = 0, s57 = 0;
            ky = n_rows;
            do {
                const int8_t *row_end = x_i8 + row_len;
                do {
                    const int32_t v0 = qg_load_s8x4(x_i8), v1 = qg_load_s8x4(x_i8 + 4);
                    x_i8 += ch;
                    s02 = __sxtab16(s02, v0);
                    s13 = qg_sxtab16_ror8(s13, v0);
                    s46 = __sxtab16(s46, v1);
                    s57 = qg_sxtab16_ror8(s57, v1);
                } while (x_i8 != row_end);
                x_i8 += row_step;
            } while (--ky > 0);
            avg_out_s8x4(s02, s13, mult, rnd, shift, kind, lo, hi, out + c);
            avg_out_s8x4(s46, s57, mult, rnd, shift, kind, lo, hi, out + c + 4);
        }
        for (; c + 3 < ch; c += 4) {
            const int8_t *x_i8 = x0 + c;
            int32_t s02 = 0, s13 = 0;
            ky = n_rows;
            do {
                const int8_t *row_end = x_i8 + row_len;
                do {
                    const int32_t v0 = qg_load_s8x4(x_i8);
                    x_i8 += ch;
                    s02 = __sxtab16(s02, v0);
                    s13 = qg_sxtab16_ror8(s13, v0);
                } while (x_i8 != row_end);
                x_i8 += row_step;
            } while (--ky > 0);
            avg_out_s8x4(s02, s13, mult, rnd, shift, kind, lo, hi, out + c);
        }
    }
#endif
    for (; c < ch; c++) { /* one index per row: ARMv6-M's LDRSB takes a register offset only */
        const int8_t *x_row = x0 + c;
        int32_t sum_i32 = 0, i;
        for (ky = 0; ky < n_rows; ky++, x_row += in_row) {
            for (i = 0; i < row_len; i += ch) {
                sum_i32 += x_row[i];
            }
        }
        out[c] = avg_out_s8(sum_i32, mult, rnd, shift, kind, lo, hi);
    }
}

void qg_maxpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky0, ky1;
        qg_clip_window(iy0, p->k_h, p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int32_t kx0, kx1;
            qg_clip_window(ix0, p->k_w, in_w, &kx0, &kx1);
            max_window_s8(in + ((iy0 + ky0) * in_w + ix0 + kx0) * ch, ky1 - ky0, kx1 - kx0, in_w, ch, out);
        }
    }
}

/* The uniform-window average with its clamp kind a constant: on DSP cores one copy for the int8 range
 * (SSAT) and one for any other range, elsewhere one copy. */
QG_POOL_INLINE void avgpool_uniform_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out, int32_t kind)
{
    /* parameters in locals: stores through `out` may alias *p (no restrict) */
    const int32_t ch = p->channels, in_h = p->in_h, in_w = p->in_w, k_h = p->k_h, k_w = p->k_w;
    const int32_t stride_h = p->stride_h, stride_w = p->stride_w, pad_top = p->pad_top, pad_left = p->pad_left;
    const int32_t out_h = p->out_h, out_w = p->out_w;
    const int32_t mult = p->avg_mult, shift = p->avg_shift, lo = p->act_min, hi = p->act_max;
    const int32_t rnd = shift > 0 ? (int32_t)1 << (shift - 1) : 0;
    int32_t oy, ox;
    for (oy = 0; oy < out_h; oy++) {
        const int32_t iy0 = oy * stride_h - pad_top;
        int32_t ky0, ky1;
        qg_clip_window(iy0, k_h, in_h, &ky0, &ky1);
        for (ox = 0; ox < out_w; ox++, out += ch) {
            const int32_t ix0 = ox * stride_w - pad_left;
            int32_t kx0, kx1;
            qg_clip_window(ix0, k_w, in_w, &kx0, &kx1);
            /* a window that lies in a folded zero pad reads no cell: n_rows 0, sum 0 */
            const int32_t n_rows = ky1 > ky0 && kx1 > kx0 ? ky1 - ky0 : 0;
            const int8_t *x0 = n_rows > 0 ? in + ((iy0 + ky0) * in_w + ix0 + kx0) * ch : in;
            avg_window_s8(x0, n_rows, kx1 - kx0, in_w, ch, mult, rnd, shift, kind, lo, hi, out);
        }
    }
}

void qg_avgpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out)
{
#if QG_DSP
    if (qg_clamp_kind(p->act_min, p->act_max) == QG_CLAMP_S8) {
        avgpool_uniform_s8(p, in, out, QG_CLAMP_S8);
        return;
    }
#endif
    avgpool_uniform_s8(p, in, out, QG_CLAMP_ANY);
}

/* Explicit windows (qg_kernels.h): each window is clipped to the image beforehand, so the loops have no
 * test per cell; the average multiplies each window's sum by the reciprocal of its own divisor. */
void qg_maxpool2d_windows_s8(const qg_pool2d_windows_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox;
    for (oy = 0; oy < p->out_h; oy++) {
        const int16_t *row = p->rows + 3 * oy;
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int16_t *col = p->cols + 3 * ox;
            max_window_s8(in + (qg_w16(&row[0]) * in_w + qg_w16(&col[0])) * ch, qg_w16(&row[1]) - qg_w16(&row[0]),
                          qg_w16(&col[1]) - qg_w16(&col[0]), in_w, ch, out);
        }
    }
}

void qg_avgpool2d_windows_s8(const qg_pool2d_windows_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    /* one copy (clamp kind "any"): its windows are mostly large (adaptive, global), the clamp is a small part */
    const int32_t ch = p->channels, in_w = p->in_w, shift = p->avg_shift, lo = p->act_min, hi = p->act_max;
    const int32_t rnd = shift > 0 ? (int32_t)1 << (shift - 1) : 0;
    int32_t oy, ox;
    for (oy = 0; oy < p->out_h; oy++) {
        const int16_t *row = p->rows + 3 * oy;
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int16_t *col = p->cols + 3 * ox;
            /* round(2^shift / d) */
            const int32_t mult = qg_w32(&p->mult[(int32_t)qg_w16(&row[2]) * p->col_classes + qg_w16(&col[2])]);
            avg_window_s8(in + (qg_w16(&row[0]) * in_w + qg_w16(&col[0])) * ch, qg_w16(&row[1]) - qg_w16(&row[0]),
                          qg_w16(&col[1]) - qg_w16(&col[0]), in_w, ch, mult, rnd,
                          shift, QG_CLAMP_ANY, lo, hi, out);
        }
    }
}
