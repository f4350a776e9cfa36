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
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

from codegen.emit.c import check_prefix
from codegen.emit.escape import FILTERS as ESCAPE_FILTERS
from codegen.errors import UserError
from codegen.hostcheck import cache_root
from codegen.kernel_lib import archive as kernel_archive
from codegen.kernel_lib import split_sources
from codegen.output import replace_directory
from codegen.resources import data_dir, kernel_dir

CORES = ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
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


# ------------------------------------------------------------------------------------ boards

@dataclass(frozen=True)
class QemuMachine:
    """Where a board's firmware runs under qemu-system-arm and the memory map it is linked for."""

    machine: str
    flash_origin: int
    flash_kb: int
    ram_origin: int
    ram_kb: int


@dataclass(frozen=True)
class Board:
    """One target microcontroller (see boards/*.toml)."""

    name: str
    description: str
    core: str
    fpu: str          # "none", an -mfpu= value, or "auto" (let -mcpu choose, e.g. M55 + MVE)
    float_abi: str
    flash_kb: int     # the real part's memories, for the fit check
    ram_kb: int
    clock_mhz: int
    cflags: tuple[str, ...]
    qemu: QemuMachine
    stack_kb: int = DEFAULT_STACK_KB  # reserved at the top of RAM, counted in the fit check

    @property
    def has_fpu(self) -> bool:
        return self.fpu != "none"


def list_boards() -> list[str]:
    """Names of all known boards, sorted."""
    return sorted(path.stem for path in data_dir("boards").glob("*.toml"))


def load_board(name: str) -> Board:
    """Load boards/<name>.toml; raise UserError naming the known boards if there is none."""
    path = data_dir("boards") / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown board '{name}'; known boards: {', '.join(list_boards())}")
    with path.open("rb") as file:
        return parse_board(tomllib.load(file), source=str(path))


def parse_board(data: dict[str, Any], source: str = "<board>") -> Board:
    """Build a Board from parsed TOML; raise UserError if fields are missing or disagree."""
    try:
        fields = {key: value for key, value in data.items() if key != "qemu"}
        board = Board(**{**fields, "cflags": tuple(fields["cflags"]), "qemu": QemuMachine(**data["qemu"])})
    except (KeyError, TypeError) as exc:
        raise UserError(f"{source}: malformed board description ({exc})") from exc
    problems = board_problems(board)
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    return board


def board_problems(board: Board) -> list[str]:
    """Disagreements between a board's core/fpu/float_abi fields and its compiler flags."""
    problems = []
    if board.core not in CORES:
        problems.append(f"core '{board.core}' is not one of {', '.join(CORES)}")
    if board.float_abi not in FLOAT_ABIS:
        problems.append(f"float_abi '{board.float_abi}' is not one of {', '.join(FLOAT_ABIS)}")
    if not board.has_fpu and board.float_abi != "soft":
        problems.append("a board without FPU must use float_abi 'soft'")
    expected = [f"-mcpu={board.core}", "-mthumb", f"-mfloat-abi={board.float_abi}"]
    expected += [f"-mfpu={board.fpu}"] if board.has_fpu else []
    problems += [f"cflags lack '{flag}'" for flag in expected if flag not in board.cflags]
    if board.stack_kb >= min(board.ram_kb, board.qemu.ram_kb):
        problems.append(f"stack_kb {board.stack_kb} leaves no RAM for data")
    return problems


def _as_board(board: Board | str) -> Board:
    return board if isinstance(board, Board) else load_board(board)


# ------------------------------------------------------------------------------------- tools

def missing_tools(tools: Iterable[str] = REQUIRED_TOOLS) -> list[str]:
    """The tools among `tools` that are not on PATH."""
    return [tool for tool in tools if shutil.which(tool) is None]


def check_tools(tools: Iterable[str] = REQUIRED_TOOLS) -> None:
    """Raise UserError naming the missing cross compiler / emulator and how to install them."""
    missing = missing_tools(tools)
    if missing:
        raise UserError(f"{', '.join(missing)} not found on PATH; {INSTALL_HINT}")


def _run_tool(command: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a build tool; raise TargetError with its output if it fails."""
    process = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if process.returncode != 0:
        raise TargetError(f"{what} failed (exit {process.returncode}):\n$ {' '.join(command)}\n"
                          f"{process.stdout}{process.stderr}")
    return process


def _startup_dir() -> Path:
    return data_dir("firmware") / "startup"


@cache
def _templates() -> jinja2.Environment:
    """Jinja for the linker script and Makefile templates in firmware/startup/."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_startup_dir()),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(ESCAPE_FILTERS)  # board names and descriptions are data: write them as inert text
    return env


# ---------------------------------------------------------------------------- sizes and fit

@dataclass(frozen=True)
class SectionSizes:
    """Bytes per group of output sections of a linked ELF."""

    text: int    # code: vector table, .text, unwind tables
    rodata: int  # constants, weights
    data: int    # initialised variables: stored in flash, copied to RAM
    bss: int     # zero-initialised variables: the arena, buffers

    @property
    def flash_bytes(self) -> int:
        return self.text + self.rodata + self.data

    @property
    def ram_bytes(self) -> int:
        """Static RAM, without the stack."""
        return self.data + self.bss


@dataclass(frozen=True)
class FitReport:
    """Memory use against the real board's flash and RAM (RAM includes the reserved stack)."""

    board: str
    flash_bytes: int
    flash_limit: int
    ram_bytes: int
    ram_limit: int

    @property
    def fits(self) -> bool:
        return self.flash_bytes <= self.flash_limit and self.ram_bytes <= self.ram_limit

    def problems(self) -> list[str]:
        usage = ((self.flash_bytes, self.flash_limit, "flash"), (self.ram_bytes, self.ram_limit, "RAM"))
        return [f"model needs {_kb(need)} KB {kind}; {self.board} has {_kb(have)} KB"
                for need, have, kind in usage if need > have]


def _kb(n_bytes: int) -> str:
    kb = n_bytes / 1024
    return f"{kb:.0f}" if kb == int(kb) else f"{kb:.1f}"


_NOT_LOADED = re.compile(r"^\.(debug|comment|ARM\.attributes|stab|note)")  # no target memory
_SECTION_GROUP = {".rodata": "rodata", ".data": "data", ".bss": "bss"}


def read_section_sizes(elf: Path | str) -> SectionSizes:
    """Sizes from `arm-none-eabi-size -A`; unknown loaded sections count as code (conservative)."""
    totals = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    listing = _run_tool([CROSS_PREFIX + "size", "-A", "-d", str(elf)], "arm-none-eabi-size").stdout
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) != 3 or not fields[1].isdigit() or _NOT_LOADED.match(fields[0]):
            continue
        totals[_SECTION_GROUP.get(fields[0], "text")] += int(fields[1])
    return SectionSizes(**totals)


def fit_report(board: Board, sizes: SectionSizes) -> FitReport:
    """Flash = text + rodata + data; RAM = data + bss + the board's stack reserve."""
    return FitReport(board=board.name, flash_bytes=sizes.flash_bytes, flash_limit=board.flash_kb * 1024,
                     ram_bytes=sizes.ram_bytes + board.stack_kb * 1024, ram_limit=board.ram_kb * 1024)


def check_fits(board: Board, sizes: SectionSizes) -> FitReport:
    """Compare with the real board's memories; raise UserError saying what is too big."""
    report = fit_report(board, sizes)
    if not report.fits:
        raise UserError("; ".join(report.problems()) + ". Pick a board with more memory "
                        "or make the model smaller (pruning, clustering, low rank).")
    return report


def model_memory(header: Path | str, prefix: str) -> tuple[int, int] | None:
    """(<PREFIX>_FLASH_BYTES, <PREFIX>_ARENA_SIZE) from a generated model header, or None without them."""
    text = Path(header).read_text(errors="replace") if Path(header).is_file() else ""
    found = [re.search(rf"^#define {prefix.upper()}_{name} (\d+)\b", text, re.MULTILINE)
             for name in ("FLASH_BYTES", "ARENA_SIZE")]
    return (int(found[0].group(1)), int(found[1].group(1))) if all(found) else None


def check_model_fits(board: Board, header: Path | str, prefix: str) -> None:
    """Before cross-compiling: the model's constant data and arena alone (lower bounds of the image: code,
    harness and stack come on top) must fit the board, else UserError at once instead of after the build."""
    memory = model_memory(header, prefix)
    if memory is None:
        return  # a hand-written header: the fit check after linking decides
    flash, arena = memory
    stack = board.stack_kb * 1024
    report = FitReport(board=board.name, flash_bytes=flash, flash_limit=board.flash_kb * 1024,
                       ram_bytes=arena + stack, ram_limit=board.ram_kb * 1024)
    if not report.fits:
        raise UserError("; ".join(report.problems()) + f" (weights {_kb(flash)} KB, arena {_kb(arena)} KB + "
                        f"{board.stack_kb} KB stack, before code). Pick a board with more memory or make the model "
                        "smaller (--prune, --cluster, --rank, --channels).")


# ------------------------------------------------------------------------------------- build

@dataclass(frozen=True)
class ElfInfo:
    """A linked firmware image and its memory use (sizes include the ~2 KB harness)."""

    path: Path
    map_path: Path
    board: str
    prefix: str
    sizes: SectionSizes
    fit: FitReport
    warnings: str  # compiler warnings on the model sources (the harness has none: -Werror)
    layers_counted: bool = False  # built with count_layers=True: runs report per-layer counts


def harness_config_text(prefix: str, count_layers: bool = False) -> str:
    """harness_config.h: binds the generic harness to one model's header, run function and sizes
    (and, with `count_layers`, to its trace hook; the model must be built with trace_define())."""
    check_prefix(prefix)
    upper = prefix.upper()
    trace = (f"#ifndef {trace_define(prefix)}\n#error \"per-layer counting needs -D{trace_define(prefix)}\"\n"
             f"#endif\n#define HARNESS_SET_TRACE {prefix}_set_trace\n") if count_layers else ""
    return (f"/* Generated by qgen (codegen/target.py): the firmware harness runs model '{prefix}'. */\n"
            f"#include \"{prefix}_model.h\"\n"
            f"#define HARNESS_RUN {prefix}_run\n"
            f"#ifdef {upper}_INPUT_TYPE\n#define HARNESS_INPUT_T {upper}_INPUT_TYPE\n#else\n"
            f"#define HARNESS_INPUT_T int8_t /* a hand-written model header: int8 input */\n#endif\n"
            f"#define HARNESS_INPUT_SIZE {upper}_INPUT_SIZE\n"
            f"#define HARNESS_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n" + trace)


def trace_define(prefix: str) -> str:
    """The macro that compiles a generated model's per-layer trace hook in."""
    return f"{prefix.upper()}_ENABLE_TRACE"


def linker_script_text(board: Board) -> str:
    """The linker script for the board's QEMU memory map (firmware/startup/qg_link.ld.j2)."""
    qemu = board.qemu
    layout = {"board": board.name, "machine": qemu.machine,
              "flash_origin": f"0x{qemu.flash_origin:08x}", "flash_length": f"{qemu.flash_kb}K",
              "ram_origin": f"0x{qemu.ram_origin:08x}", "ram_length": f"{qemu.ram_kb}K",
              "stack_size": f"{board.stack_kb}K"}
    return _templates().get_template("qg_link.ld.j2").render(layout=layout)


def harness_sources() -> list[Path]:
    """The harness C files: start-up, semihosting, count markers, main."""
    return sorted(_startup_dir().glob("*.c"))


def build_elf(board: Board | str, sources: Sequence[Path | str], include_dirs: Sequence[Path | str],
              prefix: str, out_dir: Path | str, opt: str = "-O2", *,
              extra_cflags: Sequence[str] = (), check_fit: bool = True, count_layers: bool = False) -> ElfInfo:
    """Cross-compile the model `sources` with the harness into `out_dir/firmware.elf`.

    `include_dirs` must let the harness find `<prefix>_model.h`, which defines
    `<PREFIX>_INPUT_SIZE` and `<PREFIX>_OUTPUT_SIZE` and declares
    `int <prefix>_run(const int8_t *in, int8_t *out)` (0 = success). The harness is built with
    -Werror, the model with warnings that are shown but not fatal. Raises UserError if the image
    does not fit the real board's flash/RAM (unless `check_fit` is False) or the QEMU memory map,
    TargetError if a source does not compile. `count_layers` builds the model with its per-layer
    trace hook wired to the layer marker, so that run_qemu reports instructions per layer (the
    sources must be a generated model, which defines `<prefix>_set_trace`).
    """
    board = _as_board(board)
    check_tools([CROSS_CC, CROSS_PREFIX + "size"])
    out_dir = Path(out_dir)
    (out_dir / "obj").mkdir(parents=True, exist_ok=True)
    (out_dir / HARNESS_CONFIG).write_text(harness_config_text(prefix, count_layers))
    if count_layers:
        extra_cflags = [*extra_cflags, f"-D{trace_define(prefix)}"]
    linker_script = out_dir / "firmware.ld"
    linker_script.write_text(linker_script_text(board))

    includes = [f"-I{d}" for d in [out_dir, _startup_dir(), *include_dirs]]
    base = [CROSS_CC, *board.cflags, opt, *COMMON_CFLAGS, *includes, *extra_cflags]
    # A whole kernels/ directory among the sources is linked as one cached archive per (kernel sources,
    # core, flags) instead of being recompiled for every model (kernel_lib.py); the trace define is the model's.
    own, kernel_dirs = split_sources(sources)
    kernel_flags = [f for f in extra_cflags if f != f"-D{trace_define(prefix)}"]
    libs = [kernel_archive(d, [CROSS_CC, *board.cflags, opt, *COMMON_CFLAGS, *kernel_flags, *MODEL_WARNINGS],
                           ar=CROSS_PREFIX + "ar", run=lambda c, w: _run_tool(c, w).stderr) for d in kernel_dirs]
    jobs = [(path, [*base, *HARNESS_WARNINGS]) for path in harness_sources()]
    jobs += [(Path(path), [*base, *MODEL_WARNINGS]) for path in own]
    objects, warnings = _compile_all(jobs, out_dir / "obj")
    warnings += "".join(lib.warnings for lib in libs)

    elf, map_path = out_dir / "firmware.elf", out_dir / "firmware.map"
    _link(board, [*objects, *(lib.path for lib in libs)], linker_script, elf, map_path)
    sizes = read_section_sizes(elf)
    fit = check_fits(board, sizes) if check_fit else fit_report(board, sizes)
    return ElfInfo(path=elf, map_path=map_path, board=board.name, prefix=prefix, sizes=sizes, fit=fit,
                  warnings=warnings, layers_counted=count_layers)


def _compile_all(jobs: list[tuple[Path, list[str]]], obj_dir: Path) -> tuple[list[Path], str]:
    """Compile each (source, command) to its own object, in parallel; return objects and warnings.

    Objects are numbered so that two sources with the same file name do not collide.
    """
    objects = [obj_dir / f"{i:03d}_{source.stem}.o" for i, (source, _) in enumerate(jobs)]

    def compile_one(index: int) -> str:
        source, command = jobs[index]
        return _run_tool([*command, "-c", str(source), "-o", str(objects[index])],
                         f"compiling {source}").stderr

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        try:
            diagnostics = list(pool.map(compile_one, range(len(jobs))))  # re-raises the first failure
        except BaseException:  # a failure, Ctrl-C or SIGTERM: start no more compiles, finish the running ones
            pool.shutdown(cancel_futures=True)
            raise
    return objects, "".join(diagnostics)


def _link(board: Board, objects: list[Path], linker_script: Path, elf: Path, map_path: Path) -> None:
    command = [CROSS_CC, *board.cflags, *LINK_FLAGS, "-T", str(linker_script),
               f"-Wl,-Map={map_path}", *map(str, objects), "-o", str(elf)]
    try:
        _run_tool(command, "linking")
    except TargetError as exc:
        overflow = re.search(r"region `\w+' overflowed by \d+ bytes|do not fit in RAM", str(exc))
        if overflow is None:
            raise
        qemu = board.qemu
        raise UserError(f"firmware does not fit the {qemu.machine} memory map used to run {board.name} "
                        f"({qemu.flash_kb} KB code, {qemu.ram_kb} KB RAM): {overflow.group(0)}") from exc


# ------------------------------------------------------------------------------------ plugin

def build_plugin(cache_dir: Path | str | None = None) -> Path:
    """Build the instruction-count plugin with the host compiler; cached by source hash.

    The default cache is `<QGEN_CACHE or ~/.cache/qgen>/qemu_plugin`.
    """
    source = data_dir("firmware") / "qemu_plugin" / "qg_count.c"
    host_cc = shutil.which("gcc") or shutil.which("cc")
    if host_cc is None:
        raise UserError("no host C compiler (gcc or cc) on PATH; qgen needs one to build its QEMU plugin")
    command = [host_cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"]
    digest = hashlib.sha256(source.read_bytes() + " ".join(command).encode()).hexdigest()[:16]
    directory = Path(cache_dir) if cache_dir is not None else cache_root() / "qemu_plugin"
    library = directory / f"libqg_count-{digest}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    # Build under a unique name, then rename: concurrent builds never see half a file.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        _run_tool([*command, str(source), "-o", partial], "building the QEMU plugin")
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library


# --------------------------------------------------------------------------------------- run

@dataclass(frozen=True)
class RunResult:
    """Outputs of N inferences under QEMU and their instruction counts (None when not counted).

    instructions_total counts the instructions inside the N `<prefix>_run` calls, call and return
    included; instructions_program counts all the core executed (boot, semihosting I/O, harness).
    instructions_per_layer (ELFs built with count_layers=True) has one mean count per layer, in
    layer order, summing to instructions_per_inference (see the module docstring).
    """

    outputs: np.ndarray
    instructions_total: int | None
    instructions_per_inference: float | None
    instructions_program: int | None
    instructions_per_layer: list[float] | None = None


def qemu_command(board: Board, elf: Path | str) -> list[str]:
    """The qemu-system-arm command that runs a harness ELF with semihosting and no console."""
    return [QEMU, "-M", board.qemu.machine, "-nographic", "-monitor", "none", "-serial", "null",
            "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]


def marker_addresses(elf: Path | str) -> tuple[int, int]:
    """Addresses of qg_count_begin and qg_count_end (the plugin clears the Thumb bit)."""
    symbols = _marker_symbols(elf)
    missing = [name for name in MARKERS if name not in symbols]
    if missing:
        raise TargetError(f"{elf} lacks the count markers {missing}: was it built by build_elf()?")
    return symbols[MARKERS[0]], symbols[MARKERS[1]]


def layer_marker_address(elf: Path | str) -> int | None:
    """Address of qg_count_layer, or None for an ELF whose harness predates it."""
    return _marker_symbols(elf).get(LAYER_MARKER)


def _marker_symbols(elf: Path | str) -> dict[str, int]:
    listing = _run_tool([CROSS_PREFIX + "nm", "-P", str(elf)], "arm-none-eabi-nm").stdout
    return {fields[0]: int(fields[2], 16) for fields in map(str.split, listing.splitlines())
            if len(fields) >= 3 and fields[0] in (*MARKERS, LAYER_MARKER)}


def run_qemu(board: Board | str, elf: ElfInfo | Path | str, inputs: np.ndarray, output_size: int,
             count_instructions: bool = True, *, timeout: float = 120.0,
             plugin: Path | str | None = None) -> RunResult:
    """Run the harness ELF under QEMU on `inputs` (the model's input type, shape (N, input_size)); return outputs.

    `plugin` is the counting plugin to load; by default build_plugin() builds or reuses the cached
    one. Raises TargetError if QEMU fails, the harness reports an error, or the run takes longer
    than `timeout` seconds. Per-layer counts come back when the ELF was built with
    count_layers=True (its harness then calls the layer marker).
    """
    board = _as_board(board)
    elf_path = Path(elf.path if isinstance(elf, ElfInfo) else elf).resolve()
    check_tools([QEMU, CROSS_PREFIX + "nm"] if count_instructions else [QEMU])
    if inputs.dtype not in (np.int8, np.int16) or inputs.ndim != 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty int8 (or int16) array of shape (N, input_size), "
                         f"got {inputs.dtype} {inputs.shape}")
    n_inputs = inputs.shape[0]
    command = qemu_command(board, elf_path)
    with tempfile.TemporaryDirectory(prefix="qgen-qemu-") as work:
        work_dir = Path(work)
        (work_dir / INPUT_FILE).write_bytes(np.ascontiguousarray(inputs).tobytes())
        if count_instructions:
            begin, end = marker_addresses(elf_path)
            layer = layer_marker_address(elf_path)
            library = Path(plugin) if plugin is not None else build_plugin()
            layer_arg = f",layer=0x{layer:x}" if layer is not None else ""
            command += ["-plugin", f"{library.resolve()},begin=0x{begin:x},end=0x{end:x}{layer_arg}",
                        "-d", "plugin", "-D", str(work_dir / "plugin.log")]
        _run_emulator(command, work_dir, timeout)
        outputs = _read_outputs(work_dir / OUTPUT_FILE, n_inputs, output_size)
        if not count_instructions:
            return RunResult(outputs, None, None, None)
        counts = _read_counts(work_dir / "plugin.log")
    if counts["regions"] != n_inputs:
        raise TargetError(f"the plugin saw {counts['regions']} marker pairs for {n_inputs} inferences")
    return RunResult(outputs=outputs, instructions_total=counts["region_insns"],
                     instructions_per_inference=counts["region_insns"] / n_inputs,
                     instructions_program=counts["insns_total"],
                     instructions_per_layer=_per_layer(counts, n_inputs))


def _per_layer(counts: dict, n_inputs: int) -> list[float] | None:
    """Mean instructions per layer; the tail after the last layer marker goes to the last layer."""
    marks, slots = counts.get("layer_marks", 0), counts.get("layer_insns", [])
    if marks == 0:
        return None
    if marks < 0 or len(slots) != marks + 1:
        raise TargetError(f"the inferences made different numbers of layer-marker calls ({marks}, {slots})")
    per_layer = [n / n_inputs for n in slots[:-1]]
    per_layer[-1] += slots[-1] / n_inputs
    return per_layer


def _run_emulator(command: list[str], work_dir: Path, timeout: float) -> None:
    """Run QEMU in `work_dir`, where the harness finds its files; explain a failure."""
    try:
        process = subprocess.run(command, cwd=work_dir, capture_output=True, text=True, check=False,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(f"QEMU did not finish within {timeout:g} s:\n$ {' '.join(command)}") from exc
    if process.returncode != 0:
        meaning = HARNESS_EXIT_MEANING.get(process.returncode, "QEMU or the firmware failed")
        raise TargetError(f"QEMU exited with {process.returncode}: {meaning}\n$ {' '.join(command)}\n"
                          f"{process.stdout}{process.stderr}")


def _read_outputs(path: Path, n_inputs: int, output_size: int) -> np.ndarray:
    raw = path.read_bytes() if path.exists() else b""
    if len(raw) != n_inputs * output_size:
        raise TargetError(f"expected {n_inputs} x {output_size} output bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.int8).reshape(n_inputs, output_size).copy()


def _read_counts(log: Path) -> dict[str, Any]:
    """Parse the plugin's key=value lines from QEMU's log file (layer_insns: a list)."""
    text = log.read_text() if log.exists() else ""
    counts: dict[str, Any] = {key: int(value) for key, value in re.findall(r"^(\w+)=(-?\d+)$", text, re.MULTILINE)}
    if not {"insns_total", "region_insns", "regions"} <= counts.keys():
        raise TargetError(f"the counting plugin wrote no counts; QEMU log:\n{text}")
    slots = re.search(r"^layer_insns=([\d,]*)$", text, re.MULTILINE)
    if slots is not None:
        counts["layer_insns"] = [int(n) for n in slots.group(1).split(",") if n]
    return counts


# -------------------------------------------------------------------------- firmware project

MAKEFILE_BANNER = "# Generated by qgen (codegen/target.py write_project)"


def makefile_text(board: Board, prefix: str, opt: str = "-O2") -> str:
    """The project Makefile (firmware/startup/Makefile.j2), with build_elf()'s flags."""
    upper = prefix.upper()
    params = {"banner": MAKEFILE_BANNER, "board": board.name, "description": board.description,
              "machine": board.qemu.machine, "input_macro": f"{upper}_INPUT_SIZE",
              "output_macro": f"{upper}_OUTPUT_SIZE", "cc": CROSS_CC, "size": CROSS_PREFIX + "size",
              "cpuflags": " ".join(board.cflags), "opt": opt, "common": " ".join(COMMON_CFLAGS),
              "harness_warnings": " ".join(HARNESS_WARNINGS), "model_warnings": " ".join(GENERATED_MODEL_WARNINGS),
              "link_flags": " ".join(LINK_FLAGS), "harness_config": HARNESS_CONFIG,
              "qemu_command": " ".join(qemu_command(board, "firmware.elf"))}
    return _templates().get_template("Makefile.j2").render(p=params)


def _infer_prefix(model_dir: Path) -> str:
    headers = sorted(model_dir.glob("*_model.h"))
    if len(headers) != 1:
        raise UserError(f"cannot tell the model prefix: expected one *_model.h in {model_dir}, "
                        f"found {[h.name for h in headers]}; pass the prefix explicitly")
    return headers[0].name.removesuffix("_model.h")


def write_project(board: Board | str, model_dir: Path | str, out_dir: Path | str,
                  prefix: str | None = None, kernels: Path | str | None = None) -> Path:
    """Write a standalone firmware project that `make` builds into firmware.elf.

    Layout: Makefile, link.ld, harness_config.h, startup/ (firmware/startup), model/ (the .c/.h
    files of `model_dir`), kernels/ (firmware/kernels unless `kernels` is given). The project is
    written beside `out_dir` and renamed into place, so a failure leaves no half project; an
    existing `out_dir` is replaced only if it holds a previous qgen project.
    """
    board = _as_board(board)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    prefix = prefix or _infer_prefix(model_dir)
    kernel_source = Path(kernels) if kernels is not None else kernel_dir()
    _refuse_foreign_directory(out_dir)

    def fill(staging: Path) -> None:
        (staging / "Makefile").write_text(makefile_text(board, prefix))
        (staging / "link.ld").write_text(linker_script_text(board))
        (staging / HARNESS_CONFIG).write_text(harness_config_text(prefix))
        _copy_c_files(_startup_dir(), staging / "startup")
        _copy_c_files(model_dir, staging / "model")
        if kernel_source.is_dir():
            _copy_c_files(kernel_source, staging / "kernels")

    replace_directory(out_dir, fill, _refuse_foreign_directory)  # atomic swap, locked, recovers killed runs
    return out_dir


def _refuse_foreign_directory(out_dir: Path) -> None:
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    makefile = out_dir / "Makefile"
    if not (makefile.is_file() and makefile.read_text().startswith(MAKEFILE_BANNER)):
        raise UserError(f"{out_dir} exists and is not a qgen firmware project; choose another directory")


def _copy_c_files(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.suffix in (".c", ".h"):
            shutil.copy2(path, destination / path.name)
