/* Integer log_softmax (codegen/ops/eltwise.py i_log_softmax is the spec): the softmax kernel's Q14 exp sum, an
 * integer natural log of the sum (leading-bit position for the exponent, a 33-entry Q16 table of ln(1 + i/32)
 * with linear interpolation on the mantissa) and one rounding into the output format. */
#include "qg_kernels.h"

/* eltwise.LN_TABLE_Q16: round(ln(1 + i / 32) * 2^16), i = 0..32 (the last entry is ln 2; tests/test_log_softmax.py
 * compares). QG_CONST: in flash on AVR, read with qg_w32 (qg_kernels.h). */
static const int32_t qg_ln_table_q16[33] QG_CONST = {
    0,     2017,  3973,  5873,  7719,  9515,  11262, 12965, 14624, 16242, 17821,
    19364, 20870, 22343, 23783, 25193, 26573, 27924, 29248, 30546, 31818, 33067,
    34292, 35494, 36675, 37835, 38975, 40095, 41196, 42280, 43345, 44394, 45426};

/* ln(sum / 2^14) in Q16 for 2^14 <= sum < 2^31 */
static int32_t qg_ln_sum_q16(int32_t sum)
{
    int32_t k = 14, idx, lo;
    uint32_t m30, rem;
    while (k < 30 && (sum >> (k + 1)) != 0) {
        k++;
    }
    m30 = (uint32_t)sum << (30 - k); /* in [2^30, 2^31) */
    idx = (int32_t)((m30 >> 25) & 31u);
    rem = (m30 >> 9) & 0xFFFFu;
    lo = qg_w32(&qg_ln_table_q16[idx]);
    return (k - 14) * 45426 + lo + (int32_t)(((uint32_t)(qg_w32(&qg_ln_table_q16[idx + 1]) - lo) * rem) >> 16);
}

void qg_log_softmax_s8(const qg_log_softmax_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t row_size = p->row_size;
    const int16_t *exp_table = p->exp_table;
    const int64_t half_minus_1 = ((int64_t)1 << (p->out_shift - 1)) - 1;
    int32_t r, i;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * row_size;
        int8_t *y = out + r * row_size;
        int32_t max_i32 = -128, sum_i32 = 0;
        int64_t ln_part;
        for (i = 0; i < row_size; i++) {
            max_i32 = x[i] > max_i32 ? x[i] : max_i32;
        }
        for (i = 0; i < row_size; i++) {
            sum_i32 += qg_w16(&exp_table[max_i32 - x[i]]);
        }
        ln_part = (int64_t)qg_ln_sum_q16(sum_i32) << p->l_shift;
        for (i = 0; i < row_size; i++) {
            /* -(out value) * 2^out_shift >= 0; out = -round_half_up(that / 2^out_shift) */
            const int64_t neg = ((int64_t)(max_i32 - x[i]) << p->d_shift) + ln_part;
            const int64_t q = (neg + half_minus_1) >> p->out_shift;
            y[i] = (int8_t)(q > 128 ? -128 : -(int32_t)q);
        }
    }
}
