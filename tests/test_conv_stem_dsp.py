"""The convolution's RGB-stem and pointwise DSP paths (qg_conv2d_s8.c conv2d_stem_dsp: 3x3 windows on 3 input
channels, rows widened straight from the input, a 7th group of the rows' ninth bytes; conv2d_pointwise_dsp: 1x1
without padding, in_c % 4 == 0, the last 1-2 pixels one at a time) on the cores under QEMU: one firmware per core
holding every case, byte for byte equal to codegen.reference.run_int. M0+ runs the plain path.

Cases: stride 2 with pad 1 (VWW's stem) and with TensorFlow's asymmetric pad, stride 1 pad 1 (ResNet stems), no
padding, mixed strides and pads, odd output channel counts, pixel counts with every remainder mod 4, the three
clamp kinds, shifts <= 0 (generic store), weights of -128 in every channel and inputs of -128 / 127 (edge_inputs);
pointwise 1x1 on 8, 12 and 16 channels (k = 8 / 16: the assembly rows, int8 and ReLU clamps) with strides 1, 2,
(3, 4) and a 1-wide output (its last 2 pixels on 2 rows), a 1x1 with bottom/right padding and a 3x3 on a 2-row
image (general paths).
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


def _conv(g: Graph, rng, name: str, src: str, out_c: int, k: int, act_range=(-128, 127), shifts=(6, 11),
          **attrs) -> str:
    """Append conv `name` (out_c x k x k x in_c weights, shifts drawn from [shifts): most outputs inside the int8
    range, where an error shows; the first channel's shift is 1, saturating) reading `src`; returns its output."""
    w_shape = (out_c, k, k, g.tensors[src].shape[2])
    w = rng.integers(-128, 128, w_shape)
    w[:, 0, 0, 0] = -128
    w[:, -1, -1, -1] = -128  # the rows' ninth bytes (the 7th group) at their extreme too
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * out_c)
    g.tensors[f"{name}_b"] = const(f"{name}_b", rng.integers(-4096, 4096, out_c), 32, (7,) * out_c)
    attrs = {"stride": (1, 1), "padding": (1, 1, 1, 1), **attrs}
    shift = [int(s) for s in rng.integers(*shifts, out_c)]
    shift[0] = min(shift[0], 1)
    attrs.update(shift=shift, act_min=act_range[0], act_max=act_range[1])
    node = Node(name, Op.CONV2D, [src, f"{name}_w", f"{name}_b"], [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[Op.CONV2D](g, node)
    g.outputs.append(name)
    return name


def stem_graph(rng) -> Graph:
    g = Graph({"x": act("x", (9, 11, 3), 3)}, [], ["x"], [], source="test")
    _conv(g, rng, "stem_s2_p1", "x", 8, 3, stride=(2, 2))  # 5x6 pixels: 2 in the last block
    _conv(g, rng, "stem_s2_tf_pad", "x", 8, 3, stride=(2, 2), padding=(0, 0, 1, 1))
    c12 = _conv(g, rng, "stem_s1_p1_relu", "x", 12, 3, act_range=(0, 127))  # 99 pixels: 3 in the last block
    _conv(g, rng, "stem_valid_any_clamp", "x", 5, 3, act_range=(-20, 100), padding=(0, 0, 0, 0))  # 63 pixels
    _conv(g, rng, "stem_shift0_fallback", "x", 3, 3, shifts=(-2, 2))
    _conv(g, rng, "stem_s2x1_mixed_pad", "x", 7, 3, stride=(2, 1), padding=(2, 0, 0, 2))  # 4x13: 1 in the last
    c8 = _conv(g, rng, "stem_c8_nopad", "x", 8, 3, padding=(0, 0, 0, 0), shifts=(8, 10))  # 7x9
    _conv(g, rng, "pw_c8_to_16", c8, 16, 1, padding=(0, 0, 0, 0))  # 63 pixels
    _conv(g, rng, "pw_c12_s2_relu", c12, 7, 1, stride=(2, 2), padding=(0, 0, 0, 0), act_range=(0, 127))  # 30
    _conv(g, rng, "pw_c12_s34", c12, 9, 1, stride=(3, 4), padding=(0, 0, 0, 0))  # 3x3 = 9: 1 pixel left over
    _conv(g, rng, "pw_c12_any_clamp", c12, 5, 1, padding=(0, 0, 0, 0), act_range=(-50, 50))  # 99
    _conv(g, rng, "pw_c8_pad_bottom_right", c8, 6, 1, padding=(0, 0, 1, 1))  # general path: 8x10
    _conv(g, rng, "pw_c8_shift0", c8, 4, 1, padding=(0, 0, 0, 0), shifts=(-3, 1))
    c16 = _conv(g, rng, "stem_c16_s2", "x", 16, 3, stride=(2, 2), shifts=(8, 10))  # 5x6
    _conv(g, rng, "pw_c16_relu", c16, 12, 1, padding=(0, 0, 0, 0), act_range=(0, 127))
    _conv(g, rng, "pw_c16_s8_odd_out", c16, 5, 1, padding=(0, 0, 0, 0))
    _conv(g, rng, "pw_c8_relu_to_16", c8, 16, 1, padding=(0, 0, 0, 0), act_range=(0, 127))  # 63 pixels
    flat = _conv(g, rng, "to_2x11_c3", "x", 3, 1, stride=(5, 1), padding=(0, 0, 0, 0), shifts=(8, 10))
    _conv(g, rng, "stem_on_2_rows", flat, 6, 3)  # fewer rows than the window: the general path
    tall = _conv(g, rng, "stem_pad_top2_bottom1", "x", 8, 3, padding=(2, 0, 1, 0), shifts=(8, 10))  # 10x9
    _conv(g, rng, "pw_c8_one_wide", tall, 5, 1, stride=(1, 10), padding=(0, 0, 0, 0))  # 10x1: the last 2 wrap
    return finish(g)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(7)
    graph = stem_graph(rng)
    out = tmp_path_factory.mktemp("stem") / "model"
    write_atomic(render(graph, "st", ["test"]), out)
    x = edge_inputs(rng, graph.tensors["x"].shape, n_random=3)
    return graph, out, x, reference_outputs(graph, run_int(graph, x))


@pytest.mark.parametrize("core", list(BOARDS))
def test_stem_and_pointwise_dsp_paths_bit_exact_on_core(core, models, tmp_path):
    graph, out, x, expect = models
    sources = [out / "st_model.c", out / "st_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(BOARDS[core], sources, [out, out / "kernels"], "st", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, expect, graph, core)
