/*
 * qg_combine_s8.c - an ensemble's member outputs combined into one: mean (one rounding) and vote.
 * Reference (the spec): codegen/ops/combine.py. Every input is an int8 vector of p->size values in its own
 * format; shift[i] aligns input i to the common frac (an exact left shift unless the formats lie > 16 bits
 * apart), so a sum over <= 127 inputs stays inside int32.
 */
#include "qg_kernels.h"

/* sum over the inputs of element e, aligned to the common frac */
static int32_t aligned_sum(const int8_t *const *inputs, const int8_t *shift, int32_t n_inputs, int32_t e)
{
    int32_t sum_i32 = 0;
    int32_t i;
    for (i = 0; i < n_inputs; i++) {
        sum_i32 += qg_round_shift(inputs[i][e], shift[i]);
    }
    return sum_i32;
}

void qg_mean_s8(const qg_mean_params_t *p, const int8_t *const *inputs, int8_t *restrict out)
{
    const int32_t lo = p->act_min < 0 ? p->act_min - 1 : -1, hi = p->act_max > 0 ? p->act_max + 1 : 1;
    int32_t e;
    for (e = 0; e < p->size; e++) {
        /* |sum * avg_mult| < 2^31 * 2^23: int64 */
        int64_t acc_i64 = (int64_t)aligned_sum(inputs, p->shift, p->n_inputs, e) * p->avg_mult;
        if (p->out_shift < 0) { /* clamp first (changes no saturated result), then an exact left shift */
            acc_i64 = acc_i64 < lo ? lo : (acc_i64 > hi ? hi : acc_i64);
        }
        acc_i64 = qg_round_shift64(acc_i64, p->out_shift);
        out[e] = (int8_t)(acc_i64 < p->act_min ? p->act_min : (acc_i64 > p->act_max ? p->act_max : acc_i64));
    }
}

void qg_vote_s8(const qg_vote_params_t *p, const int8_t *const *inputs, int8_t *restrict out)
{
    const int32_t size = p->size;
    int32_t i, c, best_votes = 0, winner = 0;
    int32_t best_sum = 0;
    for (c = 0; c < size; c++) {
        out[c] = 0;
    }
    for (i = 0; i < p->n_inputs; i++) { /* each member votes for its first maximum */
        const int8_t *x = inputs[i];
        int32_t pick = 0;
        for (c = 1; c < size; c++) {
            pick = x[c] > x[pick] ? c : pick;
        }
        out[pick] = (int8_t)(out[pick] + 2);
    }
    for (c = 0; c < size; c++) { /* most votes, then the largest aligned sum, then the lowest index */
        if (out[c] > best_votes || (out[c] == best_votes && out[c] > 0)) {
            const int32_t sum_i32 = aligned_sum(inputs, p->shift, p->n_inputs, c);
            if (out[c] > best_votes || sum_i32 > best_sum) {
                best_votes = out[c];
                best_sum = sum_i32;
                winner = c;
            }
        }
    }
    out[winner] = (int8_t)(out[winner] + 1);
}
