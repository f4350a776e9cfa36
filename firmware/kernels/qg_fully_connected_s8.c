/* Fully connected layer, int8 x int8 -> int32 -> int8.
 *
 * Plain C and Helium: two output rows (Helium and optimised ARMv6-M builds four) share each input load
 * (qg_dot_s8.h).
 * DSP (M4/M7/M33): four rows per pass, one asm block per 4 inputs (fc_rows4_dsp): the input word is unpacked
 * once into (x0, x2) (x1, x3) for the 4 rows, each row's word unpacked and multiplied with 2 SMLAD: 23
 * instructions per 16 MACs. Written in C, GCC 12 spills the row pointers and accumulators in the inner loop
 * (measured slower than two rows per pass); the asm keeps 4 accumulators, 2 row pointers (rows 0-1 and 2-3,
 * the odd one at + k), the input pointer and 4 temporaries in registers. The rows % 4 last rows and the
 * k % 4 last inputs take the plain code. */
#include "qg_kernels.h"
#include "qg_dot_s8.h"

int32_t qg_fully_connected_s8_buffer_size(const qg_fully_connected_params_t *p)
{
    (void)p;
    return 0;
}

#if QG_DSP && !QG_MVE && defined(__OPTIMIZE__) /* inline asm: GCC cannot allocate its operands at -O0 */
/* Rows [0, rows4) (a multiple of 4) of w (k values each) against x: requantised into out. */
static void fc_rows4_dsp(const int8_t *x, const int8_t *w, int32_t k, int32_t rows4, const int32_t *bias,
                         const int8_t *shift, int32_t act_min, int32_t act_max, int8_t *out)
{
    int32_t r, i;
    for (r = 0; r < rows4; r += 4, w += 4 * k) {
        int32_t a0 = bias[r], a1 = bias[r + 1], a2 = bias[r + 2], a3 = bias[r + 3];
        const int8_t *xp = x, *w01 = w, *w23 = w + 2 * k;
        for (i = k >> 2; i > 0; i--) {
            int32_t xe, xo, wv, t;
            __asm__("ldr %[xe], [%[xp]], #4\n\t"
                    "sxtb16 %[xo], %[xe], ror #8\n\t"
                    "sxtb16 %[xe], %[xe]\n\t"
                    "ldr %[wv], [%[w01], %[k]]\n\t"
                    "sxtb16 %[t], %[wv]\n\t"
                    "smlad %[a1], %[xe], %[t], %[a1]\n\t"
                    "sxtb16 %[t], %[wv], ror #8\n\t"
                    "smlad %[a1], %[xo], %[t], %[a1]\n\t"
                    "ldr %[wv], [%[w01]], #4\n\t"
                    "sxtb16 %[t], %[wv]\n\t"
                    "smlad %[a0], %[xe], %[t], %[a0]\n\t"
                    "sxtb16 %[t], %[wv], ror #8\n\t"
                    "smlad %[a0], %[xo], %[t], %[a0]\n\t"
                    "ldr %[wv], [%[w23], %[k]]\n\t"
                    "sxtb16 %[t], %[wv]\n\t"
                    "smlad %[a3], %[xe], %[t], %[a3]\n\t"
                    "sxtb16 %[t], %[wv], ror #8\n\t"
                    "smlad %[a3], %[xo], %[t], %[a3]\n\t"
                    "ldr %[wv], [%[w23]], #4\n\t"
                    "sxtb16 %[t], %[wv]\n\t"
                    "smlad %[a2], %[xe], %[t], %[a2]\n\t"
                    "sxtb16 %[t], %[wv], ror #8\n\t"
                    "smlad %[a2], %[xo], %[t], %[a2]"
                    : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xp] "+r"(xp), [w01] "+r"(w01),
                      [w23] "+r"(w23), [xe] "=&r"(xe), [xo] "=&r"(xo), [wv] "=&r"(wv), [t] "=&r"(t)
                    : [k] "r"(k)
                    : "memory");
        }
        for (i = 0; i < (k & 3); i++) { /* the k % 4 last inputs */
            const int32_t xi = xp[i];
            a0 += xi * w01[i];
            a1 += xi * w01[k + i];
            a2 += xi * w23[i];
            a3 += xi * w23[k + i];
        }
        out[r] = qg_requantize_s8(a0, shift[r], act_min, act_max);
        out[r + 1] = qg_requantize_s8(a1, shift[r + 1], act_min, act_max);
        out[r + 2] = qg_requantize_s8(a2, shift[r + 2], act_min, act_max);
        out[r + 3] = qg_requantize_s8(a3, shift[r + 3], act_min, act_max);
    }
}
#endif

void qg_fully_connected_s8(const qg_fully_connected_params_t *p, const int8_t *restrict in,
                           int8_t *restrict out, int8_t *restrict scratch)
{
    int32_t rows4 = 0;
    (void)scratch;
#if QG_DSP && !QG_MVE && defined(__OPTIMIZE__) /* inline asm: GCC cannot allocate its operands at -O0 */
    rows4 = p->out_features & ~3;
    fc_rows4_dsp(in, p->weights, p->in_features, rows4, p->bias, p->shift, p->act_min, p->act_max, out);
#endif
    qg_dot_rows_s8(in, p->weights + rows4 * p->in_features, p->in_features, p->out_features - rows4, p->bias + rows4,
                   p->shift + rows4, p->act_min, p->act_max, out + rows4);
}
