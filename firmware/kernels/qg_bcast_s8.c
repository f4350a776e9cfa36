/* Broadcasting arithmetic of two activations (qg_bcast_params_t): add, sub, mul, maximum, minimum where an
 * operand has size 1 along some dims (MobileViTv2's key * scores over the channels, a (1, C, H, 1) row gate,
 * (T, 1) / (1, D) sequence operands). The output is the row-major (n0, n1, n2, n3) loop nest; each operand is
 * read at its own strides (0 along a dim it broadcasts over). The integer rules are the ones of
 * codegen/ops/eltwise.py (the reference), element by element: add/sub/maximum/minimum align both inputs to a
 * common frac (qg_round_shift by shift_a / shift_b, |aligned| <= 2^29), combine in int32 and requantise once;
 * mul multiplies (|int8 * int8| <= 2^14, exact) and requantises once. Output element i is written after the
 * operand elements it reads: out may be a full-size operand (the planner never gives it a broadcast one). */
#include "qg_kernels.h"
#include "qg_simd.h"

enum { QG_BC_ADD = 0, QG_BC_SUB = 1, QG_BC_MUL = 2, QG_BC_MAXIMUM = 3, QG_BC_MINIMUM = 4 };

/* The op is a constant argument: forced inline, each entry point is one loop nest specialised for it. */
#if defined(__GNUC__) || defined(__clang__)
#define QG_BC_INLINE static inline __attribute__((always_inline))
#else
#define QG_BC_INLINE static inline
#endif

QG_BC_INLINE int32_t bc_combine(int32_t x, int32_t y, int32_t op)
{
    if (op == QG_BC_ADD) {
        return x + y;
    }
    if (op == QG_BC_SUB) {
        return x - y;
    }
    if (op == QG_BC_MUL) {
        return x * y;
    }
    if (op == QG_BC_MAXIMUM) {
        return x > y ? x : y;
    }
    return x < y ? x : y;
}

/* The innermost dim of the plan is one run of axes that each operand reads whole (stride 1) or not at all
 * (stride 0): a row is x[k] op y (y broadcast), x op y[k] (x broadcast) or x[k] op y[k]. */
#define QG_BC_ROW(EXPR_X, EXPR_Y, STORE)                                                                           \
    do {                                                                                                           \
        if (ys == 0) {                                                                                             \
            const int32_t y_i32 = EXPR_Y(*y);                                                                      \
            for (k = 0; k < n; k++) {                                                                              \
                out[k] = STORE(bc_combine(EXPR_X(x[k]), y_i32, op));                                               \
            }                                                                                                      \
        } else if (xs == 0) {                                                                                      \
            const int32_t x_i32 = EXPR_X(*x);                                                                      \
            for (k = 0; k < n; k++) {                                                                              \
                out[k] = STORE(bc_combine(x_i32, EXPR_Y(y[k]), op));                                               \
            }                                                                                                      \
        } else {                                                                                                   \
            for (k = 0; k < n; k++) {                                                                              \
                out[k] = STORE(bc_combine(EXPR_X(x[k]), EXPR_Y(y[k]), op));                                        \
            }                                                                                                      \
        }                                                                                                          \
    } while (0)

/* The common case (qg_binary_s8.c's aligned_fast_s8): both alignments exact left shifts (multipliers 2^-shift_a,
 * 2^-shift_b; none for mul), a right requantisation shift, the clamp kind a constant (qg_simd.h). */
QG_BC_INLINE void bc_row_fast_s8(const int8_t *x, const int8_t *y, int8_t *out, int32_t n, int32_t xs, int32_t ys,
                                 int32_t mul_a, int32_t mul_b, int32_t shift_m1, int32_t lo, int32_t hi, int32_t op,
                                 int32_t kind)
{
    int32_t k;
#define QG_BC_A(v) (op == QG_BC_MUL ? (int32_t)(v) : (v) * mul_a)
#define QG_BC_B(v) (op == QG_BC_MUL ? (int32_t)(v) : (v) * mul_b)
#define QG_BC_STORE(r) qg_requantize_pos_s8((r), shift_m1, kind, lo, hi)
    QG_BC_ROW(QG_BC_A, QG_BC_B, QG_BC_STORE);
#undef QG_BC_A
#undef QG_BC_B
#undef QG_BC_STORE
}

/* Any shifts: qg_round_shift aligns (mul: by 0, the value itself), qg_requantize_s8 requantises. */
QG_BC_INLINE void bc_row_s8(const qg_bcast_params_t *p, const int8_t *x, const int8_t *y, int8_t *out, int32_t n,
                            int32_t xs, int32_t ys, int32_t op)
{
    const int32_t sa = p->shift_a, sb = p->shift_b, shift = p->shift, lo = p->act_min, hi = p->act_max;
    int32_t k;
    if (sa <= 0 && sb <= 0 && shift >= 1) {
        const int32_t mul_a = (int32_t)1 << -sa, mul_b = (int32_t)1 << -sb;
        switch (qg_clamp_kind(lo, hi)) {
        case QG_CLAMP_S8:
            bc_row_fast_s8(x, y, out, n, xs, ys, mul_a, mul_b, shift - 1, lo, hi, op, QG_CLAMP_S8);
            return;
        case QG_CLAMP_RELU:
            bc_row_fast_s8(x, y, out, n, xs, ys, mul_a, mul_b, shift - 1, lo, hi, op, QG_CLAMP_RELU);
            return;
        default:
            bc_row_fast_s8(x, y, out, n, xs, ys, mul_a, mul_b, shift - 1, lo, hi, op, QG_CLAMP_ANY);
            return;
        }
    }
#define QG_BC_A(v) qg_round_shift((v), sa)
#define QG_BC_B(v) qg_round_shift((v), sb)
#define QG_BC_STORE(r) qg_requantize_s8((r), shift, lo, hi)
    QG_BC_ROW(QG_BC_A, QG_BC_B, QG_BC_STORE);
#undef QG_BC_A
#undef QG_BC_B
#undef QG_BC_STORE
}

QG_BC_INLINE void bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out, int32_t op)
{
    const int32_t n0 = p->n0, n1 = p->n1, n2 = p->n2, n3 = p->n3;
    int32_t i0, i1, i2;
    for (i0 = 0; i0 < n0; i0++) {
        for (i1 = 0; i1 < n1; i1++) {
            for (i2 = 0; i2 < n2; i2++) {
                const int32_t ja = i0 * p->a_s0 + i1 * p->a_s1 + i2 * p->a_s2;
                const int32_t jb = i0 * p->b_s0 + i1 * p->b_s1 + i2 * p->b_s2;
                bc_row_s8(p, a + ja, b + jb, out, n3, p->a_s3, p->b_s3, op);
                out += n3;
            }
        }
    }
}

void qg_add_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    bcast_s8(p, a, b, out, QG_BC_ADD);
}

void qg_sub_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    bcast_s8(p, a, b, out, QG_BC_SUB);
}

void qg_mul_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    bcast_s8(p, a, b, out, QG_BC_MUL);
}

void qg_maximum_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    bcast_s8(p, a, b, out, QG_BC_MAXIMUM);
}

void qg_minimum_bcast_s8(const qg_bcast_params_t *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    bcast_s8(p, a, b, out, QG_BC_MINIMUM);
}

/* Any mix of int8 / int16 operands (QG_S8 / QG_S16, untyped arena bytes): the same rules in int64 with
 * qg_requantize_wide, as qg_wide.c's add / mul. */
static int64_t bc_load(const void *v, int32_t i, int32_t bits)
{
    return bits == QG_S16 ? qg_load_s16_at(v, i) : ((const int8_t *)v)[i];
}

static void bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out, int32_t op)
{
    int32_t i0, i1, i2, k, o = 0;
    for (i0 = 0; i0 < p->n0; i0++) {
        for (i1 = 0; i1 < p->n1; i1++) {
            for (i2 = 0; i2 < p->n2; i2++) {
                const int32_t ja = i0 * p->a_s0 + i1 * p->a_s1 + i2 * p->a_s2;
                const int32_t jb = i0 * p->b_s0 + i1 * p->b_s1 + i2 * p->b_s2;
                for (k = 0; k < p->n3; k++, o++) {
                    const int64_t x = qg_round_shift64(bc_load(a, ja + k * p->a_s3, p->a_bits), p->shift_a);
                    const int64_t y = qg_round_shift64(bc_load(b, jb + k * p->b_s3, p->b_bits), p->shift_b);
                    const int64_t r = op == QG_BC_ADD ? x + y
                                      : op == QG_BC_SUB ? x - y
                                      : op == QG_BC_MUL ? x * y
                                      : op == QG_BC_MAXIMUM ? (x > y ? x : y)
                                                            : (x < y ? x : y);
                    const int32_t v = qg_requantize_wide(r, p->shift, p->act_min, p->act_max);
                    if (p->out_bits == QG_S16) {
                        qg_store_s16_at(out, o, (int16_t)v);
                    } else {
                        ((int8_t *)out)[o] = (int8_t)v;
                    }
                }
            }
        }
    }
}

void qg_add_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out)
{
    bcast_wide(p, a, b, out, QG_BC_ADD);
}

void qg_sub_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out)
{
    bcast_wide(p, a, b, out, QG_BC_SUB);
}

void qg_mul_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out)
{
    bcast_wide(p, a, b, out, QG_BC_MUL);
}

void qg_maximum_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out)
{
    bcast_wide(p, a, b, out, QG_BC_MAXIMUM);
}

void qg_minimum_bcast_wide(const qg_bcast_params_t *p, const void *a, const void *b, void *out)
{
    bcast_wide(p, a, b, out, QG_BC_MINIMUM);
}
