"""Cortex-M targets: boards, firmware build, fit check, QEMU run, instruction counts.

Boards are data (boards/<name>.toml): the real part's core, FPU, flash, RAM and clock (used for
the "does it fit?" check and reports), the compiler flags for its core, and a [qemu] table naming
the QEMU machine that runs the same instructions and the memory map the test firmware is linked for.

The firmware is the model's C sources plus the harness in firmware/startup/: vector table and reset
handler, semihosting I/O, and a main() that reads N int8 input vectors from the host file
qg_input.bin, calls `<prefix>_run(in, out)` on each between two instruction-count markers and
writes the outputs to qg_output.bin (see firmware/startup/qg_harness_main.c).

Instructions are counted by a small TCG plugin (firmware/qemu_plugin/qg_count.c), built with the
host compiler on first use and cached. It counts every executed guest instruction and, separately,
those executed between the markers, i.e. inside the `<prefix>_run` calls. Both counts are exact and
repeatable: the harness enables no interrupt, so every run takes the same path.

Per-layer counts: build_elf(..., count_layers=True) compiles the model with its trace hook
(-D<PREFIX>_ENABLE_TRACE) and has the harness install the layer marker qg_count_layer as the trace
callback, which the generated `<prefix>_run` calls after every layer. The plugin cuts each run at
those calls, and run_qemu returns RunResult.instructions_per_layer: for layer i, the instructions
from the end of the previous layer's trace call to the start of its own (call set-up included, about
7 instructions; the marker's body is not counted). The first layer also carries the call of
`<prefix>_run` and its prologue, the last one the epilogue, so the list sums exactly to
instructions_per_inference. That total is the traced build's: it exceeds an untraced build's by the
trace call sites, about 7 instructions per layer (tests/test_target.py bounds the difference).

Typical use:
    board = load_board("stm32f446")
    elf = build_elf(board, sources, [model_dir], "qg", build_dir)
    result = run_qemu(board, elf, inputs_i8, output_size)

Package layout (split from one target.py, code unchanged): common (constants, TargetError),
boards, toolchain (tools, sizes and fit, build_elf, the QEMU plugin), qemu (run_qemu and its outputs),
project (write_project). Every name stays importable from `codegen.target`.
"""
from __future__ import annotations

from codegen.target.boards import (  # noqa: F401 (re-exported)
    Board,
    FlashTools,
    ImageMap,
    QemuMachine,
    _as_board,
    board_problems,
    list_boards,
    load_board,
    parse_board,
)
from codegen.target.common import (  # noqa: F401 (re-exported)
    COMMON_CFLAGS,
    CORES,
    CROSS_CC,
    CROSS_PREFIX,
    DEFAULT_STACK_KB,
    FLOAT_ABIS,
    GENERATED_MODEL_WARNINGS,
    HARNESS_CONFIG,
    HARNESS_EXIT_MEANING,
    HARNESS_WARNINGS,
    INPUT_FILE,
    INSTALL_HINT,
    LAYER_MARKER,
    LINK_FLAGS,
    MARCH_FOR_CORE,
    MARKERS,
    MODEL_WARNINGS,
    OUTPUT_FILE,
    QEMU,
    REQUIRED_TOOLS,
    TargetError,
)
from codegen.target.project import (  # noqa: F401 (re-exported)
    MAKEFILE_BANNER,
    _copy_c_files,
    _infer_prefix,
    _refuse_foreign_directory,
    makefile_text,
    write_project,
)
from codegen.target.qemu import (  # noqa: F401 (re-exported)
    RunResult,
    _marker_symbols,
    _per_layer,
    _read_counts,
    _read_outputs,
    _run_emulator,
    layer_marker_address,
    marker_addresses,
    qemu_command,
    run_qemu,
)
from codegen.target.toolchain import (  # noqa: F401 (re-exported)
    _NOT_LOADED,
    _SECTION_GROUP,
    ElfInfo,
    FitReport,
    SectionSizes,
    _compile_all,
    _kb,
    _link,
    _run_tool,
    _startup_dir,
    _templates,
    build_elf,
    build_plugin,
    check_fits,
    check_model_fits,
    check_tools,
    fit_report,
    harness_config_text,
    harness_sources,
    linker_script_text,
    missing_tools,
    model_memory,
    read_section_sizes,
    trace_define,
)
