/*
 * qg_recurrent_s8.c - GRU, LSTM and Elman RNN (tanh / relu) layers: int8 input and output, int8 weights with
 * one Q format per gate row, int16 state. The integer spec is codegen/ops/recurrent.py (int_run); every step
 * below is one line of it, with qg_fixed.h's rounding and saturation rules.
 *
 * Per time step: the gate rows' two matrix-vector products (w_ih . x_t + b_ih, w_hh . h + b_hh, exact int32,
 * the quantiser bounds them), each aligned to the gate frac (requantised to +-2^24) and summed into an int16
 * pre-activation; then, per hidden unit, the cell's element-wise update through one 513-entry Q15 tanh table
 * with linear interpolation (sigmoid(x) = (1 + tanh(x / 2)) / 2).
 *
 * With the DSP extension (Cortex-M4/M7/M33/M55) the products take four gate rows per pass (then two, then one)
 * and 4 columns per step: x_t and h are first widened / reordered once per step into int16 pairs in scratch
 * ((v0, v2), (v1, v3) per group of 4, qg_simd.h's convention), so one LDRD gives the pairs, each row's word of 4
 * weights unpacks with SXTB16, and two SMLADs per row take the 4 MACs. The 4-column steps are asm blocks: GCC 12
 * hoists every load of the C loop to its top and spills the accumulators. Without it, plain C: the rows two at a
 * time sharing each load of the vector (ARMv6-M).
 */
#include "qg_kernels.h"

#include "qg_fixed.h"
#include "qg_simd.h"

#define QG_ALIGN_LIMIT ((int32_t)1 << 24) /* recurrent.ALIGN_LIMIT: aligned accumulators are clamped here */

/* four gate rows per pass on DSP cores: its asm step needs 13 registers, more than an unoptimised build has free */
#if QG_DSP && defined(__OPTIMIZE__)
#define QG_RNN_4ROWS 1
#else
#define QG_RNN_4ROWS 0
#endif

#if QG_DSP && (defined(__GNUC__) || defined(__clang__))
#define QG_RNN_INLINE __attribute__((always_inline)) /* the per-row helpers of the DSP loop: no calls */
#else
#define QG_RNN_INLINE
#endif

/* recurrent.TANH_TABLE: T[k] = tanh((k * 2^7 - 2^15) * 2^-12) in Q15, k = 0..512 (tests/test_recurrent_kernels.py
 * compares this array with the Python one). QG_CONST: in flash on AVR, read with qg_w16 (qg_kernels.h). */
static const int16_t qg_tanh_table[513] QG_CONST = {
    -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768,
    -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768,
    -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768,
    -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768,
    -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32768, -32767, -32767,
    -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767, -32767,
    -32767, -32767, -32766, -32766, -32766, -32766, -32766, -32766, -32766, -32766, -32765, -32765, -32765, -32765,
    -32765, -32764, -32764, -32764, -32764, -32763, -32763, -32763, -32762, -32762, -32762, -32761, -32761, -32760,
    -32760, -32759, -32759, -32758, -32758, -32757, -32756, -32755, -32755, -32754, -32753, -32752, -32751, -32750,
    -32749, -32747, -32746, -32745, -32743, -32741, -32740, -32738, -32736, -32734, -32732, -32729, -32727, -32724,
    -32721, -32718, -32715, -32712, -32708, -32704, -32700, -32696, -32691, -32686, -32681, -32676, -32670, -32663,
    -32657, -32649, -32642, -32634, -32625, -32616, -32606, -32596, -32584, -32573, -32560, -32547, -32532, -32517,
    -32501, -32484, -32466, -32447, -32426, -32404, -32381, -32356, -32329, -32301, -32271, -32240, -32206, -32170,
    -32132, -32091, -32048, -32002, -31953, -31901, -31846, -31788, -31726, -31659, -31589, -31515, -31435, -31351,
    -31262, -31167, -31067, -30960, -30847, -30727, -30600, -30465, -30322, -30170, -30010, -29840, -29660, -29470,
    -29268, -29055, -28830, -28592, -28341, -28076, -27797, -27502, -27191, -26864, -26519, -26157, -25776, -25376,
    -24956, -24516, -24054, -23571, -23066, -22538, -21986, -21411, -20813, -20189, -19542, -18870, -18173, -17452,
    -16706, -15936, -15143, -14326, -13486, -12625, -11743, -10840, -9919, -8980, -8025, -7056, -6073, -5079, -4075,
    -3063, -2045, -1024, 0, 1024, 2045, 3063, 4075, 5079, 6073, 7056, 8025, 8980, 9919, 10840, 11743, 12625, 13486,
    14326, 15143, 15936, 16706, 17452, 18173, 18870, 19542, 20189, 20813, 21411, 21986, 22538, 23066, 23571, 24054,
    24516, 24956, 25376, 25776, 26157, 26519, 26864, 27191, 27502, 27797, 28076, 28341, 28592, 28830, 29055, 29268,
    29470, 29660, 29840, 30010, 30170, 30322, 30465, 30600, 30727, 30847, 30960, 31067, 31167, 31262, 31351, 31435,
    31515, 31589, 31659, 31726, 31788, 31846, 31901, 31953, 32002, 32048, 32091, 32132, 32170, 32206, 32240, 32271,
    32301, 32329, 32356, 32381, 32404, 32426, 32447, 32466, 32484, 32501, 32517, 32532, 32547, 32560, 32573, 32584,
    32596, 32606, 32616, 32625, 32634, 32642, 32649, 32657, 32663, 32670, 32676, 32681, 32686, 32691, 32696, 32700,
    32704, 32708, 32712, 32715, 32718, 32721, 32724, 32727, 32729, 32732, 32734, 32736, 32738, 32740, 32741, 32743,
    32745, 32746, 32747, 32749, 32750, 32751, 32752, 32753, 32754, 32755, 32755, 32756, 32757, 32758, 32758, 32759,
    32759, 32760, 32760, 32761, 32761, 32762, 32762, 32762, 32763, 32763, 32763, 32764, 32764, 32764, 32764, 32765,
    32765, 32765, 32765, 32765, 32766, 32766, 32766, 32766, 32766, 32766, 32766, 32766, 32767, 32767, 32767, 32767,
    32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767,
    32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767,
    32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767,
    32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767,
    32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767, 32767,
    32767, 32767,
};

/* the int16 saturation (one SSAT on DSP cores) */
static inline int32_t qg_sat16(int32_t x)
{
#if QG_DSP
    return (int32_t)__builtin_arm_ssat(x, 16); /* the builtin behind ACLE's __ssat (see qg_simd.h) */
#else
    return qg_saturate(x, -32768, 32767);
#endif
}

/* tanh of an int16 Q12 value -> Q15: T[i] + round_shift((T[i + 1] - T[i]) * f, 7), i = (u + 2^15) >> 7 */
static inline int32_t qg_tanh_q12(int32_t u)
{
    const int32_t v = u + 32768, i = v >> 7;
    const int32_t lo = qg_w16(&qg_tanh_table[i]);
    return lo + qg_round_shift((qg_w16(&qg_tanh_table[i + 1]) - lo) * (v & 127), 7);
}

/* tanh of an int16 Q11 pre-activation -> Q15 */
static inline int32_t qg_tanh_q11(int32_t x)
{
    return qg_tanh_q12(qg_sat16(2 * x));
}

/* sigmoid of an int16 Q11 pre-activation -> Q15 in [0, 32767]: (1 + tanh(x / 2)) / 2 */
static inline int32_t qg_sigmoid_q11(int32_t x)
{
    const int32_t s = qg_round_shift(qg_tanh_q12(x) + 32768, 1); /* in [0, 32768] */
#if QG_DSP
    return (int32_t)__builtin_arm_usat(s, 15);
#else
    return s > 32767 ? 32767 : s;
#endif
}

/* an accumulator at its row's frac -> the gate frac, clamped to +-2^24 (recurrent._align) */
static inline int32_t qg_align24(int32_t acc, int32_t shift)
{
    if (shift >= 8) { /* |int32| / 2^8 <= 2^23: inside the clamp, no test needed */
#if QG_DSP
        return __qadd(acc >> (shift - 1), 1) >> 1; /* qg_requantize_pos_s8's rounding (QADD never saturates here) */
#else
        return qg_round_shift(acc, shift);
#endif
    }
#if QG_DSP
    if (shift > 0) { /* the same rounding (QADD: its one saturating case clamps alike) */
        const int32_t r = __qadd(acc >> (shift - 1), 1) >> 1;
        return r > QG_ALIGN_LIMIT ? QG_ALIGN_LIMIT : (r < -QG_ALIGN_LIMIT ? -QG_ALIGN_LIMIT : r);
    }
#endif
    return qg_requantize_s32(acc, shift, -QG_ALIGN_LIMIT, QG_ALIGN_LIMIT);
}

static int32_t qg_gates(const qg_recurrent_params_t *p)
{
    return p->cell == QG_CELL_LSTM ? 4 : (p->cell == QG_CELL_GRU ? 3 : 1);
}

/* int32 words of scratch: the gate slots (G * H), the GRU's candidate slots (H), and the int16 copies of
 * x_t and h the products read (each rounded up to a word) */
int32_t qg_recurrent_s8_buffer_size(const qg_recurrent_params_t *p)
{
    const int32_t h = p->hidden, slots = (qg_gates(p) + (p->cell == QG_CELL_GRU ? 1 : 0)) * h;
    return 4 * (slots + (p->inputs + 1) / 2 + (h + 1) / 2);
}

void qg_recurrent_state_init(const qg_recurrent_params_t *p, int16_t *state)
{
    const int32_t hid = p->hidden;
    int32_t j;
    for (j = 0; j < hid; j++) {
        state[j] = qg_w16(&p->h0[j]);
    }
    if (p->c0 != NULL) {
        for (j = 0; j < hid; j++) {
            state[hid + j] = qg_w16(&p->c0[j]);
        }
    }
}

#if QG_DSP
/* n int8 -> int16 pairs (v0, v2), (v1, v3) per group of 4, the last n % 4 plain (qg_simd.h) */
static void qg_pack_s8(int16_t *dst, const int8_t *src, int32_t n)
{
    int32_t i;
    for (i = n >> 2; i > 0; i--) {
        const int32_t v = qg_load_s8x4(src);
        src += 4;
        qg_store_s16x2(dst, qg_sxtb16(v));
        qg_store_s16x2(dst + 2, qg_sxtb16_ror8(v));
        dst += 4;
    }
    for (i = 0; i < (n & 3); i++) {
        dst[i] = src[i];
    }
}

/* the same order from n int16 */
static void qg_pack_s16(int16_t *dst, const int16_t *src, int32_t n)
{
    int32_t i;
    for (i = n >> 2; i > 0; i--) {
        const int32_t a = qg_load_s16x2(src), b = qg_load_s16x2(src + 2);
        src += 4;
        qg_store_s16x2(dst, qg_pkhbt(a, b));
        qg_store_s16x2(dst + 2, qg_pkhtb(b, a));
        dst += 4;
    }
    for (i = 0; i < (n & 3); i++) {
        dst[i] = src[i];
    }
}

/* 4 columns of two rows: *a0 += (v0..v3) . w0[0..4), *a1 += (v0..v3) . w1[0..4), the pointers advanced. */
static inline void qg_mac_2rows_4(const qg_word_t **vp, const int8_t **w0, const int8_t **w1, int32_t *a0,
                                  int32_t *a1)
{
    int32_t ve, vo, wv, t;
    __asm__("ldrd %[ve], %[vo], [%[vp]], #8\n\t"
            "ldr %[wv], [%[w0]], #4\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a0], %[t], %[ve], %[a0]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a0], %[t], %[vo], %[a0]\n\t"
            "ldr %[wv], [%[w1]], #4\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a1], %[t], %[ve], %[a1]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a1], %[t], %[vo], %[a1]"
            : [ve] "=&r"(ve), [vo] "=&r"(vo), [wv] "=&r"(wv), [t] "=&r"(t), [vp] "+r"(*vp), [w0] "+r"(*w0),
              [w1] "+r"(*w1), [a0] "+r"(*a0), [a1] "+r"(*a1)
            :
            : "memory"); /* reads only: the clobber keeps the compiler from assuming what the loads see */
}

/* *acc0 += v . w[0 .. k), *acc1 += v . w[k .. 2k): two rows of int8 weights and the packed int16 vector v
 * (4-byte aligned), 8 columns per iteration, then 4, then k % 4. Returns w + 2k (the next two rows). */
static inline QG_RNN_INLINE const int8_t *qg_dot_2rows(const int16_t *v, const int8_t *w, int32_t k, int32_t *acc0,
                                                       int32_t *acc1)
{
    const qg_word_t *vp = (const qg_word_t *)(const void *)v;
    const int8_t *w0 = w, *w1 = w + k;
    int32_t a0 = *acc0, a1 = *acc1;
    int32_t i;
    for (i = k >> 3; i > 0; i--) {
        qg_mac_2rows_4(&vp, &w0, &w1, &a0, &a1);
        qg_mac_2rows_4(&vp, &w0, &w1, &a0, &a1);
    }
    if (k & 4) {
        qg_mac_2rows_4(&vp, &w0, &w1, &a0, &a1);
    }
    {
        const int16_t *vt = (const int16_t *)(const void *)vp;
        for (i = 0; i < (k & 3); i++) {
            const int32_t vi = vt[i];
            a0 += vi * w0[i];
            a1 += vi * w1[i];
        }
    }
    *acc0 = a0;
    *acc1 = a1;
    return w1 + (k & 3);
}


#if QG_RNN_4ROWS
/* 4 columns of four rows w, w + k, w + 2k, w + 3k (k3 = 3k): acc += (v0..v3) . row, w advanced by 4. The rows
 * are read at register offsets from one pointer: four pointers and four accumulators would not fit the registers.
 * (The weights are const, the clobber only keeps the compiler from assuming what the loads read.) */
static inline void qg_mac_4rows_4(const qg_word_t **vp, const int8_t **w, int32_t k, int32_t k3, int32_t *a0,
                                  int32_t *a1, int32_t *a2, int32_t *a3)
{
    int32_t ve, vo, wv, t;
    __asm__("ldrd %[ve], %[vo], [%[vp]], #8\n\t"
            "ldr %[wv], [%[w], %[k]]\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a1], %[t], %[ve], %[a1]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a1], %[t], %[vo], %[a1]\n\t"
            "ldr %[wv], [%[w], %[k], lsl #1]\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a2], %[t], %[ve], %[a2]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a2], %[t], %[vo], %[a2]\n\t"
            "ldr %[wv], [%[w], %[k3]]\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a3], %[t], %[ve], %[a3]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a3], %[t], %[vo], %[a3]\n\t"
            "ldr %[wv], [%[w]], #4\n\t"
            "sxtb16 %[t], %[wv]\n\t"
            "smlad %[a0], %[t], %[ve], %[a0]\n\t"
            "sxtb16 %[t], %[wv], ror #8\n\t"
            "smlad %[a0], %[t], %[vo], %[a0]"
            : [ve] "=&r"(ve), [vo] "=&r"(vo), [wv] "=&r"(wv), [t] "=&r"(t), [vp] "+r"(*vp), [w] "+r"(*w),
              [a0] "+r"(*a0), [a1] "+r"(*a1), [a2] "+r"(*a2), [a3] "+r"(*a3)
            : [k] "r"(k), [k3] "r"(k3)
            : "memory");
}

/* acc[q] += v . row q for the four rows at w (k columns each); returns w + 4k */
static inline QG_RNN_INLINE const int8_t *qg_dot_4rows(const int16_t *v, const int8_t *w, int32_t k, int32_t acc[4])
{
    const qg_word_t *vp = (const qg_word_t *)(const void *)v;
    const int8_t *w0 = w;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t i;
    for (i = k >> 2; i > 0; i--) {
        qg_mac_4rows_4(&vp, &w0, k, 3 * k, &a0, &a1, &a2, &a3);
    }
    {
        const int16_t *vt = (const int16_t *)(const void *)vp;
        for (i = 0; i < (k & 3); i++) {
            const int32_t vi = vt[i];
            a0 += vi * w0[i];
            a1 += vi * w0[k + i];
            a2 += vi * w0[2 * k + i];
            a3 += vi * w0[3 * k + i];
        }
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    return w0 + (k & 3) + 3 * k;
}
#endif

/* acc + v . w for one row (the last row of an odd count) */
static inline int32_t qg_dot_1row(const int16_t *v, const int8_t *w, int32_t k, int32_t acc)
{
    const qg_word_t *vp = (const qg_word_t *)(const void *)v;
    int32_t i;
    for (i = k >> 2; i > 0; i--) {
        int32_t ve, vo;
        const int32_t wv = qg_load_s8x4(w);
        w += 4;
        qg_load_pair(&vp, &ve, &vo);
        acc = __smlad(qg_sxtb16(wv), ve, acc);
        acc = __smlad(qg_sxtb16_ror8(wv), vo, acc);
    }
    {
        const int16_t *vt = (const int16_t *)(const void *)vp;
        for (i = 0; i < (k & 3); i++) {
            acc += vt[i] * w[i];
        }
    }
    return acc;
}
#else
/* *acc0 += v . w[0 .. k), *acc1 += v . w[k .. 2k), v int8 (x_t) or int16 (h): one load of v for both rows.
 * Returns w + 2k. */
#define QG_DOT_2ROWS(name, vtype)                                                                              \
    static inline const int8_t *name(const vtype *v, const int8_t *w, int32_t k, int32_t *acc0, int32_t *acc1) \
    {                                                                                                          \
        const int8_t *w1 = w + k;                                                                              \
        int32_t a0 = *acc0, a1 = *acc1;                                                                        \
        int32_t i;                                                                                             \
        for (i = 0; i < k; i++) {                                                                              \
            const int32_t vi = v[i];                                                                           \
            a0 += vi * qg_w8(&w[i]);                                                                           \
            a1 += vi * qg_w8(&w1[i]);                                                                          \
        }                                                                                                      \
        *acc0 = a0;                                                                                            \
        *acc1 = a1;                                                                                            \
        return w1 + k;                                                                                         \
    }
#if defined(__GNUC__) && defined(__OPTIMIZE__) && !defined(__OPTIMIZE_SIZE__) && defined(__thumb__) && \
    !defined(__thumb2__)
/* ARMv6-M (Cortex-M0/M0+): LDRSB/LDRSH take only register offsets, and GCC 12 keeps a separate doubled index for
 * the int16 vector and spills pointers. These loops run one negative index up to 0 over the rows' ends (the flags
 * of the increment end the loop) with the accumulators in high registers (ADD takes them): 6 low registers (r7
 * may be the frame pointer), per column 9 instructions (int8 vector) or 10 (int16) for both rows. GCC 12 cannot
 * place these operands at -O0 or -Os: those builds take the C loops. */
static inline const int8_t *qg_dot_2rows_s8(const int8_t *v, const int8_t *w, int32_t k, int32_t *acc0,
                                            int32_t *acc1)
{
    const int8_t *ve = v + k, *w0e = w + k, *w1e = w + 2 * k;
    int32_t a0 = *acc0, a1 = *acc1, i = -k, t, x;
    __asm__(".syntax unified\n"
            "1:\n\t"
            "ldrsb %[x], [%[v], %[i]]\n\t"
            "ldrsb %[t], [%[w0], %[i]]\n\t"
            "muls %[t], %[x], %[t]\n\t"
            "add %[a0], %[t]\n\t"
            "ldrsb %[t], [%[w1], %[i]]\n\t"
            "muls %[t], %[x], %[t]\n\t"
            "add %[a1], %[t]\n\t"
            "adds %[i], #1\n\t"
            "bne 1b"
            : [i] "+l"(i), [t] "=&l"(t), [x] "=&l"(x), [a0] "+h"(a0), [a1] "+h"(a1)
            : [v] "l"(ve), [w0] "l"(w0e), [w1] "l"(w1e)
            : "cc", "memory");
    *acc0 = a0;
    *acc1 = a1;
    return w1e;
}

static inline const int8_t *qg_dot_2rows_s16(const int16_t *v, const int8_t *w, int32_t k, int32_t *acc0,
                                             int32_t *acc1)
{
    const int16_t *ve = v + k;
    const int8_t *w0e = w + k, *w1e = w + 2 * k;
    int32_t a0 = *acc0, a1 = *acc1, i = -k, t, x;
    __asm__(".syntax unified\n"
            "1:\n\t"
            "lsls %[t], %[i], #1\n\t"
            "ldrsh %[x], [%[v], %[t]]\n\t"
            "ldrsb %[t], [%[w0], %[i]]\n\t"
            "muls %[t], %[x], %[t]\n\t"
            "add %[a0], %[t]\n\t"
            "ldrsb %[t], [%[w1], %[i]]\n\t"
            "muls %[t], %[x], %[t]\n\t"
            "add %[a1], %[t]\n\t"
            "adds %[i], #1\n\t"
            "bne 1b"
            : [i] "+l"(i), [t] "=&l"(t), [x] "=&l"(x), [a0] "+h"(a0), [a1] "+h"(a1)
            : [v] "l"(ve), [w0] "l"(w0e), [w1] "l"(w1e)
            : "cc", "memory");
    *acc0 = a0;
    *acc1 = a1;
    return w1e;
}
#else
QG_DOT_2ROWS(qg_dot_2rows_s8, int8_t)
QG_DOT_2ROWS(qg_dot_2rows_s16, int16_t)
#endif
#endif

/* Gate row r of one step from its two accumulators: slot[r] = sat16(align(ax) + align(ah)); the GRU's candidate
 * rows (r >= split) keep the aligned ax in slot[r] and requantize(ah, h_shift) to int16 in cand[r - split]. */
static inline QG_RNN_INLINE void qg_gate_store(const qg_recurrent_params_t *p, int32_t r, int32_t split,
                                               int32_t ax, int32_t ah, int32_t *slot, int32_t *cand)
{
    const int32_t a = qg_align24(ax, qg_w8(&p->x_shift[r]));
    if (r < split) {
        slot[r] = qg_sat16(a + qg_align24(ah, qg_w8(&p->h_shift[r])));
    } else {
        slot[r] = a;
        cand[r - split] = qg_requantize_s32(ah, qg_w8(&p->h_shift[r]), -32768, 32767);
    }
}

/* Every gate row of one step (DSP: four rows per pass, then two; plain: two), then an odd last row. xv, hv: the
 * vectors as the products read them (DSP: packed int16 copies of x_t and h; plain: x_t itself and h). */
static void qg_gate_rows(const qg_recurrent_params_t *p, const void *xv, const int16_t *hv, int32_t *slot,
                         int32_t *cand)
{
    const int32_t in = p->inputs, hid = p->hidden, rows = qg_gates(p) * hid;
    const int32_t split = p->cell == QG_CELL_GRU ? 2 * hid : rows; /* first candidate row */
    const int8_t *wx = p->w_ih, *wh = p->w_hh;
    int32_t r;
#if QG_RNN_4ROWS
    for (r = 0; r + 3 < rows; r += 4) {
        int32_t ax[4], ah[4], q;
        for (q = 0; q < 4; q++) {
            ax[q] = p->b_ih[r + q];
            ah[q] = p->b_hh[r + q];
        }
        wx = qg_dot_4rows((const int16_t *)xv, wx, in, ax);
        wh = qg_dot_4rows(hv, wh, hid, ah);
        for (q = 0; q < 4; q++) {
            qg_gate_store(p, r + q, split, ax[q], ah[q], slot, cand);
        }
    }
    for (; r + 1 < rows; r += 2) {
#else
    for (r = 0; r + 1 < rows; r += 2) {
#endif
        int32_t ax0 = qg_w32(&p->b_ih[r]), ax1 = qg_w32(&p->b_ih[r + 1]);
        int32_t ah0 = qg_w32(&p->b_hh[r]), ah1 = qg_w32(&p->b_hh[r + 1]);
#if QG_DSP
        wx = qg_dot_2rows((const int16_t *)xv, wx, in, &ax0, &ax1);
        wh = qg_dot_2rows(hv, wh, hid, &ah0, &ah1);
#else
        wx = qg_dot_2rows_s8((const int8_t *)xv, wx, in, &ax0, &ax1);
        wh = qg_dot_2rows_s16(hv, wh, hid, &ah0, &ah1);
#endif
        qg_gate_store(p, r, split, ax0, ah0, slot, cand);
        qg_gate_store(p, r + 1, split, ax1, ah1, slot, cand);
    }
    if (r < rows) { /* an odd row count: the last row alone */
        int32_t ax = qg_w32(&p->b_ih[r]), ah = qg_w32(&p->b_hh[r]);
#if QG_DSP
        ax = qg_dot_1row((const int16_t *)xv, wx, in, ax);
        ah = qg_dot_1row(hv, wh, hid, ah);
#else
        int32_t i;
        for (i = 0; i < in; i++) {
            ax += ((const int8_t *)xv)[i] * qg_w8(&wx[i]);
        }
        for (i = 0; i < hid; i++) {
            ah += (int32_t)hv[i] * qg_w8(&wh[i]); /* widened first: int16 * int8 overflows a 16-bit int (AVR) */
        }
#endif
        qg_gate_store(p, r, split, ax, ah, slot, cand);
    }
}

/* The output stage of a step: the new state v of a unit (Q15; relu: state_frac) -> its int8 output and the next h
 * (the output itself with state_bits 8). The parameters are copied out of the struct once per step (stores
 * through the int8 output may alias it, so the compiler would reload them per unit). */
typedef struct {
    int32_t shift, act_min, act_max, state8;
} qg_unit_out_t;

static inline qg_unit_out_t qg_unit_out_of(const qg_recurrent_params_t *p)
{
    qg_unit_out_t u;
    u.shift = p->out_shift;
    u.act_min = p->act_min;
    u.act_max = p->act_max;
    u.state8 = p->state_bits == 8;
    return u;
}

static inline QG_RNN_INLINE void qg_unit_out(qg_unit_out_t u, int32_t v, int16_t *h, int8_t *o)
{
    const int32_t y = qg_requantize_s32(v, u.shift, u.act_min, u.act_max);
    *o = (int8_t)y;
    *h = (int16_t)(u.state8 ? y : v);
}

/* The element-wise update of one step, one loop per cell kind. o: this step's output row (with `last`, the one
 * output row, rewritten every step: the final step's values remain). */
static void qg_update_gru(const qg_recurrent_params_t *p, const int32_t *slot, const int32_t *cand, int16_t *h,
                          int8_t *o)
{
    const int32_t hid = p->hidden, h15_shift = 15 - p->state_frac;
    const qg_unit_out_t u = qg_unit_out_of(p);
    int32_t j;
    for (j = 0; j < hid; j++) {
        const int32_t rg = qg_sigmoid_q11(slot[j]), z = qg_sigmoid_q11(slot[hid + j]);
        const int32_t nn =
            qg_tanh_q11(qg_sat16(slot[2 * hid + j] + qg_round_shift(rg * cand[j], 15)));
        const int32_t h15 = h[j] * ((int32_t)1 << h15_shift);
        qg_unit_out(u, qg_sat16(nn + qg_round_shift(z * (h15 - nn), 15)), h + j, o + j);
    }
}

static void qg_update_lstm(const qg_recurrent_params_t *p, const int32_t *slot, int16_t *h, int16_t *c, int8_t *o)
{
    const int32_t hid = p->hidden, c_shift = 30 - p->cell_frac, tc_shift = p->cell_frac - 12;
    const qg_unit_out_t u = qg_unit_out_of(p);
    int32_t j;
    for (j = 0; j < hid; j++) {
        const int32_t ig = qg_sigmoid_q11(slot[j]), f = qg_sigmoid_q11(slot[hid + j]);
        const int32_t g = qg_tanh_q11(slot[2 * hid + j]), og = qg_sigmoid_q11(slot[3 * hid + j]);
        const int32_t cn =
            qg_sat16(qg_round_shift(f * c[j], 15) + qg_round_shift(ig * g, c_shift));
        const int32_t tc = qg_tanh_q12(qg_requantize_s32(cn, tc_shift, -32768, 32767));
        c[j] = (int16_t)cn;
        qg_unit_out(u, qg_sat16(qg_round_shift(og * tc, 15)), h + j, o + j);
    }
}

static void qg_update_rnn(const qg_recurrent_params_t *p, const int32_t *slot, int16_t *h, int8_t *o)
{
    const int32_t hid = p->hidden;
    const qg_unit_out_t u = qg_unit_out_of(p);
    int32_t j;
    if (p->cell == QG_CELL_RNN_TANH) {
        for (j = 0; j < hid; j++) {
            qg_unit_out(u, qg_tanh_q11(slot[j]), h + j, o + j);
        }
    } else {
        for (j = 0; j < hid; j++) {
            qg_unit_out(u, slot[j] > 0 ? slot[j] : 0, h + j, o + j);
        }
    }
}

void qg_recurrent_s8(const qg_recurrent_params_t *p, const int8_t *x, int8_t *out, int16_t *state,
                     int32_t *scratch)
{
    const int32_t in = p->inputs, hid = p->hidden, steps = p->steps, cell = p->cell;
    int16_t *h = state;
    int32_t *slot = scratch, *cand = scratch + qg_gates(p) * hid;
    /* the int16 vectors follow the int32 slots; addressed through bytes: the arena is untyped memory, and the
     * two regions never overlap (no type punning of one object) */
    int16_t *xv = (int16_t *)(void *)((unsigned char *)scratch +
                                      sizeof(int32_t) * (size_t)((qg_gates(p) + (cell == QG_CELL_GRU ? 1 : 0)) * hid));
    int16_t *hv = xv + 2 * ((in + 1) / 2);
    int32_t s;
#if !QG_DSP
    (void)xv;
    hv = h;
#endif
    for (s = 0; s < steps; s++) {
        const int32_t t = p->reverse ? steps - 1 - s : s;
        int8_t *o = p->last ? out : out + t * hid;
#if QG_DSP
        qg_pack_s8(xv, x + t * in, in);
        qg_pack_s16(hv, h, hid);
        qg_gate_rows(p, xv, hv, slot, cand);
#else
        qg_gate_rows(p, x + t * in, hv, slot, cand);
#endif
        if (cell == QG_CELL_LSTM) {
            qg_update_lstm(p, slot, h, state + hid, o);
        } else if (cell == QG_CELL_GRU) {
            qg_update_gru(p, slot, cand, h, o);
        } else {
            qg_update_rnn(p, slot, h, o);
        }
    }
}
