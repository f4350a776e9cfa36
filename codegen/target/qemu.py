"""Running a firmware ELF under QEMU and reading its outputs and instruction counts.

Moved unchanged from codegen/target.py; `codegen.target` re-exports every name.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codegen.target.boards import Board, _as_board
from codegen.target.common import (
    CROSS_PREFIX,
    HARNESS_EXIT_MEANING,
    INPUT_FILE,
    LAYER_MARKER,
    MARKERS,
    OUTPUT_FILE,
    QEMU,
    TargetError,
)
from codegen.target.toolchain import ElfInfo, _run_tool, build_plugin, check_tools

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
