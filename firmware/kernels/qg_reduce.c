/* Mean or max over the last axis (channels / features): `rows` rows of `size` contiguous values, one
 * output per row (the rule: codegen/ops/pool.py reduce). The output keeps the input's format. */
#include "qg_kernels.h"

void qg_reduce_s8(const qg_reduce_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    const int32_t size = p->size;
    int32_t r, i;
    for (r = 0; r < p->rows; r++, in += size) {
        if (p->is_max) {
            int32_t max_i32 = -128;
            for (i = 0; i < size; i++) {
                max_i32 = in[i] > max_i32 ? in[i] : max_i32;
            }
            out[r] = (int8_t)max_i32;
        } else {
            int32_t sum_i32 = 0; /* |sum * avg_mult| < 2^31 (codegen/fixed.py AVG_SHIFT) */
            for (i = 0; i < size; i++) {
                sum_i32 += in[i];
            }
            out[r] = qg_requantize_s8(sum_i32 * p->avg_mult, p->avg_shift, p->act_min, p->act_max);
        }
    }
}

void qg_reduce_s16(const qg_reduce_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    const int32_t size = p->size;
    int32_t r, i;
    for (r = 0; r < p->rows; r++, in += size) {
        if (p->is_max) {
            int32_t max_i32 = -32768;
            for (i = 0; i < size; i++) {
                max_i32 = in[i] > max_i32 ? in[i] : max_i32;
            }
            out[r] = (int16_t)max_i32;
        } else {
            int64_t sum = 0;
            for (i = 0; i < size; i++) {
                sum += in[i];
            }
            out[r] = (int16_t)qg_requantize_wide(sum * p->avg_mult, p->avg_shift, p->act_min, p->act_max);
        }
    }
}
