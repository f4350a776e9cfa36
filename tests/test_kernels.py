"""Every op: generated C == integer reference, byte for byte, on random and extreme inputs.

Graphs are built already quantised, with int8 weights over the full range (including -128), random
per-channel shifts (right and left), biases, and fused clamps, so the kernels see cases the quantiser
rarely produces.
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import (
    act,
    assert_c_equals_reference,
    build_host,
    edge_inputs,
    finish,
    safe_bias,
    weighted_graph,
)

from codegen.fixed import QFormat
from codegen.ir import Graph, Node, Op
from codegen.passes.quantize import avg_params

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
    _quantize_add(g, node, QFormat(8, fy))
    g = finish(g)
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, shape))


def test_clamp_and_reshape(rng, tmp_path):
    tensors = {"x": act("x", (2, 3, 4), 2), "r": act("r", (2, 3, 4), 2), "y": act("y", (24,), 2)}
    g = Graph(tensors, [Node("relu6", Op.RELU, ["x"], ["r"], {"lo": 0.0, "hi": 6.0, "act_min": 0, "act_max": 24}),
                        Node("flat", Op.RESHAPE, ["r"], ["y"], {"shape": (24,)})], ["x"], ["y"], source="test")
    g = finish(g)
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (2, 3, 4)))


# ------------------------------------------------------------------ ops added for the MLPerf Tiny models


def _const_input_graph(op: Op, shape, out_shape, table: np.ndarray | None, fout: int = 7, **attrs) -> Graph:
    from qgen_testing import const

    tensors = {"x": act("x", shape, 3), "y": act("y", out_shape, fout)}
    inputs = ["x"]
    if table is not None:
        bits = 16 if table.dtype == np.int16 else 8
        tensors["t"] = const("t", table, bits, 14 if bits == 16 else fout)
        inputs.append("t")
    return Graph(tensors, [Node("layer", op, inputs, ["y"], attrs)], ["x"], ["y"], source="test")


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (4, 1, 5, 1), (0, 3, 2, 0)])
def test_pad(pad, rng, tmp_path):
    shape = (5, 3, 7)
    out = (5 + pad[0] + pad[2], 3 + pad[1] + pad[3], 7)
    g = finish(_unary_graph(Op.PAD, shape, out, padding=pad))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, shape))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concat_requantises_each_input(axis, rng, tmp_path):
    shape = [3, 4, 5]
    shape_b = list(shape)
    shape_b[axis] = 2
    out = list(shape)
    out[axis] += 2
    tensors = {"x": act("x", shape, 3), "b": act("b", shape_b, 3), "y": act("y", out, 2)}
    # b comes from x through a pad/clamp-free path: a second input made by a strided pool is simpler —
    # use a clamp of a pad-free copy: build b as maxpool of x with a window that yields shape_b
    k = [1, 1]
    if axis < 2:
        k[axis] = shape[axis] - 1
    nodes = [Node("pool", Op.MAXPOOL2D, ["x"], ["b0"], {"kernel": tuple(k), "stride": (1, 1), "padding": (0, 0, 0, 0)})]
    tensors["b0"] = act("b0", [shape[0] - k[0] + 1, shape[1] - k[1] + 1, shape[2]], 3)
    if axis == 2:  # channel concat: b must have 2 channels -> use a 1x1 conv
        w = rng.integers(-128, 128, (2, 1, 1, 5))
        from qgen_testing import const

        tensors["w"], tensors["bias"] = const("w", w, 8, (3, 3)), const("bias", np.zeros(2, np.int64), 32, (6, 6))
        nodes = [Node("conv", Op.CONV2D, ["x", "w", "bias"], ["b"], {"stride": (1, 1), "padding": (0, 0, 0, 0),
                                                                     "shift": [4, 5], "act_min": -128, "act_max": 127})]
    else:
        tensors["b"] = tensors.pop("b0")
        tensors["b"].name = "b"
        nodes[0].outputs = ["b"]
    nodes.append(Node("cat", Op.CONCAT, ["x", "b"], ["y"], {"axis": axis, "shifts": [2, -3]}))
    g = finish(Graph(tensors, nodes, ["x"], ["y"], source="test"))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, shape))


@pytest.mark.parametrize("fin", [0, 3, 5, 7])
def test_softmax(fin, rng, tmp_path):
    from codegen.passes.quantize import softmax_exp_table

    shape = (2, 3, 9)
    g = _const_input_graph(Op.SOFTMAX, shape, shape, softmax_exp_table(fin).astype(np.int16))
    g.tensors["x"].qformat = QFormat(8, fin)
    g = finish(g)
    x = edge_inputs(rng, shape)
    host = build_host(g, tmp_path)
    assert_c_equals_reference(g, host, x)
    probs = host.run(x.reshape(len(x), -1)).reshape(len(x), -1, 9).astype(np.float64) / 128
    assert np.all(np.abs(probs.sum(axis=-1) - 1.0) < 0.06)  # rows still sum to ~1


def test_lut(rng, tmp_path):
    table = rng.integers(-128, 128, 256)
    table[0], table[255] = -128, 127
    g = finish(_const_input_graph(Op.LUT, (4, 5, 3), (4, 5, 3), table.astype(np.int8), fn="sigmoid"))
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (4, 5, 3)))


def test_in_place_elementwise_ops_share_memory(rng, tmp_path):
    """conv -> clamp -> lut -> conv: the clamp and lut overwrite their dying inputs."""
    from qgen_testing import const

    w = rng.integers(-128, 128, (4, 3, 3, 4))
    tensors = {"x": act("x", (6, 6, 4), 3), "a": act("a", (6, 6, 4), 3), "r": act("r", (6, 6, 4), 3),
               "l": act("l", (6, 6, 4), 3), "y": act("y", (6, 6, 4), 3),
               "w": const("w", w, 8, (3,) * 4), "b": const("b", np.zeros(4, np.int64), 32, (6,) * 4),
               "w2": const("w2", w, 8, (3,) * 4), "b2": const("b2", np.zeros(4, np.int64), 32, (6,) * 4),
               "t": const("t", rng.integers(-128, 128, 256), 8, 3)}
    conv = {"stride": (1, 1), "padding": (1, 1, 1, 1), "shift": [9] * 4, "act_min": -128, "act_max": 127}
    nodes = [Node("c1", Op.CONV2D, ["x", "w", "b"], ["a"], dict(conv)),
             Node("relu", Op.RELU, ["a"], ["r"], {"lo": 0.0, "hi": None, "act_min": 0, "act_max": 100}),
             Node("lut", Op.LUT, ["r", "t"], ["l"], {"fn": "tanh"}),
             Node("c2", Op.CONV2D, ["l", "w2", "b2"], ["y"], dict(conv))]
    g = finish(Graph(tensors, nodes, ["x"], ["y"], source="test"))
    from codegen.kernel_abi import scratch_bytes

    assert g.memory["a"] == g.memory["r"] == g.memory["l"]
    scratch = max(scratch_bytes(g, n) for n in g.nodes)
    assert g.arena_size == 6 * 6 * 4 + (scratch + 3) // 4 * 4  # one activation buffer (+ kernel scratch)
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, (6, 6, 4)))
