/* Pooling over explicit windows with int16 activations (the int8 twins: qg_pool2d_s8.c; the rules:
 * codegen/ops/pool.py). Each window is clipped to the image beforehand; the average sums in int64
 * (d values of |x| <= 2^15 times a multiplier up to 2^23) and divides by its own divisor d. On Helium (QG_MVE) a
 * window's channels go 8 at a time (qg_mve.h qg_mve_max_window_s16 / qg_mve_avg_window_s16: the same integers). */
#include "qg_kernels.h"
#include "qg_mve.h"

void qg_maxpool2d_windows_s16(const qg_pool2d_windows_params_t *p, const int16_t *restrict in,
                              int16_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox;
#if !QG_MVE
    int32_t c, y, x;
#endif
    for (oy = 0; oy < p->out_h; oy++) {
        const int16_t *row = p->rows + 3 * oy;
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int16_t *col = p->cols + 3 * ox;
#if QG_MVE
            const int32_t y0 = qg_w16(&row[0]), x0 = qg_w16(&col[0]);
            qg_mve_max_window_s16(in + (y0 * in_w + x0) * ch, qg_w16(&row[1]) - y0, qg_w16(&col[1]) - x0, in_w * ch,
                                  ch, out);
#else
            for (c = 0; c < ch; c++) {
                int32_t max_i32 = -32768;
                for (y = qg_w16(&row[0]); y < qg_w16(&row[1]); y++) {
                    const int16_t *x_i16 = in + (y * in_w) * ch + c;
                    for (x = qg_w16(&col[0]); x < qg_w16(&col[1]); x++) {
                        max_i32 = x_i16[x * ch] > max_i32 ? x_i16[x * ch] : max_i32;
                    }
                }
                out[c] = (int16_t)max_i32;
            }
#endif
        }
    }
}

void qg_avgpool2d_windows_s16(const qg_pool2d_windows_params_t *p, const int16_t *restrict in,
                              int16_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox, c, y, x;
    for (oy = 0; oy < p->out_h; oy++) {
        const int16_t *row = p->rows + 3 * oy;
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int16_t *col = p->cols + 3 * ox;
            /* round(2^avg_shift / d) */
            const int64_t mult = qg_w32(&p->mult[(int32_t)qg_w16(&row[2]) * p->col_classes + qg_w16(&col[2])]);
#if QG_MVE
            const int32_t y0 = qg_w16(&row[0]), x0 = qg_w16(&col[0]);
            const int32_t n_rows = qg_w16(&row[1]) - y0, width = qg_w16(&col[1]) - x0;
            if (qg_mve_avg_fits_s16(n_rows, width, (int32_t)mult, p->avg_shift)) {
                qg_mve_avg_window_s16(in + (y0 * in_w + x0) * ch, n_rows, width, in_w * ch, ch, (int32_t)mult,
                                      p->avg_shift, p->act_min, p->act_max, out);
                continue;
            }
#endif
            for (c = 0; c < ch; c++) {
                int64_t sum = 0;
                for (y = qg_w16(&row[0]); y < qg_w16(&row[1]); y++) {
                    const int16_t *x_i16 = in + (y * in_w) * ch + c;
                    for (x = qg_w16(&col[0]); x < qg_w16(&col[1]); x++) {
                        sum += x_i16[x * ch];
                    }
                }
                out[c] = (int16_t)qg_requantize_wide(sum * mult, p->avg_shift, p->act_min, p->act_max);
            }
        }
    }
}
