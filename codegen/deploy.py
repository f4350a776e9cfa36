"""Firmware for real boards: build a compiled model for a Cortex-M board, run it under QEMU, compare
with the integer reference byte for byte, and count executed instructions.

Thin layer over codegen/target.py (boards, cross build, QEMU, counting plugin); the CLI commands
`qgen firmware` and `qgen run` call these functions.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import progress
from .api import CompileResult, load_compiled
from .errors import UserError
from .hostcheck import cache_root, model_sources, reference_outputs
from .reference import run_int
from .target import (
    GENERATED_MODEL_WARNINGS,
    INPUT_FILE,
    MODEL_WARNINGS,
    Board,
    ElfInfo,
    build_elf,
    check_model_fits,
    load_board,
    run_qemu,
    write_project,
)

# The generated model is held to the same standard on the target as on the host, and as in the project
# Makefile (GENERATED_MODEL_WARNINGS); build_elf adds MODEL_WARNINGS itself.
MODEL_CFLAGS = tuple(f for f in GENERATED_MODEL_WARNINGS if f not in MODEL_WARNINGS)


@dataclass
class FirmwareBuild:
    board: Board
    project_dir: Path | None
    elf: ElfInfo
    compiled: CompileResult


@dataclass
class TargetRun:
    board: Board
    samples: int
    matching: int
    first_mismatch: str | None
    instructions_per_inference: float | None
    macs: int
    elf: ElfInfo
    per_layer: list[tuple[str, int, float]] | None = None  # (layer, MACs, instructions per inference)

    @property
    def exact(self) -> bool:
        return self.matching == self.samples

    @property
    def instructions_per_mac(self) -> float | None:
        if self.instructions_per_inference is None or not self.macs:
            return None
        return self.instructions_per_inference / self.macs

    def summary(self) -> list[str]:
        b = self.board
        lines = [f"board {b.name} ({b.core}, {b.clock_mhz} MHz) under QEMU {b.qemu.machine}",
                 f"bit-exact on {b.core}: {'yes' if self.exact else 'NO'} ({self.matching}/{self.samples} samples)"]
        if self.first_mismatch:
            lines.append(self.first_mismatch)
        if self.instructions_per_inference is not None:
            ipi = self.instructions_per_inference
            per_mac = f", {self.instructions_per_mac:.2f} instructions/MAC" if self.macs else ""
            lines.append(f"instructions/inference: {ipi:,.0f}{per_mac}; "
                         f"~{ipi / (b.clock_mhz * 1e3):.3f} ms at {b.clock_mhz} MHz if 1 instruction/cycle")
        for name, macs, count in self.per_layer or []:
            per = f"  ({count / macs:.2f}/MAC)" if macs else ""
            lines.append(f"  {name:<40} {count:>12,.0f} instructions{per}")
        return lines


def fit_line(elf: ElfInfo) -> str:
    """'flash 21.3 KB of 512 KB, RAM 4.1 KB of 128 KB' (RAM includes the reserved stack)."""
    f = elf.fit
    return (f"flash {f.flash_bytes / 1024:.1f} KB of {f.flash_limit / 1024:.0f} KB, "
            f"RAM {f.ram_bytes / 1024:.1f} KB of {f.ram_limit / 1024:.0f} KB (stack included)")


@progress.tracked("build firmware (arm-none-eabi-gcc)")
def build(model_dir: str | Path, board: str | Board, build_dir: str | Path, opt: str = "-O2",
          project_dir: str | Path | None = None, count_layers: bool = False, image: bool = False) -> FirmwareBuild:
    """Cross-compile a qgen output directory for `board`; optionally also write a Makefile project.

    Raises UserError (with the sizes) when the image does not fit the board's flash or RAM. `image` links for
    the real part's memory map (a flashable image, codegen/target/image.py) instead of the QEMU machine's.
    """
    model_dir = Path(model_dir)
    board = load_board(board) if isinstance(board, str) else board
    compiled = load_compiled(model_dir)
    prefix = compiled.prefix
    check_model_fits(board, model_dir / f"{prefix}_model.h", prefix)  # before a long cross build
    elf = build_elf(board, model_sources(model_dir, prefix), [model_dir, model_dir / "kernels"], prefix,
                    Path(build_dir), opt, extra_cflags=MODEL_CFLAGS, count_layers=count_layers, image=image)
    project = None
    if project_dir is not None:
        project = write_project(board, model_dir, Path(project_dir), prefix)
        # sample inputs so that `make run` works at once; replace with your own vectors
        compiled.saved_inputs().tofile(project / INPUT_FILE)
    return FirmwareBuild(board, project, elf, compiled)


def run(model_dir: str | Path, board: str | Board, x_i8: np.ndarray | None = None, n: int | None = None,
        build_dir: str | Path | None = None, opt: str = "-O2", per_layer: bool = False) -> TargetRun:
    """Build for `board`, run under QEMU on int8 inputs (default: the samples saved at compile time),
    compare every output byte with the reference, count instructions (per layer too if asked: the
    trace hook then adds ~6 instructions per layer)."""
    model_dir = Path(model_dir)
    board = load_board(board) if isinstance(board, str) else board
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp, progress.task(f"run on {board.name}", total=3) as bar:
        bar.update(info="build firmware")
        fw = build(model_dir, board, Path(build_dir) if build_dir else Path(tmp) / "build", opt,
                   count_layers=per_layer)
        g = fw.compiled.graph
        in_dtype = g.tensors[g.inputs[0]].dtype  # int8, or int16 with --precision input=int16
        x = fw.compiled.saved_inputs() if x_i8 is None else np.asarray(x_i8, dtype=in_dtype)
        if n is not None:
            x = x[:n]
        if len(x) == 0:
            raise UserError("no input samples to run")
        bar.advance()
        bar.update(info=f"reference ({len(x)} samples)")
        if fw.compiled.streams:  # --stream: the samples' frames, one after the other, are one stream (reset once)
            from .stream import StreamRunner

            frames = x.reshape(1, 1, -1, g.tensors[g.inputs[0]].shape[-1])
            x, expect = frames[0, 0], StreamRunner(g).run(frames)[0]
        else:
            expect = reference_outputs(g, run_int(g, x))
        bar.advance()
        bar.update(info=f"QEMU ({len(x)} samples)")
        result = run_qemu(board, fw.elf, x.reshape(len(x), -1), expect.shape[1], timeout=600.0)
        bar.advance()
    equal = np.all(result.outputs == expect, axis=1)
    mismatch = None
    if not equal.all():
        s = int(np.argmin(equal))
        i = int(np.argmax(result.outputs[s] != expect[s]))
        mismatch = (f"sample {s}: first differing output byte {i}: target {int(result.outputs[s, i])}, "
                    f"reference {int(expect[s, i])} (use `qgen verify` on the host to locate the layer)")
    macs = int(fw.compiled.report["stream"]["step_macs"] if fw.compiled.streams else fw.compiled.report.get("macs", 0))
    layers = None
    if result.instructions_per_layer is not None:
        layers = [(n.where(), int(fw.compiled.report["layers"][i]["macs"]) if fw.compiled.report.get("layers") else 0,
                   count) for i, (n, count) in enumerate(zip(g.nodes, result.instructions_per_layer))]
    return TargetRun(board, len(x), int(equal.sum()), mismatch, result.instructions_per_inference, macs, fw.elf,
                     layers)
