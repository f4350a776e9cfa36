/* Ops that make an image larger: transposed convolution and resize (nearest, bilinear), channels-last.
 * The integer rules are codegen/ops/upsample.py's (the spec); tests check C == reference byte for byte.
 *
 * Transposed convolution, gather form (no zeros inserted, none multiplied):
 *   out[oy, ox, o] = bias[o] + sum x[iy, ix, i] * w[o, ky, kx, i] over oy + pad_top = iy * stride_h + ky,
 *   ox + pad_left = ix * stride_w + kx. Output row oy meets the taps ky = ry, ry + stride_h, ... with
 *   ry = (oy + pad_top) % stride_h, at input rows iy = qy, qy - 1, ... (qy = (oy + pad_top) / stride_h);
 *   the same for columns. Dilation (dil_h, dil_w; 0 means 1): output row t = oy + pad_top meets the taps
 *   ky * dil_h = t (mod stride_h): with g = gcd(dil_h, stride_h), none when g does not divide ry (the bias
 *   alone), else ky = k0, k0 + stride_h / g, ... at input rows qy, qy - dil_h / g, ... with
 *   qy = (t - k0 * dil_h) / stride_h (phase_axis; dilation 1 is k0 = ry, input rows one apart): still no
 *   zero multiplied. The generator stores the weights in phase order (ops/upsample.py
 *   phase_weights): for each phase (ry, rx) the block (out_c, its ky's, its kx's, in_c), so one output
 *   pixel is, per output channel, one dot product of K = taps * in_c values with a gathered column (the
 *   input pixels its taps read, zeros for the taps that fall outside the input at the borders).
 *   DSP (M4/M7/M33/M55): the output pixels of one row and one column phase (ox = rx0, rx0 + stride_w, ...)
 *   share their weights, so they go 4 at a time through the int16 4-column product of the standard
 *   convolution (16 MACs per weight word: one load, two unpacks, 4 LDRD, 8 SMLAD).
 *   Plain C (M0+/M3/host): one int8 column times two weight rows at a time (qg_dot_s8.h).
 *   Groups (in_c and out_c split into `groups` equal groups, output group g reads input group g): the weights are
 *   (out_c, k_h, k_w, in_c / groups), so a phase's block holds each group's og = out_c / groups rows one after the
 *   other, of K = taps * cg values (cg = in_c / groups); each pixel is gathered and multiplied group by group
 *   (channels [g * cg, (g + 1) * cg) of each tap), the dense path with in_c -> cg (groups = 1 is the dense path).
 * Scratch (qg_conv_transpose2d_s8_buffer_size): 4 int16 columns + one int8 column of the largest phase
 * (K rounded up to 4), the plain path uses the first K bytes. `in` and `out` never alias.
 *
 * Resize: per-axis tables made by the generator. Nearest copies x[y0[oy], x0[ox]]; bilinear sums
 *   wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d) (weights Q frac_bits, w0 = 2^s - w1) in int32 and
 *   rounds once (qg_round_shift by 2 * frac_bits, half up): the output keeps the input's format.
 */
#include "qg_kernels.h"
#include "qg_dot_s8.h"

static int32_t round_up4(int32_t n)
{
    return (n + 3) & ~3;
}

/* groups (0, as emitted for groups = 1, means 1); a dilation the same */
static int32_t n_groups(uint16_t groups)
{
    return groups > 1 ? (int32_t)groups : 1;
}

static int32_t gcd32(int32_t a, int32_t b)
{
    while (b) {
        const int32_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* One axis of a phase (ops/upsample.py phase_geometry): positions t = phase (mod stride) meet the taps
 * k0, k0 + stride / g, ... < kernel (g = gcd(dil, stride)), tap j at input index (t - k0 * dil) / stride -
 * j * in_step, in_step = dil / g; no tap when g does not divide the phase. */
typedef struct {
    int32_t k0, taps, in_step;
} ct_axis_t;

/* The per-pixel helpers take the group's channels and the tap steps as arguments and are forced inline: the
 * dense layer (groups = 1, dilation 1) calls them with cg = in_c and unit steps, folded to the loops it had
 * before groups and dilation (conv_transpose_dense); grouped or dilated layers go through conv_transpose_any. phase_axis too: it runs per row
 * and phase and returns a struct. */
#if defined(__GNUC__) || defined(__clang__)
#define QG_CT_INLINE static inline __attribute__((always_inline))
#else
#define QG_CT_INLINE static inline
#endif

QG_CT_INLINE ct_axis_t phase_axis(int32_t kernel, int32_t stride, int32_t dil, int32_t phase)
{
    ct_axis_t a;
    if (dil == 1) { /* taps phase, phase + stride, ... */
        a.k0 = phase;
        a.taps = phase < kernel ? (kernel - phase + stride - 1) / stride : 0;
        a.in_step = 1;
    } else {
        const int32_t g = gcd32(dil, stride), k_step = stride / g;
        a.k0 = 0;
        a.taps = 0;
        a.in_step = dil / g;
        if (phase % g == 0) {
            while ((a.k0 * dil) % stride != phase) { /* k0 < stride / g: dil / g is invertible modulo stride / g */
                a.k0++;
            }
            a.taps = a.k0 < kernel ? (kernel - a.k0 + k_step - 1) / k_step : 0;
        }
    }
    return a;
}

int32_t qg_conv_transpose2d_s8_buffer_size(const qg_conv2d_params_t *p)
{
    const int32_t cg = p->in_c / n_groups(p->groups); /* phase 0 (k0 = 0) has the most taps */
    const int32_t k4 = round_up4(phase_axis(p->k_h, p->stride_h, n_groups(p->dil_h), 0).taps *
                                 phase_axis(p->k_w, p->stride_w, n_groups(p->dil_w), 0).taps * cg);
    return 9 * k4;
}

/* The int8 column of output pixel (qy, qx) of a phase with nty x ntx taps: the cg channels at `in` (one group's)
 * of input pixel (qy - j * sty, qx - i * stx) for tap (j, i), zeros outside the input. */
QG_CT_INLINE void gather_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int32_t cg, int32_t qy,
                            int32_t qx, int32_t nty, int32_t ntx, int32_t sty, int32_t stx, int8_t *restrict col)
{
    const int32_t in_c = p->in_c, in_h = p->in_h, in_w = p->in_w;
    int32_t j, i, c;
    for (j = 0; j < nty; j++) {
        const int32_t iy = qy - j * sty;
        for (i = 0; i < ntx; i++, col += cg) {
            const int32_t ix = qx - i * stx;
            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) {
                for (c = 0; c < cg; c++) {
                    col[c] = 0;
                }
            } else {
                const int8_t *src = in + (iy * in_w + ix) * in_c;
                for (c = 0; c < cg; c++) {
                    col[c] = src[c];
                }
            }
        }
    }
}

#if QG_DSP
#define QG_CT_COLS QG_BLOCK_COLS
#define QG_CT_GROUP QG_BLOCK_GROUP /* int16 values per group of 4 k's, all pixels (qg_dot_s8.h) */

/* The 4 column slots of the output pixels (qy, qx0 + c), c < n_valid (the others repeat the last one), nty x ntx
 * taps sty / stx input pixels apart, the cg channels at `in` (pixel stride in_c), cg a multiple of 4: each tap is
 * whole groups, widened straight from the input (zeros outside it). Tap by tap for the 4 slots together, the input
 * geometry in locals: a phase of a stride-2 transposed conv has 1-4 taps, so the set-up per slot and per tap was a
 * third of the work outside the dot products (convT 3x3 s2, 16 ch). */
QG_CT_INLINE void fill_block(const int8_t *restrict in, int32_t in_c, int32_t cg, int32_t in_h, int32_t in_w,
                             int32_t qy, int32_t qx0, int32_t n_valid, int32_t nty, int32_t ntx, int32_t sty,
                             int32_t stx, int16_t *cols)
{
    const int32_t cell = (cg >> 2) * QG_CT_GROUP, last = qx0 + n_valid - 1;
    int32_t j, i, c;
    for (j = 0; j < nty; j++) {
        const int32_t iy = qy - j * sty, row_inside = iy >= 0 && iy < in_h;
        const int32_t row = iy * in_w;
        for (i = 0; i < ntx; i++, cols += cell) {
            for (c = 0; c < QG_CT_COLS; c++) {
                const int32_t qx = qx0 + c <= last ? qx0 + c : last, ix = qx - i * stx;
                if (!row_inside || ix < 0 || ix >= in_w) {
                    qg_zero_s16(cols + 4 * c, cg >> 2);
                } else {
                    qg_widen_s16(cols + 4 * c, in + (row + ix) * in_c, cg);
                }
            }
        }
    }
}

#endif /* QG_DSP */

#if defined(__GNUC__) || defined(__clang__)
#define QG_CT_NOINLINE __attribute__((noinline))
#else
#define QG_CT_NOINLINE
#endif

/* n output pixels from `o`, `step` values apart, of a phase no tap reaches (dilation with gcd(dil, stride) > 1, a
 * kernel smaller than the stride): the bias requantised once into the first, copied to the others. Out of line:
 * phase_row's code for the phases with taps stays as it was. */
static QG_CT_NOINLINE void bias_row(int8_t *restrict o, int32_t step, int32_t n, int32_t out_c, const int32_t *bias,
                                    const int8_t *shift, int32_t act_min, int32_t act_max)
{
    int32_t i, oc;
    if (n <= 0) {
        return;
    }
    for (oc = 0; oc < out_c; oc++) {
        o[oc] = qg_requantize_s8(qg_w32(&bias[oc]), qg_w8(&shift[oc]), act_min, act_max);
    }
    for (i = 1; i < n; i++) {
        for (oc = 0; oc < out_c; oc++) {
            o[i * step + oc] = o[oc];
        }
    }
}

/* Output pixels ox = ox0, ox0 + stride_w, ... < out_w of row oy, phase (nty x ntx taps sty / stx input pixels
 * apart, weights w), the out_c rows of one group (its channels at in, out_row, bias, shift; cg of them in). Pixel
 * ox reads qx = (ox + left) / stride_w, left = pad_left less the phase's first column tap k0 * dil_w (exact). */
QG_CT_INLINE void phase_row(const qg_conv2d_params_t *p, const int8_t *restrict in, int32_t cg, int32_t out_c,
                            int8_t *restrict out_row, int32_t qy, int32_t ox0, int32_t left, int32_t nty, int32_t ntx,
                            int32_t sty, int32_t stx, const int8_t *w, const int32_t *bias, const int8_t *shift,
                            int8_t *restrict scratch)
{
    const int32_t sw = p->stride_w, out_w = p->out_w, k = nty * ntx * cg;
    const int32_t ps = p->out_stride ? p->out_stride : p->out_c; /* pixel stride: wider in a concat's slice */
    const int32_t act_min = p->act_min, act_max = p->act_max;
    int32_t ox;
    if (k == 0) { /* no tap reaches this phase: the bias alone */
        bias_row(out_row + ox0 * ps, sw * ps, (out_w - ox0 + sw - 1) / sw, out_c, bias, shift, act_min, act_max);
        return;
    }
#if QG_DSP
    {
        int16_t *cols = (int16_t *)(void *)scratch;
        int8_t *stage = scratch + 2 * QG_CT_COLS * round_up4(k);
        for (ox = ox0; ox < out_w; ox += QG_CT_COLS * sw) {
            const int32_t left_px = (out_w - ox + sw - 1) / sw;
            const int32_t n_valid = left_px < QG_CT_COLS ? left_px : QG_CT_COLS;
            int32_t c;
            if ((cg & 3) == 0) { /* past the last pixel, slots repeat it: their results are computed and dropped */
                fill_block(in, p->in_c, cg, p->in_h, p->in_w, qy, (ox + left) / sw, n_valid, nty, ntx, sty, stx, cols);
            } else { /* each slot gathered into `stage`, then widened */
                for (c = 0; c < QG_CT_COLS; c++) {
                    const int32_t oxc = ox + (c < n_valid ? c : n_valid - 1) * sw;
                    gather_s8(p, in, cg, qy, (oxc + left) / sw, nty, ntx, sty, stx, stage);
                    qg_widen_s16(cols + 4 * c, stage, k);
                }
            }
            qg_block_1x4_s8(w, k, cols, n_valid, out_c, bias, shift, act_min, act_max, out_row + ox * ps, sw * ps);
        }
    }
#else
    {
        for (ox = ox0; ox < out_w; ox += sw) {
            int8_t *o = out_row + ox * ps;
            gather_s8(p, in, cg, qy, (ox + left) / sw, nty, ntx, sty, stx, scratch);
            qg_dot_rows_s8(scratch, w, k, out_c, bias, shift, act_min, act_max, o);
        }
    }
#endif
}

/* The layer: per output row its row phase, per column phase its taps and weights, one phase row per group.
 * `dense` is a constant at both call sites: 1 (groups = 1, dilation 1) folds the group loop, the tap steps and
 * the phase geometry to the plain stride walk. */
QG_CT_INLINE void conv_transpose_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                                    int8_t *restrict scratch, int32_t dense)
{
    const int32_t sh = p->stride_h, sw = p->stride_w, k_h = p->k_h, k_w = p->k_w;
    const int32_t groups = dense ? 1 : n_groups(p->groups);
    const int32_t dh = dense ? 1 : n_groups(p->dil_h), dw = dense ? 1 : n_groups(p->dil_w);
    const int32_t cg = p->in_c / groups, og = p->out_c / groups;
    const int32_t block = (int32_t)p->out_c * cg; /* weights per tap pair, all output channels */
    const int32_t ps = p->out_stride ? p->out_stride : p->out_c;
    int32_t oy, gi;
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t t = oy + p->pad_top, ry = t % sh;
        const ct_axis_t ay = phase_axis(k_h, sh, dh, ry);
        const int32_t qy = (t - ay.k0 * dh) / sh; /* exact: k0 * dh = t (mod sh); negative when the taps start below */
        int8_t *out_row = out + oy * p->out_w * ps;
        const int8_t *w;
        int32_t r, rx, before = 0;
        for (r = 0; r < ry; r++) { /* the phases before (ry, 0): their ky's, times every kx (each kx in one phase) */
            before += phase_axis(k_h, sh, dh, r).taps;
        }
        w = p->weights + before * k_w * block;
        for (rx = 0; rx < sw; rx++) {
            const ct_axis_t ax = phase_axis(k_w, sw, dw, rx);
            /* first ox with (ox + pad_left) % sw == rx */
            const int32_t ox0 = ((rx - p->pad_left) % sw + sw) % sw, left = p->pad_left - ax.k0 * dw;
            const int32_t kg = ay.taps * ax.taps * cg; /* one group's weights per output channel */
            for (gi = 0; gi < groups; gi++) { /* group gi: input channels gi * cg.., rows gi * og.. */
                phase_row(p, in + gi * cg, cg, og, out_row + gi * og, qy, ox0, left, ay.taps, ax.taps, ay.in_step,
                          ax.in_step, w + gi * og * kg, p->bias + gi * og, p->shift + gi * og, scratch);
            }
            w += ay.taps * ax.taps * block;
        }
    }
}

#if QG_DSP
/* groups = 1, dilation 1: its own copy of the loops (the grouped / dilated arithmetic folded away) */
static QG_CT_NOINLINE void conv_transpose_dense(const qg_conv2d_params_t *p, const int8_t *restrict in,
                                                int8_t *restrict out, int8_t *restrict scratch)
{
    conv_transpose_s8(p, in, out, scratch, 1);
}
#endif

static QG_CT_NOINLINE void conv_transpose_any(const qg_conv2d_params_t *p, const int8_t *restrict in,
                                              int8_t *restrict out, int8_t *restrict scratch)
{
    conv_transpose_s8(p, in, out, scratch, 0);
}

/* DSP cores: the dense layer takes its own copy. Plain cores (M0+) keep one copy: a second one would leave
 * qg_dot_rows_s8 two call sites and GCC out of line (+1-3 % on the dense rows), for less than it saves. */
void qg_conv_transpose2d_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                            int8_t *restrict scratch)
{
#if QG_DSP
    if (n_groups(p->groups) == 1 && n_groups(p->dil_h) == 1 && n_groups(p->dil_w) == 1) {
        conv_transpose_dense(p, in, out, scratch);
        return;
    }
#endif
    conv_transpose_any(p, in, out, scratch);
}

/* int16 activations on either side (mixed precision, qg_conv2d_wide_params_t): the same phase walk in plain C,
 * each output pixel summing only its taps inside the input (no zero-filled column), in an int32 accumulator
 * or, where the generator could not prove int32 enough (acc64), an int64 one. */
#define QG_DEFINE_CONV_TRANSPOSE_WIDE(NAME, IN_T, OUT_T, ACC_T)                                                \
    static void NAME(const qg_conv2d_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out)         \
    {                                                                                                        \
        const int32_t sh = p->stride_h, sw = p->stride_w, k_h = p->k_h, k_w = p->k_w, in_c = p->in_c;       \
        const int32_t in_h = p->in_h, in_w = p->in_w, out_w = p->out_w, out_c = p->out_c;                   \
        const int32_t cg = in_c / n_groups(p->groups), og = out_c / n_groups(p->groups);                     \
        const int32_t dh = n_groups(p->dil_h), dw = n_groups(p->dil_w);                                      \
        const int32_t block = out_c * cg;                                                                    \
        int32_t oy, ox, oc, r, rx, j, i, c;                                                                  \
        for (oy = 0; oy < p->out_h; oy++) {                                                                  \
            const int32_t t = oy + p->pad_top;                                                               \
            const ct_axis_t ay = phase_axis(k_h, sh, dh, t % sh);                                            \
            const int32_t qy = (t - ay.k0 * dh) / sh, nty = ay.taps, sty = ay.in_step;                       \
            /* taps j with 0 <= qy - j * sty < in_h */                                                       \
            const int32_t j0 = qy - in_h + 1 > 0 ? (qy - in_h + sty) / sty : 0;                              \
            const int32_t j1 = qy < 0 ? 0 : (qy / sty + 1 < nty ? qy / sty + 1 : nty);                       \
            const int8_t *w_ph;                                                                              \
            int32_t before = 0;                                                                              \
            for (r = 0; r < t % sh; r++) {                                                                   \
                before += phase_axis(k_h, sh, dh, r).taps;                                                   \
            }                                                                                                \
            w_ph = p->weights + before * k_w * block;                                                        \
            for (rx = 0; rx < sw; rx++) {                                                                    \
                const ct_axis_t ax = phase_axis(k_w, sw, dw, rx);                                            \
                const int32_t ntx = ax.taps, stx = ax.in_step;                                               \
                for (ox = ((rx - p->pad_left) % sw + sw) % sw; ox < out_w; ox += sw) {                       \
                    const int32_t qx = (ox + p->pad_left - ax.k0 * dw) / sw;                                 \
                    const int32_t i0 = qx - in_w + 1 > 0 ? (qx - in_w + stx) / stx : 0;                      \
                    const int32_t i1 = qx < 0 ? 0 : (qx / stx + 1 < ntx ? qx / stx + 1 : ntx);               \
                    OUT_T *o = out + (oy * out_w + ox) * out_c;                                              \
                    for (oc = 0; oc < out_c; oc++) {                                                         \
                        ACC_T acc = qg_w32(&p->bias[oc]);                                                    \
                        for (j = j0; j < j1; j++) {                                                          \
                            for (i = i0; i < i1; i++) {                                                      \
                                const IN_T *x = in + ((qy - j * sty) * in_w + qx - i * stx) * in_c + oc / og * cg; \
                                const int8_t *w = w_ph + ((oc * nty + j) * ntx + i) * cg;                    \
                                for (c = 0; c < cg; c++) {                                                   \
                                    acc += (ACC_T)x[c] * qg_w8(&w[c]);                                       \
                                }                                                                            \
                            }                                                                                \
                        }                                                                                    \
                        o[oc] = (OUT_T)qg_requantize_wide(acc, qg_w8(&p->shift[oc]), p->act_min, p->act_max); \
                    }                                                                                        \
                }                                                                                            \
                w_ph += nty * ntx * block;                                                                   \
            }                                                                                                \
        }                                                                                                    \
    }

QG_DEFINE_CONV_TRANSPOSE_WIDE(conv_transpose_s8_to_s16_acc32, int8_t, int16_t, int32_t)
QG_DEFINE_CONV_TRANSPOSE_WIDE(conv_transpose_s16_to_s8_acc32, int16_t, int8_t, int32_t)
QG_DEFINE_CONV_TRANSPOSE_WIDE(conv_transpose_s16_to_s8_acc64, int16_t, int8_t, int64_t)
QG_DEFINE_CONV_TRANSPOSE_WIDE(conv_transpose_s16_acc32, int16_t, int16_t, int32_t)
QG_DEFINE_CONV_TRANSPOSE_WIDE(conv_transpose_s16_acc64, int16_t, int16_t, int64_t)

/* int8 input never needs acc64 (weight_formats keeps it within int32) */
void qg_conv_transpose2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in, int16_t *restrict out)
{
    conv_transpose_s8_to_s16_acc32(p, in, out);
}

void qg_conv_transpose2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int8_t *restrict out)
{
    if (p->acc64) {
        conv_transpose_s16_to_s8_acc64(p, in, out);
    } else {
        conv_transpose_s16_to_s8_acc32(p, in, out);
    }
}

void qg_conv_transpose2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    if (p->acc64) {
        conv_transpose_s16_acc64(p, in, out);
    } else {
        conv_transpose_s16_acc32(p, in, out);
    }
}

/* ------------------------------------------------------------------------------------------ resize */

/* Nearest: a copy per output pixel. T the element type; parameters are read into locals (stores through T
 * pointers may alias them). Both forms write output pixels `out_stride` elements apart when it is set (the
 * resize writes its channels of a concat output: codegen/passes/concat_in_place.py). */
#define QG_RESIZE_NEAREST(T)                                                                               \
    {                                                                                                      \
        const int32_t c_n = p->channels, in_row = (int32_t)p->in_w * p->channels, out_w = p->out_w;         \
        const int32_t o_s = p->out_stride ? p->out_stride : c_n;                                            \
        const int16_t *y0 = p->y0, *x0 = p->x0;                                                             \
        int32_t oy, ox, c;                                                                                  \
        for (oy = 0; oy < p->out_h; oy++) {                                                                 \
            const T *r0 = in + qg_w16(&y0[oy]) * in_row;                                                    \
            for (ox = 0; ox < out_w; ox++, out += o_s) {                                                    \
                const T *src = r0 + qg_w16(&x0[ox]) * c_n;                                                  \
                for (c = 0; c < c_n; c++) {                                                                 \
                    out[c] = src[c];                                                                        \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

/* Bilinear with weights of S fraction bits, as the exact rewrite w0 * a + w1 * b = a * 2^S + w1 * (b - a)
 * (three multiplies per value); the sum is a convex combination times 2^(2S): no overflow, no saturation,
 * and (acc + 2^(2S-1)) >> 2S is qg_round_shift's value. S is a constant in the common case (the generator's
 * 10 for int8, 7 for int16), so the shifts fold into the adds. */
#define QG_RESIZE_BILINEAR(T, S)                                                                           \
    {                                                                                                      \
        const int32_t c_n = p->channels, in_row = (int32_t)p->in_w * p->channels, out_w = p->out_w;         \
        const int32_t s = (S), half = (int32_t)1 << (2 * s - 1);                                            \
        const int32_t o_s = p->out_stride ? p->out_stride : c_n;                                            \
        const int16_t *y0 = p->y0, *x0 = p->x0, *y1 = p->y1, *x1 = p->x1, *wy = p->wy, *wx = p->wx;         \
        int32_t oy, ox, c;                                                                                  \
        for (oy = 0; oy < p->out_h; oy++) {                                                                 \
            const T *r0 = in + qg_w16(&y0[oy]) * in_row, *r1 = in + qg_w16(&y1[oy]) * in_row;               \
            const int32_t wy1 = qg_w16(&wy[oy]);                                                            \
            for (ox = 0; ox < out_w; ox++, out += o_s) {                                                    \
                const T *a = r0 + qg_w16(&x0[ox]) * c_n, *b = r0 + qg_w16(&x1[ox]) * c_n;                   \
                const T *d = r1 + qg_w16(&x0[ox]) * c_n, *e = r1 + qg_w16(&x1[ox]) * c_n;                   \
                const int32_t wx1 = qg_w16(&wx[ox]);                                                        \
                for (c = 0; c < c_n; c++) {                                                                 \
                    const int32_t top = a[c] * ((int32_t)1 << s) + wx1 * (b[c] - a[c]);                     \
                    const int32_t bottom = d[c] * ((int32_t)1 << s) + wx1 * (e[c] - d[c]);                  \
                    out[c] = (T)((top * ((int32_t)1 << s) + wy1 * (bottom - top) + half) >> (2 * s));       \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

void qg_resize_s8(const qg_resize_params_t *p, const int8_t *restrict in, int8_t *restrict out)
{
    if (!p->bilinear) {
        QG_RESIZE_NEAREST(int8_t)
    } else if (p->frac_bits == 10) {
        QG_RESIZE_BILINEAR(int8_t, 10)
    } else {
        QG_RESIZE_BILINEAR(int8_t, (int32_t)p->frac_bits)
    }
}

void qg_resize_s16(const qg_resize_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    if (!p->bilinear) {
        QG_RESIZE_NEAREST(int16_t)
    } else if (p->frac_bits == 7) {
        QG_RESIZE_BILINEAR(int16_t, 7)
    } else {
        QG_RESIZE_BILINEAR(int16_t, (int32_t)p->frac_bits)
    }
}
