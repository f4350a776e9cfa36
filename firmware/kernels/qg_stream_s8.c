/*
 * qg_stream_s8.c - the state kernels of streaming models (`qgen compile --stream`, codegen/passes/stream.py).
 *
 * qg_history_s8: the window of a causal convolution over time. `window` holds the last `frames` input frames
 * of `frame_bytes` bytes each (oldest first) and lives in the model's state memory, kept between calls of
 * <prefix>_step and zeroed by <prefix>_reset. Each step shifts the window by one frame and appends the new
 * frame; the convolution then runs unpadded on the window and gives one output frame. Byte-wise, so one
 * kernel serves int8 and int16 frames. Reference: codegen/ops/stream.py (and codegen/stream.py's runner).
 * No C library calls (MicroPython native modules link none); word copies when the frame is whole words.
 */
#include <string.h>

#include "qg_kernels.h"

void qg_history_s8(const qg_history_params_t *p, const int8_t *restrict frame, int8_t *restrict window)
{
    const int32_t fb = p->frame_bytes;
    const int32_t keep = (p->frames - 1) * fb;
    int32_t i;
    if ((fb & 3) == 0) { /* the window is 4-byte aligned (state memory); so is every frame in it */
        for (i = 0; i < keep; i += 4) {
            uint32_t v;
            memcpy(&v, window + fb + i, 4);
            memcpy(window + i, &v, 4);
        }
        for (i = 0; i < fb; i += 4) {
            uint32_t v;
            memcpy(&v, frame + i, 4);
            memcpy(window + keep + i, &v, 4);
        }
        return;
    }
    for (i = 0; i < keep; i++) {
        window[i] = window[i + fb];
    }
    for (i = 0; i < fb; i++) {
        window[keep + i] = frame[i];
    }
}
