"""Every op: generated C == integer reference, byte for byte, on random and extreme inputs.

Graphs are built already quantised, with int8 weights over the full range (including -128), random
per-channel shifts (right and left), biases, and fused clamps, so the kernels see cases the quantiser
rarely produces.
"""
from __future__ import annotations

import numpy as np
import pytest

from codegen.fixed import QFormat
from codegen.ir import Graph, Node, Op, Tensor
from codegen.passes.quantize import avg_params
from qgen_testing import act, assert_c_equals_reference, build_host, edge_inputs, finish, safe_bias, weighted_graph

CONV_CASES = [
    # (H, W, Cin, Cout, KH, KW, stride, padding(top,left,bottom,right))
    (8, 8, 1, 8, 3, 3, (1, 1), (1, 1, 1, 1)),
    (9, 7, 7, 5, 3, 5, (2, 2), (1, 2, 1, 2)),   # odd sizes, 3x5 kernel, stride 2
    (5, 6, 3, 4, 1, 1, (1, 1), (0, 0, 0, 0)),   # 1x1
    (10, 4, 2, 3, 10, 4, (1, 1), (0, 0, 0, 0)),  # kernel as big as the input (DS-CNN-like 10x4)
    (6, 6, 4, 2, 2, 3, (3, 1), (0, 1, 0, 1)),   # asymmetric stride
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-k{c[4]}x{c[5]}-s{c[6][0]}")
def test_conv2d(case, rng, tmp_path):
    h, w, cin, cout, kh, kw, stride, pad = case
    weights = rng.integers(-128, 128, (cout, kh, kw, cin))
    weights[0, 0, 0, 0] = -128
    shift = rng.integers(-3, 16, cout)
    g = finish(weighted_graph(Op.CONV2D, (h, w, cin), weights, safe_bias(rng, weights), shift,
                              stride=stride, padding=pad))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (h, w, cin)))


@pytest.mark.parametrize("mult,kh,kw,stride,pad", [(1, 3, 3, (1, 1), (1, 1, 1, 1)), (2, 3, 3, (2, 2), (1, 1, 1, 1)),
                                                   (1, 5, 2, (1, 2), (2, 0, 2, 1))])
def test_depthwise_conv2d(mult, kh, kw, stride, pad, rng, tmp_path):
    h, w, c = 7, 9, 5
    weights = rng.integers(-128, 128, (c * mult, kh, kw, 1))
    g = finish(weighted_graph(Op.DEPTHWISE_CONV2D, (h, w, c), weights, safe_bias(rng, weights),
                              rng.integers(-2, 14, c * mult), stride=stride, padding=pad))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (h, w, c)))


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 3), (256, 10), (33, 17)])
def test_fully_connected(n_in, n_out, rng, tmp_path):
    weights = rng.integers(-128, 128, (n_out, n_in))
    g = finish(weighted_graph(Op.LINEAR, (n_in,), weights, safe_bias(rng, weights), rng.integers(-5, 16, n_out)))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (n_in,)))


def test_saturation_and_fused_relu6(rng, tmp_path):
    """Huge sums saturate to 127/-128; a fused ReLU6 clamps to [0, 6 * 2^frac]."""
    weights = np.full((4, 3, 3, 2), 127)
    weights[1] = -128
    g = finish(weighted_graph(Op.CONV2D, (5, 5, 2), weights, np.zeros(4, np.int64), [0, 0, 4, 9],
                              act_min=0, act_max=96, padding=(1, 1, 1, 1)))
    x = edge_inputs(rng, (5, 5, 2))
    host = build_host(g, tmp_path)
    assert_c_equals_reference(g, host, x)
    out = host.run(x.reshape(len(x), -1))
    assert out.max() == 96 and out.min() == 0


def _unary_graph(op: Op, shape, out_shape, **attrs) -> Graph:
    tensors = {"x": act("x", shape, 3), "y": act("y", out_shape, 3)}
    return Graph(tensors, [Node("layer", op, ["x"], ["y"], attrs)], ["x"], ["y"], source="test")


POOL_CASES = [((8, 8, 3), (2, 2), (2, 2), (0, 0, 0, 0)), ((7, 9, 5), (3, 3), (2, 2), (1, 1, 1, 1)),
              ((6, 5, 2), (3, 2), (1, 1), (0, 0, 0, 0)), ((4, 4, 7), (4, 4), (4, 4), (0, 0, 0, 0))]


@pytest.mark.parametrize("op", [Op.MAXPOOL2D, Op.AVGPOOL2D])
@pytest.mark.parametrize("shape,kernel,stride,pad", POOL_CASES)
def test_pooling(op, shape, kernel, stride, pad, rng, tmp_path):
    from codegen.ir import conv_out_size

    oh = conv_out_size(shape[0], kernel[0], stride[0], pad[0], pad[2])
    ow = conv_out_size(shape[1], kernel[1], stride[1], pad[1], pad[3])
    attrs = dict(kernel=kernel, stride=stride, padding=pad)
    if op is Op.AVGPOOL2D:
        attrs.update(avg_params(kernel[0] * kernel[1]), act_min=-128, act_max=127)
    g = finish(_unary_graph(op, shape, (oh, ow, shape[2]), **attrs))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, shape))


def test_avgpool_non_power_of_two_is_close_to_true_mean():
    p = avg_params(9)
    sums = np.arange(-128 * 9, 127 * 9 + 1)
    from codegen.fixed import requantize

    approx = requantize(sums * p["avg_mult"], p["avg_shift"], -128, 127)
    exact = np.floor(sums / 9 + 0.5)
    assert np.max(np.abs(approx - exact)) <= 1 and np.mean(approx == exact) > 0.99


@pytest.mark.parametrize("fa,fb,fy", [(4, 4, 3), (6, 2, 4), (1, 7, 7), (0, 30, 5), (7, 7, 7)])
def test_add_with_different_qformats(fa, fb, fy, rng, tmp_path):
    from codegen.passes.quantize import _quantize_add

    shape = (3, 5, 7)
    tensors = {"a": act("a", shape, fa), "b": act("b", shape, fb), "y": act("y", shape, fy)}
    node = Node("add", Op.ADD, ["a", "b"], ["y"], {})
    g = Graph(tensors, [node], ["a"], ["y"], source="test")
    # second input: produced from the first by a clamp so the graph has one input
    g.tensors["x"] = g.tensors.pop("a")
    g.tensors["x"].name = "x"
    g.inputs = ["x"]
    g.nodes.insert(0, Node("relu", Op.RELU, ["x"], ["b"], {"lo": 0.0, "hi": None, "act_min": -100, "act_max": 90}))
    node.inputs = ["x", "b"]
    g.tensors["b"].qformat = QFormat(8, fb)  # kernel test: only the integers and shifts matter
    _quantize_add(g, node, fy)
    g = finish(g)
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, shape))


def test_clamp_and_reshape(rng, tmp_path):
    tensors = {"x": act("x", (2, 3, 4), 2), "r": act("r", (2, 3, 4), 2), "y": act("y", (24,), 2)}
    g = Graph(tensors, [Node("relu6", Op.RELU, ["x"], ["r"], {"lo": 0.0, "hi": 6.0, "act_min": 0, "act_max": 24}),
                        Node("flat", Op.RESHAPE, ["r"], ["y"], {"shape": (24,)})], ["x"], ["y"], source="test")
    g = finish(g)
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (2, 3, 4)))
