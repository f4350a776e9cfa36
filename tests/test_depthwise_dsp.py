"""The depthwise convolution's DSP path (qg_conv2d_s8.c depthwise_dsp: int16 weights unpacked into scratch, the
3x3 window and 3- / 2-tap rows unrolled in asm, requantisation for shifts >= 1 with the int8 / ReLU clamps) on the
cores under QEMU: one firmware per core holding every case, byte for byte equal to codegen.reference.run_int.

test_kernels_fast.py draws shifts from -3, so its depthwise layers mostly take the general path; here every layer
but the two fallback ones has shifts >= 1 (mostly 6..10: outputs inside the int8 range, where an error shows), so
the fast path runs: interior 3x3 windows, clipped rows and columns
(2-tap rows, 2-row windows, a 1-wide image: 1-tap rows), stride 2 with VWW's asymmetric padding, channel counts
with a ch % 4 tail (7, 13) and without (8, 12, 16), a 5x3 and a 5x5 window (generic rows), dilation 2, extreme
weights (-128 in every channel) and inputs. M0+ runs the plain path (its scratch is the int8 size).
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

BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


def _node(g: Graph, rng, name: str, op: Op, src: str, w_shape, act_range=(-128, 127), shifts=(6, 11),
          **attrs) -> str:
    """Append node `name` (weights w_shape, shifts drawn from [shifts): most outputs inside the int8 range, where an
    error shows; the first channel's shift is 1, saturating) reading `src`; returns its output."""
    w = rng.integers(-128, 128, w_shape)
    w[:, 0, 0, 0] = -128  # the extreme weight in every channel (each 4-channel word holds four of them)
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
    bias = rng.integers(-4096, 4096, w_shape[0])  # small: safe_bias's range would saturate most outputs
    g.tensors[f"{name}_b"] = const(f"{name}_b", bias, 32, (7,) * w_shape[0])
    attrs = {"stride": (1, 1), "padding": (1, 1, 1, 1), **attrs}
    shift = [int(s) for s in rng.integers(*shifts, w_shape[0])]
    shift[0] = min(shift[0], 1)
    attrs.update(shift=shift, act_min=act_range[0], act_max=act_range[1])
    node = Node(name, op, [src, f"{name}_w", f"{name}_b"], [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    g.outputs.append(name)
    return name


def _dw(g: Graph, rng, name: str, src: str, k: tuple[int, int], **attrs) -> str:
    return _node(g, rng, name, Op.DEPTHWISE_CONV2D, src, (g.tensors[src].shape[2], *k, 1), **attrs)


def depthwise_graph(rng) -> Graph:
    """Branches over one (6, 7, 16) input and over convs of it to 7, 12 and 13 channels (13 also 1 pixel wide);
    every branch output is a model output."""
    g = Graph({"x": act("x", (6, 7, 16), 3)}, [], ["x"], [], source="test")
    _dw(g, rng, "dw3x3_c16", "x", (3, 3))
    _dw(g, rng, "dw3x3_c16_relu", "x", (3, 3), act_range=(0, 127))
    _dw(g, rng, "dw3x3_c16_s2_vww_pad", "x", (3, 3), stride=(2, 2), padding=(0, 0, 1, 1))
    _dw(g, rng, "dw3x3_c16_dil2", "x", (3, 3), dilation=(2, 2), padding=(2, 2, 2, 2))
    _dw(g, rng, "dw5x5_c16_relu", "x", (5, 5), act_range=(0, 127), padding=(2, 2, 2, 2))
    _dw(g, rng, "dw5x3_c16_s1x2", "x", (5, 3), stride=(1, 2), padding=(2, 1, 2, 0))
    _dw(g, rng, "dw3x3_c16_any_fallback", "x", (3, 3), act_range=(-20, 100))
    _dw(g, rng, "dw3x3_c16_shift0_fallback", "x", (3, 3), shifts=(0, 3))
    conv = {"padding": (0, 0, 0, 0), "shifts": (8, 10)}
    for ch in (7, 12):
        src = _node(g, rng, f"conv_to_c{ch}", Op.CONV2D, "x", (ch, 1, 1, 16), **conv)
        _dw(g, rng, f"dw3x3_c{ch}", src, (3, 3))
        _dw(g, rng, f"dw3x3_c{ch}_relu_s2", src, (3, 3), act_range=(0, 127), stride=(2, 2))
        _dw(g, rng, f"dw2x2_c{ch}_nopad", src, (2, 2), padding=(0, 0, 0, 0))
    src = _node(g, rng, "conv_to_c13_w1", Op.CONV2D, "x", (13, 1, 7, 16), **conv)  # (6, 1, 13): 1-tap rows
    _dw(g, rng, "dw3x3_c13_w1", src, (3, 3))
    return finish(g)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(18)
    graph = depthwise_graph(rng)
    out = tmp_path_factory.mktemp("dw") / "model"
    write_atomic(render(graph, "dw", ["test"]), out)
    x = edge_inputs(rng, graph.tensors["x"].shape, n_random=3)
    return graph, out, x, reference_outputs(graph, run_int(graph, x))


@pytest.mark.parametrize("core", list(BOARDS))
def test_depthwise_dsp_path_bit_exact_on_core(core, models, tmp_path):
    graph, out, x, expect = models
    sources = [out / "dw_model.c", out / "dw_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(BOARDS[core], sources, [out, out / "kernels"], "dw", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, expect, graph, core)
