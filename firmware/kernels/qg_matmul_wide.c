/*
 * qg_matmul_wide.c - product of two activations of any int8 / int16 mix (mixed precision):
 * out[z, i, j] = requantize(sum_k a[z, i, k] * b[z, j, k], shift), a (batch, m, k), b (batch, n, k), rows of k
 * contiguous values. Sums in int64 (exact for any k: |a * b| <= 2^30), one requantisation with the rounding rule
 * to an int8 or int16 output (qg_requantize_wide). Reference: codegen/ops/matmul.py i_matmul.
 */
#include "qg_kernels.h"
#include "qg_simd.h"

static inline int32_t matmul_load(const void *p, int32_t i, int32_t bits)
{
    return bits == 16 ? qg_load_s16_at(p, i) : ((const int8_t *)p)[i];
}

void qg_matmul_wide(const qg_matmul_wide_params_t *p, const void *a, const void *b, void *out)
{
    const int32_t m = p->m, n = p->n, k = p->k, a_bits = p->a_bits, b_bits = p->b_bits;
    int32_t z, i, j, t, at = 0;
    for (z = 0; z < p->batch; z++) {
        for (i = 0; i < m; i++) {
            const int32_t row = (z * m + i) * k;
            for (j = 0; j < n; j++, at++) {
                const int32_t col = (z * n + j) * k;
                int64_t acc = 0;
                for (t = 0; t < k; t++) {
                    acc += (int64_t)(matmul_load(a, row + t, a_bits) * matmul_load(b, col + t, b_bits));
                }
                const int32_t y = qg_requantize_wide(acc, p->shift, p->act_min, p->act_max);
                if (p->out_bits == 16) {
                    qg_store_s16_at(out, at, (int16_t)y);
                } else {
                    ((int8_t *)out)[at] = (int8_t)y;
                }
            }
        }
    }
}
