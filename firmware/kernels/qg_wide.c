/* int16 activations (mixed precision): int8 weights, int8 or int16 activations on either side.
 *
 * One body per op, stamped by a macro for each (input type, output type, accumulator type): the
 * arithmetic is the same as the int8 kernels (codegen/reference.py), only the widths change. The
 * accumulator is int32 where the generator proved sum|w| * 2^(in_bits-1) + |bias| < 2^31 (acc64 = 0),
 * int64 otherwise. Windows are clipped to the image once per output pixel, so padding costs nothing
 * in the inner loop, which walks (k_w * in_c) contiguous values per kernel row (channels-last). */
#include "qg_kernels.h"
#include "qg_mve.h"
#include "qg_simd.h"

/* acc + sum x[i] * w[i], one function per (activation type, accumulator type). The int16 ones use
 * the DSP extension where the core has it: four products in two SMLAD (SMLALD for int64), the int8
 * weights unpacked with SXTB16 to (w0, w2), (w1, w3) and re-paired to (w0, w1), (w2, w3) (PKHBT /
 * PKHTB) to match int16 activations loaded two per word. */
#if QG_DSP && (defined(__GNUC__) || defined(__clang__))
/* Out of line: inlined into the conv loops, the pairs spill to the stack inside the inner loop. */
#define QG_DOT_LINKAGE static __attribute__((noinline))
#else
#define QG_DOT_LINKAGE static inline
#endif

#if QG_DSP
static inline void unpack_s8x4_pairs(const int8_t *w, int32_t *w01, int32_t *w23)
{
    const int32_t v = qg_load_s8x4(w);
    const int32_t w02 = qg_sxtb16(v), w13 = qg_sxtb16_ror8(v);
    *w01 = qg_pkhbt(w02, w13);
    *w23 = qg_pkhtb(w13, w02);
}
#endif

QG_DOT_LINKAGE int32_t dot_int16_t_int32_t(const int16_t *x, const int8_t *w, int32_t n, int32_t acc)
{
    int32_t i = 0;
#if QG_MVE /* 8 MACs per VMLADAVA.S16 (the weights widened by the load), the tail predicated */
    for (; n >= 8; n -= 8, x += 8, w += 8) {
        acc = vmladavaq_s16(acc, vldrhq_s16(x), vldrbq_s16(w));
    }
    if (n > 0) {
        const mve_pred16_t p = vctp16q((uint32_t)n);
        acc = vmladavaq_s16(acc, vldrhq_z_s16(x, p), vldrbq_z_s16(w, p));
    }
    return acc;
#elif QG_DSP
    for (; i + 3 < n; i += 4) {
        int32_t w01, w23;
        unpack_s8x4_pairs(w + i, &w01, &w23);
        acc = __smlad(qg_load_s16x2(x + i), w01, acc);
        acc = __smlad(qg_load_s16x2(x + i + 2), w23, acc);
    }
#endif
    for (; i < n; i++) {
        acc += (int32_t)x[i] * qg_w8(&w[i]); /* widened first: int16 * int8 overflows a 16-bit int (AVR) */
    }
    return acc;
}

QG_DOT_LINKAGE int64_t dot_int16_t_int64_t(const int16_t *x, const int8_t *w, int32_t n, int64_t acc)
{
    int32_t i = 0;
#if QG_MVE /* VMLALDAVA: the same into a 64-bit accumulator */
    for (; n >= 8; n -= 8, x += 8, w += 8) {
        acc = vmlaldavaq_s16(acc, vldrhq_s16(x), vldrbq_s16(w));
    }
    if (n > 0) {
        const mve_pred16_t p = vctp16q((uint32_t)n);
        acc = vmlaldavaq_s16(acc, vldrhq_z_s16(x, p), vldrbq_z_s16(w, p));
    }
    return acc;
#elif QG_DSP
    for (; i + 3 < n; i += 4) {
        int32_t w01, w23;
        unpack_s8x4_pairs(w + i, &w01, &w23);
        acc = __smlald(qg_load_s16x2(x + i), w01, acc);
        acc = __smlald(qg_load_s16x2(x + i + 2), w23, acc);
    }
#endif
    for (; i < n; i++) {
        acc += (int64_t)x[i] * qg_w8(&w[i]);
    }
    return acc;
}

static inline int32_t dot_int8_t_int32_t(const int8_t *x, const int8_t *w, int32_t n, int32_t acc)
{
#if QG_MVE
    return qg_mve_dot_1x1_s8(x, w, n, acc);
#else
    int32_t i;
    for (i = 0; i < n; i++) {
        acc += x[i] * qg_w8(&w[i]);
    }
    return acc;
#endif
}

static inline int64_t dot_int8_t_int64_t(const int8_t *x, const int8_t *w, int32_t n, int64_t acc)
{
    return acc + dot_int8_t_int32_t(x, w, n, 0); /* int8 input is never given an int64 accumulator */
}

/* Groups: output channel oc reads the cg = in_c / groups input channels of its group; dilation: taps
 * dil_h rows / dil_w pixels apart. A window row is one dot product of its taps' channels when it is
 * contiguous in the input (dil_w 1, one group), else one per tap. */
#define QG_DEFINE_CONV2D(NAME, IN_T, OUT_T, ACC_T)                                                           \
    static void NAME(const qg_conv2d_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out)         \
    {                                                                                                        \
        const int32_t in_w = p->in_w, in_c = p->in_c, out_c = p->out_c, k_h = p->k_h, k_w = p->k_w;          \
        const int32_t dil_h = p->dil_h, dil_w = p->dil_w, cg = in_c / p->groups, og = out_c / p->groups;     \
        const int32_t whole = dil_w == 1 && cg == in_c; /* a window row is one run of the input */           \
        int32_t oy, ox, oc, ky, ky0, ky1, kx0, kx1, r;                                                       \
        for (oy = 0; oy < p->out_h; oy++) {                                                                  \
            const int32_t iy0 = oy * p->stride_h - p->pad_top;                                               \
            qg_clip_window_dilated(iy0, k_h, dil_h, (int32_t)p->in_h, &ky0, &ky1);                           \
            for (ox = 0; ox < p->out_w; ox++, out += out_c) {                                                \
                const int32_t ix0 = ox * p->stride_w - p->pad_left;                                          \
                int32_t run, runs, c0 = 0, left = og; /* input channel of oc's group; outputs left in it */   \
                qg_clip_window_dilated(ix0, k_w, dil_w, in_w, &kx0, &kx1);                                   \
                run = whole ? (kx1 - kx0) * in_c : cg;                                                       \
                runs = whole ? (kx1 > kx0) : kx1 - kx0;                                                      \
                for (oc = 0; oc < out_c; oc++) {                                                             \
                    ACC_T acc = qg_w32(&p->bias[oc]);                                                        \
                    for (ky = ky0; ky < ky1; ky++) {                                                         \
                        const IN_T *x = in + ((iy0 + ky * dil_h) * in_w + ix0 + kx0 * dil_w) * in_c + c0;    \
                        const int8_t *w = p->weights + ((oc * k_h + ky) * k_w + kx0) * cg;                   \
                        for (r = 0; r < runs; r++, x += dil_w * in_c, w += cg) {                             \
                            acc = dot_##IN_T##_##ACC_T(x, w, run, acc);                                      \
                        }                                                                                    \
                    }                                                                                        \
                    out[oc] = (OUT_T)qg_requantize_wide(acc, qg_w8(&p->shift[oc]), p->act_min, p->act_max);  \
                    if (--left == 0) {                                                                       \
                        left = og;                                                                           \
                        c0 += cg;                                                                            \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

/* Output channel oc reads input channel oc / multiplier (PyTorch's groups order). */
#define QG_DEFINE_DEPTHWISE(NAME, IN_T, OUT_T, ACC_T)                                                        \
    static void NAME(const qg_conv2d_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out)         \
    {                                                                                                        \
        const int32_t in_w = p->in_w, in_c = p->in_c, out_c = p->out_c, k_h = p->k_h, k_w = p->k_w;          \
        const int32_t mult = out_c / in_c, dil_h = p->dil_h, x_step = p->dil_w * in_c;                       \
        int32_t oy, ox, oc, ky, kx, ky0, ky1, kx0, kx1;                                                      \
        for (oy = 0; oy < p->out_h; oy++) {                                                                  \
            const int32_t iy0 = oy * p->stride_h - p->pad_top;                                               \
            qg_clip_window_dilated(iy0, k_h, dil_h, (int32_t)p->in_h, &ky0, &ky1);                           \
            for (ox = 0; ox < p->out_w; ox++, out += out_c) {                                                \
                const int32_t ix0 = ox * p->stride_w - p->pad_left;                                          \
                qg_clip_window_dilated(ix0, k_w, (int32_t)p->dil_w, in_w, &kx0, &kx1);                       \
                for (oc = 0; oc < out_c; oc++) {                                                             \
                    ACC_T acc = qg_w32(&p->bias[oc]);                                                        \
                    const IN_T *x0 = in + oc / mult;                                                         \
                    for (ky = ky0; ky < ky1; ky++) {                                                         \
                        const IN_T *x = x0 + ((iy0 + ky * dil_h) * in_w + ix0) * in_c;                       \
                        const int8_t *w = p->weights + (oc * k_h + ky) * k_w;                                \
                        for (kx = kx0; kx < kx1; kx++) {                                                     \
                            acc += (ACC_T)x[kx * x_step] * qg_w8(&w[kx]);                                    \
                        }                                                                                    \
                    }                                                                                        \
                    out[oc] = (OUT_T)qg_requantize_wide(acc, qg_w8(&p->shift[oc]), p->act_min, p->act_max);  \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

#define QG_DEFINE_FULLY_CONNECTED(NAME, IN_T, OUT_T, ACC_T)                                                  \
    static void NAME(const qg_fully_connected_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out) \
    {                                                                                                        \
        const int32_t n_in = p->in_features;                                                                 \
        int32_t o;                                                                                           \
        for (o = 0; o < p->out_features; o++) {                                                              \
            const int8_t *w = p->weights + o * n_in;                                                         \
            const ACC_T acc = dot_##IN_T##_##ACC_T(in, w, n_in, qg_w32(&p->bias[o]));                       \
            out[o] = (OUT_T)qg_requantize_wide(acc, qg_w8(&p->shift[o]), p->act_min, p->act_max);            \
        }                                                                                                    \
    }

/* Each body twice: int32 accumulator (acc64 = 0) and int64. */
#define QG_DEFINE_VARIANTS(DEFINE, STEM, IN_T, OUT_T) \
    DEFINE(STEM##_acc32, IN_T, OUT_T, int32_t)        \
    DEFINE(STEM##_acc64, IN_T, OUT_T, int64_t)

/* The public kernel: run the variant with the accumulator the generator chose. */
#define QG_DISPATCH(STEM)                  \
    {                                      \
        if (p->acc64) {                    \
            STEM##_acc64(p, in, out);      \
        } else {                           \
            STEM##_acc32(p, in, out);      \
        }                                  \
    }

#if QG_MVE
/* Helium depthwise (multiplier 1, int32 accumulator): 4 channels per vector in int32 lanes (a widening load of the
 * inputs, a gather of the 4 channels' weights of the tap, VMUL + VADD: MVE has no vector-by-vector VMLA), the last
 * ch % 4 channels under a VCTP predicate; the requantisation is VQRSHL + clamp, the rule of qg_requantize_wide
 * (shifts in [-31, 31]; a saturated left shift and the int16 clamp give the same clamped result), and a narrowing
 * store. The window is clipped to the image once per pixel, as the generic body. */
#define QG_MVE_LOAD4_int8_t(x, pr) vldrbq_z_s32(x, pr)
#define QG_MVE_LOAD4_int16_t(x, pr) vldrhq_z_s32(x, pr)
#define QG_MVE_STORE4_int8_t(y, v, pr) vstrbq_p_s32(y, v, pr)
#define QG_MVE_STORE4_int16_t(y, v, pr) vstrhq_p_s32(y, v, pr)
#define QG_DEFINE_DEPTHWISE_MVE(NAME, IN_T, OUT_T)                                                           \
    static void NAME(const qg_conv2d_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out)         \
    {                                                                                                        \
        const int32_t in_w = p->in_w, ch = p->in_c, k_h = p->k_h, k_w = p->k_w, taps = k_h * k_w;            \
        const int32_t dil_h = p->dil_h, x_step = p->dil_w * ch;                                              \
        const uint32x4_t w_at = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)taps); /* 4 channels' weights */  \
        const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);                          \
        int32_t oy, ox, c, ky, kx, ky0, ky1, kx0, kx1;                                                       \
        for (oy = 0; oy < p->out_h; oy++) {                                                                  \
            const int32_t iy0 = oy * p->stride_h - p->pad_top;                                               \
            qg_clip_window_dilated(iy0, k_h, dil_h, (int32_t)p->in_h, &ky0, &ky1);                           \
            for (ox = 0; ox < p->out_w; ox++, out += ch) {                                                   \
                const int32_t ix0 = ox * p->stride_w - p->pad_left;                                          \
                qg_clip_window_dilated(ix0, k_w, (int32_t)p->dil_w, in_w, &kx0, &kx1);                       \
                for (c = 0; c < ch; c += 4) {                                                                \
                    const mve_pred16_t pr = vctp32q((uint32_t)(ch - c));                                     \
                    int32x4_t acc = vldrwq_z_s32(p->bias + c, pr);                                           \
                    for (ky = ky0; ky < ky1; ky++) {                                                         \
                        const IN_T *x = in + (((iy0 + ky * dil_h) * in_w + ix0) * ch + c + kx0 * x_step);    \
                        const int8_t *w = p->weights + (c * taps + ky * k_w + kx0);                          \
                        for (kx = kx0; kx < kx1; kx++, x += x_step, w++) {                                   \
                            acc = vaddq_s32(acc, vmulq_s32(QG_MVE_LOAD4_##IN_T(x, pr),                       \
                                                           vldrbq_gather_offset_z_s32(w, w_at, pr)));        \
                        }                                                                                    \
                    }                                                                                        \
                    acc = vqrshlq_s32(acc, vnegq_s32(vldrbq_z_s32(p->shift + c, pr)));                       \
                    QG_MVE_STORE4_##OUT_T(out + c, vminq_s32(vmaxq_s32(acc, lo), hi), pr);                   \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

/* acc[0..3] += x . (rows w, w + k, w + 2k, w + 3k) over n values: one input load for four VMLADAVA (8 int16 or 16
 * int8 lanes), the tail under a VCTP predicate. */
QG_MVE_INLINE void dot4_int16_t(const int16_t *x, const int8_t *w, int32_t k, int32_t n, int32_t *acc)
{
    const int8_t *w1 = w + k, *w2 = w1 + k, *w3 = w2 + k;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (; n >= 8; n -= 8, x += 8, w += 8, w1 += 8, w2 += 8, w3 += 8) {
        const int16x8_t xv = vldrhq_s16(x);
        a0 = vmladavaq_s16(a0, xv, vldrbq_s16(w));
        a1 = vmladavaq_s16(a1, xv, vldrbq_s16(w1));
        a2 = vmladavaq_s16(a2, xv, vldrbq_s16(w2));
        a3 = vmladavaq_s16(a3, xv, vldrbq_s16(w3));
    }
    if (n > 0) {
        const mve_pred16_t pr = vctp16q((uint32_t)n);
        const int16x8_t xv = vldrhq_z_s16(x, pr);
        a0 = vmladavaq_s16(a0, xv, vldrbq_z_s16(w, pr));
        a1 = vmladavaq_s16(a1, xv, vldrbq_z_s16(w1, pr));
        a2 = vmladavaq_s16(a2, xv, vldrbq_z_s16(w2, pr));
        a3 = vmladavaq_s16(a3, xv, vldrbq_z_s16(w3, pr));
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

QG_MVE_INLINE void dot4_int8_t(const int8_t *x, const int8_t *w, int32_t k, int32_t n, int32_t *acc)
{
    const int8_t *w1 = w + k, *w2 = w1 + k, *w3 = w2 + k;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (; n >= 16; n -= 16, x += 16, w += 16, w1 += 16, w2 += 16, w3 += 16) {
        const int8x16_t xv = vldrbq_s8(x);
        a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w));
        a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1));
        a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2));
        a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3));
    }
    if (n > 0) {
        const mve_pred16_t pr = vctp8q((uint32_t)n);
        const int8x16_t xv = vldrbq_z_s8(x, pr);
        a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w, pr));
        a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1, pr));
        a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2, pr));
        a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3, pr));
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* Helium convolution (int32 accumulator): the generic body's walk (window clipped once per pixel, a window row one
 * run when contiguous) with four output channels of a group per pass (dot4_*: the input loaded once for the four),
 * requantised as one vector (VQRSHL + clamp, as the depthwise above) and stored narrowing; a group's last og % 4
 * channels one at a time. */
#define QG_DEFINE_CONV2D_MVE(NAME, IN_T, OUT_T)                                                              \
    static void NAME(const qg_conv2d_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out)         \
    {                                                                                                        \
        const int32_t in_w = p->in_w, in_c = p->in_c, out_c = p->out_c, k_h = p->k_h, k_w = p->k_w;          \
        const int32_t dil_h = p->dil_h, dil_w = p->dil_w, cg = in_c / p->groups, og = out_c / p->groups;     \
        const int32_t k = k_h * k_w * cg, whole = dil_w == 1 && cg == in_c;                                  \
        const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);                          \
        int32_t oy, ox, oc, ky, ky0, ky1, kx0, kx1, r;                                                       \
        for (oy = 0; oy < p->out_h; oy++) {                                                                  \
            const int32_t iy0 = oy * p->stride_h - p->pad_top;                                               \
            qg_clip_window_dilated(iy0, k_h, dil_h, (int32_t)p->in_h, &ky0, &ky1);                           \
            for (ox = 0; ox < p->out_w; ox++, out += out_c) {                                                \
                const int32_t ix0 = ox * p->stride_w - p->pad_left;                                          \
                int32_t run, runs, end;                                                                      \
                qg_clip_window_dilated(ix0, k_w, dil_w, in_w, &kx0, &kx1);                                   \
                run = whole ? (kx1 - kx0) * in_c : cg;                                                       \
                runs = whole ? (kx1 > kx0) : kx1 - kx0;                                                      \
                for (end = og, oc = 0; oc < out_c; end += og) {                                              \
                    const IN_T *x0 = in + (((iy0 + ky0 * dil_h) * in_w + ix0 + kx0 * dil_w) * in_c + oc / og * cg); \
                    for (; oc + 3 < end; oc += 4) {                                                          \
                        int32_t acc[4];                                                                      \
                        int32x4_t v;                                                                         \
                        acc[0] = p->bias[oc];                                                                \
                        acc[1] = p->bias[oc + 1];                                                            \
                        acc[2] = p->bias[oc + 2];                                                            \
                        acc[3] = p->bias[oc + 3];                                                            \
                        for (ky = ky0; ky < ky1; ky++) {                                                     \
                            const IN_T *x = x0 + (ky - ky0) * dil_h * in_w * in_c;                           \
                            const int8_t *w = p->weights + ((oc * k_h + ky) * k_w + kx0) * cg;               \
                            for (r = 0; r < runs; r++, x += dil_w * in_c, w += cg) {                         \
                                dot4_##IN_T(x, w, k, run, acc);                                              \
                            }                                                                                \
                        }                                                                                    \
                        v = vqrshlq_s32(vldrwq_s32(acc), vnegq_s32(vldrbq_s32(p->shift + oc)));              \
                        QG_MVE_STORE4_##OUT_T(out + oc, vminq_s32(vmaxq_s32(v, lo), hi), vctp32q(4));        \
                    }                                                                                        \
                    for (; oc < end; oc++) {                                                                 \
                        int32_t acc = p->bias[oc];                                                           \
                        for (ky = ky0; ky < ky1; ky++) {                                                     \
                            const IN_T *x = x0 + (ky - ky0) * dil_h * in_w * in_c;                           \
                            const int8_t *w = p->weights + ((oc * k_h + ky) * k_w + kx0) * cg;               \
                            for (r = 0; r < runs; r++, x += dil_w * in_c, w += cg) {                         \
                                acc = dot_##IN_T##_int32_t(x, w, run, acc);                                  \
                            }                                                                                \
                        }                                                                                    \
                        out[oc] = (OUT_T)qg_requantize_wide(acc, p->shift[oc], p->act_min, p->act_max);      \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

/* Helium fully connected (int32 accumulator): four rows per pass (dot4_*), one vector requantisation, the last
 * out_features % 4 rows one at a time. */
#define QG_DEFINE_FULLY_CONNECTED_MVE(NAME, IN_T, OUT_T)                                                     \
    static void NAME(const qg_fully_connected_wide_params_t *p, const IN_T *restrict in, OUT_T *restrict out) \
    {                                                                                                        \
        const int32_t n_in = p->in_features, rows = p->out_features;                                         \
        const int32x4_t lo = vdupq_n_s32(p->act_min), hi = vdupq_n_s32(p->act_max);                          \
        const int8_t *w = p->weights;                                                                        \
        int32_t o;                                                                                           \
        for (o = 0; o + 3 < rows; o += 4, w += 4 * n_in) {                                                   \
            int32_t acc[4];                                                                                  \
            int32x4_t v;                                                                                     \
            acc[0] = p->bias[o];                                                                             \
            acc[1] = p->bias[o + 1];                                                                         \
            acc[2] = p->bias[o + 2];                                                                         \
            acc[3] = p->bias[o + 3];                                                                         \
            dot4_##IN_T(in, w, n_in, n_in, acc);                                                             \
            v = vqrshlq_s32(vldrwq_s32(acc), vnegq_s32(vldrbq_s32(p->shift + o)));                           \
            QG_MVE_STORE4_##OUT_T(out + o, vminq_s32(vmaxq_s32(v, lo), hi), vctp32q(4));                     \
        }                                                                                                    \
        for (; o < rows; o++, w += n_in) {                                                                   \
            const int32_t acc = dot_##IN_T##_int32_t(in, w, n_in, p->bias[o]);                               \
            out[o] = (OUT_T)qg_requantize_wide(acc, p->shift[o], p->act_min, p->act_max);                    \
        }                                                                                                    \
    }

QG_DEFINE_FULLY_CONNECTED_MVE(fully_connected_s8_to_s16_mve, int8_t, int16_t)
QG_DEFINE_FULLY_CONNECTED_MVE(fully_connected_s16_to_s8_mve, int16_t, int8_t)
QG_DEFINE_FULLY_CONNECTED_MVE(fully_connected_s16_mve, int16_t, int16_t)

QG_DEFINE_CONV2D_MVE(conv2d_s8_to_s16_mve, int8_t, int16_t)
QG_DEFINE_CONV2D_MVE(conv2d_s16_to_s8_mve, int16_t, int8_t)
QG_DEFINE_CONV2D_MVE(conv2d_s16_mve, int16_t, int16_t)

QG_DEFINE_DEPTHWISE_MVE(depthwise_s8_to_s16_mve, int8_t, int16_t)
QG_DEFINE_DEPTHWISE_MVE(depthwise_s16_to_s8_mve, int16_t, int8_t)
QG_DEFINE_DEPTHWISE_MVE(depthwise_s16_mve, int16_t, int16_t)

/* The public depthwise kernel on Helium: the vector body for multiplier 1 with an int32 accumulator. */
#define QG_DISPATCH_DW(STEM)                      \
    {                                             \
        if (!p->acc64 && p->out_c == p->in_c) {   \
            STEM##_mve(p, in, out);               \
        } else if (p->acc64) {                    \
            STEM##_acc64(p, in, out);             \
        } else {                                  \
            STEM##_acc32(p, in, out);             \
        }                                         \
    }
#else
#define QG_DISPATCH_DW(STEM) QG_DISPATCH(STEM)
#endif

#if QG_MVE /* the int32-accumulator convolutions are the Helium bodies */
QG_DEFINE_CONV2D(conv2d_s8_to_s16_acc64, int8_t, int16_t, int64_t)
QG_DEFINE_CONV2D(conv2d_s16_to_s8_acc64, int16_t, int8_t, int64_t)
QG_DEFINE_CONV2D(conv2d_s16_acc64, int16_t, int16_t, int64_t)
#define conv2d_s8_to_s16_acc32 conv2d_s8_to_s16_mve
#define conv2d_s16_to_s8_acc32 conv2d_s16_to_s8_mve
#define conv2d_s16_acc32 conv2d_s16_mve
#else
QG_DEFINE_VARIANTS(QG_DEFINE_CONV2D, conv2d_s8_to_s16, int8_t, int16_t)
QG_DEFINE_VARIANTS(QG_DEFINE_CONV2D, conv2d_s16_to_s8, int16_t, int8_t)
QG_DEFINE_VARIANTS(QG_DEFINE_CONV2D, conv2d_s16, int16_t, int16_t)
#endif
QG_DEFINE_VARIANTS(QG_DEFINE_DEPTHWISE, depthwise_s8_to_s16, int8_t, int16_t)
QG_DEFINE_VARIANTS(QG_DEFINE_DEPTHWISE, depthwise_s16_to_s8, int16_t, int8_t)
QG_DEFINE_VARIANTS(QG_DEFINE_DEPTHWISE, depthwise_s16, int16_t, int16_t)
#if QG_MVE /* the int32-accumulator fully connected layers are the Helium bodies */
QG_DEFINE_FULLY_CONNECTED(fully_connected_s8_to_s16_acc64, int8_t, int16_t, int64_t)
QG_DEFINE_FULLY_CONNECTED(fully_connected_s16_to_s8_acc64, int16_t, int8_t, int64_t)
QG_DEFINE_FULLY_CONNECTED(fully_connected_s16_acc64, int16_t, int16_t, int64_t)
#define fully_connected_s8_to_s16_acc32 fully_connected_s8_to_s16_mve
#define fully_connected_s16_to_s8_acc32 fully_connected_s16_to_s8_mve
#define fully_connected_s16_acc32 fully_connected_s16_mve
#else
QG_DEFINE_VARIANTS(QG_DEFINE_FULLY_CONNECTED, fully_connected_s8_to_s16, int8_t, int16_t)
QG_DEFINE_VARIANTS(QG_DEFINE_FULLY_CONNECTED, fully_connected_s16_to_s8, int16_t, int8_t)
QG_DEFINE_VARIANTS(QG_DEFINE_FULLY_CONNECTED, fully_connected_s16, int16_t, int16_t)
#endif

void qg_conv2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in, int16_t *restrict out)
QG_DISPATCH(conv2d_s8_to_s16)
void qg_conv2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int8_t *restrict out)
QG_DISPATCH(conv2d_s16_to_s8)
void qg_conv2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out)
QG_DISPATCH(conv2d_s16)
void qg_depthwise_conv2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in,
                                   int16_t *restrict out)
QG_DISPATCH_DW(depthwise_s8_to_s16)
void qg_depthwise_conv2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in,
                                   int8_t *restrict out)
QG_DISPATCH_DW(depthwise_s16_to_s8)
void qg_depthwise_conv2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out)
QG_DISPATCH_DW(depthwise_s16)
void qg_fully_connected_s8_to_s16(const qg_fully_connected_wide_params_t *p, const int8_t *restrict in,
                                  int16_t *restrict out)
QG_DISPATCH(fully_connected_s8_to_s16)
void qg_fully_connected_s16_to_s8(const qg_fully_connected_wide_params_t *p, const int16_t *restrict in,
                                  int8_t *restrict out)
QG_DISPATCH(fully_connected_s16_to_s8)
void qg_fully_connected_s16(const qg_fully_connected_wide_params_t *p, const int16_t *restrict in,
                            int16_t *restrict out)
QG_DISPATCH(fully_connected_s16)

/* ---- data movement at int16: the output keeps the input's format ---- */

void qg_maxpool2d_s16(const qg_pool2d_s16_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox, ky0, ky1, kx0, kx1;
#if !QG_MVE
    int32_t c, ky, kx;
#endif
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        qg_clip_window(iy0, (int32_t)p->k_h, (int32_t)p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            qg_clip_window(ix0, (int32_t)p->k_w, in_w, &kx0, &kx1);
#if QG_MVE
            qg_mve_max_window_s16(in + ((iy0 + ky0) * in_w + ix0 + kx0) * ch, ky1 - ky0, kx1 - kx0, in_w * ch, ch, out);
#else
            for (c = 0; c < ch; c++) {
                int32_t max_i32 = -32768;
                for (ky = ky0; ky < ky1; ky++) {
                    const int16_t *x = in + ((iy0 + ky) * in_w + ix0) * ch + c;
                    for (kx = kx0; kx < kx1; kx++) {
                        max_i32 = x[kx * ch] > max_i32 ? x[kx * ch] : max_i32;
                    }
                }
                out[c] = (int16_t)max_i32;
            }
#endif
        }
    }
}

/* Average = round_shift(sum * avg_mult, avg_shift) in int64 (sum of int16 values times up to 2^23);
 * padding cells count as zero (count_include_pad). */
void qg_avgpool2d_s16(const qg_pool2d_s16_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    const int32_t ch = p->channels, in_w = p->in_w;
    int32_t oy, ox, c, ky, kx, ky0, ky1, kx0, kx1;
#if QG_MVE
    const int32_t vector = qg_mve_avg_fits_s16(p->k_h, p->k_w, p->avg_mult, p->avg_shift); /* every clipped window */
#endif
    for (oy = 0; oy < p->out_h; oy++) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        qg_clip_window(iy0, (int32_t)p->k_h, (int32_t)p->in_h, &ky0, &ky1);
        for (ox = 0; ox < p->out_w; ox++, out += ch) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            qg_clip_window(ix0, (int32_t)p->k_w, in_w, &kx0, &kx1);
#if QG_MVE
            if (vector) {
                qg_mve_avg_window_s16(in + ((iy0 + ky0) * in_w + ix0 + kx0) * ch, ky1 - ky0, kx1 - kx0, in_w * ch, ch,
                                      p->avg_mult, p->avg_shift, p->act_min, p->act_max, out);
                continue;
            }
#endif
            for (c = 0; c < ch; c++) {
                int64_t sum = 0; /* up to 255 * 255 values of |x| <= 2^15: wider than int32 */
                for (ky = ky0; ky < ky1; ky++) {
                    const int16_t *x = in + ((iy0 + ky) * in_w + ix0) * ch + c;
                    for (kx = kx0; kx < kx1; kx++) {
                        sum += x[kx * ch];
                    }
                }
                out[c] = (int16_t)qg_requantize_wide(sum * p->avg_mult, p->avg_shift, p->act_min,
                                                     p->act_max);
            }
        }
    }
}

void qg_pad_s16(const qg_pad_params_t *p, const int16_t *restrict in, int16_t *restrict out)
{
    qg_pad_elements(p, in, out, 2);
}

void qg_clamp_s16(int32_t size, int16_t lo, int16_t hi, const int16_t *in, int16_t *out)
{
    int32_t i;
    for (i = 0; i < size; i++) {
        out[i] = (int16_t)qg_saturate(in[i], lo, hi);
    }
}

/* ---- element-wise ops over any mix of int8 and int16 operands ---- */

static inline int32_t load_any(const void *p, int32_t i, int32_t bits)
{
    return bits == QG_S16 ? qg_load_s16_at(p, i) : ((const int8_t *)p)[i];
}

static inline void store_any(void *p, int32_t i, int32_t bits, int32_t v)
{
    if (bits == QG_S16) {
        qg_store_s16_at(p, i, (int16_t)v);
    } else {
        ((int8_t *)p)[i] = (int8_t)v;
    }
}

/* Same arithmetic as qg_add_s8 (align both inputs, add, requantise) on int64, so no shift can
 * overflow; element i is read before it is written, so out may be a (same-typed) input. */
void qg_add_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out)
{
    int32_t i;
    for (i = 0; i < p->size; i++) {
        const int64_t sum = qg_round_shift64(load_any(a, i, p->a_bits), p->shift_a) +
                            qg_round_shift64(load_any(b, i, p->b_bits), p->shift_b);
        store_any(out, i, p->out_bits, qg_requantize_wide(sum, p->shift, p->act_min, p->act_max));
    }
}

/* sub / maximum / minimum (op 0 / 1 / 2): the arithmetic of qg_binary_s8.c on int64 */
static void aligned_binary_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out, int32_t op)
{
    int32_t i;
    for (i = 0; i < p->size; i++) {
        const int64_t x = qg_round_shift64(load_any(a, i, p->a_bits), p->shift_a);
        const int64_t y = qg_round_shift64(load_any(b, i, p->b_bits), p->shift_b);
        const int64_t r = op == 0 ? x - y : (op == 1 ? (x > y ? x : y) : (x < y ? x : y));
        store_any(out, i, p->out_bits, qg_requantize_wide(r, p->shift, p->act_min, p->act_max));
    }
}

void qg_sub_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out)
{
    aligned_binary_wide(p, a, b, out, 0);
}

void qg_maximum_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out)
{
    aligned_binary_wide(p, a, b, out, 1);
}

void qg_minimum_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out)
{
    aligned_binary_wide(p, a, b, out, 2);
}

void qg_mul_wide(const qg_mul_wide_params_t *p, const void *a, const void *b, void *out)
{
    int32_t i, c;
    for (i = 0; i < p->size; i += p->b_size) {
        for (c = 0; c < p->b_size; c++) {
            const int64_t prod = (int64_t)load_any(a, i + c, p->a_bits) * load_any(b, c, p->b_bits);
            store_any(out, i + c, p->out_bits, qg_requantize_wide(prod, p->shift, p->act_min, p->act_max));
        }
    }
}

void qg_affine_wide(const qg_affine_wide_params_t *p, const void *in, void *out)
{
    int32_t i;
    for (i = 0; i < p->size; i++) {
        const int64_t acc = (int64_t)load_any(in, i, p->in_bits) * p->mult + p->bias;
        store_any(out, i, p->out_bits, qg_requantize_wide(acc, p->shift, p->act_min, p->act_max));
    }
}

void qg_prelu_wide(const qg_prelu_wide_params_t *p, const void *in, void *out)
{
    const int64_t one = (int64_t)1 << p->slope_frac;
    int32_t i, c;
    for (i = 0; i < p->size; i += p->channels) {
        for (c = 0; c < p->channels; c++) {
            const int64_t x = load_any(in, i + c, p->in_bits);
            store_any(out, i + c, p->out_bits,
                      qg_requantize_wide(x * (x >= 0 ? one : qg_w16(&p->slope[c])), p->shift, p->act_min, p->act_max));
        }
    }
}

void qg_concat_wide(const qg_concat_wide_params_t *p, const void *const *inputs, void *restrict out)
{
    const int32_t out_bits = p->out_bits;
    const int32_t lo = out_bits == QG_S16 ? -32768 : -128, hi = out_bits == QG_S16 ? 32767 : 127;
    int32_t b, k, i;
    for (b = 0; b < p->outer; b++) {
        int32_t at = b * p->out_block;
        for (k = 0; k < p->n_inputs; k++) {
            const int32_t n = p->block_size[k], bits = p->in_bits[k], shift = p->shift[k];
            for (i = 0; i < n; i++) {
                store_any(out, at + i, out_bits, qg_requantize_wide(load_any(inputs[k], b * n + i, bits), shift, lo, hi));
            }
            at += n;
        }
    }
}
