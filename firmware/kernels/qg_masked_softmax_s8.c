/* Softmax after a constant mask (codegen/ops/attention.py i_masked_softmax is the spec): row r keeps the entries
 * whose bit is set in bitmap row r % mask_rows; those follow qg_softmax_s8's rule (same Q14 exp table, same
 * rounding) over the kept entries only, masked entries add 0 to the sum and output 0 (no division). Every bitmap
 * row keeps at least one entry (the compiler refuses a fully masked row), so sum >= exp_table[0] = 16384 > 0.
 * The bitmap is walked a byte (8 entries) at a time: a zero byte (the masked half of a causal row) is skipped. */
#include "qg_kernels.h"

void qg_masked_softmax_s8(const qg_masked_softmax_params_t *p, const int8_t *in, int8_t *out)
{
    const int32_t row_size = p->row_size;
    const int32_t row_bytes = (row_size + 7) / 8;
    const int16_t *exp_table = p->exp_table;
    int32_t r, b, i;
    for (r = 0; r < p->rows; r++) {
        const int8_t *x = in + r * row_size;
        int8_t *y = out + r * row_size;
        const uint8_t *keep = p->keep + (r % p->mask_rows) * row_bytes;
        int32_t max_i32 = -128, sum_i32 = 0;
        for (b = 0; b < row_bytes; b++) {
            const int32_t end = 8 * b + 8 < row_size ? 8 * b + 8 : row_size;
            uint32_t bits = qg_wu8(&keep[b]); /* bit 0 = entry i, shifted along */
            for (i = 8 * b; bits != 0u && i < end; i++, bits >>= 1) {
                if ((bits & 1u) && x[i] > max_i32) {
                    max_i32 = x[i];
                }
            }
        }
        for (b = 0; b < row_bytes; b++) {
            const int32_t end = 8 * b + 8 < row_size ? 8 * b + 8 : row_size;
            uint32_t bits = qg_wu8(&keep[b]);
            for (i = 8 * b; bits != 0u && i < end; i++, bits >>= 1) {
                if (bits & 1u) {
                    sum_i32 += qg_w16(&exp_table[max_i32 - x[i]]);
                }
            }
        }
        /* kept: out = round_half_up(128 * e / sum) = (256 e + sum) / (2 sum), saturated; masked: 0 */
        for (b = 0; b < row_bytes; b++) {
            const int32_t end = 8 * b + 8 < row_size ? 8 * b + 8 : row_size;
            uint32_t bits = qg_wu8(&keep[b]);
            for (i = 8 * b; i < end; i++, bits >>= 1) {
                if (bits & 1u) {
                    const int32_t e = qg_w16(&exp_table[max_i32 - x[i]]); /* int32 before * 256 (16-bit int) */
                    const int32_t q = (256 * e + sum_i32) / (2 * sum_i32);
                    y[i] = (int8_t)(q > 127 ? 127 : q);
                } else {
                    y[i] = 0;
                }
            }
        }
    }
}
