"""int4 kernel benchmark: instructions per MAC of qgen's packed-int4 kernels (qg_conv2d_s4.c) against its int8
kernels and CMSIS-NN's s4 kernels (arm_fully_connected_s4, arm_convolve_wrapper_s4, arm_depthwise_conv_wrapper_s4)
on the layer shapes of bench/kernels.py, measured in one run under QEMU (outputs checked against the reference).

    python bench/int4.py --cmsis-nn /tmp/CMSIS-NN [--cores cortex-m0plus cortex-m4]

Prints a markdown table per core; writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from cmsis_nn_peer import find_checkout  # noqa: E402
from cmsis_nn_peer import measure as measure_cmsis  # noqa: E402
from kernels import BOARDS, NAMES, Layer, _weighted, measure  # noqa: E402

from codegen.fixed import QFormat  # noqa: E402
from codegen.passes import plan_memory  # noqa: E402
from codegen.resources import kernel_dir  # noqa: E402
from codegen.target import build_plugin  # noqa: E402

SHAPES = [  # as bench/kernels.py
    ("fc_256_64", "FC 256→64", "LINEAR", (256,), (64, 256), (1, 1), (0, 0, 0, 0)),
    ("fc_784_128", "FC 784→128", "LINEAR", (784,), (128, 784), (1, 1), (0, 0, 0, 0)),
    ("conv3x3_16x16x8_16", "conv3x3 16×16×8→16 (pad 1)", "CONV2D", (16, 16, 8), (16, 3, 3, 8), (1, 1),
     (1, 1, 1, 1)),
    ("conv1x1_16x16x32_32", "conv1x1 16×16×32→32", "CONV2D", (16, 16, 32), (32, 1, 1, 32), (1, 1), (0, 0, 0, 0)),
    ("dw3x3_16x16x32", "depthwise3x3 16×16×32 (pad 1)", "DEPTHWISE_CONV2D", (16, 16, 32), (32, 3, 3, 1), (1, 1),
     (1, 1, 1, 1)),
]


def as_int4(layer: Layer, seed: int) -> Layer:
    """The same layer with weights drawn from [-8, 7] (s4 formats), shifts lowered by 4 for the smaller sums."""
    g = layer.graph
    node = g.nodes[0]
    w_t = g.tensors[node.inputs[1]]
    w = np.random.default_rng(seed).integers(-8, 8, w_t.shape).astype(np.int8)
    w_t.data, w_t.qformat = w, QFormat(4, tuple(3 for _ in range(w.shape[0])))
    node.attrs["shift"] = [max(s - 4, 0) for s in node.attrs["shift"]]
    g.memory, g.arena_size = {}, 0
    g = plan_memory.run(g)
    peer = dataclasses.replace(layer.peer, w=w, bits=4)
    return dataclasses.replace(layer, name=layer.name + "_s4", graph=g, peer=peer)


def layers() -> list[tuple[Layer, Layer]]:
    from codegen.ir import Op

    rng = np.random.default_rng(2024)
    out = []
    for i, (name, title, op, x, w, stride, pad) in enumerate(SHAPES):
        lay8 = _weighted(rng, name, title, Op[op], x, w, stride=stride, padding=pad)
        lay4 = as_int4(_weighted(np.random.default_rng(i), name, title, Op[op], x, w, stride=stride, padding=pad), i)
        out.append((lay8, lay4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", nargs="+", default=["cortex-m0plus", "cortex-m4", "cortex-m7"],
                        choices=list(BOARDS))
    parser.add_argument("--cmsis-nn", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="bench only the layers whose name contains this")
    args = parser.parse_args()
    checkout = find_checkout(args.cmsis_nn)
    plugin = build_plugin()
    pairs = [pair for pair in layers() if args.only in pair[0].name]
    with tempfile.TemporaryDirectory(prefix="qgen-int4-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        jobs = {}
        for lay8, lay4 in pairs:
            for core in args.cores:
                for lay in (lay8, lay4):
                    jobs[(lay.name, core)] = pool.submit(measure, lay, core, kernel_dir(), Path(tmp), plugin, "-O2")
                    if checkout is not None:
                        jobs[("cmsis", lay.name, core)] = pool.submit(
                            measure_cmsis, lay.peer, BOARDS[core], checkout, Path(tmp) / f"cm-{lay.name}-{core}",
                            plugin)
        counts = {key: job.result() for key, job in jobs.items()}
    for core in args.cores:
        print(f"\n### {NAMES[core]}\n")
        print("| layer | MACs | qgen int8 instr/MAC | qgen int4 instr/MAC | int4 / int8 | CMSIS-NN s8 | CMSIS-NN s4 "
              "| qgen int4 / CMSIS-NN s4 |")
        print("|---|---|---|---|---|---|---|---|")
        for lay8, lay4 in pairs:
            a, b = counts[(lay8.name, core)] / lay8.macs, counts[(lay4.name, core)] / lay4.macs
            c8 = counts.get(("cmsis", lay8.name, core))
            c4 = counts.get(("cmsis", lay4.name, core))
            cells = [lay8.title, f"{lay8.macs:,}", f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}",
                     f"{c8 / lay8.macs:.2f}" if c8 else "-", f"{c4 / lay4.macs:.2f}" if c4 else "-",
                     f"{b / (c4 / lay4.macs):.2f}" if c4 else "-"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
