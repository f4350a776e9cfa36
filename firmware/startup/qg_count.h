/*
 * Instruction-count markers.
 *
 * The qgen QEMU plugin (firmware/qemu_plugin/qg_count.c) is told the addresses of these two
 * functions. It sums the guest instructions executed after qg_count_begin() returns and before
 * qg_count_end() is entered, over every begin/end pair, so work outside the pairs (boot,
 * semihosting I/O) is not counted. The markers themselves are never counted; the call of the
 * measured code (argument set-up, bl, return) is, as it would be on the device.
 * Pairs must not nest.
 *
 * Per layer: qg_count_layer() has the signature of a generated model's trace callback
 * (`<prefix>_trace_fn`, called after each layer when the model is built with
 * -D<PREFIX>_ENABLE_TRACE). The harness installs it when harness_config.h defines
 * HARNESS_SET_TRACE, and the plugin, given its address too, cuts each begin/end region at every
 * call: the instructions between two cuts belong to the layer that just finished. Its body is not
 * counted; the call site in the model (loading the callback pointer, testing it, three argument
 * moves, BLX, and the return into the model: about 7 instructions) is, in the layer before it.
 */
#ifndef QG_COUNT_H
#define QG_COUNT_H

#include <stdint.h>

void qg_count_begin(void);
void qg_count_end(void);
void qg_count_layer(int32_t layer, const int8_t *data, int32_t size);

#endif /* QG_COUNT_H */
