"""One op, many spellings: the in-place (`x.relu_()`, `nn.Hardswish(inplace=True)`, `nn.Dropout(inplace=True)`,
`x.add_(y)`, `torch.sigmoid_`...), functional (`F.*`), method and module spellings of every op qgen supports
lower to the same IR op, so the generated model C and the IR printout are byte-identical across spellings,
and the C is bit-exact with the integer reference (one host build per op: the C is the same for all).

The normalisation lives in one place, codegen/frontend/torch_export.py `_functional_of`: an in-place aten
overload `aten.X_.Y` lowers through the handler of its functional `aten.X.Y`.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from qgen_testing import assert_c_equals_reference, build_host

import codegen

# op -> {spelling: fn(model, x, input) -> y}. The model holds every module a spelling may use (same seed,
# same weights); x is the output of a 3x3 conv of the input, so the op sees signed activations.
SPELLINGS = {
    "relu": {
        "nn.ReLU": lambda m, x, i: m.act(x),
        "nn.ReLU(inplace)": lambda m, x, i: m.act(x),
        "F.relu": lambda m, x, i: F.relu(x),
        "F.relu(inplace)": lambda m, x, i: F.relu(x, inplace=True),
        "F.relu_": lambda m, x, i: F.relu_(x),
        "torch.relu": lambda m, x, i: torch.relu(x),
        "torch.relu_": lambda m, x, i: torch.relu_(x),
        "x.relu()": lambda m, x, i: x.relu(),
        "x.relu_()": lambda m, x, i: x.relu_(),
        "x.clamp(min=0)": lambda m, x, i: x.clamp(min=0),
        "x.clamp_(min=0)": lambda m, x, i: x.clamp_(min=0),
        "torch.clamp_min": lambda m, x, i: torch.clamp_min(x, 0),
        "x.clamp_min_()": lambda m, x, i: x.clamp_min_(0),
    },
    "relu6": {
        "nn.ReLU6": lambda m, x, i: m.act(x),
        "nn.ReLU6(inplace)": lambda m, x, i: m.act(x),
        "F.relu6": lambda m, x, i: F.relu6(x),
        "F.relu6(inplace)": lambda m, x, i: F.relu6(x, inplace=True),
        "nn.Hardtanh(0, 6, inplace)": lambda m, x, i: m.act(x),
        "F.hardtanh(0, 6)": lambda m, x, i: F.hardtanh(x, 0.0, 6.0),
        "F.hardtanh_(0, 6)": lambda m, x, i: F.hardtanh_(x, 0.0, 6.0),
        "torch.clamp(0, 6)": lambda m, x, i: torch.clamp(x, 0, 6),
        "torch.clamp_(0, 6)": lambda m, x, i: torch.clamp_(x, 0, 6),
        "x.clamp(min=0, max=6)": lambda m, x, i: x.clamp(min=0, max=6),
        "x.clamp_(0, 6)": lambda m, x, i: x.clamp_(0, 6),
    },
    "hardswish": {
        "nn.Hardswish": lambda m, x, i: m.act(x),
        "nn.Hardswish(inplace)": lambda m, x, i: m.act(x),
        "F.hardswish": lambda m, x, i: F.hardswish(x),
        "F.hardswish(inplace)": lambda m, x, i: F.hardswish(x, inplace=True),
    },
    "hardsigmoid": {
        "nn.Hardsigmoid": lambda m, x, i: m.act(x),
        "nn.Hardsigmoid(inplace)": lambda m, x, i: m.act(x),
        "F.hardsigmoid": lambda m, x, i: F.hardsigmoid(x),
        "F.hardsigmoid(inplace)": lambda m, x, i: F.hardsigmoid(x, inplace=True),
    },
    "sigmoid": {
        "nn.Sigmoid": lambda m, x, i: m.act(x),
        "torch.sigmoid": lambda m, x, i: torch.sigmoid(x),
        "F.sigmoid": lambda m, x, i: F.sigmoid(x),
        "x.sigmoid()": lambda m, x, i: x.sigmoid(),
        "x.sigmoid_()": lambda m, x, i: x.sigmoid_(),
        "torch.sigmoid_": lambda m, x, i: torch.sigmoid_(x),
    },
    "tanh": {
        "nn.Tanh": lambda m, x, i: m.act(x),
        "torch.tanh": lambda m, x, i: torch.tanh(x),
        "F.tanh": lambda m, x, i: F.tanh(x),
        "x.tanh()": lambda m, x, i: x.tanh(),
        "x.tanh_()": lambda m, x, i: x.tanh_(),
        "torch.tanh_": lambda m, x, i: torch.tanh_(x),
    },
    "silu": {
        "nn.SiLU": lambda m, x, i: m.act(x),
        "nn.SiLU(inplace)": lambda m, x, i: m.act(x),
        "F.silu": lambda m, x, i: F.silu(x),
        "F.silu(inplace)": lambda m, x, i: F.silu(x, inplace=True),
    },
    "leaky_relu": {
        "nn.LeakyReLU": lambda m, x, i: m.act(x),
        "nn.LeakyReLU(inplace)": lambda m, x, i: m.act(x),
        "F.leaky_relu": lambda m, x, i: F.leaky_relu(x, 0.1),
        "F.leaky_relu(inplace)": lambda m, x, i: F.leaky_relu(x, 0.1, inplace=True),
        "F.leaky_relu_": lambda m, x, i: F.leaky_relu_(x, 0.1),
    },
    "elu": {
        "nn.ELU": lambda m, x, i: m.act(x),
        "nn.ELU(inplace)": lambda m, x, i: m.act(x),
        "F.elu": lambda m, x, i: F.elu(x),
        "F.elu(inplace)": lambda m, x, i: F.elu(x, inplace=True),
        "F.elu_": lambda m, x, i: F.elu_(x),
    },
    "gelu": {
        "nn.GELU": lambda m, x, i: m.act(x),
        "F.gelu": lambda m, x, i: F.gelu(x),
    },
    "dropout": {  # eval-mode dropout is the identity: the same C as no dropout at all
        "none": lambda m, x, i: x,
        "nn.Dropout": lambda m, x, i: m.act(x),
        "nn.Dropout(inplace)": lambda m, x, i: m.act(x),
        "F.dropout(training=False)": lambda m, x, i: F.dropout(x, 0.5, training=False),
        "F.dropout(inplace)": lambda m, x, i: F.dropout(x, 0.5, False, True),
    },
    "add": {  # the second operand is a second conv of the input (a residual add)
        "a + b": lambda m, x, i: x + m.conv2(i),
        "torch.add": lambda m, x, i: torch.add(x, m.conv2(i)),
        "a.add(b)": lambda m, x, i: x.add(m.conv2(i)),
        "a.add_(b)": lambda m, x, i: x.add_(m.conv2(i)),
        "a += b": lambda m, x, i: _iadd(x, m.conv2(i)),
    },
    "maxpool": {
        "nn.MaxPool2d": lambda m, x, i: m.act(x),
        "F.max_pool2d": lambda m, x, i: F.max_pool2d(x, 2),
    },
    "avgpool": {
        "nn.AvgPool2d": lambda m, x, i: m.act(x),
        "F.avg_pool2d": lambda m, x, i: F.avg_pool2d(x, 2),
    },
    "pad": {
        "F.pad": lambda m, x, i: F.pad(x, (1, 1, 1, 1)),
        "nn.ZeroPad2d": lambda m, x, i: m.act(x),
        "nn.ConstantPad2d(0)": lambda m, x, i: m.act(x),
    },
    "cat": {
        "torch.cat": lambda m, x, i: torch.cat([x, m.conv2(i)], 1),
        "torch.concat": lambda m, x, i: torch.concat([x, m.conv2(i)], 1),
        "torch.concatenate": lambda m, x, i: torch.concatenate([x, m.conv2(i)], 1),
    },
    "conv": {
        "nn.Conv2d": lambda m, x, i: m.conv3(x),
        "F.conv2d": lambda m, x, i: F.conv2d(x, m.conv3.weight, m.conv3.bias, padding=1),
    },
    "batch_norm": {
        "nn.BatchNorm2d": lambda m, x, i: m.bn(x),
        "F.batch_norm": lambda m, x, i: F.batch_norm(x, m.bn.running_mean, m.bn.running_var, m.bn.weight, m.bn.bias,
                                                  False, 0.1, m.bn.eps),
    },
    "mul": {  # two activations (the second a second conv of the input)
        "a * b": lambda m, x, i: x * m.conv2(i),
        "torch.mul": lambda m, x, i: torch.mul(x, m.conv2(i)),
        "a.mul(b)": lambda m, x, i: x.mul(m.conv2(i)),
        "a.mul_(b)": lambda m, x, i: x.mul_(m.conv2(i)),
        "a *= b": lambda m, x, i: _imul(x, m.conv2(i)),
    },
    "sub": {
        "a - b": lambda m, x, i: x - m.conv2(i),
        "torch.sub": lambda m, x, i: torch.sub(x, m.conv2(i)),
        "a.sub(b)": lambda m, x, i: x.sub(m.conv2(i)),
        "a.sub_(b)": lambda m, x, i: x.sub_(m.conv2(i)),
    },
    "maximum": {
        "torch.maximum": lambda m, x, i: torch.maximum(x, m.conv2(i)),
        "torch.max(a, b)": lambda m, x, i: torch.max(x, m.conv2(i)),
        "a.maximum(b)": lambda m, x, i: x.maximum(m.conv2(i)),
    },
    "scale": {  # multiply by a constant
        "x * 0.5": lambda m, x, i: x * 0.5,
        "x / 2": lambda m, x, i: x / 2,
        "torch.mul(x, 0.5)": lambda m, x, i: torch.mul(x, 0.5),
        "x.mul_(0.5)": lambda m, x, i: x.mul_(0.5),
        "x.div_(2)": lambda m, x, i: x.div_(2),
    },
    "prelu": {
        "nn.PReLU": lambda m, x, i: m.prelu(x),
        "F.prelu": lambda m, x, i: F.prelu(x, m.prelu.weight),
    },
    "grouped_conv": {
        "nn.Conv2d(groups=2)": lambda m, x, i: m.gconv(x),
        "F.conv2d(groups=2)": lambda m, x, i: F.conv2d(x, m.gconv.weight, m.gconv.bias, padding=2, dilation=2,
                                                     groups=2),
    },
    "conv_transpose": {
        "nn.ConvTranspose2d": lambda m, x, i: m.up(x),
        "F.conv_transpose2d": lambda m, x, i: F.conv_transpose2d(x, m.up.weight, m.up.bias, stride=2),
    },
    "upsample": {
        "nn.Upsample": lambda m, x, i: m.act(x),
        "nn.UpsamplingNearest2d": lambda m, x, i: m.act(x),
        "F.interpolate": lambda m, x, i: F.interpolate(x, scale_factor=2),
        "F.interpolate(size)": lambda m, x, i: F.interpolate(x, size=(8, 8), mode="nearest"),
    },
    "adaptive_avg": {
        "nn.AdaptiveAvgPool2d": lambda m, x, i: m.act(x),
        "F.adaptive_avg_pool2d": lambda m, x, i: F.adaptive_avg_pool2d(x, 3),
    },
    "adaptive_max": {
        "nn.AdaptiveMaxPool2d": lambda m, x, i: m.act(x),
        "F.adaptive_max_pool2d": lambda m, x, i: F.adaptive_max_pool2d(x, 3),
    },
    "ceil_maxpool": {
        "nn.MaxPool2d(ceil_mode)": lambda m, x, i: m.act(x),
        "F.max_pool2d(ceil_mode)": lambda m, x, i: F.max_pool2d(x, 3, 2, ceil_mode=True),
    },
    "global_mean": {
        "x.mean((2, 3), keepdim)": lambda m, x, i: x.mean((2, 3), keepdim=True),
        "torch.mean": lambda m, x, i: torch.mean(x, dim=(-2, -1), keepdim=True),
        "nn.AdaptiveAvgPool2d(1)": lambda m, x, i: m.act(x),
    },
    "group_norm": {
        "nn.GroupNorm": lambda m, x, i: m.gn(x),
        "F.group_norm": lambda m, x, i: F.group_norm(x, 2, m.gn.weight, m.gn.bias, m.gn.eps),
    },
    "channel_shuffle": {
        "view/transpose/view": lambda m, x, i: x.view(1, 2, 2, 4, 4).transpose(1, 2).contiguous().view(1, 4, 4, 4),
        "reshape/permute/flatten": lambda m, x, i: x.reshape(1, 2, 2, 4, 4).permute(0, 2, 1, 3, 4).flatten(1, 2),
        "unflatten/swapaxes/reshape": lambda m, x, i: x.unflatten(1, (2, 2)).swapaxes(1, 2).reshape(1, 4, 4, 4),
    },
    "channel_half": {
        "x.chunk(2, 1)[0]": lambda m, x, i: x.chunk(2, 1)[0],
        "torch.split": lambda m, x, i: torch.split(x, 2, dim=1)[0],
        "x[:, :2]": lambda m, x, i: x[:, :2],
        "x.narrow": lambda m, x, i: x.narrow(1, 0, 2),
    },
}
# ops on the way to a vector (the model ends with a Linear after flatten: qgen returns no flattened image)
HEAD = {
    "flatten": {
        "nn.Flatten": lambda m, x, i: m.act(x),
        "torch.flatten": lambda m, x, i: torch.flatten(x, 1),
        "x.flatten(1)": lambda m, x, i: x.flatten(1),
        "x.view(1, -1)": lambda m, x, i: x.view(1, -1),
        "x.view(x.size(0), -1)": lambda m, x, i: x.view(x.size(0), -1),
        "x.reshape(1, -1)": lambda m, x, i: x.reshape(1, -1),
    },
    "linear": {
        "nn.Linear": lambda m, x, i: m.fc(x.flatten(1)),
        "F.linear": lambda m, x, i: F.linear(x.flatten(1), m.fc.weight, m.fc.bias),
    },
    "softmax": {
        "nn.Softmax": lambda m, x, i: m.softmax(m.fc(x.flatten(1))),
        "F.softmax": lambda m, x, i: F.softmax(m.fc(x.flatten(1)), dim=1),
        "torch.softmax": lambda m, x, i: torch.softmax(m.fc(x.flatten(1)), 1),
        "x.softmax(-1)": lambda m, x, i: m.fc(x.flatten(1)).softmax(-1),
    },    "layer_norm": {
        "nn.LayerNorm": lambda m, x, i: m.ln(m.fc(x.flatten(1))),
        "F.layer_norm": lambda m, x, i: F.layer_norm(m.fc(x.flatten(1)), (3,), m.ln.weight, m.ln.bias, m.ln.eps),
    },
}


# the module of each module spelling, held as the model's `act` (one name: the C comments name it)
MODULES = {
    "nn.ReLU": lambda: nn.ReLU(),
    "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "nn.ReLU6": lambda: nn.ReLU6(),
    "nn.ReLU6(inplace)": lambda: nn.ReLU6(inplace=True),
    "nn.Hardtanh(0, 6, inplace)": lambda: nn.Hardtanh(0.0, 6.0, inplace=True),
    "nn.Hardswish": lambda: nn.Hardswish(),
    "nn.Hardswish(inplace)": lambda: nn.Hardswish(inplace=True),
    "nn.Hardsigmoid": lambda: nn.Hardsigmoid(),
    "nn.Hardsigmoid(inplace)": lambda: nn.Hardsigmoid(inplace=True),
    "nn.Sigmoid": lambda: nn.Sigmoid(),
    "nn.Tanh": lambda: nn.Tanh(),
    "nn.SiLU": lambda: nn.SiLU(),
    "nn.SiLU(inplace)": lambda: nn.SiLU(inplace=True),
    "nn.LeakyReLU": lambda: nn.LeakyReLU(0.1),
    "nn.LeakyReLU(inplace)": lambda: nn.LeakyReLU(0.1, inplace=True),
    "nn.ELU": lambda: nn.ELU(),
    "nn.ELU(inplace)": lambda: nn.ELU(inplace=True),
    "nn.GELU": lambda: nn.GELU(),
    "nn.Dropout": lambda: nn.Dropout(),
    "nn.Dropout(inplace)": lambda: nn.Dropout(inplace=True),
    "nn.MaxPool2d": lambda: nn.MaxPool2d(2),
    "nn.AvgPool2d": lambda: nn.AvgPool2d(2),
    "nn.ZeroPad2d": lambda: nn.ZeroPad2d(1),
    "nn.ConstantPad2d(0)": lambda: nn.ConstantPad2d(1, 0.0),
    "nn.Flatten": lambda: nn.Flatten(),
    "nn.Upsample": lambda: nn.Upsample(scale_factor=2),
    "nn.UpsamplingNearest2d": lambda: nn.UpsamplingNearest2d(scale_factor=2),
    "nn.AdaptiveAvgPool2d": lambda: nn.AdaptiveAvgPool2d(3),
    "nn.AdaptiveMaxPool2d": lambda: nn.AdaptiveMaxPool2d(3),
    "nn.MaxPool2d(ceil_mode)": lambda: nn.MaxPool2d(3, 2, ceil_mode=True),
    "nn.AdaptiveAvgPool2d(1)": lambda: nn.AdaptiveAvgPool2d(1),
}


def _iadd(a, b):
    a += b
    return a


def _imul(a, b):
    a *= b
    return a


class Net(nn.Module):
    """conv -> the op in one spelling (-> Linear for the vector ops). Every spelling builds the same weights."""

    def __init__(self, op: str, spelling: str):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.conv2, self.conv3 = nn.Conv2d(2, 4, 3), nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
        self.fc, self.softmax = nn.Linear(64, 3), nn.Softmax(dim=1)
        self.prelu, self.gn, self.ln = nn.PReLU(4), nn.GroupNorm(2, 4), nn.LayerNorm(3)
        self.gconv = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        with torch.no_grad():
            self.prelu.weight.uniform_(0.1, 0.4)
            self.gn.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.5, 0.5)
        if spelling in MODULES:
            self.act = MODULES[spelling]()
        self.op = op
        self.fn = {**SPELLINGS, **HEAD}[op][spelling]

    def forward(self, x):
        y = self.fn(self, self.conv(x), x)
        return self.fc(y) if self.op == "flatten" else y


X = np.random.default_rng(0).standard_normal((16, 2, 6, 6)).astype(np.float32)


def _compile(op: str, spelling: str):
    return codegen.compile(Net(op, spelling), torch.zeros(1, 2, 6, 6), X, prefix="sp")


def _canonical(graph) -> str:
    """The IR printout with value and node names numbered in order of appearance: `torch.clamp(x, 0, 6)` and
    `nn.ReLU6` are the same op, but the export names their results after the aten op (`clamp`, `hardtanh`)."""
    text = re.sub(r"  # \S+$", "", str(graph), flags=re.M)
    names: dict[str, str] = {}
    return re.sub(r"%[\w.]+", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), text)


def _code(result, name: str = "sp_model.c") -> str:
    """The model C without its comments, which name the user's layer (`act`, or `hardtanh` for F.relu6)."""
    return re.sub(r"/\*.*?\*/", "", result.files[name], flags=re.S)


def _functional_twin(spelling: str) -> str:
    """`x.relu_()` -> `x.relu()`, `nn.ReLU(inplace)` -> `nn.ReLU`, `torch.relu_` -> `torch.relu`."""
    twin = spelling.replace("(inplace)", "").replace("_(", "(")
    return twin[:-1] if twin.endswith("_") else twin


@pytest.mark.parametrize("op", list(SPELLINGS) + list(HEAD))
def test_spellings_lower_to_one_op(op, tmp_path):
    spellings = {**SPELLINGS, **HEAD}[op]
    results = {s: _compile(op, s) for s in spellings}
    first, base = next(iter(results.items()))
    for spelling, r in results.items():
        assert _canonical(r.graph) == _canonical(base.graph), f"{op}: IR of {spelling!r} differs from {first!r}"
        assert _code(r) == _code(base), f"{op}: C of {spelling!r} differs from {first!r}"
        twin = _functional_twin(spelling)
        if twin in results:  # in-place and its functional twin: byte-identical, comments and names included
            assert str(r.graph) == str(results[twin].graph), f"{op}: IR of {spelling!r} differs from {twin!r}"
            assert r.files["sp_model.c"] == results[twin].files["sp_model.c"], f"{op}: {spelling!r} != {twin!r}"
        assert _code(r, "sp_weights.c") == _code(base, "sp_weights.c"), f"{op}: weights of {spelling!r} differ"
    g = base.graph
    host = build_host(g, tmp_path)
    x_i8 = base.quantize_input(X[:2])
    assert_c_equals_reference(g, host, x_i8)
    with torch.no_grad():  # and the spellings compute the same float function in PyTorch (no aliasing slip)
        want = Net(op, first).eval()(torch.from_numpy(X[:1]))
        for spelling in spellings:
            torch.testing.assert_close(Net(op, spelling).eval()(torch.from_numpy(X[:1]).clone()), want)


def test_inplace_spelling_keeps_the_functional_names():
    """`x.relu_()` lowers to the very IR `x.relu()` does, names included (`relu__1` is named `relu_1`)."""
    inplace = _compile("relu", "x.relu_()").graph
    assert str(inplace) == str(_compile("relu", "x.relu()").graph)
    assert "relu_" not in str(inplace)
