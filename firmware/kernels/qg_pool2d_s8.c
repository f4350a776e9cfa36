/* Max and average pooling, channels-last (the rules: codegen/ops/pool.py). Output frac = input frac.
 * Uniform windows (qg_maxpool2d_s8, qg_avgpool2d_s8): padding cells are skipped (max) or count as zero
 * (average, PyTorch's count_include_pad=True: the divisor is always k_h * k_w). Their output pixels are
 * computed in increasing order, each from reads done before its writes and after the previous pixel's:
 * `out` may overlap the start of `in` (see qg_conv2d_s8.c), hence no `restrict`.
 * Explicit windows (the *_windows_s8 kernels): ceil mode, count_include_pad=False, adaptive pooling;
 * every window clipped to the image and its own divisor; `in` and `out` never overlap. */
#include "qg_kernels.h"
#include "qg_simd.h"

/* The max of every channel over a window of n_rows x width pixels starting at x0 (channels-last, `ch`
 * channels, input rows in_w pixels long). Max pooling walks only the window cells inside the image (no
 * test per cell). With the DSP extension it takes four channels per word: SSUB8 sets a per-byte
 * "a >= b" flag and SEL picks the larger bytes, 2 instructions per 4 maxima. Writes follow the reads of
 * the same channels (within one pixel: the order contract). */
static inline void max_window_s8(const int8_t *x0, int32_t n_rows, int32_t width, int32_t in_w, int32_t ch,
                                 int8_t *out)
{
    const int32_t row_step = (in_w - width) * ch;
    int32_t c = 0, ky, kx;
#if QG_DSP
    for (; c + 3 < ch; c += 4) {
        const int8_t *x_i8 = x0 + c;
        uint32_t max_s8x4 = 0x80808080u; /* four times -128 */
        for (ky = 0; ky < n_rows; ky++, x_i8 += row_step) {
            for (kx = 0; kx < width; kx++, x_i8 += ch) {
                const uint32_t v = (uint32_t)qg_load_s8x4(x_i8);
                (void)__ssub8((int32_t)max_s8x4, (int32_t)v);
                max_s8x4 = __sel(max_s8x4, v);
            }
        }
        memcpy(out + c, &max_s8x4, 4);
    }
#endif
    for (; c < ch; c++) {
        const int8_t *x_i8 = x0 + c;
        int32_t max_i32 = -128;
        for (ky = 0; ky < n_rows; ky++, x_i8 += row_step) {
            for (kx = 0; kx < width; kx++, x_i8 += ch) {
                const int32_t x = *x_i8;
                max_i32 = x > max_i32 ? x : max_i32;
            }
        }
        out[c] = (int8_t)max_i32;
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

void qg_avgpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out)
{
    /* parameters in locals: stores through `out` may alias *p (no restrict) */
    const int32_t ch = p->channels, in_h = p->in_h, in_w = p->in_w, k_h = p->k_h, k_w = p->k_w;
    const int32_t stride_h = p->stride_h, stride_w = p->stride_w, pad_top = p->pad_top, pad_left = p->pad_left;
    const int32_t avg_mult = p->avg_mult, avg_shift = p->avg_shift, act_min = p->act_min, act_max = p->act_max;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            for (c = 0; c < ch; c++) {
                int32_t sum_i32 = 0;
                for (ky = 0; ky < k_h; ky++) {
                    const int32_t iy = oy * stride_h - pad_top + ky;
                    if (iy < 0 || iy >= in_h) {
                        continue;
                    }
                    for (kx = 0; kx < k_w; kx++) {
                        const int32_t ix = ox * stride_w - pad_left + kx;
                        if (ix < 0 || ix >= in_w) {
                            continue;
                        }
                        sum_i32 += in[(iy * in_w + ix) * ch + c];
                    }
                }
                out[c] = qg_requantize_s8(sum_i32 * avg_mult, avg_shift, act_min, act_max);
            }
        }
    }
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
            max_window_s8(in + (row[0] * in_w + col[0]) * ch, row[1] - row[0], col[1] - col[0], in_w, ch, out);
        }
    }
}

void qg_avgpool2d_windows_s8(const qg_pool2d_windows_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w, shift = p->avg_shift, lo = p->act_min, hi = p->act_max;
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; oy++) {
        const int16_t *row = p->rows + 3 * oy;
        const int32_t n_rows = row[1] - row[0];
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int16_t *col = p->cols + 3 * ox;
            const int32_t width = col[1] - col[0], row_step = (in_w - width) * ch;
            const int32_t mult = p->mult[row[2] * p->col_classes + col[2]]; /* round(2^shift / d) */
            const int8_t *x0 = in + (row[0] * in_w + col[0]) * ch;
            for (c = 0; c < ch; c++) {
                const int8_t *x_i8 = x0 + c;
                int32_t sum_i32 = 0; /* |sum| <= 128 * d, |sum * mult| < 2^31 (codegen/fixed.py AVG_SHIFT) */
                for (ky = 0; ky < n_rows; ky++, x_i8 += row_step) {
                    for (kx = 0; kx < width; kx++, x_i8 += ch) {
                        sum_i32 += *x_i8;
                    }
                }
                out[c] = qg_requantize_s8(sum_i32 * mult, shift, lo, hi);
            }
        }
    }
}
