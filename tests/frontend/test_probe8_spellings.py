"""Spellings outside MCU models use (issue 16, probe8: torchvision, Edge Impulse ports, tiny-YOLO heads, anomaly
autoencoders) that lower to existing ops (codegen/frontend/torch_spellings.py): edge padding modes, strided
slices (space-to-depth), pixel (un)shuffle, max/min with a uniform constant (ones_like / zeros_like),
Dropout2d / AlphaDropout, ChannelShuffle, stack, rank-5 cat, x ** 2, MaxPool2d(return_indices) values, RReLU /
Threshold and the table activations (Mish, SELU, CELU, LogSigmoid, Hard/Softshrink, abs, Softsign); half / double /
TorchScript modules; and clear refusals (two inputs, F.normalize, a squeezed-away batch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import codegen
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op
from codegen.reference import run_float, to_qgen_layout, to_torch_layout


def _float_matches(model, x):
    """The float IR computes what PyTorch computes on x (first output)."""
    model.eval()
    g = from_module(model, x[:1])
    got = run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]]
    got = to_torch_layout(got, g.io_layout.get(g.outputs[0]))
    with torch.no_grad():
        want = model(x.to(next(model.parameters()).dtype)).float().numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    return g


class Fn(nn.Module):
    """conv -> fn -> conv: the op sees signed activations; the model's output is a conv of it."""

    def __init__(self, fn, cin=3, mid=4, one_d=False):
        super().__init__()
        conv = nn.Conv1d if one_d else nn.Conv2d
        self.a, self.b, self.fn = conv(cin, mid, 3, padding=1), conv(mid, 3, 1), fn

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


PAD_SPELLINGS = {
    "conv reflect": lambda: Fn(nn.Conv2d(4, 4, 3, padding=2, padding_mode="reflect")),
    "conv replicate": lambda: Fn(nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate")),
    "conv circular": lambda: Fn(nn.Conv2d(4, 4, 3, padding=(1, 2), padding_mode="circular")),
    "F.pad reflect (1, 2, 0, 3)": lambda: Fn(lambda x: F.pad(x, (1, 2, 0, 3), mode="reflect")),
    "nn.ReflectionPad2d": lambda: Fn(nn.ReflectionPad2d((2, 1, 1, 0))),
    "nn.ReplicationPad2d": lambda: Fn(nn.ReplicationPad2d(2)),
    "nn.CircularPad2d": lambda: Fn(nn.CircularPad2d((0, 1, 2, 0))),
    "Conv1d reflect": lambda: Fn(nn.Conv1d(4, 4, 5, padding=2, padding_mode="reflect"), one_d=True),
}


@pytest.mark.parametrize("name", PAD_SPELLINGS)
def test_edge_padding_modes_are_slices_and_a_concat(name):
    torch.manual_seed(0)
    model = PAD_SPELLINGS[name]()
    x = torch.randn(2, 3, 7) if "1d" in name else torch.randn(2, 3, 6, 7)
    g = _float_matches(model, x)
    assert Op.CONCAT in {n.op for n in g.nodes} and Op.PAD not in {n.op for n in g.nodes}


@pytest.mark.parametrize("pad", [(-1, -1, -2, -1), (-1, 2, 1, -1), (0, 0, -3, 0)])
def test_negative_padding_crops(pad):
    torch.manual_seed(5)
    g = _float_matches(Fn(nn.ZeroPad2d(pad)), torch.randn(2, 3, 7, 6))
    assert Op.SLICE in {n.op for n in g.nodes}


SPELLINGS = {
    "x[..., ::2, ::2] (Focus)": lambda x: torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2],
                                                    x[..., 1::2, 1::2]], 1),
    "x[:, :, 1:6:3]": lambda x: x[:, :, 1:6:3],
    "nn.PixelShuffle": nn.PixelShuffle(2),
    "F.pixel_unshuffle": lambda x: F.pixel_unshuffle(x, 2),
    "torch.max(x, zeros_like)": lambda x: torch.max(x, torch.zeros_like(x)),
    "torch.minimum(ones_like, x)": lambda x: torch.minimum(torch.ones_like(x), x),
    "torch.min(x, full_like)": lambda x: torch.min(x, torch.full_like(x, 0.25)),
    "nn.Dropout2d": nn.Dropout2d(0.3),
    "nn.AlphaDropout": nn.AlphaDropout(0.3),
    "nn.FeatureAlphaDropout": nn.FeatureAlphaDropout(0.3),
    "nn.RReLU": nn.RReLU(0.1, 0.3),
    "nn.Threshold(0.1, -2)": nn.Threshold(0.1, -2.0),
    "nn.Threshold(0, 0)": nn.Threshold(0.0, 0.0),
    "nn.ChannelShuffle(2)": nn.ChannelShuffle(2),
    "torch.stack(rows, 2)": lambda x: torch.stack([x[:, :, 0], F.relu(x[:, :, 3])], 2),
    "(x * 2) ** 2": lambda x: (x * 2) ** 2,
    "MaxPool2d(return_indices)[0]": lambda x: nn.MaxPool2d(2, return_indices=True)(x)[0],
}


@pytest.mark.parametrize("name", SPELLINGS)
def test_spellings_lower_to_existing_ops(name):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 6)
    model = Fn(SPELLINGS[name], mid=4 if "Shuffle" not in name else 8)
    if "unshuffle" in name:
        model.b = nn.Conv2d(16, 3, 1)
    if "PixelShuffle" in name:
        model.b = nn.Conv2d(2, 3, 1)
    if "Focus" in name:
        model.b = nn.Conv2d(16, 3, 1)
    _float_matches(model, x)


TABLES = {"nn.Mish": (nn.Mish(), "mish"), "nn.SELU": (nn.SELU(), "selu"), "nn.CELU(0.5)": (nn.CELU(0.5), "celu"),
          "nn.LogSigmoid": (nn.LogSigmoid(), "log_sigmoid"), "nn.Hardshrink": (nn.Hardshrink(0.3), "hardshrink"),
          "nn.Softshrink": (nn.Softshrink(0.3), "softshrink"), "torch.abs": (torch.abs, "abs"),
          "nn.Threshold(0.1, -2)": (nn.Threshold(0.1, -2.0), "threshold"), "nn.Softsign": (nn.Softsign(), "softsign"),
          "F.softsign": (F.softsign, "softsign")}


@pytest.mark.parametrize("name", TABLES)
def test_activations_are_tables(name):
    torch.manual_seed(2)
    fn, table = TABLES[name]
    g = _float_matches(Fn(fn), torch.randn(2, 3, 5, 5))
    assert [n.attrs["fn"] for n in g.nodes if n.op is Op.LUT] == [table]


class YoloHead(nn.Module):
    """YOLOv5's Detect head with the box decode in the model: a rank-5 view + permute, sigmoid, slices of the last
    dim, (y * 2) ** 2, and a cat of rank-5 parts."""

    def __init__(self):
        super().__init__()
        self.c, self.m = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 3 * 7, 1)

    def forward(self, x):
        x = self.m(F.silu(self.c(x)))
        bs, _, ny, nx = x.shape
        y = x.view(bs, 3, 7, ny, nx).permute(0, 1, 3, 4, 2).contiguous().sigmoid()
        xy = y[..., 0:2] * 2 - 0.5
        wh = (y[..., 2:4] * 2) ** 2
        return torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, 7)


def test_yolo_head_with_a_rank5_cat():
    torch.manual_seed(6)
    g = _float_matches(YoloHead(), torch.randn(2, 3, 8, 10))
    assert [n for n in g.nodes if n.op is Op.CONCAT]


class Detector(nn.Module):
    """A tiny-YOLO-ish net in the spellings above: Focus space-to-depth, reflect-padded conv, Mish, pixel shuffle
    back up, abs / SELU tables, max with zeros_like."""

    def __init__(self):
        super().__init__()
        self.focus = nn.Conv2d(12, 8, 3, padding=1, padding_mode="reflect")
        self.act = nn.Mish()
        self.up = nn.PixelShuffle(2)
        self.head = nn.Conv2d(2, 4, 3, padding=1, padding_mode="replicate")
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)
        x = self.up(self.act(self.focus(x)))
        x = F.selu(torch.abs(self.head(x)) - 1.0)
        return self.fc(torch.max(x, torch.zeros_like(x)).mean((2, 3)))


def test_detector_spellings_are_bit_exact_in_c():
    torch.manual_seed(3)
    model = Detector().eval()
    calib = np.random.default_rng(3).standard_normal((8, 3, 12, 12)).astype(np.float32)
    result = codegen.compile(model, torch.zeros(1, 3, 12, 12), calib, prefix="p8")
    assert result.verify(calib[:3]).exact
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    got = result.predict(calib)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.c(x)).mean((2, 3)))


@pytest.mark.parametrize("how", ["half", "double", "bfloat16", "jit.script", "jit.trace"])
def test_half_double_and_torchscript_modules_compile(how):
    torch.manual_seed(4)
    model = Small().eval()
    x = torch.randn(2, 3, 6, 6)
    if how in ("half", "double", "bfloat16"):
        model = {"half": model.half, "double": model.double, "bfloat16": model.bfloat16}[how]()
        _float_matches(model.float() if how == "bfloat16" else model, x)  # bfloat16 conv is not on every CPU
        model = {"half": model.half, "double": model.double, "bfloat16": model.bfloat16}[how]()
        from_module(model, x[:1])
        assert next(model.parameters()).dtype != torch.float32  # the caller's model is unchanged
        return
    scripted = torch.jit.script(model) if how == "jit.script" else torch.jit.trace(model, x[:1])
    g = from_module(scripted, x[:1])
    got = run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Linear(5, 4)

    def forward(self, img, meta):
        return self.a(img).mean((2, 3)) + self.b(meta)


class Normalized(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=1)


class Squeezed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.c(x), 1).squeeze()


class ChannelStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.c(x)[:, ::2]


class Stack5d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.c(x)
        return torch.stack([y, y.relu()], 1).mean(1)


class PadValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.p = nn.Conv2d(3, 4, 3), nn.ConstantPad2d(1, 0.5)

    def forward(self, x):
        return self.p(self.c(x))


class Unpool(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.p, self.u = nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

    def forward(self, x):
        return self.u(*self.p(self.c(x)))


@pytest.mark.parametrize("model, shape, match", [
    (TwoInputs(), (1, 3, 5, 5), r"TwoInputs.forward takes 2 inputs \(img, meta\); qgen compiles a model with one "
                                r"input tensor.*Wrap it"),
    (Normalized(), (1, 6), r"test_probe8_spellings.py:\d+.*L2 norm \(F.normalize.*division by constants only.*"
                           r"Return the un-normalised"),
    (Squeezed(), (1, 3, 5, 5), r"shape \[4\] \(the batch dim squeezed away\?.*torch.flatten\(x, 1\)"),
    (PadValue(), (1, 3, 5, 5), r"nn.ConstantPad2d 'p' .*value 0.5; qgen pads with zeros.*Pad with value=0, or pad "
                               r"x - value"),
    (Unpool(), (1, 3, 6, 6), r"nn.MaxPool2d 'p' .*uses the indices output.*values only"),
    (Stack5d(), (1, 3, 5, 5), r"torch.stack.*rank-5.*qgen's tensors have at most 4 dims"),
    (ChannelStep(), (1, 3, 5, 5), r"test_probe8_spellings.py:\d+.*step 2 along dim 1.*along H or W"),
])
def test_refusals_say_what_to_do(model, shape, match):
    with pytest.raises(UserError, match=match):
        from_module(model.eval(), torch.zeros(shape))


ONNX_TABLES = {"Mish": ({}, "mish", 18), "Selu": ({}, "selu", 17), "Celu": ({"alpha": 0.5}, "celu", 17),
               "Abs": ({}, "abs", 17), "Softsign": ({}, "softsign", 17),
               "ThresholdedRelu": ({"alpha": 0.3}, "threshold", 17),
               "Shrink": ({"lambd": 0.4}, "hardshrink", 17), "Shrink(bias=lambd)": ({"lambd": 0.4, "bias": 0.4},
                                                                                  "softshrink", 17)}


@pytest.mark.parametrize("name", ONNX_TABLES)
def test_onnx_activations_are_tables(name):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from codegen.frontend.onnx_import import from_onnx_model

    attrs, table, opset = ONNX_TABLES[name]
    node = helper.make_node(name.split("(")[0], ["x"], ["y"], name="act", **attrs)
    graph = helper.make_graph([node], "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    g = from_onnx_model(model)
    assert [n.attrs["fn"] for n in g.nodes if n.op is Op.LUT] == [table]
    x = np.random.default_rng(8).standard_normal((1, 3, 4, 5)).astype(np.float32) * 2
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.astype(np.float64)))[g.outputs[0]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, pads", [("reflect", [0, 0, 2, 1, 0, 0, 1, 2]), ("edge", [0, 0, 1, 0, 0, 0, 2, 1]),
                                        ("wrap", [0, 0, 0, 2, 0, 0, 1, 1])])
def test_onnx_pad_modes_are_slices_and_a_concat(mode, pads):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from codegen.frontend.onnx_import import from_onnx_model

    w = np.random.default_rng(9).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Pad", ["c", "pads"], ["y"], name="pad", mode=mode)]
    out = [1, 4, 5 + pads[2] + pads[6], 6 + pads[3] + pads[7]]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(pads), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    g = from_onnx_model(model)
    assert Op.CONCAT in {n.op for n in g.nodes} and Op.PAD not in {n.op for n in g.nodes}
    x = np.random.default_rng(10).standard_normal((1, 3, 5, 6)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.astype(np.float64)))[g.outputs[0]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("node_args", [
    ("Slice", {"starts": [1, 0], "ends": [5, 6], "axes": [2, 3], "steps": [2, 3]}),
    ("Pad", {"pads": [0, 0, -1, 2, 0, 0, 1, -2]}),
    ("Pad", {"pads": [0, 0, -2, -1, 0, 0, -1, -1]}),
])
def test_onnx_strided_slice_and_negative_pad(node_args):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from codegen.frontend.onnx_import import from_onnx_model

    op, inputs = node_args
    w = np.random.default_rng(11).standard_normal((4, 3, 3, 3)).astype(np.float32)
    consts = [numpy_helper.from_array(w, "w")] + [numpy_helper.from_array(np.array(v), k) for k, v in inputs.items()]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c", *inputs], ["y"], name="op")]
    x = np.random.default_rng(12).standard_normal((1, 3, 6, 7)).astype(np.float32)
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if op == "Slice":
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    else:  # the reference evaluator refuses negative pads: torch's F.pad crops the same way
        t, left, b, r = (inputs["pads"][i] for i in (2, 3, 6, 7))
        want = F.pad(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1), (left, r, t, b)).numpy()
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, list(want.shape)))
    g = from_onnx_model(model)
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.astype(np.float64)))[g.outputs[0]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
