/*
 * qg_count: a QEMU TCG plugin that counts executed guest instructions, exactly and repeatably.
 *
 * Every translated block gets an inline "add its instruction count to a 64-bit counter" op, run
 * each time the block starts; no helper call, so the cost is a few host instructions per block.
 * With begin=ADDR,end=ADDR (the addresses of qg_count_begin/qg_count_end, see
 * firmware/startup/qg_count.h) it also sums the instructions executed between the return from
 * the begin marker and the entry of the end marker, using one callback on each marker's first
 * instruction. Results are printed at exit through qemu_plugin_outs (run QEMU with
 * "-d plugin -D FILE") as lines "key=value":
 *     insns_total   every guest instruction executed
 *     region_insns  instructions inside begin/end pairs (summed)
 *     regions       number of completed begin/end pairs
 *
 * Counts are deterministic because the harness enables no interrupt and no timer: the guest
 * takes the same path every run. A block is counted when it starts, so an exception in the middle
 * of a block would over-count its tail; the harness reports any exception as a failure.
 *
 * Debian ships no qemu-plugin.h, so the few declarations of plugin API version 1 (QEMU 4.2 to
 * 8.x) used here are written out below, matching QEMU's include/qemu/qemu-plugin.h.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU plugin API, version 1 (subset) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;

enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv);
/* ---- end of QEMU plugin API ---- */

#define NO_ADDRESS UINT64_MAX

static uint64_t insns_total;    /* bumped inline by every executed block */
static uint64_t begin_address = NO_ADDRESS;
static uint64_t end_address = NO_ADDRESS;
static uint64_t region_start;   /* insns_total when the open region began */
static uint64_t region_insns;
static uint64_t regions;
static bool region_open;

static uint64_t layer_address = NO_ADDRESS;
static uint64_t segment_start;  /* insns_total at the last cut of the open region */
static uint64_t marker_insns;   /* layer-marker bodies run in the open region (not counted) */
static uint64_t *layer_insns;   /* slot sums over all regions */
static size_t layer_slots;      /* allocated slots */
static size_t marks_in_region;  /* layer markers seen in the open region */
static long long layer_marks = -2; /* markers per region: -2 none yet, -1 regions disagree */

/* Add n to slot i, growing the table as needed. */
static void add_to_slot(size_t i, uint64_t n)
{
    if (i >= layer_slots) {
        size_t slots = layer_slots ? layer_slots : 16;
        while (slots <= i) {
            slots *= 2;
        }
        uint64_t *grown = realloc(layer_insns, slots * sizeof *grown);
        if (grown == NULL) {
            fprintf(stderr, "qg_count: out of memory\n");
            abort();
        }
        memset(grown + layer_slots, 0, (slots - layer_slots) * sizeof *grown);
        layer_insns = grown;
        layer_slots = slots;
    }
    layer_insns[i] += n;
}

static void on_begin(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    /* insns_total already includes this whole block, i.e. the begin marker's own body. */
    region_start = insns_total;
    segment_start = insns_total;
    marker_insns = 0;
    marks_in_region = 0;
    region_open = true;
}

static void on_layer(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    /* as in on_end: the marker's instructions are already in insns_total but not yet run */
    const uint64_t not_yet_run = (uint64_t)(uintptr_t)userdata;
    if (region_open) {
        add_to_slot(marks_in_region, insns_total - not_yet_run - segment_start);
        marks_in_region += 1;
        /* the marker is one block (a store and a return): the next cut starts after it */
        segment_start = insns_total;
        marker_insns += not_yet_run;
    }
}

static void on_end(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    /* insns_total already includes the instructions of this block from the end marker on, which
     * have not run yet and belong to the marker: userdata holds how many they are. */
    const uint64_t not_yet_run = (uint64_t)(uintptr_t)userdata;
    if (region_open) {
        region_insns += insns_total - not_yet_run - region_start - marker_insns;
        regions += 1;
        region_open = false;
        if (layer_address != NO_ADDRESS) {
            add_to_slot(marks_in_region, insns_total - not_yet_run - segment_start);
            if (layer_marks == -2) {
                layer_marks = (long long)marks_in_region;
            } else if (layer_marks != (long long)marks_in_region) {
                layer_marks = -1;
            }
        }
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    const size_t n_insns = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns_total, n_insns);
    if (begin_address == NO_ADDRESS) {
        return;
    }
    for (size_t i = 0; i < n_insns; ++i) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint64_t address = qemu_plugin_insn_vaddr(insn);
        if (address == begin_address) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (address == end_address) {
            void *not_yet_run = (void *)(uintptr_t)(n_insns - i);
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, not_yet_run);
        } else if (address == layer_address) {
            void *not_yet_run = (void *)(uintptr_t)(n_insns - i);
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_layer, QEMU_PLUGIN_CB_NO_REGS, not_yet_run);
        }
    }
}

static void print_counts(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char text[160];
    snprintf(text, sizeof text, "insns_total=%" PRIu64 "\nregion_insns=%" PRIu64 "\nregions=%" PRIu64 "\n",
             insns_total, region_insns, regions);
    qemu_plugin_outs(text);
    if (layer_marks != -2) {
        snprintf(text, sizeof text, "layer_marks=%lld\nlayer_insns=", layer_marks);
        qemu_plugin_outs(text);
        for (size_t i = 0; i < layer_slots && (long long)i <= layer_marks; ++i) {
            snprintf(text, sizeof text, "%s%" PRIu64, i ? "," : "", layer_insns[i]);
            qemu_plugin_outs(text);
        }
        qemu_plugin_outs("\n");
    }
}

/* Parse "key=0xADDR"; Thumb function symbols have bit 0 set, instruction addresses do not. */
static bool parse_address(const char *arg, const char *key, uint64_t *address)
{
    const size_t key_len = strlen(key);
    if (strncmp(arg, key, key_len) != 0 || arg[key_len] != '=') {
        return false;
    }
    *address = strtoull(arg + key_len + 1, NULL, 0) & ~(uint64_t)1;
    return true;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    (void)info;
    for (int i = 0; i < argc; ++i) {
        if (!parse_address(argv[i], "begin", &begin_address) &&
            !parse_address(argv[i], "end", &end_address) && !parse_address(argv[i], "layer", &layer_address)) {
            fprintf(stderr, "qg_count: unknown argument '%s' (expected begin=ADDR,end=ADDR[,layer=ADDR])\n",
                    argv[i]);
            return -1;
        }
    }
    if ((begin_address == NO_ADDRESS) != (end_address == NO_ADDRESS)) {
        fprintf(stderr, "qg_count: give both begin= and end=, or neither\n");
        return -1;
    }
    if (layer_address != NO_ADDRESS && begin_address == NO_ADDRESS) {
        fprintf(stderr, "qg_count: layer= needs begin= and end=\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, print_counts, NULL);
    return 0;
}
