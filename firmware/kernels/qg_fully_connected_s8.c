/* Fully connected layer, int8 x int8 -> int32 -> int8.
 *
 * Two output rows share each input load (qg_dot_s8.h; SMLAD with the DSP extension). Four rows
 * per pass measured slower on the M4 with GCC 12: the accumulators and row pointers no longer fit
 * in registers and spill inside the inner loop. */
#include "qg_kernels.h"
#include "qg_dot_s8.h"

int32_t qg_fully_connected_s8_buffer_size(const qg_fully_connected_params_t *p)
{
    (void)p;
    return 0;
}

void qg_fully_connected_s8(const qg_fully_connected_params_t *p, const int8_t *restrict in,
                           int8_t *restrict out, int8_t *restrict scratch)
{
    const int32_t n_in = p->in_features, n_out = p->out_features;
    const int32_t act_min = p->act_min, act_max = p->act_max;
    const int8_t *w_i8 = p->weights;
    int32_t o = 0;
    (void)scratch;
    for (; o + 1 < n_out; o += 2) {
        int32_t acc0_i32 = p->bias[o], acc1_i32 = p->bias[o + 1];
        qg_dot_1x2_s8(in, w_i8, w_i8 + n_in, n_in, &acc0_i32, &acc1_i32);
        out[o] = qg_requantize_s8(acc0_i32, p->shift[o], act_min, act_max);
        out[o + 1] = qg_requantize_s8(acc1_i32, p->shift[o + 1], act_min, act_max);
        w_i8 += 2 * n_in;
    }
    if (o < n_out) {
        out[o] = qg_requantize_s8(qg_dot_1x1_s8(in, w_i8, n_in, p->bias[o]), p->shift[o], act_min, act_max);
    }
}
