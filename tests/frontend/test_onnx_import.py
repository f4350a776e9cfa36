"""ONNX front end: same IR (hence the same C) as the PyTorch front end, ONNX layouts, clear errors."""
from __future__ import annotations

import contextlib
import io
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package (pip install 'qgen[onnx]')")
from models import GlobalPoolNet, PadCatNet, make_residual, randomize_bn
from onnx import TensorProto, helper, numpy_helper

from codegen import compile as qcompile
from codegen.errors import UserError
from codegen.frontend.onnx_import import from_onnx_file, from_onnx_model
from codegen.reference import run_float, to_qgen_layout


class FlatResNet(nn.Module):
    """conv-bn-relu, depthwise + relu6 residual, max pool, nn.Flatten, linear (flatten -> Gemm permutation)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.r6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = self.r6(self.c2(y)) + y
        return self.fc(self.flat(self.pool(y)))


def export(model, x, path, **kwargs) -> str:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), **kwargs)
    return str(path)


def both_routes(model, x, path, **export_kwargs):
    calib = np.random.default_rng(0).standard_normal((24, *x.shape[1:])).astype(np.float32)
    direct = qcompile(model, x, calib, prefix="m", command="qgen compile m")
    via_onnx = qcompile(export(model, x, path, **export_kwargs), None, calib, prefix="m", command="qgen compile m")
    return direct, via_onnx


# Byte-identical, every generated file but qgen_graph.json/.npz: those also record internal tensor
# names, which come from the exporter's decomposed FX graph (e.g. %view instead of %flatten).
# The banner's "Source model" is identical too: the front end reads the PyTorch class name from the
# exporter's metadata. BatchNorm after a conv is kept (optimize=False) so that qgen folds it in float64
# exactly like the direct route; onnxscript's optimizer would fold it in float32.
@pytest.mark.parametrize("make, shape, optimize", [
    (lambda: GlobalPoolNet(), (1, 2, 9, 9), True),
    (lambda: PadCatNet(), (1, 1, 49, 10), True),
    (lambda: randomize_bn(FlatResNet()), (1, 3, 8, 8), False),
], ids=["globalpool", "padcat_luts", "residual_bn_flatten"])
def test_pytorch_and_onnx_give_byte_identical_c(make, shape, optimize, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx's default (dynamo) exporter needs onnxscript")
    torch.manual_seed(0)
    model = make().eval()
    direct, via_onnx = both_routes(model, torch.randn(shape), tmp_path / "m.onnx", dynamo=True, optimize=optimize)
    assert via_onnx.graph.source == direct.graph.source == type(model).__name__
    compared = [f for f in direct.files if not f.startswith("qgen_graph.")]
    assert sorted(direct.files) == sorted(via_onnx.files) and len(compared) > 10
    for name in compared:
        assert direct.files[name] == via_onnx.files[name], f"{name} differs:\n{direct.graph}\n{via_onnx.graph}"


def _code_only(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)


def test_torchscript_exporter_opset13_same_code_and_data(tmp_path):
    """The legacy exporter names nodes '/c1/Conv' and has no source lines: the comments differ, the
    code and every weight do not; and the C is bit-exact with the reference."""
    model, x = make_residual()
    direct, via_onnx = both_routes(model, x, tmp_path / "res13.onnx", dynamo=False, opset_version=13,
                                   do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    assert via_onnx.graph.source == "res13.onnx"
    assert [n.name for n in via_onnx.graph.nodes][:2] == ["c1", "c2"]
    for name in direct.files:
        if name.endswith((".c", ".h")):
            assert _code_only(direct.files[name]) == _code_only(via_onnx.files[name]), name
    calib = np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32)
    assert via_onnx.verify(np.concatenate([calib, 10 * calib])).exact


# ---------------------------------------------------------------- hand-built ONNX: layouts, ops


def _model(nodes, inits, in_shape, out_shape, opset=17):
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_layouts_match_onnx_semantics():
    """Asymmetric Conv pads [t,l,b,r], Clip min/max inputs, Pad, depthwise, AveragePool, Flatten -> Gemm
    with transB=0 and alpha/beta: qgen's float IR equals ONNX's own reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((4, 2, 3, 2)), "b1": rng.standard_normal(4),
             "wd": rng.standard_normal((4, 1, 3, 3)), "bd": rng.standard_normal(4),
             "lo": np.array(0.0), "hi": np.array(1.5), "g": rng.standard_normal((4 * 3 * 3, 3)),
             "c": rng.standard_normal(3), "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1])}
    inits_int = {"pads"}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv_a", pads=[1, 0, 2, 1], strides=[2, 1]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["b"], name="clip"),
        helper.make_node("Pad", ["b", "pads"], ["bp"], name="pad", mode="constant"),
        helper.make_node("Conv", ["bp", "wd", "bd"], ["d"], name="dw", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["d"], ["p"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "g", "c"], ["z"], name="fc", alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["z"], ["y"], name="sm", axis=1),
    ]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 9, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(v.astype(np.int64 if k in inits_int else np.float32), k)
                               for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx_model(model)
    assert [n.op.value for n in g.nodes] == ["conv2d", "relu", "pad", "depthwise_conv2d", "avgpool2d", "reshape",
                                             "linear", "softmax"]
    x = rng.standard_normal((3, 2, 9, 6)).astype(np.float32)
    expect = np.concatenate([ReferenceEvaluator(model).run(None, {"x": x[i:i + 1]})[0] for i in range(3)])
    got = run_float(g, to_qgen_layout(g, x.astype(np.float64)))[g.outputs[0]]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)


def test_unsupported_op_names_node_op_and_opset(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act0"), helper.make_node("Cos", ["r"], ["y"], name="my_cos")]
    path = tmp_path / "cos.onnx"
    onnx.save(_model(nodes, {}, [1, 4], [1, 4], opset=17), str(path))
    with pytest.raises(UserError, match=r"ONNX node 'my_cos' \(Cos, opset 17\) is not supported.*Conv"):
        from_onnx_file(str(path))


@pytest.mark.parametrize("opset", [11, 22])
def test_opset_outside_13_to_21_is_refused(opset):
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    with pytest.raises(UserError, match=f"opset {opset}; qgen reads opset 13-21"):
        from_onnx_model(_model(nodes, {}, [1, 4], [1, 4], opset=opset))


def test_unsupported_attribute_and_constant_add_errors():
    w = np.ones((6, 2, 3, 3))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="grp", group=3)  # 3 groups of 4 input channels?
    with pytest.raises(UserError, match=r"ONNX node 'grp' \(Conv, opset 17\): group=3 with 4 input and 6 output"):
        from_onnx_model(_model([conv], {"w": w}, [1, 4, 8, 8], [1, 6, 6, 6]))
    add = helper.make_node("Add", ["x", "k"], ["y"], name="bias_add")
    with pytest.raises(UserError, match=r"'bias_add' .*add of an activation of shape \[1, 4\] and a constant of "
                                        r"shape \[3, 4\]"):
        from_onnx_model(_model([add], {"k": np.ones((3, 4))}, [1, 4], [3, 4]))


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        from_onnx_file(str(tmp_path / "none.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00not a model")
    with pytest.raises(UserError, match="cannot read .*bad.onnx"):
        from_onnx_file(str(bad))
