"""Kernel benchmark: executed instructions per MAC of qgen's int8 kernels on Cortex-M under QEMU,
side by side with CMSIS-NN on the same layer shapes, measured in the same run.

    python bench/kernels.py --cmsis-nn CMSIS-NN    # tables on stdout, writes bench/RESULTS.md
    python bench/kernels.py                        # qgen only: the CMSIS-NN columns read "-"
    python bench/kernels.py --kernels DIR          # bench another kernel library (e.g. an old copy)
    python bench/kernels.py --baseline-rev REV     # ... also the kernels of git revision REV
    python bench/kernels.py --no-write --cores cortex-m4 --only conv   # quick look while tuning

CMSIS-NN is a peer, never a dependency: pass a source checkout with --cmsis-nn (or QGEN_CMSIS_NN);
bench/cmsis_nn_peer.py builds and checks its layers (see there for how to get it).

Each benchmark layer is a one-op model (random int8 weights over the full range, random inputs,
per-channel shifts chosen so the outputs use the int8 range), emitted by qgen, cross-compiled with
build_elf() (-O2, the default of `qgen firmware`), run under QEMU with the counting plugin, and
checked byte for byte against codegen.reference.run_int. The count is everything inside the
`<prefix>_run` call (call, kernel, return) averaged over the inputs, so it is what a layer costs.
Instruction counts are not cycles: on an M4 SMLAD takes 1 cycle, loads 1-2; on an M0+ a MULS 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codegen.emit.c import render, write_atomic
from codegen.ir import Graph, Node, Op, conv_out_size
from codegen.reference import run_int
from codegen.resources import kernel_dir
from codegen.target import CROSS_CC, QEMU, build_elf, build_plugin, load_board, run_qemu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from cmsis_nn_peer import HOW_TO_GET, PeerLayer, describe, find_checkout  # noqa: E402
from cmsis_nn_peer import OPT as CMSIS_OPT  # noqa: E402
from cmsis_nn_peer import measure as measure_cmsis  # noqa: E402
from qgen_testing import act, finish, weighted_graph  # noqa: E402

BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500",
          "cortex-m55": "mps3-an547"}
N_INPUTS = 2
PREFIX = "bk"


@dataclass(frozen=True)
class Layer:
    name: str
    title: str
    graph: Graph
    macs: int  # 0: not a MAC layer (pooling), reported per output element instead
    out_elems: int
    peer: PeerLayer  # the same layer for CMSIS-NN (same weights and biases, TFLite-style quantisation)


def _shifts(acc_std: float, n: int) -> list[int]:
    """Right shifts that map ~3 standard deviations of the accumulator onto +-127."""
    s = int(np.ceil(np.log2(max(3 * acc_std / 127, 1))))
    return [s] * n


def _weighted(rng, name, title, op, x_shape, w_shape, stride=(1, 1), padding=(0, 0, 0, 0)) -> Layer:
    w = rng.integers(-128, 128, w_shape)
    k = int(np.prod(w_shape[1:]))
    b = rng.integers(-2**12, 2**12, w_shape[0])
    g = finish(weighted_graph(op, x_shape, w, b, _shifts(74 * 74 * np.sqrt(k), w_shape[0]),
                              stride=stride, padding=padding))
    out = g.tensors[g.outputs[0]]
    kind = {Op.LINEAR: "fc", Op.CONV2D: "conv", Op.DEPTHWISE_CONV2D: "dw"}[op]
    peer = PeerLayer(kind, tuple(x_shape), tuple(out.shape), w, b, stride=stride, padding=padding)
    return Layer(name, title, g, out.size * k, out.size, peer)


def _pool(name, title, op, shape, kernel, stride) -> Layer:
    oh = conv_out_size(shape[0], kernel[0], stride[0], 0, 0)
    ow = conv_out_size(shape[1], kernel[1], stride[1], 0, 0)
    tensors = {"x": act("x", shape, 3), "y": act("y", (oh, ow, shape[2]), 3)}
    attrs = {"kernel": kernel, "stride": stride, "padding": (0, 0, 0, 0)}
    if op is Op.AVGPOOL2D:  # a power-of-two window: the average is an exact rounding shift
        attrs.update(avg_mult=1, avg_shift=(kernel[0] * kernel[1]).bit_length() - 1, act_min=-128, act_max=127)
    node = Node("layer", op, ["x"], ["y"], attrs)
    g = finish(Graph(tensors, [node], ["x"], ["y"], source="bench"))
    kind = "maxpool" if op is Op.MAXPOOL2D else "avgpool"
    peer = PeerLayer(kind, tuple(shape), (oh, ow, shape[2]), kernel=kernel, stride=stride)
    return Layer(name, title, g, 0, oh * ow * shape[2], peer)


def layers() -> list[Layer]:
    rng = np.random.default_rng(2024)
    return [
        _weighted(rng, "fc_256_64", "FC 256→64", Op.LINEAR, (256,), (64, 256)),
        _weighted(rng, "fc_784_128", "FC 784→128", Op.LINEAR, (784,), (128, 784)),
        _weighted(rng, "conv3x3_16x16x8_16", "conv3x3 16×16×8→16 (pad 1)", Op.CONV2D, (16, 16, 8),
                  (16, 3, 3, 8), padding=(1, 1, 1, 1)),
        _weighted(rng, "conv1x1_16x16x32_32", "conv1x1 16×16×32→32", Op.CONV2D, (16, 16, 32), (32, 1, 1, 32)),
        _weighted(rng, "dw3x3_16x16x32", "depthwise3x3 16×16×32 (pad 1)", Op.DEPTHWISE_CONV2D, (16, 16, 32),
                  (32, 3, 3, 1), padding=(1, 1, 1, 1)),
        _pool("maxpool2x2_16x16x32", "maxpool 2×2/2 16×16×32", Op.MAXPOOL2D, (16, 16, 32), (2, 2), (2, 2)),
        _pool("avgpool2x2_16x16x32", "avgpool 2×2/2 16×16×32", Op.AVGPOOL2D, (16, 16, 32), (2, 2), (2, 2)),
    ]


def measure(layer: Layer, core: str, kernels: Path, work: Path, plugin: Path, opt: str) -> float:
    """Instructions per inference of `layer` on `core`; asserts the outputs equal the reference."""
    model = work / f"{layer.name}-{core}"
    write_atomic({k: v for k, v in render(layer.graph, PREFIX, ["bench"]).items()
                  if not k.startswith("kernels/")}, model)
    sources = [model / f"{PREFIX}_model.c", model / f"{PREFIX}_weights.c", *sorted(kernels.glob("*.c"))]
    elf = build_elf(BOARDS[core], sources, [model, kernels], PREFIX, model / "build", opt)
    x_shape = layer.graph.tensors[layer.graph.inputs[0]].shape
    x = np.random.default_rng(7).integers(-128, 128, (N_INPUTS, *x_shape)).astype(np.int8)
    expect = run_int(layer.graph, x)[layer.graph.outputs[0]].reshape(N_INPUTS, -1)
    result = run_qemu(BOARDS[core], elf, x.reshape(N_INPUTS, -1), expect.shape[1], plugin=plugin)
    if not np.array_equal(result.outputs, expect):
        raise SystemExit(f"{layer.name} on {core}: outputs differ from the reference")
    return float(result.instructions_per_inference)


def run_all(cores: list[str], kernels: Path, opt: str, only: str = "", cmsis_nn: Path | None = None,
            jobs: int = 1) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """(qgen counts, CMSIS-NN counts) per (layer name, core); the second is empty without a checkout."""
    plugin = build_plugin()
    lays = [lay for lay in layers() if only in lay.name]
    with tempfile.TemporaryDirectory(prefix="qgen-bench-") as tmp, ThreadPoolExecutor(jobs) as pool:
        ours = {(lay.name, core): pool.submit(measure, lay, core, kernels, Path(tmp), plugin, opt)
                for lay in lays for core in cores}
        peer = {(lay.name, core): pool.submit(measure_cmsis, lay.peer, BOARDS[core], cmsis_nn,
                                              Path(tmp) / f"cmsis-{lay.name}-{core}", plugin)
                for lay in lays for core in cores if cmsis_nn is not None}
        return ({key: job.result() for key, job in ours.items()}, {key: job.result() for key, job in peer.items()})


def table(core: str, counts: dict, peer: dict, baseline: dict | None = None) -> str:
    """One core's table: qgen, optionally the baseline kernels, and CMSIS-NN (or "-" without it)."""
    head = ["layer", "MACs", "qgen instr", "qgen instr/MAC"]
    head += ["baseline instr/MAC", "speed-up"] if baseline else []
    head += ["CMSIS-NN instr", "CMSIS-NN instr/MAC", "qgen / CMSIS-NN"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lay in layers():
        if (lay.name, core) not in counts:
            continue
        denom, unit = (lay.macs, "") if lay.macs else (lay.out_elems, " /output")
        n, ref = counts[(lay.name, core)], peer.get((lay.name, core))
        cells = [lay.title, f"{lay.macs:,}" if lay.macs else f"{lay.out_elems:,} outputs", f"{n:,.0f}",
                 f"{n / denom:.2f}{unit}"]
        if baseline:
            b = baseline.get((lay.name, core))
            cells += [f"{b / denom:.2f}" if b else "-", f"{b / n:.1f}×" if b else "-"]
        cells += [f"{ref:,.0f}", f"{ref / denom:.2f}{unit}", f"{n / ref:.2f}"] if ref else ["-", "-", "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def tables(cores: list[str], counts: dict, peer: dict, baseline: dict | None = None) -> str:
    return "\n\n".join(f"### {NAMES.get(core, core)} ({where(core)})\n\n{table(core, counts, peer, baseline)}"
                       for core in cores)


def where(core: str) -> str:
    machine = load_board(BOARDS[core]).qemu.machine
    return f"QEMU {machine}" if machine == BOARDS[core] else f"board {BOARDS[core]}, run on QEMU {machine}"


NAMES = {"cortex-m0plus": "Cortex-M0+", "cortex-m4": "Cortex-M4", "cortex-m7": "Cortex-M7", "cortex-m55": "Cortex-M55"}


def tool_versions() -> str:
    def first_line(cmd):
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[0].strip()
    return f"{first_line([CROSS_CC, '--version'])}; {first_line([QEMU, '--version'])}"


def git_kernels(rev: str, into: Path) -> Path:
    """The firmware/kernels/ files of git revision `rev`, written into `into`."""
    into.mkdir(parents=True, exist_ok=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{rev}:firmware/kernels"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:firmware/kernels/{name}"],
                              capture_output=True, text=True, check=True).stdout
        (into / name).write_text(text)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", nargs="+", default=list(BOARDS), choices=list(BOARDS))
    parser.add_argument("--kernels", type=Path, default=kernel_dir())
    parser.add_argument("--baseline-rev", default=None, help="also bench the kernels of this git revision")
    parser.add_argument("--opt", default="-O2")
    parser.add_argument("--only", default="", help="bench only the layers whose name contains this")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--cmsis-nn", type=Path, default=None,
                        help="a CMSIS-NN source checkout to bench side by side (default: $QGEN_CMSIS_NN)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="layers built and run at once (each build also compiles in parallel)")
    args = parser.parse_args()
    if shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None:
        raise SystemExit(f"needs {CROSS_CC} and {QEMU}")
    cmsis_nn = find_checkout(args.cmsis_nn)
    if cmsis_nn is None:
        print(f"no CMSIS-NN: its columns read \"-\". {HOW_TO_GET}", file=sys.stderr)
    counts, peer = run_all(args.cores, args.kernels.resolve(), args.opt, args.only, cmsis_nn, args.jobs)
    baseline = None
    if args.baseline_rev:
        with tempfile.TemporaryDirectory(prefix="qgen-base-") as tmp:
            baseline, _ = run_all(args.cores, git_kernels(args.baseline_rev, Path(tmp)), args.opt, args.only,
                                  jobs=args.jobs)
    text = tables(args.cores, counts, peer, baseline)
    print(text)
    if not args.no_write and not args.only:
        results = ROOT / "bench" / "RESULTS.md"
        body = results.read_text() if results.exists() else ""
        results.write_text(update_results(body, text, args.opt, cmsis_nn, args.baseline_rev))
        print(f"wrote {results}")


TABLE_BEGIN, TABLE_END = "<!-- table: begin -->", "<!-- table: end -->"


def update_results(body: str, text: str, opt: str, cmsis_nn: Path | None, baseline_rev: str | None = None) -> str:
    """Replace the generated tables (and the tool line) inside RESULTS.md, keeping the prose."""
    peer = (f"{describe(cmsis_nn)} built with `{CMSIS_OPT}` and the same flags" if cmsis_nn is not None
            else f"no CMSIS-NN in this run: {HOW_TO_GET}")
    base = f"; baseline columns: the kernels of git revision {baseline_rev}" if baseline_rev else ""
    block = (f"{TABLE_BEGIN}\nTools: {tool_versions()}; qgen's kernels and model built with `{opt}` plus each "
             f"board's `-mcpu`/`-mfpu` flags; {peer}{base}.\n\n{text}\n{TABLE_END}")
    if TABLE_BEGIN in body and TABLE_END in body:
        head, rest = body.split(TABLE_BEGIN, 1)
        return head + block + rest.split(TABLE_END, 1)[1]
    return f"# qgen kernel benchmark\n\n{block}\n" + body


if __name__ == "__main__":
    main()
