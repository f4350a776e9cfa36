/* Softmax after a constant mask (codegen/ops/attention.py i_masked_softmax is the spec): row r keeps the entries
 * whose bit is set in bitmap row r % mask_rows; those follow qg_softmax_s8's rule (same Q14 exp table, same
 * rounding) over the kept entries only, masked entries add 0 to the sum and output 0. Every bitmap row keeps at
 * least one entry (the compiler refuses a fully masked row), so sum >= exp_table[0] = 16384 > 0. */
#include "qg_kernels.h"

/* bit i of the row's bitmap: 1 where entry i takes part */
static int32_t qg_kept(const uint8_t *keep, int32_t i)
{
    return (int32_t)(qg_wu8(&keep[i >> 3]) >> (i & 7)) & 1;
}

void qg_masked_softmax_s8(const qg_masked_softmax_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t row_size = p->row_size;
    const int32_t row_bytes = (row_size + 7) / 8;
    const int16_t *exp_table = p->exp_table;
    int32_t r, i;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * row_size;
        int8_t *y = out + r * row_size;
        const uint8_t *keep = p->keep + (r % p->mask_rows) * row_bytes;
        int32_t max_i32 = -128, sum_i32 = 0;
        for (i = 0; i < row_size; i++) {
            if (qg_kept(keep, i)) {
                max_i32 = x[i] > max_i32 ? x[i] : max_i32;
            }
        }
        for (i = 0; i < row_size; i++) {
            if (qg_kept(keep, i)) {
                sum_i32 += qg_w16(&exp_table[max_i32 - x[i]]);
            }
        }
        /* out = round_half_up(128 * e / sum) = (256 e + sum) / (2 sum), e = 0 where masked */
        for (i = 0; i < row_size; i++) {
            const int32_t e = qg_kept(keep, i) ? qg_w16(&exp_table[max_i32 - x[i]]) : 0;
            const int32_t q = (256 * e + sum_i32) / (2 * sum_i32);
            y[i] = (int8_t)(q > 127 ? 127 : q);
        }
    }
}
