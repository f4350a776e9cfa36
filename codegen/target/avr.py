"""8-bit AVR (ATmega328P, ATmega2560) under simavr: boards, the fit check, build, run, cycle counts.

The AVR is where qgen's C proves itself on a core with 16-bit `int`. A board is boards/<name>.toml with
`arch = "avr"` and a [simavr] section instead of [qemu]. The harness (firmware/avr/qg_avr_main.c) keeps the
inputs in flash, runs `<prefix>_run` on each, prints the output bytes and Timer1 cycle counts on USART0,
which simavr copies to its stdout, and measures the stack peak by painting free RAM.

avr-gcc places plain `const` data in SRAM (the AVR's flash is another address space, read with LPM), so qgen's
generated arrays and layer parameter structs are QG_CONST (PROGMEM) there and the kernels read them with
pgm_read_* (qg_kernels.h): SRAM holds the arena, one layer's parameter struct, the harness's input/output
buffers, the arrays of the few kernels that still read RAM (codegen/emit/c.py FLASH_READERS) and the stack. The
fit check counts them all and names a board that fits. pgm_read_* reaches the first 64 KB of flash: a model whose
constant data ends above that is refused (check_avr_flash_data).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from codegen.errors import UserError
from codegen.resources import data_dir
from codegen.target.boards import list_boards, tomllib
from codegen.target.common import TargetError

AVR_CC = "avr-gcc"
AVR_TOOLS = (AVR_CC, "avr-size", "avr-nm", "simavr")
AVR_INSTALL_HINT = "install the Debian packages gcc-avr, avr-libc and simavr"
# The generated model is held to the host's standard here too (-Wconversion catches int-width assumptions).
AVR_CFLAGS = ("-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-ffunction-sections",
              "-fdata-sections")
# Linked with the part's memory regions widened so that an oversized model still links and its sizes can be
# measured: check_avr_fit() (stricter than the linker: it counts the stack too) refuses it before any run.
MEASURE_LINK_FLAGS = ("-Wl,--defsym=__DATA_REGION_LENGTH__=0xffa0", "-Wl,--defsym=__TEXT_REGION_LENGTH__=0x100000")
RUN_TIMEOUT_S = 120


@dataclass(frozen=True)
class SimavrRunner:
    """How simavr runs the board's firmware ([simavr]): the `-m` part name (the clock is the board's)."""

    mcu: str


@dataclass(frozen=True)
class AvrFlash:
    """How avrdude programs the board through its serial bootloader ([flash] in the board's TOML)."""

    avrdude_part: str        # avrdude -p: m328p, m2560
    avrdude_programmer: str  # avrdude -c: arduino (Optiboot, STK500v1), wiring (STK500v2 + DTR reset)
    baud: int                # the bootloader's serial speed
    port: str                # default serial port (qgen flash --port overrides it)
    bootloader_bytes: int    # flash at the top kept by the bootloader: the image must end below it
    probes: tuple[str, ...] = ("avrdude",)


@dataclass(frozen=True)
class AvrBoard:
    """One 8-bit AVR board (boards/<name>.toml with arch = "avr")."""

    name: str
    description: str
    core: str           # avr-gcc's architecture: avr5 (ATmega328P), avr6 (ATmega2560)
    flash_kb: int
    ram_kb: int
    clock_mhz: int
    cflags: tuple[str, ...]
    simavr: SimavrRunner
    stack_bytes: int = 256  # reserved for the call stack in the fit check
    flash: AvrFlash | None = None  # [flash]: qgen firmware --image / qgen flash

    @property
    def arch(self) -> str:
        return "avr"


def load_avr_board(name: str) -> AvrBoard:
    """Load boards/<name>.toml, an AVR board; UserError naming the AVR boards otherwise."""
    path = data_dir("boards") / f"{name}.toml"
    known = ", ".join(list_boards("avr"))
    if not path.is_file():
        raise UserError(f"unknown AVR board '{name}'; AVR boards: {known}")
    with path.open("rb") as file:
        data: dict[str, Any] = tomllib.load(file)
    if data.get("arch") != "avr":
        raise UserError(f"board '{name}' is not an AVR board; AVR boards: {known}")
    try:
        fields = {k: v for k, v in data.items() if k not in ("arch", "simavr", "flash")}
        flash = data.get("flash")
        flash = AvrFlash(**{**flash, "probes": tuple(flash.get("probes", ("avrdude",)))}) if flash else None
        return AvrBoard(**{**fields, "cflags": tuple(fields["cflags"]), "simavr": SimavrRunner(**data["simavr"]),
                           "flash": flash})
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: malformed AVR board description ({exc})") from exc


def avr_missing_tools() -> list[str]:
    return [tool for tool in AVR_TOOLS if shutil.which(tool) is None]


# ------------------------------------------------------------------------------------------ fit


@dataclass(frozen=True)
class AvrMemory:
    """What a built AVR firmware takes: flash = .text + .data (its initial values live in flash),
    static RAM = .data + .bss (weights, parameters, arena, harness buffers)."""

    flash_bytes: int
    static_ram_bytes: int


def avr_fit_problems(board: AvrBoard, memory: AvrMemory) -> list[str]:
    """Why the firmware does not fit the board (empty: it fits)."""
    problems = []
    ram = board.ram_kb * 1024
    if memory.static_ram_bytes + board.stack_bytes > ram:
        problems.append(f"needs {memory.static_ram_bytes} B of static RAM (the arena, the input and output buffers "
                        f"and a layer's parameters; the weights are in flash) + {board.stack_bytes} B of "
                        f"stack = {memory.static_ram_bytes + board.stack_bytes} B, the {board.name} has {ram} B")
    if memory.flash_bytes > board.flash_kb * 1024:
        problems.append(f"needs {memory.flash_bytes} B of flash, the {board.name} has {board.flash_kb * 1024} B")
    return problems


def check_avr_fit(board: AvrBoard, memory: AvrMemory) -> None:
    """UserError when the firmware does not fit the board, naming the AVR boards that it fits."""
    problems = avr_fit_problems(board, memory)
    if not problems:
        return
    fitting = [name for name in list_boards("avr") if name != board.name
               and not avr_fit_problems(load_avr_board(name), memory)]
    way_out = (f"it fits the {', '.join(fitting)}: use that board" if fitting else
               "no AVR board fits it: shrink the model (fewer channels, pruning, int4 weights) or use a Cortex-M board")
    raise UserError(f"model does not fit the {board.name}: {'; '.join(problems)}; {way_out}")


LPM_LIMIT = 0x10000  # pgm_read_* (LPM, 16-bit Z pointer) reads the first 64 KB of flash


def check_avr_flash_data(board: AvrBoard, elf: Path) -> None:
    """UserError when the model's flash data (.progmem, placed first in flash by avr-libc's linker script, ended
    by __ctors_start) reaches above the first 64 KB: the kernels read it with LPM and 16-bit addresses."""
    symbols = subprocess.run(["avr-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    end = re.search(r"^([0-9a-f]+) \w __ctors_start$", symbols, re.M)
    if end is not None and int(end.group(1), 16) > LPM_LIMIT:
        raise UserError(
            f"model does not fit the {board.name}: its constant data in flash ends at byte {int(end.group(1), 16):,}, "
            f"but qgen's AVR kernels read flash data with LPM (pgm_read_*, 16-bit addresses), which reaches the "
            f"first {LPM_LIMIT:,} B only (far data through ELPM is not supported); keep the weights under about "
            f"63 KB on AVR (fewer channels, pruning) or use a Cortex-M board")


def read_avr_memory(elf: Path) -> AvrMemory:
    sizes = subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    section = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\w+)\s+(\d+)", sizes, re.M)}
    text, data, bss = section.get(".text", 0), section.get(".data", 0), section.get(".bss", 0)
    return AvrMemory(flash_bytes=text + data, static_ram_bytes=data + bss)


# ------------------------------------------------------------------------------------ build, run


def _c_values(values: np.ndarray) -> str:
    flat = [str(int(v)) for v in values.reshape(-1)]
    return ",\n".join(", ".join(flat[i:i + 24]) for i in range(0, len(flat), 24))


def write_harness(work: Path, prefix: str, x: np.ndarray, per_layer: bool = False) -> list[Path]:
    """The harness's generated files: qg_avr_config.h (model names) and qg_avr_inputs.c (inputs in flash)."""
    upper = prefix.upper()
    layers = (f"#define QG_AVR_PER_LAYER 1\n#define QG_AVR_SET_TRACE {prefix}_set_trace\n"
              f"#define QG_AVR_NUM_LAYERS {upper}_NUM_LAYERS\n") if per_layer else ""
    config = work / "qg_avr_config.h"
    config.write_text(
        f'#include "{prefix}_model.h"\n#define QG_AVR_RUN {prefix}_run\n'
        f"#ifdef {upper}_INPUT_TYPE\n#define QG_AVR_INPUT_T {upper}_INPUT_TYPE\n#else\n"
        f"#define QG_AVR_INPUT_T int8_t\n#endif\n"
        f"#define QG_AVR_INPUT_SIZE {upper}_INPUT_SIZE\n#define QG_AVR_OUTPUT_SIZE {upper}_OUTPUT_SIZE\n"
        f"#define QG_AVR_N_INPUTS {len(x)}u\n{layers}")
    inputs = work / "qg_avr_inputs.c"
    inputs.write_text('#include <avr/pgmspace.h>\n#include <stdint.h>\n#include "qg_avr_config.h"\n'
                      f"const QG_AVR_INPUT_T qg_avr_inputs[] PROGMEM = {{\n{_c_values(x)}\n}};\n")
    return [config, inputs]


def build_avr_elf(board: AvrBoard, model_dir: Path, prefix: str, x: np.ndarray, work: Path,
                  kernel_sources: Sequence[Path] | None = None, per_layer: bool = False,
                  serial_baud: int | None = None) -> Path:
    """Compile the model in model_dir (<prefix>_model.c, <prefix>_weights.c, kernels/) with the harness.
    serial_baud: set USART0 to that speed (a real board's serial monitor; simavr needs none)."""
    missing = avr_missing_tools()
    if missing:
        raise UserError(f"AVR build needs {', '.join(missing)}: {AVR_INSTALL_HINT}")
    work.mkdir(parents=True, exist_ok=True)
    kernels = model_dir / "kernels"
    if kernel_sources is None:
        kernel_sources = sorted(kernels.glob("*.c"))
    _, inputs = write_harness(work, prefix, x, per_layer)
    sources = [data_dir("firmware") / "avr" / "qg_avr_main.c", inputs, model_dir / f"{prefix}_model.c",
               model_dir / f"{prefix}_weights.c", *kernel_sources]
    elf = work / "firmware.elf"
    trace = [f"-D{prefix.upper()}_ENABLE_TRACE"] if per_layer else []
    if serial_baud:
        trace += [f"-DQG_AVR_BAUD={serial_baud}UL", f"-DF_CPU={board.clock_mhz * 1_000_000}UL"]
    command = [AVR_CC, *board.cflags, *AVR_CFLAGS, *trace, f"-I{work}", f"-I{model_dir}", f"-I{kernels}",
               *map(str, sources), "-Wl,--gc-sections", *MEASURE_LINK_FLAGS, "-o", str(elf)]
    process = subprocess.run(command, capture_output=True, text=True)
    too_large = re.search(r"size of array .(\w+). is too large", process.stderr)
    if process.returncode != 0 and too_large:
        raise UserError(f"model does not fit the {board.name}: its constant array {too_large.group(1)} is larger "
                        f"than an AVR object can be (32,767 B: 16-bit pointers and size_t); split or shrink the layer "
                        f"or use a Cortex-M board")
    if process.returncode != 0:
        raise TargetError(f"avr-gcc failed (exit {process.returncode}):\n$ {' '.join(command)}\n{process.stderr}")
    return elf


@dataclass
class AvrRun:
    """One simavr run: outputs (N, output bytes) as int8, cycles per inference, memory and stack peak."""

    board: AvrBoard
    outputs: np.ndarray
    cycles: list[int]
    memory: AvrMemory
    stack_peak_bytes: int
    cycles_per_layer: list[int] | None = None  # first inference, with per_layer (the trace hook adds ~60 each)

    @property
    def ram_peak_bytes(self) -> int:
        return self.memory.static_ram_bytes + self.stack_peak_bytes

    @property
    def milliseconds(self) -> float:
        return max(self.cycles) / (self.board.clock_mhz * 1000.0)


_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def run_simavr(board: AvrBoard, elf: Path, output_size: int, memory: AvrMemory | None = None) -> AvrRun:
    """Run the harness ELF under simavr and parse its USART output."""
    command = ["simavr", "-m", board.simavr.mcu, "-f", str(board.clock_mhz * 1_000_000), str(elf)]
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(f"simavr did not finish in {RUN_TIMEOUT_S} s: $ {' '.join(command)}") from exc
    # simavr prints each USART line in colour, ending it with a '.'
    lines = [_ESCAPES.sub("", line).strip().rstrip(".") for line in (process.stdout + process.stderr).splitlines()]
    outputs, cycles, stack, current, layer_end = [], [], None, b"", []
    for line in lines:
        tag, _, value = line.partition(" ")
        if tag == "O":
            current += bytes.fromhex(value)
        elif tag == "C":
            outputs.append(np.frombuffer(current, dtype=np.int8))
            cycles.append(int(value, 16))
            current = b""
        elif tag == "S":
            stack = int(value, 16)
        elif tag == "L":
            layer_end.append(int(value, 16))
        elif tag == "F":
            raise TargetError(f"the model's run function returned {int(value, 16)} on the {board.name}")
    if stack is None or "E" not in lines or any(len(o) != output_size for o in outputs):
        raise TargetError(f"simavr run did not complete (exit {process.returncode}):\n$ {' '.join(command)}\n"
                          + "\n".join(lines[-20:]))
    per_layer = [end - start for start, end in zip([0, *layer_end], layer_end)] if layer_end else None
    return AvrRun(board, np.stack(outputs) if outputs else np.zeros((0, output_size), np.int8), cycles,
                  memory or read_avr_memory(elf), stack, per_layer)


def run_avr(board: AvrBoard | str, model_dir: Path | str, prefix: str, x: np.ndarray, work: Path | str,
            output_size: int, per_layer: bool = False) -> AvrRun:
    """Build the model in model_dir for an AVR board, refuse it if it does not fit, run it under simavr.
    x: (N, input values) integers of the model's input type. per_layer: also cycles per layer (first input)."""
    board = load_avr_board(board) if isinstance(board, str) else board
    model_dir, work = Path(model_dir), Path(work)
    elf = build_avr_elf(board, model_dir, prefix, np.asarray(x).reshape(len(x), -1), work, per_layer=per_layer)
    memory = read_avr_memory(elf)
    check_avr_fit(board, memory)
    check_avr_flash_data(board, elf)
    return run_simavr(board, elf, output_size, memory)


def is_avr_board(name: str | None) -> bool:
    """True when boards/<name>.toml is an AVR board (`qgen run --board` dispatches on it)."""
    return name is not None and name in list_boards("avr")


def run_compiled_avr(model_dir: Path | str, board: AvrBoard | str, x: np.ndarray | None = None,
                     n: int | None = None, per_layer: bool = False) -> tuple[list[str], bool]:
    """`qgen run --board <avr board>`: build a qgen output directory for the board, run it under simavr on
    the given inputs (default: the samples saved at compile time), compare every byte with the reference.
    Returns the summary lines and whether all outputs were equal."""
    import tempfile

    from codegen.api import load_compiled
    from codegen.hostcheck import reference_outputs
    from codegen.reference import run_int

    board = load_avr_board(board) if isinstance(board, str) else board
    compiled = load_compiled(model_dir)
    g = compiled.graph
    x = compiled.saved_inputs() if x is None else np.asarray(x, dtype=g.tensors[g.inputs[0]].dtype)
    x = x[:n] if n is not None else x
    if len(x) == 0:
        raise UserError("no input samples to run")
    expect = reference_outputs(g, run_int(g, x))
    with tempfile.TemporaryDirectory(prefix="qgen-avr-") as tmp:
        run = run_avr(board, model_dir, compiled.prefix, x, Path(tmp), expect.shape[1], per_layer)
    equal = np.all(run.outputs == expect, axis=1)
    macs = int(compiled.report.get("macs", 0))
    cycles = max(run.cycles)
    lines = [f"board {board.name} ({board.core}, {board.clock_mhz} MHz) under simavr",
             f"bit-exact: {int(equal.sum())}/{len(x)} samples",
             f"cycles per inference: {cycles:,} ({run.milliseconds:.1f} ms at {board.clock_mhz} MHz)"
             + (f", {cycles / macs:.1f} cycles/MAC" if macs else ""),
             f"RAM: {run.memory.static_ram_bytes:,} B static (arena, buffers, parameters) + {run.stack_peak_bytes} B "
             f"stack peak = {run.ram_peak_bytes:,} of {board.ram_kb * 1024:,} B; flash {run.memory.flash_bytes:,} "
             f"of {board.flash_kb * 1024:,} B"]
    if run.cycles_per_layer is not None:
        layers = compiled.report.get("layers") or []
        lines.append("| layer | MACs | cycles | cycles/MAC |")
        lines.append("|---|---|---|---|")
        for i, (node, count) in enumerate(zip(g.nodes, run.cycles_per_layer)):
            layer_macs = int(layers[i]["macs"]) if i < len(layers) else 0
            lines.append(f"| {node.where()} | {layer_macs:,} | {count:,} | "
                         + (f"{count / layer_macs:.1f} |" if layer_macs else "- |"))
    if not equal.all():
        s = int(np.argmin(equal))
        i = int(np.argmax(run.outputs[s] != expect[s]))
        lines.append(f"sample {s}: first differing output byte {i}: target {int(run.outputs[s, i])}, "
                     f"reference {int(expect[s, i])}")
    return lines, bool(equal.all())


# ------------------------------------------------------------------------------- flashable image

SERIAL_BAUD = 115200  # the image's harness prints on USART0 (the board's USB serial) at this speed
AVR_IMAGE_FILES = ("firmware.elf", "firmware.hex", "firmware.bin")
EXPECTED_FILE = "qg_expected.txt"  # the lines the board prints when its outputs equal the reference


def avr_image_files(board: AvrBoard, elf: Path, work: Path) -> tuple[dict[str, bytes], int]:
    """firmware.hex (Intel HEX) and firmware.bin (flash from address 0) of an AVR ELF by avr-objcopy, checked
    against the ELF's load segments: every loadable byte in flash below the bootloader, the image starting at 0
    with the reset vector (a JMP to code in flash). Returns (the files, the ELF's entry address)."""
    from codegen.target.image import load_segments

    elf_bytes = elf.read_bytes()
    entry, segments = load_segments(elf_bytes)
    segments = [seg for seg in segments if seg.paddr < 0x800000]  # flash; .eeprom/.fuse sit at 0x81xxxx+
    reserved = board.flash.bootloader_bytes if board.flash else 0
    end = board.flash_kb * 1024 - reserved
    outside = [seg for seg in segments if seg.paddr + len(seg.data) > end]
    if outside:
        raise UserError(f"the {board.name} image needs {max(seg.paddr + len(seg.data) for seg in outside):,} B of "
                        f"flash; {end:,} B are free below its {reserved:,} B bootloader")
    if not segments or min(seg.paddr for seg in segments) != 0:
        raise TargetError(f"{elf}: the AVR image does not start at flash address 0")
    first = next(seg for seg in segments if seg.paddr == 0).data
    opcode, target = int.from_bytes(first[:2], "little"), int.from_bytes(first[2:4], "little")
    if opcode & 0xFE0E != 0x940C or not 0 < 2 * target < end:  # JMP k (22-bit word address; k < 64 K words here)
        raise TargetError(f"{elf}: the reset vector is not a JMP into flash (0x{opcode:04x} 0x{target:04x})")
    work.mkdir(parents=True, exist_ok=True)
    files = {"firmware.elf": elf_bytes}
    for name, fmt in (("firmware.hex", "ihex"), ("firmware.bin", "binary")):
        command = ["avr-objcopy", "-O", fmt, "-j", ".text", "-j", ".data", str(elf), str(work / name)]
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            raise TargetError(f"avr-objcopy failed:\n$ {' '.join(command)}\n{process.stderr}")
        files[name] = (work / name).read_bytes()
    return files, entry


def build_avr_image(model_dir: Path | str, board: AvrBoard | str, out_dir: Path | str, n: int | None = None):
    """`qgen firmware MODEL --board atmega328p --image`: the simavr harness, with the model's saved sample inputs
    in flash and USART0 at SERIAL_BAUD, built and fit-checked for the board, written atomically to out_dir as
    firmware.elf/.hex/.bin, image.json and qg_expected.txt (what the board prints when bit-exact).
    Returns (the AvrMemory, the file names)."""
    import json
    import tempfile

    from codegen.api import load_compiled
    from codegen.hostcheck import reference_outputs
    from codegen.output import write_atomic
    from codegen.reference import run_int
    from codegen.target.image import IMAGE_INFO

    board = load_avr_board(board) if isinstance(board, str) else board
    if board.flash is None:
        raise UserError(f"board '{board.name}' has no [flash] table in its TOML: qgen does not know how to program it")
    compiled = load_compiled(model_dir)
    x = compiled.saved_inputs()[:n]
    expect = reference_outputs(compiled.graph, run_int(compiled.graph, x))
    with tempfile.TemporaryDirectory(prefix="qgen-avr-image-") as tmp:
        elf = build_avr_elf(board, Path(model_dir), compiled.prefix, x.reshape(len(x), -1), Path(tmp) / "build",
                            serial_baud=SERIAL_BAUD)
        memory = read_avr_memory(elf)
        check_avr_fit(board, memory)
        check_avr_flash_data(board, elf)
        files, entry = avr_image_files(board, elf, Path(tmp) / "image")
    lines = []
    for row in expect.astype(np.int8):
        raw = row.tobytes()
        lines += [f"O {raw[i:i + 32].hex()}" for i in range(0, len(raw), 32)]
    files[EXPECTED_FILE] = ("\n".join(lines) + "\n").encode()
    info = {"board": board.name, "flash_origin": 0, "entry": entry, "serial_baud": SERIAL_BAUD, "samples": len(x),
            "files": sorted(files)}
    files[IMAGE_INFO] = (json.dumps(info, indent=1, sort_keys=True) + "\n").encode()
    write_atomic(files, Path(out_dir))
    return memory, tuple(sorted(files))
