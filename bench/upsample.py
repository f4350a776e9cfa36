"""Transposed convolution vs convolution: executed instructions per MAC under QEMU (issue 16).

    python bench/upsample.py                      # cortex-m4 and cortex-m0plus, table on stdout
    python bench/upsample.py --cores cortex-m4 --write   # also writes bench/UPSAMPLE.md

Each row is a one-op model (random int8 weights over the full range, random inputs), emitted by qgen,
cross-compiled with build_elf (-O2), run under QEMU with the counting plugin and checked byte for byte
against codegen.reference.run_int. MACs are the op's own count: for a transposed convolution only the
products that land on an output pixel (gather form, no zero inserted), so instructions per MAC compare
the kernels' real work. The count is everything inside `<prefix>_run`, averaged over the inputs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.ops import SPEC
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, run_qemu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from qgen_testing import act, const, finish, safe_bias  # noqa: E402

BOARDS = {"cortex-m4": "mps2-an386", "cortex-m0plus": "rp2040", "cortex-m55": "mps3-an547"}
N_INPUTS = 2


def one_op(rng, op: Op, x_shape, w_shape, **attrs) -> Graph:
    w = rng.integers(-128, 128, w_shape)
    g = Graph({"x": act("x", x_shape, 3), "w": const("w", w, 8, (3,) * w_shape[0]),
               "b": const("b", safe_bias(rng, w), 32, (7,) * w_shape[0])}, [], ["x"], ["y"], source="bench")
    attrs.update(shift=[9] * w_shape[0], act_min=-128, act_max=127)
    node = Node("layer", op, ["x", "w", "b"], ["y"], attrs)
    g.nodes.append(node)
    g.tensors["y"] = act("y", SHAPE_RULES[op](g, node), 3)
    return finish(g)


def resize(mode: str, x_shape, size, align: bool = False) -> Graph:
    g = Graph({"x": act("x", x_shape, 3)}, [], ["x"], ["y"], source="bench")
    node = Node("layer", Op.RESIZE, ["x"], ["y"], {"mode": mode, "align_corners": align, "size": size,
                                                   "scales": (None, None), "frac_bits": 10})
    g.nodes.append(node)
    g.tensors["y"] = act("y", SHAPE_RULES[Op.RESIZE](g, node), 3)
    return finish(g)


def layers(rng) -> dict[str, Graph]:
    ct, conv = Op.CONV_TRANSPOSE2D, Op.CONV2D
    same = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
    out = {}
    for c in (16, 32):
        out[f"convT 2x2 s2, {c}->{c}, 8x8 -> 16x16"] = one_op(rng, ct, (8, 8, c), (c, 2, 2, c), stride=(2, 2),
                                                             crop=(0, 0, 0, 0))
        out[f"convT 3x3 s2 p1 op1, {c}->{c}, 8x8 -> 16x16"] = one_op(rng, ct, (8, 8, c), (c, 3, 3, c),
                                                                    stride=(2, 2), crop=(1, 1, 0, 0))
        out[f"convT 4x4 s2 p1, {c}->{c}, 8x8 -> 16x16"] = one_op(rng, ct, (8, 8, c), (c, 4, 4, c), stride=(2, 2),
                                                                crop=(1, 1, 1, 1))
        out[f"conv 1x1, {c}->{c}, 16x16"] = one_op(rng, conv, (16, 16, c), (c, 1, 1, c), **same)
        out[f"conv 2x2, {c}->{c}, 17x17 -> 16x16"] = one_op(rng, conv, (17, 17, c), (c, 2, 2, c), **same)
        out[f"conv 3x3, {c}->{c}, 10x10 -> 8x8"] = one_op(rng, conv, (10, 10, c), (c, 3, 3, c), **same)
    out["resize nearest x2, 16 ch, 8x8 -> 16x16"] = resize("nearest", (8, 8, 16), (16, 16))
    out["resize bilinear x2, 16 ch, 8x8 -> 16x16"] = resize("bilinear", (8, 8, 16), (16, 16))
    out["resize bilinear ac, 16 ch, 8x8 -> 15x15"] = resize("bilinear", (8, 8, 16), (15, 15), align=True)
    # dilated transposed convs (own generator: the rows above keep their weights and inputs) and the dilated conv
    # of the same output as the stride-1 one (the conv also multiplies the zeros of its padding)
    drng = np.random.default_rng(1)
    out["convT 3x3 s2 d2, 16->16, 8x8 -> 16x16"] = one_op(drng, ct, (8, 8, 16), (16, 3, 3, 16), stride=(2, 2),
                                                         crop=(2, 2, 1, 1), dilation=(2, 2))
    out["convT 3x3 s1 d2, 16->16, 8x8 -> 8x8 (crop 2)"] = one_op(drng, ct, (8, 8, 16), (16, 3, 3, 16), stride=(1, 1),
                                                                crop=(2, 2, 2, 2), dilation=(2, 2))
    out["conv 3x3 d2 pad 2, 16->16, 8x8 (MACs incl. padding)"] = one_op(drng, conv, (8, 8, 16), (16, 3, 3, 16),
                                                                       stride=(1, 1), padding=(2, 2, 2, 2),
                                                                       dilation=(2, 2))
    return out


def measure(core: str, name: str, g: Graph, plugin: Path, rng) -> tuple[int, float]:
    board = BOARDS[core]
    with tempfile.TemporaryDirectory(prefix="qgen-bench-up-") as tmp:
        out = Path(tmp) / "model"
        write_atomic(render(g, "bu", ["bench"]), out)
        x = rng.integers(-128, 128, (N_INPUTS,) + g.tensors["x"].shape).astype(np.int8)
        expect = reference_outputs(g, run_int(g, x))
        sources = [out / "bu_model.c", out / "bu_weights.c", *sorted((out / "kernels").glob("*.c"))]
        elf = build_elf(board, sources, [out, out / "kernels"], "bu", Path(tmp) / "build")
        result = run_qemu(board, elf, x.reshape(N_INPUTS, -1), expect.shape[1], plugin=plugin)
        if not np.array_equal(result.outputs, expect):
            raise AssertionError(f"{core} {name}: C != reference")
    macs = SPEC[g.nodes[0].op].macs(g, g.nodes[0]) if g.nodes[0].op is not Op.RESIZE else 0
    return macs or g.tensors["y"].size, result.instructions_per_inference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="cortex-m4,cortex-m0plus")
    ap.add_argument("--write", action="store_true", help="write bench/UPSAMPLE.md")
    ap.add_argument("--only", default="", help="only the rows whose name contains this (no --write)")
    args = ap.parse_args()
    plugin = build_plugin()
    rows = ["| core | layer | MACs (resize: outputs) | instructions | per MAC (resize: per output) |",
            "|---|---|---:|---:|---:|"]
    for core in args.cores.split(","):
        rng = np.random.default_rng(0)
        for name, g in layers(rng).items():
            if args.only not in name:
                continue
            macs, insns = measure(core, name, g, plugin, rng)
            rows.append(f"| {core} | {name} | {macs} | {insns:.0f} | {insns / macs:.2f} |")
            print(rows[-1], flush=True)
    if args.write and not args.only:
        (ROOT / "bench" / "UPSAMPLE.md").write_text(
            "# Transposed convolution vs convolution (instructions per MAC, QEMU)\n\n"
            "Generated by `python bench/upsample.py --write`; MACs of a transposed convolution count only the "
            "products that land on an output (gather form).\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
