"""The fully connected kernel's DSP path (qg_fully_connected_s8.c fc_rows4_dsp: four rows per pass in one asm block
per 4 inputs, then the rows % 4 last rows and the k % 4 last inputs in plain C) on the Cortex-M4 under QEMU: one
firmware holding every case, byte for byte equal to codegen.reference.run_int.

Cases: 33 inputs (k % 4 = 1) and 7 inputs (k % 4 = 3, one word), rows 16, 13 (one left over), 6, 3 (no 4-row
pass) and 1, the int8 / ReLU / other clamps, shifts mostly 6..10 (outputs inside the int8 range, where an error
shows; one channel shift -2, a left shift) and the extreme weight -128 in every row. The plain and Helium paths are
checked by test_kernels_fast.py / test_kernels_mve.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")


def _fc(g: Graph, rng, name: str, src: str, rows: int, act_range=(-128, 127)) -> str:
    k = g.tensors[src].shape[0]
    w = rng.integers(-128, 128, (rows, k))
    w[:, 0] = -128
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * rows)
    g.tensors[f"{name}_b"] = const(f"{name}_b", rng.integers(-4096, 4096, rows), 32, (7,) * rows)
    shift = [int(s) for s in rng.integers(6, 11, rows)]
    shift[-1] = -2
    node = Node(name, Op.LINEAR, [src, f"{name}_w", f"{name}_b"], [name],
                {"shift": shift, "act_min": act_range[0], "act_max": act_range[1]})
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[Op.LINEAR](g, node)
    g.outputs.append(name)
    return name


def fc_graph(rng) -> Graph:
    g = Graph({"x": act("x", (33,), 3)}, [], ["x"], [], source="test")
    _fc(g, rng, "fc33_16", "x", 16)
    _fc(g, rng, "fc33_13_relu", "x", 13, act_range=(0, 127))
    _fc(g, rng, "fc33_3", "x", 3)
    h = _fc(g, rng, "fc33_7_any", "x", 7, act_range=(-30, 90))
    _fc(g, rng, "fc7_6", h, 6)
    _fc(g, rng, "fc7_1", h, 1)
    return finish(g)


def test_fully_connected_dsp_path_bit_exact_on_m4(tmp_path):
    rng = np.random.default_rng(18)
    graph = fc_graph(rng)
    out = tmp_path / "model"
    write_atomic(render(graph, "fc", ["test"]), out)
    x = edge_inputs(rng, graph.tensors["x"].shape, n_random=4)
    expect = reference_outputs(graph, run_int(graph, x))
    sources = [out / "fc_model.c", out / "fc_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf("mps2-an386", sources, [out, out / "kernels"], "fc", tmp_path / "build",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu("mps2-an386", elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, expect, graph, "cortex-m4")
