/* Transposed convolution with kernel == stride (no crop, dilation 1, groups 1): the U-Net decoder's
 * ConvTranspose2d(k=2, stride=2), int8, channels-last. The integer rule is codegen/ops/upsample.py's (the spec).
 *
 * With k_h == stride_h and k_w == stride_w every output pixel gets exactly one tap:
 *   out[sh * iy + dy, sw * ix + dx, o] = bias[o] + sum_i x[iy, ix, i] * w[o, dy, dx, i],
 * so the input pixels' output blocks do not overlap. For a fixed input row iy and tap row dy, the outputs over
 * ix, dx, o are one contiguous run of output row sh * iy + dy (sw * out_c values per input pixel): a 1x1
 * convolution of input row iy, in_c -> sw * out_c channels with the weight rows in (dx, o) order. The generator's
 * phase order (ops/upsample.py phase_weights: phases (dy, dx), each block (out_c, in_c)) is that order already:
 * tap row dy's weights are the sw * out_c rows from dy * sw * out_c * in_c. `bias` and `shift` hold sw * out_c
 * values (the per-channel ones repeated sw times, in the same (dx, o) order).
 * So each (iy, dy) is one qg_conv2d_s8 call on one input row (its unpadded 1x1 paths: the DSP pointwise block
 * on M4/M7, the 4-row dot products on M0+, the Helium blocks on M55): the same integers (one tap, one rounding).
 * A wider output pixel (out_stride: writing its channels of a concat in place) breaks the run at every dx: then
 * one call per (iy, dy, dx), out_c rows, output pixels sw * out_stride apart.
 * Scratch: qg_conv2d_s8's for a 1x1 conv of in_c channels (qg_conv_transpose2d_pointwise_s8_buffer_size).
 * `in` and `out` never alias.
 */
#include "qg_kernels.h"

/* The 1x1 convolution of one input row: in_w pixels of in_c channels -> `rows` output channels each, output
 * pixels `pixel` values apart (0: rows); the callers point `weights` at each call's rows. */
static qg_conv2d_params_t row_conv(const qg_conv2d_params_t *p, int32_t rows, int32_t pixel)
{
    qg_conv2d_params_t pw;
    pw.in_h = 1;
    pw.in_w = p->in_w;
    pw.in_c = p->in_c;
    pw.out_h = 1;
    pw.out_w = p->in_w;
    pw.out_c = (uint16_t)rows;
    pw.out_stride = (uint16_t)pixel;
    pw.k_h = 1;
    pw.k_w = 1;
    pw.stride_h = 1;
    pw.stride_w = 1;
    pw.pad_top = 0;
    pw.pad_left = 0;
    pw.dil_h = 1;
    pw.dil_w = 1;
    pw.groups = 1;
    pw.act_min = p->act_min;
    pw.act_max = p->act_max;
    pw.weights = p->weights;
    pw.bias = p->bias;
    pw.shift = p->shift;
    return pw;
}

int32_t qg_conv_transpose2d_pointwise_s8_buffer_size(const qg_conv2d_params_t *p)
{
    const qg_conv2d_params_t pw = row_conv(p, (int32_t)p->stride_w * p->out_c, 0);
    return qg_conv2d_s8_buffer_size(&pw);
}

void qg_conv_transpose2d_pointwise_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                                      int8_t *restrict scratch)
{
    const int32_t sh = p->stride_h, sw = p->stride_w, in_w = p->in_w, in_c = p->in_c, out_c = p->out_c;
    const int32_t ps = p->out_stride ? p->out_stride : out_c; /* pixel stride: wider in a concat's slice */
    const int32_t run = ps == out_c; /* an input pixel's sw * out_c outputs of a row are contiguous */
    const int32_t row_len = (int32_t)p->out_w * ps, w_row = sw * out_c * in_c; /* weights per tap row dy */
    qg_conv2d_params_t pw = row_conv(p, run ? sw * out_c : out_c, run ? 0 : sw * ps);
    int32_t iy, dy, dx;
    for (iy = 0; iy < p->in_h; iy++) {
        const int8_t *x = in + iy * in_w * in_c;
        for (dy = 0; dy < sh; dy++) {
            int8_t *o = out + (iy * sh + dy) * row_len;
            const int8_t *w = p->weights + dy * w_row;
            if (run) {
                pw.weights = w;
                qg_conv2d_s8(&pw, x, o, scratch);
            } else {
                for (dx = 0; dx < sw; dx++) { /* bias and shift: the first out_c (every dx repeats them) */
                    pw.weights = w + dx * out_c * in_c;
                    qg_conv2d_s8(&pw, x, o + dx * ps, scratch);
                }
            }
        }
    }
}
