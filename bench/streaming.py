"""Streaming benchmark: executed instructions per new frame of `qgen compile --stream` (`<prefix>_step`) against
recomputing the whole window every frame (`<prefix>_run`), on Cortex-M4 and M0+ under QEMU, with the memory each
needs; outputs checked byte for byte between the two in the same run.

    python bench/streaming.py              # markdown table on stdout, writes bench/STREAMING.md
    python bench/streaming.py --no-write

Models (tests/stream_models.py, seeded default initialisation, calibrated on N(0,1) windows):
  - TCN: 10 features -> 1x1 Conv1d to 32 channels, four residual blocks of two causal dilated Conv1d (k=3,
    d=1, 2, 4, 8: receptive field 61), the last time step, a linear head (12 classes); window 64 frames;
  - KWS: 49 frames x 10 features, a causal Conv1d front end (k=3, 32 channels), a causal depthwise dilated block,
    a GRU (64 hidden), the last step, a linear head (12 classes).
Both are compiled twice from the same module and calibration data: whole window, and with stream=True. The
streaming firmware is reset once and stepped through FRAMES frames (the count is the mean per step); the whole-window
firmware runs the windows ending at the last CHECKS frames (the TCN: its last 64 frames; the KWS, whose GRU sees
every frame since the reset: frames 0..t, the window the stream equals) and its outputs must equal the stream's
at those frames. Memory: the streaming step's state + its scratch arena vs the whole-window model's arena.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from stream_models import KWS, TCN  # noqa: E402

import codegen  # noqa: E402
from codegen.fixed import quantize  # noqa: E402
from codegen.target import build_elf, build_plugin, run_qemu  # noqa: E402

BOARDS = {"cortex-m4": "mps2-an386", "cortex-m0plus": "rp2040"}
CHECKS = 4  # whole-window runs compared with the stream (and counted)
MODELS = {  # name: (factory, features, window frames, frames streamed, stream == window of `window` frames?)
    "TCN (4 blocks, d=1..8, 32 ch)": (lambda: TCN(cin=10, c=32, classes=12, dilations=(1, 2, 4, 8),
                                                  depthwise=(False,) * 4), 10, 64, 72, True),
    "KWS (Conv1d + dw block + GRU 64)": (lambda: KWS(f=10, c=32, h=64, classes=12), 10, 49, 49, False),
}


def compile_pair(make, features: int, length: int, work: Path):
    torch.manual_seed(0)
    model = make().eval()
    calib = torch.randn(64, features, length)
    example = torch.randn(1, features, length)
    window = codegen.compile(model, example, calib, prefix="win", out_dir=work / "win")
    step = codegen.compile(model, example, calib, prefix="stp", stream=True, out_dir=work / "stp")
    return window, step


def _elf(board: str, out: Path, prefix: str, work: Path):
    sources = [out / f"{prefix}_model.c", out / f"{prefix}_weights.c", *sorted((out / "kernels").glob("*.c"))]
    return build_elf(board, sources, [out, out / "kernels"], prefix, work, extra_cflags=("-std=c99",))


def measure(name: str, plugin: Path, work: Path) -> dict:
    make, features, length, frames, fixed_window = MODELS[name]
    window, step = compile_pair(make, features, length, work)
    rng = np.random.default_rng(1)
    fmt = window.graph.tensors[window.graph.inputs[0]].qformat
    x = quantize(rng.standard_normal((1, 1, frames, features)), fmt).astype(np.int8)  # (1, 1, frames, C) IR
    stream_spec = step.stream().run(x)[0]
    ends = list(range(frames - CHECKS, frames))
    windows = np.stack([x[0, :, t - length + 1:t + 1] for t in ends]) if fixed_window else None
    row = {"model": name, "frames": frames, "window": length,
           "receptive_field": step.report["stream"]["receptive_field"],
           "state": step.report["stream"]["state_bytes"], "step_arena": step.graph.arena_size,
           "window_arena": window.graph.arena_size,
           "step_macs": step.report["stream"]["step_macs"], "window_macs": step.report["stream"]["window_macs"]}
    for core, board in BOARDS.items():
        run_s = run_qemu(board, _elf(board, work / "stp", "stp", work / f"stp_{core}"), x[0, 0], stream_spec.shape[1],
                         plugin=plugin)
        assert np.array_equal(run_s.outputs, stream_spec), f"{name} {core}: stream C != stream spec"
        if fixed_window:
            w_in = windows.reshape(len(ends), -1)
            expect = stream_spec[ends]
        else:  # KWS: the GRU's window starts at frame 0: the whole model on the 49 frames = the stream's last step
            w_in, expect = x.reshape(1, -1), stream_spec[[frames - 1]]
        run_w = run_qemu(board, _elf(board, work / "win", "win", work / f"win_{core}"), w_in.astype(np.int8),
                         expect.shape[1], plugin=plugin)
        assert np.array_equal(run_w.outputs, expect), f"{name} {core}: stream outputs != whole-window outputs"
        row[core] = (run_s.instructions_per_inference, run_w.instructions_per_inference)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | window | receptive field | core | stream instr/frame | whole window instr/frame | speed-up | "
             "MACs/frame stream / window | state + arena B | whole-window arena B | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for core in BOARDS:
            s, w = r[core]
            rf = r["receptive_field"] if r["receptive_field"] is not None else "unbounded (GRU)"
            lines.append(f"| {r['model']} | {r['window']} | {rf} | {core} | {s:,.0f} | {w:,.0f} | {w / s:.1f}x | "
                         f"{r['step_macs']:,} / {r['window_macs']:,} | {r['state']:,} + {r['step_arena']:,} = "
                         f"{r['state'] + r['step_arena']:,} | {r['window_arena']:,} | yes |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    plugin = build_plugin()
    with tempfile.TemporaryDirectory(prefix="qgen-stream-bench-") as tmp:
        rows = [measure(name, plugin, Path(tmp) / str(i)) for i, name in enumerate(MODELS)]
    text = table(rows)
    print(text)
    if not args.no_write:
        doc = (ROOT / "bench" / "STREAMING.md")
        doc.write_text(HEADER + text + FOOTER)


HEADER = """# Streaming: one new frame vs the whole window

`python bench/streaming.py` (one run; numbers are QEMU instruction counts of `<prefix>_step` per new frame, mean
over the frames streamed, and of `<prefix>_run` on one window — what recomputing the window costs every frame).
Outputs: the stream's C equals its NumPy spec (codegen/stream.py) at every frame, and the whole-window C equals the
stream's output at the frames checked (the TCN's last 4 windows of 64 frames; the KWS model, whose GRU reads every
frame since the reset, on frames 0..48). Memory: the step's state (histories, GRU state) + its scratch arena, vs
the whole-window model's arena (both planned by qgen; the stream's input is one frame instead of a window).

"""
FOOTER = """
Built with arm-none-eabi-gcc -O2 (`qgen firmware`'s default), Cortex-M4 on the MPS2-AN386 machine, Cortex-M0+ on
the rp2040 board's QEMU machine, the models of tests/stream_models.py. Per frame a dense causal conv runs as a fully
connected layer over its k taps (qg_fully_connected_s8: one output frame is one matrix-vector product; the conv
kernel's 4-pixel block has nothing to block there), a depthwise one as a depthwise conv over the k taps. The history
windows are shift buffers (qg_history_s8: one word copy per 4 bytes of the window, then the k taps copied out),
a few percent of a step.
"""

if __name__ == "__main__":
    main()
