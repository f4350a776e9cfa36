"""Recurrent-layer benchmark: executed instructions per time step per hidden unit of qgen's qg_recurrent_s8 (LSTM,
GRU) on Cortex-M4 and M0+ under QEMU, side by side with CMSIS-NN's arm_lstm_unidirectional_s8 on the same shapes,
measured in the same run.

    python bench/recurrent.py --cmsis-nn CMSIS-NN     # markdown table on stdout, writes bench/RECURRENT.md
    python bench/recurrent.py --no-write               # qgen only, quick look

Each case is a one-layer model: a PyTorch nn.LSTM / nn.GRU (default initialisation), calibrated on random normal
sequences and quantised by qgen (int8 weights per gate row, int16 state), emitted, cross-compiled with build_elf()
(-O2, `qgen firmware`'s default), run under QEMU with the counting plugin and checked byte for byte against
codegen.reference.run_int. The count covers the whole `<prefix>_run` call (initial state, all T steps) divided by
T * H. CMSIS-NN's layer (bench/cmsis_nn_peer.py lstm_*) gets the same float weights quantised the way TFLite's
converter does (int8 per-tensor weights per gate, int16 Q3.12 gates, int16 cell); its count is the one
arm_lstm_unidirectional_s8 call per window (TFLM's Prepare work, the kernel sums, outside), divided the same way.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from codegen.emit.c import render, write_atomic
from codegen.ir import Graph, Node, Op, Tensor, verify
from codegen.passes import calibrate, plan_memory, quantize
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, run_qemu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from cmsis_nn_peer import HOW_TO_GET, describe, find_checkout  # noqa: E402
from cmsis_nn_peer import measure_lstm as measure_cmsis_lstm  # noqa: E402

BOARDS = {"cortex-m4": "mps2-an386", "cortex-m0plus": "rp2040"}
SHAPES = [(10, 32, 49), (40, 64, 16)]  # (inputs, hidden, steps): KWS-like (49 frames of 10 features), wider
N_INPUTS = 2
EXTRA = 2  # CMSIS-NN: counted as the difference of 1 and 1 + EXTRA calls (its one-time set-up left out)
PREFIX = "rb"


def layer(kind: str, inputs: int, hidden: int, steps: int, seed: int = 0, n_inputs: int = N_INPUTS):
    """(quantised one-node graph, torch module, int8 test inputs (N, 1, T, I))."""
    torch.manual_seed(seed)
    m = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(inputs, hidden, batch_first=True).eval()
    op = Op.LSTM if kind == "lstm" else Op.GRU
    tensors = {"x": Tensor("x", (1, steps, inputs)), "y": Tensor("y", (1, steps, hidden))}
    names = ["x"]
    for name, p in (("w_ih", m.weight_ih_l0), ("w_hh", m.weight_hh_l0), ("b_ih", m.bias_ih_l0),
                    ("b_hh", m.bias_hh_l0)):
        tensors[name] = Tensor(name, tuple(p.shape), data=p.detach().double().numpy().copy())
        names.append(name)
    for name in ("h0", "c0") if op is Op.LSTM else ("h0",):
        tensors[name] = Tensor(name, (hidden,), data=np.zeros(hidden))
        names.append(name)
    g = Graph(tensors, [Node(kind, op, names, ["y"], {"hidden": hidden})], ["x"], ["y"], source="bench")
    verify(g)
    g.io_layout["x"] = "ncl"
    rng = np.random.default_rng(seed)
    xf = rng.normal(size=(64, inputs, steps))
    calibrate.run(g, xf)
    quantize.run(g)
    verify(g, quantized=True)
    g = plan_memory.run(g)
    frac = g.tensors["x"].qformat.frac
    xq = np.clip(np.floor(xf[:n_inputs].transpose(0, 2, 1) * 2.0 ** frac + 0.5), -128, 127).astype(np.int8)
    return g, m, xq[:, None]


def measure_qgen(kind: str, shape, core: str, work: Path, plugin: Path) -> float:
    inputs, hidden, steps = shape
    g, _, x = layer(kind, inputs, hidden, steps)
    model = work / "model"
    write_atomic(render(g, PREFIX, ["bench"]), model)
    sources = [model / f"{PREFIX}_model.c", model / f"{PREFIX}_weights.c", *sorted((model / "kernels").glob("*.c"))]
    elf = build_elf(BOARDS[core], sources, [model, model / "kernels"], PREFIX, model / "build")
    expect = run_int(g, x)["y"].reshape(len(x), -1)
    result = run_qemu(BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=plugin)
    if not np.array_equal(result.outputs, expect):
        raise SystemExit(f"qgen {kind} {shape} on {core}: output differs from the reference")
    return float(result.instructions_per_inference) / (steps * hidden)


def run_all(cores: list[str], cmsis_nn: Path | None) -> dict:
    plugin = build_plugin()
    jobs = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        for core in cores:
            for shape in SHAPES:
                for kind in ("lstm", "gru"):
                    work = Path(tmp) / f"{core}_{kind}_{'x'.join(map(str, shape))}"
                    jobs[(core, shape, kind)] = pool.submit(measure_qgen, kind, shape, core, work, plugin)
                if cmsis_nn is not None:
                    work = Path(tmp) / f"{core}_cmsis_{'x'.join(map(str, shape))}"
                    g, m, x = layer("lstm", *shape, n_inputs=1 + EXTRA)
                    jobs[(core, shape, "cmsis")] = pool.submit(
                        measure_cmsis_lstm, m, x[:, 0], g.tensors["x"].qformat.frac, BOARDS[core], cmsis_nn, work,
                        plugin)
        return {k: (v.result() / (k[1][2] * k[1][1]) if k[2] == "cmsis" else v.result()) for k, v in jobs.items()}


def table(cores: list[str], counts: dict, cmsis_nn: Path | None) -> str:
    peer = describe(cmsis_nn) if cmsis_nn else "CMSIS-NN (not run)"
    lines = ["| core | shape (I, H, T) | LSTM MACs | qgen LSTM | CMSIS-NN LSTM | qgen / CMSIS-NN | qgen GRU |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for core in cores:
        for shape in SHAPES:
            lstm, gru = counts[(core, shape, "lstm")], counts[(core, shape, "gru")]
            cm = counts.get((core, shape, "cmsis"))
            ratio = f"{lstm / cm:.2f}" if cm else "-"
            macs = 4 * (shape[0] + shape[1])
            lines.append(f"| {core} | {shape} | {macs} | {lstm:.0f} | {f'{cm:.0f}' if cm else '-'} | {ratio} | "
                         f"{gru:.0f} |")
    return (f"Instructions per time step per hidden unit (the whole call / (T * H)); LSTM MACs: multiply-accumulates "
            f"per step per unit, 4 (I + H); {peer}.\n\n" + "\n".join(lines) + "\n")


NOTES = """
Both sides run the same int8 input bytes through a layer with PyTorch's weights. qgen: int8 weights with one Q
format per gate row, int16 Q15 hidden state and int16 cell (`state_bits` 16, the default), sigmoid and tanh from
one 513-entry table with interpolation; output == codegen.reference.run_int byte for byte (checked in the run).
CMSIS-NN: TFLite's LSTM quantisation (int8 per-tensor weights per gate, int16 Q3.12 gates, int16 cell at a
power-of-two scale, int8 hidden state), zero points 0, kernel sums precomputed once (TFLM's Prepare) and left
out of the count; initial state zeroed each call as qgen's is set from h0/c0; output within 0.08 of PyTorch
(checked in the run). qgen's kernel (firmware/kernels/qg_recurrent_s8.c) takes two gate rows per pass: on DSP
cores a 4-column SMLAD step over x_t and h widened once per step into int16 pairs, on the M0+ plain C.
"""
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cmsis-nn", type=Path, default=None, help="CMSIS-NN source checkout (peer columns)")
    ap.add_argument("--cores", default=",".join(BOARDS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cmsis_nn = find_checkout(args.cmsis_nn)
    if cmsis_nn is None:
        print(HOW_TO_GET, file=sys.stderr)
    cores = args.cores.split(",")
    text = table(cores, run_all(cores, cmsis_nn), cmsis_nn)
    print(text)
    if not args.no_write:
        (ROOT / "bench" / "RECURRENT.md").write_text(
            "# Recurrent layers: qgen vs CMSIS-NN\n\nGenerated by `python bench/recurrent.py --cmsis-nn CMSIS-NN` "
            "(see its docstring for what is counted).\n\n" + text + NOTES)


if __name__ == "__main__":
    main()
