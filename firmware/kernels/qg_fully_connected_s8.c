/* Fully connected layer, int8 x int8 -> int32 -> int8. */
#include "qg_kernels.h"

int32_t qg_fully_connected_s8_buffer_size(const qg_fully_connected_params_t *p)
{
    (void)p;
    return 0;
}

void qg_fully_connected_s8(const qg_fully_connected_params_t *p, const int8_t *restrict in,
                           int8_t *restrict out, int8_t *restrict scratch)
{
    const int32_t n_in = p->in_features;
    int32_t o, i;
    (void)scratch;
    for (o = 0; o < p->out_features; o++) {
        const int8_t *w_i8 = p->weights + o * n_in;
        int32_t acc_i32 = p->bias[o];
        for (i = 0; i < n_in; i++) {
            acc_i32 += (int32_t)in[i] * (int32_t)w_i8[i];
        }
        out[o] = qg_requantize_s8(acc_i32, p->shift[o], p->act_min, p->act_max);
    }
}
