/*
 * qg_kernels.h - qgen's integer kernel library (int8 activations and weights, int32 accumulators).
 *
 * Layout: activations are channels-last (H, W, C) without a batch dimension; weights are
 * (Cout, KH, KW, Cin) for conv, (Cout, KH, KW) for depthwise (Cout = Cin * multiplier, output
 * channel o reads input channel o / multiplier), (Out, In) for fully connected.
 * Q-format: symmetric, no zero point, so zero padding is exact. Every output is requantised with
 * qg_requantize_s8 (qg_fixed.h) using a per-output-channel shift and the fused activation bounds.
 * The reference for every kernel is codegen/reference.py; tests check C == reference byte for byte.
 *
 * Buffers: `in` and `out` never alias (the memory planner guarantees it), hence `restrict` -- except
 * that the dense int8 conv, depthwise and pooling kernels finish output pixels in increasing order,
 * so the planner may start their `out` a proven distance below a dying `in` (overlapping in place,
 * codegen/kernel_abi.py overlap_distance); those take `in`/`out` without `restrict`.
 * Scratch: kernels that want working memory (e.g. im2col) say how much through their
 * `*_buffer_size()` partner; the generator reserves it in the arena (4-byte aligned) and passes it
 * as `scratch` (NULL when the size is 0). codegen/kernel_abi.py mirrors every `*_buffer_size()`.
 * These kernels cannot fail on valid parameters, which the generator proves; they return nothing.
 */
#ifndef QG_KERNELS_H
#define QG_KERNELS_H

/* The interface version of this library: its parameter structs and prototypes as generated model code
 * uses them. Raised whenever one changes; every generated <prefix>_model.c checks it with #error, so a
 * model built against another version of these kernels fails to compile instead of miscomputing. */
#define QG_KERNELS_ABI 2

#include <stdint.h>
#include "qg_fixed.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define QG_ALIGN(n) __attribute__((aligned(n)))
#else
#define QG_ALIGN(n)
#endif

/* Constant data in flash. On 8-bit AVR, flash is a separate address space read with LPM: avr-gcc keeps plain
 * `const` data in SRAM (copied there at start-up). There the generated arrays and parameter structs are QG_CONST
 * (PROGMEM); kernels that read them load through qg_w8/qg_wu8/qg_w16/qg_w32 (pgm_read_*, first 64 KB of flash),
 * and the generated model copies a layer's parameter struct into RAM (<PREFIX>_PARAMS) before calling its kernel.
 * QG_FLASH_DATA is 1 there. Everywhere else these are plain `const` data and plain dereferences: the same code.
 * Which kernels read their arrays through qg_w*: codegen/emit/c.py FLASH_READERS (the others keep theirs in RAM). */
#if defined(__AVR__)
#include <avr/pgmspace.h>
#define QG_FLASH_DATA 1
#define QG_CONST PROGMEM
#define qg_w8(p) ((int8_t)pgm_read_byte(p))
#define qg_wu8(p) ((uint8_t)pgm_read_byte(p))
#define qg_w16(p) ((int16_t)pgm_read_word(p))
#define qg_w32(p) ((int32_t)pgm_read_dword(p))
#else
#define QG_FLASH_DATA 0
#define QG_CONST
#define qg_w8(p) (*(p))
#define qg_wu8(p) (*(p))
#define qg_w16(p) (*(p))
#define qg_w32(p) (*(p))
#endif

/* A compile-time check in C99 (which has no _Static_assert): an array of size -1 does not compile.
 * `name` makes the file-scope typedef unique, and names the failed check in the compiler's error. */
#define QG_STATIC_ASSERT(cond, name) typedef char qg_static_assert_##name[(cond) ? 1 : -1]

typedef struct {
    uint16_t in_h, in_w, in_c;
    uint16_t out_h, out_w, out_c;
    uint8_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    uint8_t dil_h, dil_w;  /* dilation (>= 1): tap (ky, kx) reads input offset (ky * dil_h, kx * dil_w) */
    int8_t act_min, act_max;
    uint16_t groups;       /* conv: in_c and out_c split into `groups` (>= 1) equal groups, output group g reads
                              input group g (PyTorch order); depthwise, sparse, clustered: 1 */
    uint16_t out_stride;   /* qg_conv2d_s8, qg_conv_transpose2d_s8: elements from one output pixel to the
                              next; 0 means out_c. A concat written in place (codegen/passes/concat_in_place.py)
                              sets its channel count */
    const int8_t *weights; /* conv (out_c, k_h, k_w, in_c / groups); depthwise (out_c, k_h, k_w) */
    const int32_t *bias;   /* (out_c), frac = in_frac + weight_frac[c] */
    const int8_t *shift;   /* (out_c) requantisation shift in [-31, 31] */
} qg_conv2d_params_t;

typedef struct {
    uint16_t in_features, out_features;
    int8_t act_min, act_max;
    const int8_t *weights; /* (out_features, in_features) */
    const int32_t *bias;
    const int8_t *shift;
} qg_fully_connected_params_t;

typedef struct {
    uint16_t in_h, in_w, channels;
    uint16_t out_h, out_w;
    uint8_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int8_t act_min, act_max;
    int32_t avg_mult; /* average = round_shift(sum * avg_mult, avg_shift); unused by max pooling */
    int8_t avg_shift;
} qg_pool2d_params_t;

typedef struct {
    int32_t size;
    int8_t shift_a, shift_b; /* align each input to a common frac (round_shift; negative = exact left) */
    int8_t shift;            /* requantise the sum to the output frac */
    int8_t act_min, act_max;
} qg_add_params_t;

void qg_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out,
                  int8_t *restrict scratch);
int32_t qg_conv2d_s8_buffer_size(const qg_conv2d_params_t *p);
void qg_depthwise_conv2d_s8(const qg_conv2d_params_t *p, const int8_t *in, int8_t *out,
                            int8_t *restrict scratch);
int32_t qg_depthwise_conv2d_s8_buffer_size(const qg_conv2d_params_t *p);
void qg_fully_connected_s8(const qg_fully_connected_params_t *p, const int8_t *restrict in,
                           int8_t *restrict out, int8_t *restrict scratch);
int32_t qg_fully_connected_s8_buffer_size(const qg_fully_connected_params_t *p);
void qg_maxpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out);
void qg_avgpool2d_s8(const qg_pool2d_params_t *p, const int8_t *in, int8_t *out);
/* Pooling over explicit windows (qg_pool2d_s8.c, qg_pool2d_s16.c): PyTorch's ceil_mode and
 * count_include_pad=False averages, adaptive pooling (the rules are in codegen/ops/pool.py). Output pixel
 * (oy, ox) reads input rows [rows[3*oy], rows[3*oy+1]) and columns [cols[3*ox], cols[3*ox+1]) (clipped to
 * the input, never empty); the average of a window is round_shift(sum * m, avg_shift) with
 * m = mult[rows[3*oy+2] * col_classes + cols[3*ox+2]] = round(2^avg_shift / d) for its divisor d (codegen/fixed.py
 * avg_multiplier). Max ignores avg_shift, col_classes and mult (NULL). `in` and `out` never overlap. */
typedef struct {
    uint16_t in_w, channels;
    uint16_t out_h, out_w;
    uint16_t col_classes;
    int16_t act_min, act_max; /* the output range (int8 or int16 kernel) */
    int8_t avg_shift;
    const int16_t *rows; /* out_h triples: first row, end row, divisor class */
    const int16_t *cols; /* out_w triples: first column, end column, divisor class */
    const int32_t *mult; /* average: one multiplier per (row class, column class) */
} qg_pool2d_windows_params_t;
void qg_maxpool2d_windows_s8(const qg_pool2d_windows_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_avgpool2d_windows_s8(const qg_pool2d_windows_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_maxpool2d_windows_s16(const qg_pool2d_windows_params_t *p, const int16_t *restrict in,
                              int16_t *restrict out);
void qg_avgpool2d_windows_s16(const qg_pool2d_windows_params_t *p, const int16_t *restrict in,
                              int16_t *restrict out);
/* Mean or max over the last axis (qg_reduce.c): `rows` rows of `size` values -> one value per row.
 * Mean: round_shift(sum * avg_mult, avg_shift) clamped to [act_min, act_max] (the average rule); max: the
 * largest value. The output keeps the input's format and type (s8: int8, s16: int16). */
typedef struct {
    int32_t rows, size;
    uint8_t is_max;
    int16_t act_min, act_max;
    int32_t avg_mult;
    int8_t avg_shift;
} qg_reduce_params_t;
void qg_reduce_s8(const qg_reduce_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_reduce_s16(const qg_reduce_params_t *p, const int16_t *restrict in, int16_t *restrict out);
/* Element-wise kernels may run in place (out == an input): each output element is computed from the
 * same element of the inputs, read before it is written, so these take no `restrict`. */
void qg_add_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_clamp_s8(int32_t size, int8_t lo, int8_t hi, const int8_t *in, int8_t *out);
/* out[i] = table[in[i] + 128]: any element-wise function, tabulated by the generator */
typedef struct {
    int32_t size;
    const int8_t *table; /* 256 entries */
} qg_lut_params_t;
void qg_lut_s8(const qg_lut_params_t *p, const int8_t *in, int8_t *out);
/* out[i] = data[i]: a constant tensor (positional encoding, cls token) copied from flash into the arena */
typedef struct {
    int32_t size;
    const int8_t *data;
} qg_const_params_t;
void qg_const_s8(const qg_const_params_t *p, int8_t *out);
typedef struct {
    int32_t size;
    const int16_t *data;
} qg_const_s16_params_t;
void qg_const_s16(const qg_const_s16_params_t *p, int16_t *out);

/* softmax over `rows` rows of `row_size` int8 values; output s8.f7 */
typedef struct {
    int32_t rows, row_size;
    const int16_t *exp_table; /* exp(-k * 2^-in_frac) in Q14, k = 0..255 */
} qg_softmax_params_t;
void qg_softmax_s8(const qg_softmax_params_t *p, const int8_t *in, int8_t *out);

/* softmax after a constant mask: row r keeps entry j where bit j % 8 of keep[(r % mask_rows) * ceil(row_size / 8)
 * + j / 8] is set; masked entries add 0 to the exp sum and output 0 (qg_masked_softmax_s8.c); output s8.f7 */
typedef struct {
    int32_t rows, row_size, mask_rows; /* row_size <= 65535 */
    const int16_t *exp_table;          /* exp(-k * 2^-in_frac) in Q14, k = 0..255 */
    const uint8_t *keep;               /* bitmap, mask_rows rows of ceil(row_size / 8) bytes */
} qg_masked_softmax_params_t;
void qg_masked_softmax_s8(const qg_masked_softmax_params_t *p, const int8_t *in, int8_t *out);

/* log_softmax over `rows` rows of `row_size` (<= 65536) int8 values: out = round_half_up(2^out_frac *
 * ((x - max) * 2^-in_frac - ln(sum exp_table[max - x] / 2^14))), saturated at -128 (qg_log_softmax.c) */
typedef struct {
    int32_t rows, row_size;
    int32_t d_shift, l_shift, out_shift; /* 16 + a - in_frac, a, 16 + a - out_frac with a = max(in_frac, 0) */
    const int16_t *exp_table;            /* exp(-k * 2^-in_frac) in Q14, k = 0..255 */
} qg_log_softmax_params_t;
void qg_log_softmax_s8(const qg_log_softmax_params_t *p, const int8_t *in, int8_t *out);

/* Ops that make an image larger (qg_upsample_s8.c; the integer rules are in codegen/ops/upsample.py).
 * Transposed convolution, gather form (no zero MACs): the conv parameters with pad_top/pad_left = the crop
 * (torch's padding) and the weights in phase order (ops/upsample.py phase_weights). */
void qg_conv_transpose2d_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                            int8_t *restrict scratch);
int32_t qg_conv_transpose2d_s8_buffer_size(const qg_conv2d_params_t *p);
/* kernel == stride, no crop, dilation 1, groups 1 (qg_conv_transpose_pw_s8.c): qg_conv2d_s8's 1x1 paths per input
 * row and tap row; bias and shift hold stride_w * out_c values (the per-channel ones repeated stride_w times). */
void qg_conv_transpose2d_pointwise_s8(const qg_conv2d_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                                      int8_t *restrict scratch);
int32_t qg_conv_transpose2d_pointwise_s8_buffer_size(const qg_conv2d_params_t *p);
/* Nearest: out = x[y0[oy], x0[ox]]; bilinear: round_shift(wy0 * (wx0 * x[y0, x0] + wx1 * x[y0, x1]) +
 * wy1 * (wx0 * x[y1, x0] + wx1 * x[y1, x1]), 2 * frac_bits), w0 = 2^frac_bits - w1; same format out. */
typedef struct {
    uint16_t in_h, in_w, channels;
    uint16_t out_h, out_w;
    uint8_t bilinear, frac_bits;
    uint16_t out_stride;    /* elements from one output pixel to the next (0: channels; a concat's slice: wider) */
    const int16_t *y0, *x0; /* source row / column per output row / column */
    const int16_t *y1, *x1; /* bilinear: the second source row / column (NULL for nearest) */
    const int16_t *wy, *wx; /* bilinear: Q frac_bits weight of y1 / x1 (NULL for nearest) */
} qg_resize_params_t;
void qg_resize_s8(const qg_resize_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_resize_s16(const qg_resize_params_t *p, const int16_t *restrict in, int16_t *restrict out);

/* Arithmetic of two activations, scalar affine and PReLU (qg_binary_s8.c; the integer rules are written
 * in codegen/ops/eltwise.py). Element-wise: out may be the (same-sized) input a, never a broadcast b.
 * sub, maximum, minimum take add's parameters: both inputs aligned by shift_a / shift_b, combined in
 * int32, requantised by shift. */
void qg_sub_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_maximum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_minimum_s8(const qg_add_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
typedef struct {
    int32_t size;   /* output elements */
    int32_t b_size; /* elements of b: size (same shape), or C (b is one (1, 1, C) pixel used for every pixel) */
    int8_t shift;   /* requantise a * b (frac fa + fb) to the output frac */
    int8_t act_min, act_max;
} qg_mul_params_t;
void qg_mul_s8(const qg_mul_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
/* Broadcasting add, sub, mul, maximum, minimum of two activations (qg_bcast_s8.c): out is the row-major
 * (n0, n1, n2, n3) array, a and b are read at i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3 with their own element
 * strides (0 along a dim the operand broadcasts over). add/sub/maximum/minimum align by shift_a / shift_b as
 * qg_add_params_t; mul multiplies (shift_a = shift_b = 0). out may be a full-size operand, never a broadcast one.
 * _s8: int8 operands (a_bits, b_bits, out_bits unused); _wide: any mix of QG_S8 / QG_S16 operands. */
typedef struct {
    int32_t n0, n1, n2, n3;
    int32_t a_s0, a_s1, a_s2, a_s3;
    int32_t b_s0, b_s1, b_s2, b_s3;
    uint8_t a_bits, b_bits, out_bits;
    int8_t shift_a, shift_b, shift;
    int16_t act_min, act_max;
} qg_bcast_params_t;
void qg_add_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_sub_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_mul_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_maximum_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_minimum_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void qg_add_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out);
void qg_sub_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out);
void qg_mul_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out);
void qg_maximum_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out);
void qg_minimum_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out);
/* out = requantise(x * mult + bias, shift): x * scale + offset for scalar constants */
typedef struct {
    int32_t size;
    int32_t bias;  /* offset at frac in_frac + mult_frac, |bias| < 2^29 */
    int16_t mult;  /* scale at frac mult_frac */
    int8_t shift;  /* in_frac + mult_frac - out_frac */
    int8_t act_min, act_max;
} qg_affine_params_t;
void qg_affine_s8(const qg_affine_params_t *p, const int8_t *in, int8_t *out);
/* out = requantise(x >= 0 ? x * 2^slope_frac : x * slope[c], shift), c = element index % channels */
typedef struct {
    int32_t size, channels;
    int8_t slope_frac; /* the slopes' frac, 0..14 */
    int8_t shift;      /* in_frac + slope_frac - out_frac */
    int8_t act_min, act_max;
    const int16_t *slope; /* (channels) */
} qg_prelu_params_t;
void qg_prelu_s8(const qg_prelu_params_t *p, const int8_t *in, int8_t *out);

typedef struct {
    uint16_t in_h, in_w, channels;
    uint8_t pad_top, pad_left, pad_bottom, pad_right;
} qg_pad_params_t;
void qg_pad_s8(const qg_pad_params_t *p, const int8_t *restrict in, int8_t *restrict out);
/* the body of qg_pad_s8 / qg_pad_s16: elements of `elem_bytes` bytes */
void qg_pad_elements(const qg_pad_params_t *p, const void *restrict in, void *restrict out, int32_t elem_bytes);

/* Concatenation: the output is `outer` blocks of `out_block` bytes; block b takes block_size[i]
 * bytes from each input i in turn, requantised by shift[i] (round_shift + saturate; 0 = copy). */
typedef struct {
    int32_t n_inputs, outer, out_block;
    const int32_t *block_size;
    const int8_t *shift;
} qg_concat_params_t;
/* inputs[k] == NULL: part k is already in `out` (its producer wrote it in place); it is skipped. */
void qg_concat_s8(const qg_concat_params_t *p, const int8_t *const *inputs, int8_t *out);

/* float <-> Q-format at the model boundary. `scale` = 2^frac, `inv_scale` = 2^-frac.
 * Images convert between PyTorch's (C, H, W) float layout and qgen's (H, W, C) int8 layout. */
void qg_quantize_chw_to_hwc_f32(const float *in, int8_t *out, int32_t c, int32_t h, int32_t w, float scale);
void qg_dequantize_hwc_to_chw_s8(const int8_t *in, float *out, int32_t c, int32_t h, int32_t w,
                                 float inv_scale);

/* ---- int16 activations (mixed precision) ----
 * A layer may keep its activations in int16 (value = int * 2^-frac, as for int8) while weights stay
 * int8. Conv, depthwise and fully connected exist for every mix of int8/int16 input and output
 * (`_s8_to_s16`, `_s16_to_s8`, `_s16`); `acc64` selects an int64 accumulator where the generator
 * could not prove that sum|w| * 2^15 + |bias| fits int32. Outputs use qg_requantize_wide.
 * Pooling, clamp and padding keep their input's type; add and concat take any mix of types
 * (QG_S8 / QG_S16 per operand). These kernels write output pixels in increasing order, all output
 * channels of a pixel after reading its inputs, and take no scratch. Buffers in the arena are
 * 4-byte aligned; QG_AS_S16 views arena bytes as int16. */
#define QG_AS_S16(p) ((int16_t *)(void *)(p))
#define QG_S8 8
#define QG_S16 16

typedef struct {
    uint16_t in_h, in_w, in_c;
    uint16_t out_h, out_w, out_c;
    uint8_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    uint8_t dil_h, dil_w;    /* as qg_conv2d_params_t */
    uint16_t groups;         /* as qg_conv2d_params_t */
    uint8_t acc64;           /* 1: accumulate in int64 */
    int16_t act_min, act_max;
    const int8_t *weights;   /* as qg_conv2d_params_t */
    const int32_t *bias;
    const int8_t *shift;
} qg_conv2d_wide_params_t;

typedef struct {
    uint16_t in_features, out_features;
    uint8_t acc64;
    int16_t act_min, act_max;
    const int8_t *weights;
    const int32_t *bias;
    const int8_t *shift;
} qg_fully_connected_wide_params_t;

typedef struct {
    uint16_t in_h, in_w, channels;
    uint16_t out_h, out_w;
    uint8_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int16_t act_min, act_max;
    int32_t avg_mult;
    int8_t avg_shift;
} qg_pool2d_s16_params_t;

typedef struct {
    int32_t size;
    uint8_t a_bits, b_bits, out_bits; /* QG_S8 or QG_S16 */
    int8_t shift_a, shift_b, shift;
    int16_t act_min, act_max;
} qg_add_wide_params_t;

typedef struct {
    int32_t n_inputs, outer, out_block; /* sizes in elements */
    const int32_t *block_size;
    const int8_t *shift;
    const uint8_t *in_bits; /* QG_S8 or QG_S16 per input */
    uint8_t out_bits;
} qg_concat_wide_params_t;

void qg_conv2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in, int16_t *restrict out);
void qg_conv2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int8_t *restrict out);
void qg_conv2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out);
/* transposed convolution with int16 activations (qg_upsample_s8.c): weights in phase order, no scratch */
void qg_conv_transpose2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in,
                                   int16_t *restrict out);
void qg_conv_transpose2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in,
                                   int8_t *restrict out);
void qg_conv_transpose2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out);
void qg_depthwise_conv2d_s8_to_s16(const qg_conv2d_wide_params_t *p, const int8_t *restrict in,
                                   int16_t *restrict out);
void qg_depthwise_conv2d_s16_to_s8(const qg_conv2d_wide_params_t *p, const int16_t *restrict in,
                                   int8_t *restrict out);
void qg_depthwise_conv2d_s16(const qg_conv2d_wide_params_t *p, const int16_t *restrict in, int16_t *restrict out);
void qg_fully_connected_s8_to_s16(const qg_fully_connected_wide_params_t *p, const int8_t *restrict in,
                                  int16_t *restrict out);
void qg_fully_connected_s16_to_s8(const qg_fully_connected_wide_params_t *p, const int16_t *restrict in,
                                  int8_t *restrict out);
void qg_fully_connected_s16(const qg_fully_connected_wide_params_t *p, const int16_t *restrict in,
                            int16_t *restrict out);
void qg_maxpool2d_s16(const qg_pool2d_s16_params_t *p, const int16_t *restrict in, int16_t *restrict out);
void qg_avgpool2d_s16(const qg_pool2d_s16_params_t *p, const int16_t *restrict in, int16_t *restrict out);
void qg_pad_s16(const qg_pad_params_t *p, const int16_t *restrict in, int16_t *restrict out);
/* element-wise: may run in place like their int8 twins */
void qg_clamp_s16(int32_t size, int16_t lo, int16_t hi, const int16_t *in, int16_t *out);
void qg_add_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out);
/* sub, maximum, minimum, mul, affine, prelu over any mix of int8 / int16 operands (QG_S8 / QG_S16):
 * the int8 kernels' arithmetic (qg_binary_s8.c) with int64 requantisation */
typedef struct {
    int32_t size, b_size; /* as qg_mul_params_t */
    uint8_t a_bits, b_bits, out_bits;
    int8_t shift;
    int16_t act_min, act_max;
} qg_mul_wide_params_t;
typedef struct {
    int32_t size;
    int32_t bias;
    int16_t mult;
    int8_t shift;
    uint8_t in_bits, out_bits;
    int16_t act_min, act_max;
} qg_affine_wide_params_t;
typedef struct {
    int32_t size, channels;
    int8_t slope_frac, shift;
    uint8_t in_bits, out_bits;
    int16_t act_min, act_max;
    const int16_t *slope;
} qg_prelu_wide_params_t;
void qg_sub_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out);
void qg_maximum_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out);
void qg_minimum_wide(const qg_add_wide_params_t *p, const void *a, const void *b, void *out);
void qg_mul_wide(const qg_mul_wide_params_t *p, const void *a, const void *b, void *out);
void qg_affine_wide(const qg_affine_wide_params_t *p, const void *in, void *out);
void qg_prelu_wide(const qg_prelu_wide_params_t *p, const void *in, void *out);
void qg_concat_wide(const qg_concat_wide_params_t *p, const void *const *inputs, void *restrict out);
/* int16 model input (`--precision input=int16`): the float helper at the model boundary */
void qg_quantize_chw_to_hwc_f32_s16(const float *in, int16_t *out, int32_t c, int32_t h, int32_t w, float scale);
/* ---- end of int16 activations ---- */

/* ---- compressed weight formats ----
 * Same int8 weights as the dense kernels, another encoding (codegen/emit/weight_formats.py writes
 * it, and documents it); the result is byte-identical to the dense kernel on the same integers.
 * A fully connected layer runs as a 1x1 convolution on a 1x1xIn input (conv.in_c = In).
 *
 * Sparse (qg_sparse_s8.c): the weights of output channel oc are cut into segments, one per kernel
 * tap (ky, kx), each covering the in_c input channels of that tap; only nonzero weights are stored,
 * in (out_c, k_h, k_w, in_c) order, in `values`. Where they sit is given by one of two maps:
 *   QG_SPARSE_BITMAP: `map` holds ceil(in_c / 8) bytes per segment, bit i (LSB first) set when
 *                     channel i is nonzero.
 *   QG_SPARSE_INDEX:  each segment is cut further into chunks of QG_SPARSE_CHUNK channels; `map`
 *                     holds one count byte per chunk, `index` the position of each nonzero in its
 *                     chunk (uint8).
 * The kernels walk only the nonzero weights (zero weights cost no multiply-accumulate).
 *
 * Clustered (qg_cluster_s8.c): every weight is codebook[i] for a `bits`-bit index i (1..8); the
 * indices are packed LSB first in weight order (conv (out_c, k_h, k_w, in_c), depthwise
 * (out_c, k_h, k_w)), with one padding byte at the end, and decoded on the fly. */

#define QG_SPARSE_BITMAP 0
#define QG_SPARSE_INDEX 1
#define QG_SPARSE_CHUNK 255

typedef struct {
    qg_conv2d_params_t conv; /* geometry, bias, shift, activation; conv.weights is NULL */
    uint8_t format;          /* QG_SPARSE_BITMAP or QG_SPARSE_INDEX */
    const uint8_t *map;      /* bitmap bytes, or chunk counts */
    const uint8_t *index;    /* QG_SPARSE_INDEX: position of each nonzero in its chunk; else NULL */
    const int8_t *values;    /* the nonzero weights */
} qg_conv2d_sparse_params_t;

typedef struct {
    qg_conv2d_params_t conv; /* geometry, bias, shift, activation; conv.weights is NULL */
    uint8_t bits;            /* index width, 1..8 */
    const uint8_t *indices;  /* packed indices + 1 padding byte */
    const int8_t *codebook;  /* 2^bits int8 values */
} qg_conv2d_cluster_params_t;

void qg_conv2d_sparse_s8(const qg_conv2d_sparse_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                         int8_t *restrict scratch);
void qg_fully_connected_sparse_s8(const qg_conv2d_sparse_params_t *p, const int8_t *restrict in,
                                  int8_t *restrict out, int8_t *restrict scratch);
void qg_conv2d_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                          int8_t *restrict scratch);
void qg_depthwise_conv2d_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in,
                                    int8_t *restrict out, int8_t *restrict scratch);
void qg_fully_connected_cluster_s8(const qg_conv2d_cluster_params_t *p, const int8_t *restrict in,
                                   int8_t *restrict out, int8_t *restrict scratch);
/* ---- end of compressed weight formats ---- */

/* ---- packed int4 weights (qg_conv2d_s4.c): q in [-8, 7], two per byte, low nibble first (byte j of a
 * row: weight 2j in bits 0-3, weight 2j+1 in bits 4-7). conv and fully connected: one row per output
 * channel (k_h*k_w*in_c/groups or in_features weights), each starting on a byte; depthwise: the whole
 * (out_c, k_h, k_w) tensor as one stream. A fully connected layer is a 1x1 conv on a 1x1xIn input
 * (conv.in_c = in_features, conv.out_c = out_features). int8 activations. ---- */
typedef struct {
    qg_conv2d_params_t conv;  /* geometry, bias, shift, activation; conv.weights is NULL */
    const uint8_t *weights;   /* packed int4 weights */
} qg_conv2d_s4_params_t;

int32_t qg_conv2d_s4_buffer_size(const qg_conv2d_s4_params_t *p);
void qg_conv2d_s4(const qg_conv2d_s4_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch);
int32_t qg_depthwise_conv2d_s4_buffer_size(const qg_conv2d_s4_params_t *p);
void qg_depthwise_conv2d_s4(const qg_conv2d_s4_params_t *p, const int8_t *in, int8_t *out, int8_t *restrict scratch);
int32_t qg_fully_connected_s4_buffer_size(const qg_conv2d_s4_params_t *p);
void qg_fully_connected_s4(const qg_conv2d_s4_params_t *p, const int8_t *restrict in, int8_t *restrict out,
                           int8_t *restrict scratch);
/* ---- end of packed int4 weights ---- */

/* ---- layout copies (qg_layout_s8.c): they only move elements, the Q-format is kept ---- */
/* transpose: for every index (i_0..i_{rank-1}) of the loop dims `shape` (rank <= 6, a permutation of the
 * output dims), out[sum_k i_k * out_stride[k]] = in[sum_k i_k * in_stride[k]] (strides in elements) */
typedef struct {
    int32_t rank;
    const int32_t *shape;       /* loop dims, the innermost loop last */
    const int32_t *in_stride;   /* input element stride along each loop dim */
    const int32_t *out_stride;  /* output element stride along each loop dim */
} qg_transpose_params_t;
void qg_transpose_s8(const qg_transpose_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_transpose_s16(const qg_transpose_params_t *p, const int16_t *restrict in, int16_t *restrict out);
/* slice: `outer` blocks of in_block elements, each gives its out_block elements from element `offset` on */
typedef struct {
    int32_t outer, in_block, out_block, offset;
} qg_slice_params_t;
void qg_slice_s8(const qg_slice_params_t *p, const int8_t *restrict in, int8_t *restrict out);
void qg_slice_s16(const qg_slice_params_t *p, const int16_t *restrict in, int16_t *restrict out);
/* matmul (qg_matmul_s8.c): out[z, i, j] = requantize(sum_k a[z, i, k] * b[z, j, k], shift), a (batch, m, k),
 * b (batch, n, k): both rows of k contiguous int8, int32 sums (k <= 131071) */
typedef struct {
    int32_t batch, m, n, k;
    int8_t shift;
    int8_t act_min, act_max;
} qg_matmul_params_t;
void qg_matmul_s8(const qg_matmul_params_t *p, const int8_t *restrict a, const int8_t *restrict b,
                  int8_t *restrict out);
/* matmul over any int8 / int16 mix (qg_matmul_wide.c): int64 sums, int8 or int16 output */
typedef struct {
    int32_t batch, m, n, k;
    int8_t shift;
    uint8_t a_bits, b_bits, out_bits; /* 8 or 16 */
    int16_t act_min, act_max;
} qg_matmul_wide_params_t;
void qg_matmul_wide(const qg_matmul_wide_params_t *p, const void *a, const void *b, void *out);
/* ---- end of layout copies ---- */

/* ---- normalisation (qg_norm_s8.c; the integer rules are written in codegen/ops/norm.py) ---- */
/* layer norm / group norm: `rows` x `pixels` x `channels` int8 values, channels innermost; one statistics
 * set = one row and one group (pixels x channels/groups values). Exact int32/int64 sums, W = count * sum(x^2)
 * - sum(x)^2 + eps, an integer reciprocal square root, x-hat in int32 with xhat_frac fraction bits, then
 * (x-hat * gamma[c] + beta[c] << bias_shift) requantised once by out_shift. out may be in (in place). */
typedef struct {
    int32_t rows, pixels, channels, groups;
    int64_t eps;          /* epsilon in W's format: max(1, round(count^2 * eps * 2^(2 in_frac))) */
    int32_t xhat_frac;    /* F_h: fraction bits of x-hat, 30 - ceil(log2(count) / 2) */
    int32_t bias_shift;   /* beta << bias_shift is at frac F_h + gamma_frac, 0..24 */
    int32_t out_shift;    /* F_h + gamma_frac - out_frac, 0..62 */
    uint8_t in_bits, out_bits; /* 8 or 16: the activation widths (qg_norm_wide; qg_norm_s8 takes 8 and 8) */
    int16_t act_min, act_max;
    const int16_t *gamma; /* (channels) */
    const int32_t *beta;  /* (channels) */
} qg_norm_params_t;
void qg_norm_s8(const qg_norm_params_t *p, const int8_t *in, int8_t *out);
/* any mix of int8 / int16 activations (in_bits, out_bits; int16 sets hold at most 2^15 values) */
void qg_norm_wide(const qg_norm_params_t *p, const void *in, void *out);
/* out = clamp(round_shift(x * scale[c] + offset[c], shift[c])): per-channel affine (c = index % channels),
 * a BatchNorm that cannot be folded. Element-wise: out may be in. */
typedef struct {
    int32_t size, channels;
    int8_t act_min, act_max;
    const int16_t *scale;  /* (channels) at frac scale_frac[c] */
    const int32_t *offset; /* (channels) at frac in_frac + scale_frac[c], |offset| <= 2^31 - 2^22 - 1 */
    const int8_t *shift;   /* (channels) in_frac + scale_frac[c] - out_frac, in [-31, 31] */
} qg_channel_affine_params_t;
void qg_channel_affine_s8(const qg_channel_affine_params_t *p, const int8_t *in, int8_t *out);
/* the same over any int8 / int16 mix (qg_channel_affine_wide.c): |offset| <= 2^31 - 2^30 - 1 for int16 input */
typedef struct {
    int32_t size, channels;
    int16_t act_min, act_max;
    uint8_t in_bits, out_bits; /* 8 or 16 */
    const int16_t *scale;
    const int32_t *offset;
    const int8_t *shift;
} qg_channel_affine_wide_params_t;
void qg_channel_affine_wide(const qg_channel_affine_wide_params_t *p, const void *in, void *out);
/* ---- end of normalisation ---- */

/* ---- streaming state (qg_stream_s8.c) ---- */
/* The window of the last `frames` frames of `frame_bytes` bytes (oldest first), kept in state memory
 * between steps: shift by one frame, append `frame` (int8 or int16 frames alike), then copy frames
 * 0, dilation, 2 * dilation, ..., frames - 1 of the window to `taps` (contiguous). */
typedef struct {
    int32_t frame_bytes, frames, dilation;
} qg_history_params_t;
void qg_history_s8(const qg_history_params_t *p, const int8_t *restrict frame, int8_t *restrict window,
                   int8_t *restrict taps);

/* ---- recurrent layers (qg_recurrent_s8.c; the integer spec: codegen/ops/recurrent.py) ---- */
enum { QG_CELL_GRU = 0, QG_CELL_LSTM = 1, QG_CELL_RNN_TANH = 2, QG_CELL_RNN_RELU = 3 };
typedef struct {
    uint8_t cell;         /* QG_CELL_*: G = 3 (GRU r, z, n), 4 (LSTM i, f, g, o) or 1 gate rows per hidden unit */
    uint8_t reverse;      /* time runs from steps - 1 down to 0 */
    uint8_t last;         /* write only the final state (out: hidden values) instead of one per step */
    uint8_t state_bits;   /* 16: h is the int16 cell output at state_frac; 8: h is the int8 output */
    uint16_t steps, inputs, hidden;
    int8_t state_frac;    /* frac of h (15 for GRU/LSTM/tanh with state_bits 16) */
    int8_t cell_frac;     /* LSTM: frac of the int16 cell c */
    int8_t out_shift;     /* new state (Q15, relu: state_frac) -> output frac */
    int8_t act_min, act_max;
    const int8_t *x_shift;  /* (G * hidden) input accumulator -> gate frac (Q11; relu RNN: state_frac) */
    const int8_t *h_shift;  /* (G * hidden) recurrent accumulator -> the same */
    const int8_t *w_ih;     /* (G * hidden, inputs), int8 per gate row */
    const int8_t *w_hh;     /* (G * hidden, hidden) */
    const int32_t *b_ih;    /* (G * hidden) at frac x_frac + w_ih_frac[row] */
    const int32_t *b_hh;    /* (G * hidden) at frac state_frac + w_hh_frac[row] */
    const int16_t *h0;      /* (hidden) initial h at state_frac */
    const int16_t *c0;      /* LSTM: (hidden) initial c at cell_frac; NULL otherwise */
} qg_recurrent_params_t;
/* x (steps, inputs) int8 -> out (steps or 1, hidden) int8. state: h (hidden int16) then, LSTM, c (hidden int16),
 * set by the caller (h0, c0) and left holding the final state. scratch: qg_recurrent_s8_buffer_size bytes,
 * 4-byte aligned. */
void qg_recurrent_s8(const qg_recurrent_params_t *p, const int8_t *x, int8_t *out, int16_t *state,
                     int32_t *scratch);
int32_t qg_recurrent_s8_buffer_size(const qg_recurrent_params_t *p);
/* state <- p->h0, then (LSTM) p->c0: the initial state (whole-window runs; a stream's reset) */
void qg_recurrent_state_init(const qg_recurrent_params_t *p, int16_t *state);
/* ---- end of recurrent layers ---- */
/* ---- ensemble combines (qg_combine_s8.c; the rules: codegen/ops/combine.py) ---- */
/* n_inputs int8 vectors of `size` values; input i aligned by shift[i] (round_shift: < 0 an exact left shift). */
typedef struct {
    int32_t n_inputs, size;
    const int8_t *shift;
    int32_t avg_mult;     /* the average multiplier of n_inputs (1 for a power of two) */
    int32_t out_shift;    /* avg_shift + common frac - output frac */
    int32_t act_min, act_max;
} qg_mean_params_t;
/* out[e] = requantize(sum_i aligned in_i[e] * avg_mult, out_shift): one rounding */
void qg_mean_s8(const qg_mean_params_t *p, const int8_t *const *inputs, int8_t *restrict out);
typedef struct {
    int32_t n_inputs, size;
    const int8_t *shift;
} qg_vote_params_t;
/* out[c] = 2 * (members whose first maximum is c) + (c == the decided class: most votes, then the largest
 * aligned logit sum, then the lowest index); at most 63 inputs */
void qg_vote_s8(const qg_vote_params_t *p, const int8_t *const *inputs, int8_t *restrict out);
/* ---- end of ensemble combines ---- */

#ifdef __cplusplus
}
#endif

#endif /* QG_KERNELS_H */
