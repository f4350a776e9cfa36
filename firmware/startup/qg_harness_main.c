/*
 * qgen firmware harness: run a generated model on input vectors read from the host.
 *
 * Reads qg_input.bin (N x HARNESS_INPUT_SIZE values of HARNESS_INPUT_T, N = file size / input size) from the directory
 * the emulator runs in, calls HARNESS_RUN(in, out) once per vector between the instruction-count
 * markers, and writes the N x HARNESS_OUTPUT_SIZE int8 outputs to qg_output.bin. Exit status: 0 on
 * success, else one of HARNESS_EXIT_* (codegen/target.py maps them to messages).
 *
 * harness_config.h is generated per model: it includes <prefix>_model.h and defines HARNESS_RUN,
 * HARNESS_INPUT_SIZE and HARNESS_OUTPUT_SIZE, so this file works for any prefix. For per-layer
 * instruction counts it also defines HARNESS_SET_TRACE (`<prefix>_set_trace`, the model being built
 * with -D<PREFIX>_ENABLE_TRACE): the harness then installs the layer marker qg_count_layer as the
 * model's trace callback (see qg_count.h).
 */
#include <stdint.h>

#include "harness_config.h"
#include "qg_count.h"
#include "qg_semihost.h"

enum {
    HARNESS_EXIT_OK = 0,
    HARNESS_EXIT_OPEN_INPUT = 1,
    HARNESS_EXIT_INPUT_LENGTH = 2,
    HARNESS_EXIT_READ = 3,
    HARNESS_EXIT_MODEL = 4,
    HARNESS_EXIT_WRITE = 5
};

#define HARNESS_INPUT_FILE "qg_input.bin"
#define HARNESS_OUTPUT_FILE "qg_output.bin"

/* Aligned so that kernels may use word (SIMD) loads on the model's input and output. */
static HARNESS_INPUT_T input_buf[HARNESS_INPUT_SIZE] __attribute__((aligned(8)));
static int8_t output_i8[HARNESS_OUTPUT_SIZE] __attribute__((aligned(8)));

static int fail(int code, const char *message)
{
    qg_semihost_puts("qgen harness: ");
    qg_semihost_puts(message);
    qg_semihost_puts("\n");
    return code;
}

static int run_all(int in_handle, int out_handle, long n_vectors)
{
    for (long i = 0; i < n_vectors; ++i) {
        if (qg_semihost_read_all(in_handle, input_buf, sizeof input_buf) != 0) {
            return fail(HARNESS_EXIT_READ, "short read from " HARNESS_INPUT_FILE);
        }
        qg_count_begin();
        const int status = HARNESS_RUN(input_buf, output_i8);
        qg_count_end();
        if (status != 0) {
            return fail(HARNESS_EXIT_MODEL, "model run returned a nonzero status");
        }
        if (qg_semihost_write_all(out_handle, output_i8, sizeof output_i8) != 0) {
            return fail(HARNESS_EXIT_WRITE, "cannot write " HARNESS_OUTPUT_FILE);
        }
    }
    return HARNESS_EXIT_OK;
}

int main(void)
{
    const long input_size = (long)sizeof input_buf;
#ifdef HARNESS_SET_TRACE
    HARNESS_SET_TRACE(qg_count_layer);
#endif
#ifdef HARNESS_RESET /* a streaming model: the input vectors are the frames of one stream */
    HARNESS_RESET();
#endif
    const int in_handle = qg_semihost_open(HARNESS_INPUT_FILE, QG_SEMIHOST_MODE_RB);
    if (in_handle < 0) {
        return fail(HARNESS_EXIT_OPEN_INPUT, "cannot open " HARNESS_INPUT_FILE);
    }
    const long n_bytes = qg_semihost_flen(in_handle);
    if (n_bytes < 0 || n_bytes % input_size != 0) {
        return fail(HARNESS_EXIT_INPUT_LENGTH, HARNESS_INPUT_FILE " is not a whole number of inputs");
    }
    const int out_handle = qg_semihost_open(HARNESS_OUTPUT_FILE, QG_SEMIHOST_MODE_WB);
    if (out_handle < 0) {
        return fail(HARNESS_EXIT_WRITE, "cannot open " HARNESS_OUTPUT_FILE);
    }
    const int status = run_all(in_handle, out_handle, n_bytes / input_size);
    (void)qg_semihost_close(in_handle);
    if (qg_semihost_close(out_handle) != 0 && status == HARNESS_EXIT_OK) {
        return fail(HARNESS_EXIT_WRITE, "cannot close " HARNESS_OUTPUT_FILE);
    }
    return status;
}
