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
    (void)scratch;
    qg_dot_rows_s8(in, p->weights, p->in_features, p->out_features, p->bias, p->shift, p->act_min, p->act_max, out);
}
