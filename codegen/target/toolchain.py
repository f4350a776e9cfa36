"""The cross toolchain: tools, section sizes and fit, the ELF build, the QEMU plugin build.

Moved unchanged from codegen/target.py; `codegen.target` re-exports every name.
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

import jinja2

from codegen.emit.c import check_prefix
from codegen.emit.escape import FILTERS as ESCAPE_FILTERS
from codegen.errors import UserError
from codegen.hostcheck import cache_root
from codegen.kernel_lib import archive as kernel_archive
from codegen.kernel_lib import split_sources
from codegen.resources import data_dir
from codegen.target.boards import Board, ImageMap, _as_board
from codegen.target.common import (
    COMMON_CFLAGS,
    CROSS_CC,
    CROSS_PREFIX,
    HARNESS_CONFIG,
    HARNESS_WARNINGS,
    INSTALL_HINT,
    LINK_FLAGS,
    MODEL_WARNINGS,
    REQUIRED_TOOLS,
    TargetError,
)

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
            f"#ifdef {upper}_STREAM /* --stream: the inputs are one stream's frames */\n"
            f"#define HARNESS_RUN {prefix}_step\n#define HARNESS_RESET {prefix}_reset\n#else\n"
            f"#define HARNESS_RUN {prefix}_run\n#endif\n"
            f"#ifdef {upper}_INPUT_TYPE\n#define HARNESS_INPUT_T {upper}_INPUT_TYPE\n#else\n"
            f"#define HARNESS_INPUT_T int8_t /* a hand-written model header: int8 input */\n#endif\n"
            f"#define HARNESS_INPUT_SIZE {upper}_INPUT_SIZE\n"
            f"#define HARNESS_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n" + trace)


def trace_define(prefix: str) -> str:
    """The macro that compiles a generated model's per-layer trace hook in."""
    return f"{prefix.upper()}_ENABLE_TRACE"


def linker_script_text(board: Board, image: bool = False) -> str:
    """The linker script for the board's QEMU memory map (firmware/startup/qg_link.ld.j2), or with `image`
    for the real part's map (boards/*.toml [image]: a flashable image; see codegen/target/image.py)."""
    memory = image_map(board) if image else board.qemu
    what = f"the {board.description} memory map (flashable image)" if image else \
        f"the QEMU {board.qemu.machine} memory map"
    layout = {"board": board.name, "map": what,
              "flash_origin": f"0x{memory.flash_origin:08x}", "flash_length": f"{memory.flash_kb}K",
              "ram_origin": f"0x{memory.ram_origin:08x}", "ram_length": f"{memory.ram_kb}K",
              "stack_size": f"{board.stack_kb}K", "boot2": image and image_map(board).boot2}
    return _templates().get_template("qg_link.ld.j2").render(layout=layout)


def image_map(board: Board) -> ImageMap:
    """The board's real memory map; UserError for a board described for QEMU only."""
    if board.image is None:
        raise UserError(f"board '{board.name}' has no [image] memory map in its TOML, so qgen cannot link a "
                        "flashable image for it; add one (flash/RAM origins and sizes of the part)")
    return board.image


def harness_sources() -> list[Path]:
    """The harness C files: start-up, semihosting, count markers, main."""
    return sorted(_startup_dir().glob("*.c"))


def build_elf(board: Board | str, sources: Sequence[Path | str], include_dirs: Sequence[Path | str],
              prefix: str, out_dir: Path | str, opt: str = "-O2", *,
              extra_cflags: Sequence[str] = (), check_fit: bool = True, count_layers: bool = False,
              image: bool = False) -> ElfInfo:
    """Cross-compile the model `sources` with the harness into `out_dir/firmware.elf`.

    `include_dirs` must let the harness find `<prefix>_model.h`, which defines
    `<PREFIX>_INPUT_SIZE` and `<PREFIX>_OUTPUT_SIZE` and declares
    `int <prefix>_run(const int8_t *in, int8_t *out)` (0 = success). The harness is built with
    -Werror, the model with warnings that are shown but not fatal. Raises UserError if the image
    does not fit the real board's flash/RAM (unless `check_fit` is False) or the QEMU memory map,
    TargetError if a source does not compile. `count_layers` builds the model with its per-layer
    trace hook wired to the layer marker, so that run_qemu reports instructions per layer (the
    sources must be a generated model, which defines `<prefix>_set_trace`). `image` links for the
    real part's memory map instead ([image]; with the RP2040's boot2) for a flashable image.
    """
    board = _as_board(board)
    check_tools([CROSS_CC, CROSS_PREFIX + "size"])
    out_dir = Path(out_dir)
    (out_dir / "obj").mkdir(parents=True, exist_ok=True)
    (out_dir / HARNESS_CONFIG).write_text(harness_config_text(prefix, count_layers))
    if count_layers:
        extra_cflags = [*extra_cflags, f"-D{trace_define(prefix)}"]
    linker_script = out_dir / "firmware.ld"
    linker_script.write_text(linker_script_text(board, image))

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
    if image and image_map(board).boot2:
        from codegen.target.image import boot2_object

        objects.append(boot2_object(board, out_dir / "obj"))
    _link(board, [*objects, *(lib.path for lib in libs)], linker_script, elf, map_path, image)
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


def _link(board: Board, objects: list[Path], linker_script: Path, elf: Path, map_path: Path,
          image: bool = False) -> None:
    command = [CROSS_CC, *board.cflags, *LINK_FLAGS, "-T", str(linker_script),
               f"-Wl,-Map={map_path}", *map(str, objects), "-o", str(elf)]
    try:
        _run_tool(command, "linking")
    except TargetError as exc:
        overflow = re.search(r"region `\w+' overflowed by \d+ bytes|do not fit in RAM", str(exc))
        if overflow is None:
            raise
        qemu = board.qemu
        if image:
            memory = image_map(board)
            raise UserError(f"firmware does not fit {board.name}'s memory ({memory.flash_kb} KB flash, "
                            f"{memory.ram_kb} KB RAM): {overflow.group(0)}") from exc
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
