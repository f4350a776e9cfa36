/*
 * Instruction-count markers.
 *
 * The qgen QEMU plugin (firmware/qemu_plugin/qg_count.c) is told the addresses of these two
 * functions. It sums the guest instructions executed after qg_count_begin() returns and before
 * qg_count_end() is entered, over every begin/end pair, so work outside the pairs (boot,
 * semihosting I/O) is not counted. The markers themselves are never counted; the call of the
 * measured code (argument set-up, bl, return) is, as it would be on the device.
 * Pairs must not nest.
 */
#ifndef QG_COUNT_H
#define QG_COUNT_H

void qg_count_begin(void);
void qg_count_end(void);

#endif /* QG_COUNT_H */
