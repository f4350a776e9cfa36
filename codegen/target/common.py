"""Constants shared by the target modules and TargetError.

Moved unchanged from codegen/target.py; `codegen.target` re-exports every name.
"""
from __future__ import annotations

CORES = ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "cortex-m85")
# Cores the cross compiler cannot name with -mcpu (GCC 12.2 has no cortex-m85; GCC 13 does): a board of such a core
# gives this -march instead, the same instruction set without what GCC 12 lacks (the M85's PACBTI, which qgen's code
# does not use). Armv8.1-M Mainline + integer/float MVE + double-precision FPU: __ARM_FEATURE_MVE and
# __ARM_FEATURE_DSP as with -mcpu=cortex-m55, so the kernels take their Helium paths.
MARCH_FOR_CORE = {"cortex-m85": "armv8.1-m.main+mve.fp+fp.dp"}
FLOAT_ABIS = ("soft", "softfp", "hard")
DEFAULT_STACK_KB = 8

CROSS_PREFIX = "arm-none-eabi-"
CROSS_CC = CROSS_PREFIX + "gcc"
QEMU = "qemu-system-arm"
REQUIRED_TOOLS = (CROSS_CC, CROSS_PREFIX + "size", CROSS_PREFIX + "nm", QEMU)
INSTALL_HINT = "install the Debian packages gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm"

# One set of flags, shared by build_elf() and the Makefile of write_project().
COMMON_CFLAGS = ("-g", "-ffunction-sections", "-fdata-sections", "-fno-common")
HARNESS_WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wconversion")
MODEL_WARNINGS = ("-Wall", "-Wextra")  # build_elf(): any model sources, warnings shown (ElfInfo.warnings)
# A generated model (and its kernels) is held to the host's standard: a warning is an error (a value truncated
# into a struct field is -Woverflow). deploy.build() passes these to build_elf(); the project Makefile uses them.
GENERATED_MODEL_WARNINGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wconversion")
# newlib-nano supplies memcpy/memset (GCC emits calls to them for plain loops) and libgcc the
# division helpers ARMv6-M lacks; the start-up code is ours, hence -nostartfiles.
LINK_FLAGS = ("-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections")

INPUT_FILE = "qg_input.bin"    # names fixed in qg_harness_main.c
OUTPUT_FILE = "qg_output.bin"
HARNESS_CONFIG = "harness_config.h"
MARKERS = ("qg_count_begin", "qg_count_end")
LAYER_MARKER = "qg_count_layer"

# Exit statuses of the harness: HARNESS_EXIT_* in qg_harness_main.c, QG_EXIT_FAULT in qg_startup.c.
HARNESS_EXIT_MEANING = {
    1: "the harness could not open its input file",
    2: "the input file is not a whole number of input vectors",
    3: "the harness could not read its input file",
    4: "the model's run function returned a nonzero status",
    5: "the harness could not write its output file",
    10: "the firmware took an unexpected exception (fault)",
}


class TargetError(RuntimeError):
    """The cross build or the emulated run failed: a bug, not the user's fault (exit code 2)."""
