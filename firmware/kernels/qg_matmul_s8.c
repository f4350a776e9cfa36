/*
 * qg_matmul_s8.c - product of two int8 activations: out[z, i, j] = requantize(sum_k a[z, i, k] * b[z, j, k]).
 * Both operands hold rows of k contiguous values (the torch front end lays B out transposed, so q @ k^T
 * needs no copy); int32 sums (k <= 131071 keeps them exact), one requantisation with the rounding rule.
 * Reference: codegen/ops/matmul.py i_matmul. Two output columns per pass share each load of a's row
 * (qg_dot_1x2_s8: SXTB16 + SMLAD on cores with the DSP extension, plain C elsewhere).
 */
#include "qg_dot_s8.h"
#include "qg_kernels.h"

void qg_matmul_s8(const qg_matmul_params_t *p, const int8_t *restrict a, const int8_t *restrict b,
                  int8_t *restrict out)
{
    const int32_t m = p->m, n = p->n, k = p->k;
    int32_t z, i, j;
    for (z = 0; z < p->batch; z++) {
        const int8_t *bz = b + z * n * k;
        for (i = 0; i < m; i++) {
            const int8_t *row = a + (z * m + i) * k;
            for (j = 0; j + 1 < n; j += 2) {
                int32_t acc0 = 0, acc1 = 0;
                qg_dot_1x2_s8(row, bz + j * k, bz + (j + 1) * k, k, &acc0, &acc1);
                *out++ = qg_requantize_s8(acc0, p->shift, p->act_min, p->act_max);
                *out++ = qg_requantize_s8(acc1, p->shift, p->act_min, p->act_max);
            }
            if (j < n) {
                *out++ = qg_requantize_s8(qg_dot_1x1_s8(row, bz + j * k, k, 0), p->shift, p->act_min,
                                          p->act_max);
            }
        }
    }
}
