/* const: a constant tensor made an activation (codegen/ops/const.py): its int8 values, stored QG_CONST (in flash
 * on AVR, read through qg_w8), copied into the arena where add / sub / mul / concat read it like any operand. */
#include "qg_kernels.h"

void qg_const_s8(const qg_const_params_t *p, int8_t *out)
{
    const int8_t *data = p->data;
    int32_t i;
    for (i = 0; i < p->size; i++) {
        out[i] = qg_w8(&data[i]);
    }
}

void qg_const_s16(const qg_const_s16_params_t *p, int16_t *out)
{
    const int16_t *data = p->data;
    int32_t i;
    for (i = 0; i < p->size; i++) {
        out[i] = qg_w16(&data[i]);
    }
}
