"""Grouped and dilated convolutions against the dense kernel of the same shape: executed instructions per
MAC on Cortex-M4 (DSP path) and Cortex-M0+ (plain C) under QEMU (the counting plugin), outputs checked
byte for byte against the reference (bench/kernels.py measure()).

    python bench/conv_groups_dilation.py            # table on stdout
    python bench/conv_groups_dilation.py --write    # also writes bench/CONV_GROUPS_DILATION.md

"Same shape" for a grouped conv is one group's conv: groups g of Cin -> Cout cost per MAC what a dense
Cin/g -> Cout/g conv costs (each pixel's window is gathered once per group, as a dense conv gathers it once),
so the ratio column compares with that; a dilated conv is compared with the undilated conv of the same
channels, kernel and output size. Target (issue 16): ratio <= 1.2 on M4.
"""
from __future__ import annotations

import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from kernels import Layer, _shifts, measure  # noqa: E402
from qgen_testing import finish, weighted_graph  # noqa: E402

from codegen.ir import Op  # noqa: E402
from codegen.resources import kernel_dir  # noqa: E402
from codegen.target import build_plugin  # noqa: E402

CORES = ("cortex-m4", "cortex-m0plus")


def _layer(rng, name: str, op: Op, x_shape, w_shape, padding, dilation=(1, 1), groups=1, stride=(1, 1)) -> Layer:
    w = rng.integers(-128, 128, w_shape)
    k = int(np.prod(w_shape[1:]))
    b = rng.integers(-2**12, 2**12, w_shape[0])
    g = weighted_graph(op, x_shape, w, b, _shifts(74 * 74 * np.sqrt(k), w_shape[0]), stride=stride, padding=padding)
    node = g.nodes[0]
    if dilation != (1, 1):
        node.attrs["dilation"] = dilation
    if groups != 1:
        node.attrs["groups"] = groups
    from codegen.ir import SHAPE_RULES

    g.tensors["y"].shape = SHAPE_RULES[op](g, node)
    g = finish(g)
    out = g.tensors[g.outputs[0]]
    slug = "".join(ch if ch.isalnum() else "_" for ch in name)  # a directory name
    return Layer(slug, name.strip(), g, out.size * k, out.size, None)


# (case, its dense reference): same output size and per-group MACs
def pairs() -> list[tuple[Layer, Layer]]:
    rng = np.random.default_rng(16)
    conv, dw = Op.CONV2D, Op.DEPTHWISE_CONV2D
    p1, p2 = (1, 1, 1, 1), (2, 2, 2, 2)
    return [
        (_layer(rng, "conv3x3 16x16x8->16 dilation 2", conv, (16, 16, 8), (16, 3, 3, 8), p2, dilation=(2, 2)),
         _layer(rng, "conv3x3 16x16x8->16", conv, (16, 16, 8), (16, 3, 3, 8), p1)),
        (_layer(rng, "conv3x3 16x16x32->32 groups 4", conv, (16, 16, 32), (32, 3, 3, 8), p1, groups=4),
         _layer(rng, "conv3x3 16x16x8->8", conv, (16, 16, 8), (8, 3, 3, 8), p1)),
        (_layer(rng, "conv3x3 16x16x16->32 groups 2, dilation 2", conv, (16, 16, 16), (32, 3, 3, 8), p2,
                dilation=(2, 2), groups=2),
         _layer(rng, "conv3x3 16x16x8->16 ", conv, (16, 16, 8), (16, 3, 3, 8), p1)),
        (_layer(rng, "conv1x1 16x16x32->32 groups 4", conv, (16, 16, 32), (32, 1, 1, 8), (0, 0, 0, 0), groups=4),
         _layer(rng, "conv1x1 16x16x8->8", conv, (16, 16, 8), (8, 1, 1, 8), (0, 0, 0, 0))),
        (_layer(rng, "conv3x3 16x16x24->24 groups 8 (3 ch/group)", conv, (16, 16, 24), (24, 3, 3, 3), p1, groups=8),
         _layer(rng, "conv3x3 16x16x3->3", conv, (16, 16, 3), (3, 3, 3, 3), p1)),
        (_layer(rng, "conv3x3 16x16x24->48 groups 12 (2 ch/group)", conv, (16, 16, 24), (48, 3, 3, 2), p1,
                groups=12),
         _layer(rng, "conv3x3 16x16x2->4", conv, (16, 16, 2), (4, 3, 3, 2), p1)),
        (_layer(rng, "conv3x3 16x16x24->24 groups 4 (6 ch/group)", conv, (16, 16, 24), (24, 3, 3, 6), p1, groups=4),
         _layer(rng, "conv3x3 16x16x6->6", conv, (16, 16, 6), (6, 3, 3, 6), p1)),
        (_layer(rng, "conv3x3 16x16x32->32 groups 2 (16 ch/group)", conv, (16, 16, 32), (32, 3, 3, 16), p1,
                groups=2),
         _layer(rng, "conv3x3 16x16x16->16", conv, (16, 16, 16), (16, 3, 3, 16), p1)),
        (_layer(rng, "conv3x3 16x16x3->16 dilation 2", conv, (16, 16, 3), (16, 3, 3, 3), p2, dilation=(2, 2)),
         _layer(rng, "conv3x3 16x16x3->16", conv, (16, 16, 3), (16, 3, 3, 3), p1)),
        (_layer(rng, "Conv1d k3 64x16->16 dilation 4, causal", conv, (1, 64, 16), (16, 1, 3, 16), (0, 8, 0, 0),
                dilation=(1, 4)),
         _layer(rng, "Conv1d k3 64x16->16, causal", conv, (1, 64, 16), (16, 1, 3, 16), (0, 2, 0, 0))),
        (_layer(rng, "Conv1d k3 64x6->16 dilation 2, causal", conv, (1, 64, 6), (16, 1, 3, 6), (0, 4, 0, 0),
                dilation=(1, 2)),
         _layer(rng, "Conv1d k3 64x6->16, causal", conv, (1, 64, 6), (16, 1, 3, 6), (0, 2, 0, 0))),
        (_layer(rng, "depthwise3x3 16x16x32 dilation 2", dw, (16, 16, 32), (32, 3, 3, 1), p2, dilation=(2, 2)),
         _layer(rng, "depthwise3x3 16x16x32", dw, (16, 16, 32), (32, 3, 3, 1), p1)),
    ]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write bench/CONV_GROUPS_DILATION.md")
    args = ap.parse_args()
    plugin = build_plugin()
    todo = pairs()
    with tempfile.TemporaryDirectory(prefix="qgen-bench-gd-") as tmp, ThreadPoolExecutor(2) as pool:
        jobs = {(i, j, core): pool.submit(measure, lay, core, kernel_dir(), Path(tmp) / f"{i}{j}", plugin, "-O2")
                for i, pair in enumerate(todo) for j, lay in enumerate(pair) for core in CORES}
        counts = {key: job.result() for key, job in jobs.items()}
    rows = ["| layer | dense reference | " + " | ".join(f"{c} instr/MAC (ref) | ratio" for c in CORES) + " |",
            "|---|---|" + "---|---|" * len(CORES)]
    for i, (case, ref) in enumerate(todo):
        cells = []
        for core in CORES:
            a, b = counts[(i, 0, core)] / case.macs, counts[(i, 1, core)] / ref.macs
            cells.append(f"{a:.2f} ({b:.2f}) | {a / b:.2f}")
        rows.append(f"| {case.title} | {ref.title} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if args.write:
        (ROOT / "bench" / "CONV_GROUPS_DILATION.md").write_text(
            "# Grouped and dilated convolutions vs the dense kernel (instructions per MAC, QEMU)\n\n"
            "Generated by `python bench/conv_groups_dilation.py --write`. A grouped conv is compared with the dense "
            "conv of one group's channels (in_c/g -> out_c/g, same spatial size), a dilated conv with the undilated "
            "conv of the same channels and output size. Issue 16 target: ratio <= 1.2 on the M4.\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
