"""The grouped / dilated convolution gather and the 4-pixel DSP block (issue 16 speed targets) on the cores:
one model per test run, cross-compiled once per core (Cortex-M0+: plain C, Cortex-M4: SMLAD block) and run under
QEMU, must equal codegen.reference.run_int byte for byte.

What the cases reach (firmware/kernels/qg_conv2d_s8.c gather_taps_s8, qg_dot_s8.h qg_block_1x4_s8):
- groups of 1, 2, 3, 5, 6 and 7 channels (every cg % 4, one and two words per tap), 3x3 windows hanging over
  every border (zero taps written before the word copies, whose up to 3 extra bytes must not land in them),
  stride 2, a grouped 1x1, odd outputs per group, the input's last pixel in the last group (read exactly);
- dense dilated convs on 3 and 6 channels (the same gather), a dilated 1-D causal conv on 5 channels;
- K % 4 of 0..3 in the block's tail, pixel counts that are not a multiple of 4 (partial last block), per-channel
  shifts from -3 to 14 (the shift <= 0 rows take the generic store), the three clamp kinds;
- inputs all -128 / all 127 / alternating, weights with -128: products and sums at their extremes, saturation.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish, safe_bias

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")

BOARD_FOR_CORE = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}
KINDS = ((-128, 127), (0, 127), (-40, 90))  # the three clamp kinds


def _conv(g: Graph, rng, name: str, src: str, w_shape, kind: int, *, groups=1, dilation=(1, 1), stride=(1, 1),
          padding=(1, 1, 1, 1), output=True) -> str:
    w = rng.integers(-128, 128, w_shape)
    w.flat[0] = -128
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
    g.tensors[f"{name}_b"] = const(f"{name}_b", safe_bias(rng, w), 32, (7,) * w_shape[0])
    attrs = {"stride": stride, "padding": padding, "shift": [int(s) for s in rng.integers(-3, 15, w_shape[0])],
             "act_min": KINDS[kind][0], "act_max": KINDS[kind][1]}
    if groups != 1:
        attrs["groups"] = groups
    if dilation != (1, 1):
        attrs["dilation"] = dilation
    node = Node(name, Op.CONV2D, [src, f"{name}_w", f"{name}_b"], [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[Op.CONV2D](g, node)
    if output:
        g.outputs.append(name)
    return name


def fast_path_graph(rng) -> Graph:
    """Branches over one (7, 9, 42) input (42 = 2 * 3 * 7: groups of 1, 2, 3, 6, 7 channels divide it)."""
    g = Graph({"x": act("x", (7, 9, 42), 3)}, [], ["x"], [], source="test")
    # grouped 3x3, every group size % 4, over every border; outputs per group 1..3
    _conv(g, rng, "g42_cg1", "x", (42, 3, 3, 1), 0, groups=42)  # a CONV2D node here, not the depthwise kernel
    _conv(g, rng, "g21_cg2_s2", "x", (42, 3, 3, 2), 1, groups=21, stride=(2, 2))
    _conv(g, rng, "g14_cg3", "x", (28, 3, 3, 3), 2, groups=14)
    _conv(g, rng, "g14_cg3_pad2", "x", (14, 3, 3, 3), 0, groups=14, padding=(2, 2, 2, 2))
    _conv(g, rng, "g7_cg6_odd", "x", (21, 3, 3, 6), 0, groups=7, padding=(1, 0, 2, 1))
    _conv(g, rng, "g6_cg7", "x", (18, 3, 3, 7), 1, groups=6, stride=(2, 1))
    _conv(g, rng, "g6_cg7_1x1", "x", (12, 1, 1, 7), 0, groups=6, padding=(0, 0, 0, 0))
    # 35 channels: groups of 5 (two words per tap)
    c35 = _conv(g, rng, "to35", "x", (35, 1, 1, 42), 0, padding=(0, 0, 0, 0), output=False)
    _conv(g, rng, "g7_cg5", c35, (14, 3, 3, 5), 2, groups=7)
    # dense dilated convs on channel counts that are not a multiple of 4 (the tap gather, K % 4 = 3, 2, 3)
    c3 = _conv(g, rng, "to3", "x", (3, 1, 1, 42), 0, padding=(0, 0, 0, 0), output=False)
    _conv(g, rng, "dil2_c3", c3, (5, 3, 3, 3), 0, dilation=(2, 2), padding=(2, 2, 2, 2))
    c6 = _conv(g, rng, "to6", "x", (6, 1, 1, 42), 0, padding=(0, 0, 0, 0), output=False)
    _conv(g, rng, "dil3x2_c6", c6, (7, 3, 3, 6), 1, dilation=(3, 2), padding=(3, 1, 2, 2))
    _conv(g, rng, "dil2_g2_c6", c6, (4, 3, 3, 3), 2, groups=2, dilation=(2, 2), stride=(2, 2))
    return finish(g)


def sequence_graph(rng) -> Graph:
    """A causal dilated Conv1d (TCN) on 5 channels: (1, 23, 5) sequences."""
    g = Graph({"x": act("x", (1, 23, 5), 3)}, [], ["x"], [], source="test")
    _conv(g, rng, "tcn_d4_c5", "x", (6, 1, 3, 5), 0, dilation=(1, 4), padding=(0, 8, 0, 0))
    _conv(g, rng, "tcn_d2_g5_c5", "x", (5, 1, 3, 1), 1, groups=5, dilation=(1, 2), padding=(0, 4, 0, 0))
    return finish(g)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(1616)
    made = {}
    for name, graph in {"image": fast_path_graph(rng), "sequence": sequence_graph(rng)}.items():
        out = tmp_path_factory.mktemp(name) / "model"
        write_atomic(render(graph, "cf", ["test"]), out)
        x = edge_inputs(rng, graph.tensors[graph.inputs[0]].shape, n_random=3)
        made[name] = (graph, out, x, reference_outputs(graph, run_int(graph, x)))
    return made


def test_the_model_reaches_the_paths(models):
    """Guards the test itself: grouped convs of every cg % 4, dilated dense convs off the multiple of 4."""
    graph = models["image"][0]
    cgs = {graph.tensors[n.inputs[0]].shape[2] // n.attrs.get("groups", 1) for n in graph.nodes}
    assert {1, 2, 3, 5, 6, 7} <= cgs
    dilated = [n for n in graph.nodes if n.attrs.get("dilation", (1, 1)) != (1, 1)]
    assert {graph.tensors[n.inputs[0]].shape[2] % 4 for n in dilated} == {2, 3}


@pytest.mark.parametrize("core", list(BOARD_FOR_CORE))
def test_grouped_and_dilated_gather_bit_exact_on_core(core, models, tmp_path):
    plugin = build_plugin()

    def run(name):
        graph, out, x, expect = models[name]
        sources = [out / "cf_model.c", out / "cf_weights.c", *sorted((out / "kernels").glob("*.c"))]
        elf = build_elf(BOARD_FOR_CORE[core], sources, [out, out / "kernels"], "cf", tmp_path / name,
                        extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
        return graph, run_qemu(BOARD_FOR_CORE[core], elf, x.reshape(len(x), -1), expect.shape[1],
                               plugin=plugin).outputs, expect

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, models))
    for graph, got, expect in results:
        assert_outputs_equal(got, expect, graph, core)
