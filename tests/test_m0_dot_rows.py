"""The ARMv6-M dot product (qg_dot_s8.h qg_m0_dot_rows4: four weight rows per input load, accumulators in r8-r11,
one negative index counting up to 0) under QEMU on the Cortex-M0+ build: one firmware holding every case, byte for
byte equal to codegen.reference.run_int. It runs the fully connected kernel and the plain path of the convolution
(qg_dot_rows_s8), four rows per pass, then the rows % 4 last rows in C.

Cases: fully connected with k = 390, 1, 2, 3, 5 and 4..17, 36 and 70 rows (every rows % 4, the 1-3-row tails alone,
more rows than one call's 32), shifts 1, 2, 3 (ARMv6-M requantises shifts >= 2 its own way), a row of
all -128 weights against all -128 inputs (the largest accumulator, 390 * 2^14), shifts -3..14 with biases that
saturate and fine shifts whose outputs stay inside the int8 range, the int8 / ReLU / other clamps; convolutions
3x3 with padding over 13 channels (K = 117, the gathered column, byte copies), 8 channels (word copies and zeroed
rows, ARMv6-M's im2col), 3 channels (K = 27, the RGB stem), 1x1 (the column read from the input in place), stride 2,
asymmetric padding, and grouped (5 rows per group: one 4-row pass + 1). Residual adds (qg_add_s8's ARMv6-M
loops) with alignments by left and right shifts, at the limits of those loops and past them. The DSP and
Helium paths are checked by test_kernels_fast.py, test_fully_connected_dsp.py and test_kernels_mve.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import GraphBuilder, assert_outputs_equal, const, edge_inputs, finish, safe_bias

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs
from codegen.ir import Graph, Op
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")

SHAPE = (6, 5, 13)  # H, W, C
CLAMPS = ((-128, 127), (0, 127), (-37, 90))
# (shift_a, shift_b, shift) of the adds: a ResNet's residual adds, right and left alignments, the limits of the
# ARMv6-M loops (-22, 30; 1, 30) and just past them (the general loop)
ADD_SHIFTS = ((0, -2, 2), (0, -1, 1), (-1, 0, 1), (2, -3, 5), (3, 1, 2), (-22, 0, 22), (0, -22, 30), (30, 30, 1),
              (-23, 0, 24), (0, 31, 1), (0, 0, 31), (0, 0, 0), (3, 0, -2), (-3, -2, 3))


class Builder(GraphBuilder):
    def weighted(self, name: str, op: Op, src: str, w_shape: tuple, clamp=(-128, 127), fine: int | None = None,
                 all_min_row: bool = False, **attrs) -> str:
        """fine None: shifts drawn over [-3, 15) with large biases (most outputs saturate); fine s: shift s and
        small biases (outputs inside the int8 range, where a wrong product shows)."""
        rng = self.rng
        w = rng.integers(-128, 128, w_shape)
        w.flat[0] = -128
        if all_min_row:
            w[0] = -128
        cout = w_shape[0]
        if fine is None:
            shift = rng.integers(-3, 15, cout)
            shift[0] = 0
            bias = safe_bias(rng, w)
        else:
            shift = np.full(cout, fine)
            bias = rng.integers(-2**9, 2**9, cout)
        self.g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * cout)
        self.g.tensors[f"{name}_b"] = const(f"{name}_b", bias, 32, (7,) * cout)
        attrs.update(shift=[int(s) for s in shift], act_min=clamp[0], act_max=clamp[1])
        return self.node(name, op, [src, f"{name}_w", f"{name}_b"], **attrs)


def _fine(k: int) -> int:
    """The right shift mapping ~3 standard deviations of a k-term sum of random int8 products onto +-127."""
    return max(int(np.ceil(np.log2(3 * 74 * 74 * np.sqrt(k) / 127))), 0)


def m0_graph(rng) -> Graph:
    b = Builder(rng, SHAPE)
    k = int(np.prod(SHAPE))
    flat = b.node("flat", Op.RESHAPE, ["x"], output=False, shape=(k,))
    for rows in (4, 5, 6, 7, 8, 16, 17):
        clamp = CLAMPS[rows % 3]
        b.weighted(f"fc{k}_{rows}", Op.LINEAR, flat, (rows, k), clamp)
        b.weighted(f"fc{k}_{rows}_fine", Op.LINEAR, flat, (rows, k), clamp, fine=_fine(k))
    b.weighted(f"fc{k}_8_all_min_row", Op.LINEAR, flat, (8, k), fine=24, all_min_row=True)
    b.weighted(f"fc{k}_70", Op.LINEAR, flat, (70, k), (-37, 90), fine=_fine(k))  # 32 + 32 + 4 rows, then 2
    b.weighted(f"fc{k}_36", Op.LINEAR, flat, (36, k))
    for n in (1, 2, 3, 5):
        vec = b.node(f"v{n}", Op.SLICE, [flat], output=False, axis=0, start=n, length=n)
        b.weighted(f"fc{n}_9", Op.LINEAR, vec, (9, n), CLAMPS[n % 3])
        b.weighted(f"fc{n}_3", Op.LINEAR, vec, (3, n), CLAMPS[(n + 1) % 3], fine=_fine(n))
        for s in (1, 2, 3):  # around ARMv6-M's requantisation of shifts >= 2
            b.weighted(f"fc{n}_8_shift{s}", Op.LINEAR, vec, (8, n), CLAMPS[s % 3], fine=s + 6 * (n - 1))
    same = {"stride": (1, 1), "padding": (1, 1, 1, 1)}
    c3 = b.node("x_c3", Op.SLICE, ["x"], output=False, axis=2, start=0, length=3)
    c12 = b.node("x_c12", Op.SLICE, ["x"], output=False, axis=2, start=1, length=12)
    c8 = b.node("x_c8", Op.SLICE, ["x"], output=False, axis=2, start=5, length=8)
    for rows in (4, 7, 9):
        b.weighted(f"conv3x3_c13_{rows}", Op.CONV2D, "x", (rows, 3, 3, 13), CLAMPS[rows % 3], **same)
        b.weighted(f"conv3x3_c13_{rows}_fine", Op.CONV2D, "x", (rows, 3, 3, 13), fine=_fine(117), **same)
    b.weighted("conv3x3_c8_12", Op.CONV2D, c8, (12, 3, 3, 8), fine=_fine(72), **same)  # word-aligned column rows
    b.weighted("conv3x2_c8_s2_5", Op.CONV2D, c8, (5, 3, 2, 8), (-37, 90), stride=(2, 2), padding=(2, 1, 0, 1))
    b.weighted("stem_c3_16", Op.CONV2D, c3, (16, 3, 3, 3), (0, 127), fine=_fine(27), **same)
    b.weighted("conv3x3_c13_s2_6", Op.CONV2D, "x", (6, 3, 3, 13), stride=(2, 2), padding=(1, 1, 1, 1))
    b.weighted("conv1x1_c13_12", Op.CONV2D, "x", (12, 1, 1, 13), fine=_fine(13), stride=(1, 1),
               padding=(0, 0, 0, 0))
    b.weighted("conv1x1_c13_s2_9", Op.CONV2D, "x", (9, 1, 1, 13), (-37, 90), stride=(2, 2), padding=(0, 0, 0, 0))
    b.weighted("conv3x3_c12_g2_10", Op.CONV2D, c12, (10, 3, 3, 6), (0, 127), fine=_fine(54), groups=2, **same)
    # residual adds (qg_add_s8's ARMv6-M loops: shifts_a/b in [-22, 30], shift in [1, 30]; others the general loop)
    mix = b.weighted("conv1x1_c13_13", Op.CONV2D, "x", (13, 1, 1, 13), fine=_fine(13), output=False, stride=(1, 1),
                     padding=(0, 0, 0, 0))
    for i, (sa, sb, s) in enumerate(ADD_SHIFTS):
        clamp = CLAMPS[i % 3]
        b.node(f"add_{i}", Op.ADD, ["x", mix], shift_a=sa, shift_b=sb, shift=s, act_min=clamp[0], act_max=clamp[1])
    return finish(b.g)


def test_m0_dot_rows_bit_exact_on_cortex_m0plus(tmp_path):
    rng = np.random.default_rng(607)
    graph = m0_graph(rng)
    out = tmp_path / "model"
    write_atomic(render(graph, "m0", ["test"]), out)
    x = edge_inputs(rng, SHAPE, n_random=3)
    expect = reference_outputs(graph, run_int(graph, x))
    sources = [out / "m0_model.c", out / "m0_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf("rp2040", sources, [out, out / "kernels"], "m0", tmp_path / "build",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu("rp2040", elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, expect, graph, "cortex-m0plus")
    # the fine-shift outputs are not all saturated: a wrong product shows there
    fine = np.concatenate([run_int(graph, x[-1:])[n].ravel() for n in graph.outputs if n.endswith("_fine")])
    assert np.mean(np.abs(fine.astype(int)) < 127) > 0.5
