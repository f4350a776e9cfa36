/*
 * qg_stream_s8.c - the state kernels of streaming models (`qgen compile --stream`, codegen/passes/stream.py).
 *
 * qg_history_s8: the input of a causal convolution over time (kernel k, dilation d). `window` holds the last
 * `frames` (K = (k - 1) * d + 1) input frames of `frame_bytes` bytes each, oldest first, in the model's state
 * memory, kept between calls of <prefix>_step and zeroed by <prefix>_reset. Each step shifts the window by one frame,
 * appends the new frame, and copies the k frames the convolution reads (0, d, 2d, ..., K - 1 of the window) to
 * `taps`, contiguous: the convolution then gives its one output frame from them. Byte-wise, so one kernel serves
 * int8 and int16 frames. Reference: codegen/ops/stream.py (and codegen/stream.py's runner).
 * No C library calls (MicroPython native modules link none); word copies when the frame is whole words.
 */
#include <string.h>

#include "qg_kernels.h"

/* dst[0 .. n) = src[0 .. n), forward (dst <= src may overlap), words when `words` (both 4-byte aligned) */
static void qg_copy_forward(int8_t *dst, const int8_t *src, int32_t n, int words)
{
    int32_t i;
    if (words) {
        for (i = 0; i < n; i += 4) {
            uint32_t v;
            memcpy(&v, src + i, 4);
            memcpy(dst + i, &v, 4);
        }
        return;
    }
    for (i = 0; i < n; i++) {
        dst[i] = src[i];
    }
}

void qg_history_s8(const qg_history_params_t *p, const int8_t *restrict frame, int8_t *restrict window,
                   int8_t *restrict taps)
{
    const int32_t fb = p->frame_bytes;
    const int32_t keep = (p->frames - 1) * fb;
    const int words = (fb & 3) == 0; /* the window is 4-byte aligned (state memory), so is every frame in it */
    int32_t i;
    qg_copy_forward(window, window + fb, keep, words);
    qg_copy_forward(window + keep, frame, fb, words && (((uintptr_t)frame & 3) == 0));
    for (i = 0; i * p->dilation < p->frames; i++) {
        qg_copy_forward(taps + i * fb, window + i * p->dilation * fb, fb, words && (((uintptr_t)taps & 3) == 0));
    }
}
