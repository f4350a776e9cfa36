"""Negative tests of the graph verifier (codegen/ir.py `verify`, the op table's node checks, and
passes.run_pipeline naming the pass): one broken graph per rule, each asserting that the error names the
rule and the node, tensor or pass at fault."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from qgen_testing import finish, safe_bias, weighted_graph

from codegen.fixed import QFormat
from codegen.ir import Graph, Node, Op, Tensor, VerifyError, verify
from codegen.passes import run_pipeline


def f32(name, shape, data=None):
    return Tensor(name, tuple(shape), "float32", None, data)


def float_graph() -> Graph:
    """x(6,6,2) -> conv 'c1' (4 ch, pad 1) -> relu 'act' -> reshape 'flat' -> linear 'fc' -> y(3)."""
    rng = np.random.default_rng(0)
    t = {"x": f32("x", (6, 6, 2)), "w1": f32("w1", (4, 3, 3, 2), rng.standard_normal((4, 3, 3, 2))),
         "b1": f32("b1", (4,), np.zeros(4)), "h": f32("h", (6, 6, 4)), "r": f32("r", (6, 6, 4)),
         "f": f32("f", (144,)), "w2": f32("w2", (3, 144), rng.standard_normal((3, 144))),
         "b2": f32("b2", (3,), np.zeros(3)), "y": f32("y", (3,))}
    nodes = [Node("c1", Op.CONV2D, ["x", "w1", "b1"], ["h"], {"stride": (1, 1), "padding": (1, 1, 1, 1)}),
             Node("act", Op.RELU, ["h"], ["r"], {"lo": 0.0, "hi": None}),
             Node("flat", Op.RESHAPE, ["r"], ["f"], {"shape": (144,)}),
             Node("fc", Op.LINEAR, ["f", "w2", "b2"], ["y"], {})]
    return Graph(t, nodes, ["x"], ["y"], source="test")


def quantized_graph() -> Graph:
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (4, 8)).astype(np.int8)
    return finish(weighted_graph(Op.LINEAR, (8,), w, safe_bias(rng, w), 7))


def node(g: Graph, name: str) -> Node:
    return next(n for n in g.nodes if n.name == name)


def expect_error(g: Graph, *fragments: str, quantized: bool = False) -> str:
    with pytest.raises(VerifyError) as info:
        verify(g, quantized=quantized)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the verifier's message: {message}"
    return message


def test_valid_graphs_pass():
    verify(float_graph())
    verify(quantized_graph(), quantized=True)


def test_graph_input_without_a_tensor():
    g = float_graph()
    g.inputs = ["missing"]
    expect_error(g, "graph input %missing has no tensor")


def test_dangling_input_that_is_not_a_tensor():
    g = float_graph()
    node(g, "act").inputs = ["nowhere"]
    expect_error(g, "relu 'act'", "input %nowhere is not a tensor of the graph")


def test_input_used_before_it_is_produced():
    g = float_graph()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]  # relu reads %h before the conv writes it
    expect_error(g, "relu 'act'", "input %h is used before it is produced")


def test_two_producers_of_one_tensor():
    g = float_graph()
    node(g, "act").outputs = ["h"]  # relu writes the conv's output again
    g.tensors["h"].shape = (6, 6, 4)
    expect_error(g, "relu 'act'", "%h has more than one producer")


def test_a_node_writing_a_constant():
    g = float_graph()
    node(g, "act").outputs = ["b1"]
    expect_error(g, "relu 'act'", "%b1 has more than one producer")


def test_a_node_writing_the_graph_input():
    g = float_graph()
    node(g, "act").outputs = ["x"]
    expect_error(g, "relu 'act'", "%x has more than one producer")


def test_output_shape_against_the_shape_rule():
    g = float_graph()
    g.tensors["r"].shape = (6, 6, 5)
    g.tensors["f"].shape = (144,)
    expect_error(g, "relu 'act'", "output shape (6, 6, 5), shape rule says (6, 6, 4)")


def test_conv_weight_channels_must_match_the_input():
    g = float_graph()
    g.tensors["x"].shape = (6, 6, 3)
    expect_error(g, "conv2d 'c1'", "weight Cin 2 != input channels 3")


def test_conv_needs_an_image_input_and_a_4d_weight():
    g = float_graph()
    g.tensors["x"].shape = (36, 2)
    expect_error(g, "conv2d 'c1'", "expects (H,W,C) input and 4-D weight")


def test_depthwise_output_channels_must_be_a_multiple_of_the_input():
    g = float_graph()
    c1 = node(g, "c1")
    c1.op = Op.DEPTHWISE_CONV2D
    g.tensors["w1"] = f32("w1", (3, 3, 3, 1), np.ones((3, 3, 3, 1)))
    expect_error(g, "depthwise_conv2d 'c1'", "depthwise Cout 3 not a multiple of C 2")


def test_linear_input_must_match_the_weight():
    g = float_graph()
    g.tensors["w2"] = f32("w2", (3, 100), np.ones((3, 100)))
    expect_error(g, "linear 'fc'", "input (144,) does not match weight (3, 100)")


def test_reshape_must_keep_the_size():
    g = float_graph()
    node(g, "flat").attrs["shape"] = (140,)
    expect_error(g, "reshape 'flat'", "changes size")


def test_add_of_different_shapes():
    g = float_graph()
    g.tensors["s"] = f32("s", (6, 6, 4))
    g.nodes.insert(2, Node("sum", Op.ADD, ["r", "x"], ["s"], {}))
    expect_error(g, "add 'sum'", "add of shapes (6, 6, 4) and (6, 6, 2)")


def test_concat_of_mismatched_shapes():
    g = float_graph()
    g.tensors["x2"] = f32("x2", (5, 6, 2))
    g.inputs.append("x2")
    g.tensors["cat"] = f32("cat", (6, 6, 4))
    g.nodes.insert(0, Node("join", Op.CONCAT, ["x", "x2"], ["cat"], {"axis": 2}))
    expect_error(g, "concat 'join'", "concat on axis 2 of mismatched shapes")


def test_graph_output_never_produced():
    g = float_graph()
    g.outputs = ["ghost"]
    expect_error(g, "graph output %ghost is never produced")


def test_float_only_op_left_after_quantisation():
    g = quantized_graph()
    x = g.tensors["x"]
    g.tensors["bn_out"] = Tensor("bn_out", x.shape, "int8", QFormat(8, 4))
    for name in ("scale", "shift_c"):
        g.tensors[name] = Tensor(name, x.shape, "int8", QFormat(8, 0), np.ones(x.shape, np.int8))
    layer = g.nodes[0]
    layer.inputs[0] = "bn_out"
    g.nodes.insert(0, Node("bn", Op.BATCH_NORM, ["x", "scale", "shift_c"], ["bn_out"], {}))
    verify(g)  # a valid float graph
    expect_error(g, "batch_norm 'bn': batch_norm left after folding", quantized=True)


def test_missing_qformat_after_quantisation():
    g = quantized_graph()
    g.tensors["y"].qformat = None
    expect_error(g, "linear 'layer'", "%y is not quantised", quantized=True)


def test_float_dtype_after_quantisation():
    g = quantized_graph()
    g.tensors["x"].dtype = "float32"
    expect_error(g, "linear 'layer'", "%x is not quantised (float32", quantized=True)


def test_constant_outside_its_qformat():
    g = quantized_graph()
    w = g.tensors["w"]
    w.qformat = QFormat(4, w.qformat.frac)  # int8 data no longer fits 4 bits
    expect_error(g, "linear 'layer'", "constant %w exceeds", quantized=True)


def test_float_graph_is_not_checked_for_qformats():
    verify(float_graph(), quantized=False)  # the quantised rules apply only after quantize


def test_pipeline_names_the_pass_that_broke_the_graph():
    def breaks_shapes(g: Graph) -> Graph:
        g = copy.deepcopy(g)
        g.tensors["r"].shape = (1, 2, 3)
        return g

    with pytest.raises(VerifyError) as info:
        run_pipeline(float_graph(), [("identity", lambda g: g), ("breaks_shapes", breaks_shapes)])
    message = str(info.value)
    assert "IR invalid after pass 'breaks_shapes' (passes run: identity, breaks_shapes)" in message
    assert "relu 'act'" in message and "shape rule says (6, 6, 4)" in message


def test_pipeline_checks_quantised_rules_only_from_quantize_on():
    def drop_qformat(g: Graph) -> Graph:
        g = copy.deepcopy(g)
        g.tensors["y"].qformat = None
        return g

    q = quantized_graph()
    run_pipeline(copy.deepcopy(q), [("before", drop_qformat)])  # not yet quantised: accepted
    with pytest.raises(VerifyError, match=r"after pass 'after'.*%y is not quantised"):
        run_pipeline(q, [("quantize", lambda g: g), ("after", drop_qformat)])
