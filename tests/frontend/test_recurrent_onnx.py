"""ONNX GRU / LSTM / RNN (codegen/frontend/onnx_recurrent.py): models exported by torch.onnx (both exporters) import
to the recurrent nodes, with a time-major ('nlc') input and no layout copy, and run_float equals the torch model;
a whole compile from the .onnx file is bit-exact in host C; what qgen does not implement is refused by name."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import codegen
from codegen.errors import UserError
from codegen.ir import Op
from codegen.reference import run_float, to_qgen_layout, to_torch_layout

onnx = pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
from codegen.frontend.onnx_import import from_onnx_file, from_onnx_model  # noqa: E402

RECURRENT = (Op.GRU, Op.LSTM, Op.RNN)


class Net(nn.Module):
    def __init__(self, cls, read: str, **kw):
        super().__init__()
        self.r = cls(4, 6, batch_first=True, **kw)
        self.read = read

    def forward(self, x):
        y, h = self.r(x)
        h = h[0] if isinstance(h, tuple) else h
        if self.read == "out":
            return y
        if self.read == "last":
            return y[:, -1]
        if self.read == "h_n[-1]":
            return h[-1]
        return h.transpose(0, 1).flatten(1)  # every layer's and direction's final state


def _export(model, path, dynamo: bool) -> str:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(model.eval(), (torch.randn(1, 7, 4),), str(path), dynamo=dynamo)
        finally:
            logging.disable(logging.NOTSET)
    return str(path)


CASES = [  # (class, kwargs, read, dynamo exporter, expected [(last, reverse)])
    (nn.GRU, {}, "last", True, [(True, False)]),
    (nn.LSTM, {"num_layers": 2, "bidirectional": True}, "h_n", True,
     [(False, False), (False, True), (True, False), (True, True)]),
    (nn.GRU, {"bidirectional": True, "bias": False}, "out", True, [(False, False), (False, True)]),
    (nn.RNN, {"nonlinearity": "relu"}, "h_n[-1]", False, [(True, False)]),  # dynamo unrolls nn.RNN
    (nn.LSTM, {}, "out", False, [(False, False)]),
]


@pytest.mark.parametrize("cls,kw,read,dynamo,expected", CASES,
                         ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_exported_recurrent_models_import_and_match_torch(cls, kw, read, dynamo, expected, tmp_path):
    torch.manual_seed(0)
    model = Net(cls, read, **kw).eval()
    g = from_onnx_file(_export(model, tmp_path / "m.onnx", dynamo))
    nodes = [n for n in g.nodes if n.op in RECURRENT]
    assert [(n.attrs["last"], n.attrs["reverse"]) for n in nodes] == expected, g
    assert g.io_layout[g.inputs[0]] == "nlc" and not any(n.op is Op.TRANSPOSE for n in g.nodes), g
    x = np.random.default_rng(3).normal(size=(3, 7, 4))
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x))[g.outputs[0]], g.io_layout[g.outputs[0]])
    with torch.no_grad():
        want = torch.cat([model(torch.tensor(x[i:i + 1], dtype=torch.float32)) for i in range(3)]).numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=2e-6)


def test_compile_from_onnx_is_bit_exact(tmp_path):
    from codegen.kernels import kernel_sources

    torch.manual_seed(1)
    model = Net(nn.GRU, "h_n[-1]").eval()
    path = _export(model, tmp_path / "gru.onnx", dynamo=False)
    calib = np.random.default_rng(0).normal(size=(64, 7, 4)).astype(np.float32)
    result = codegen.compile(path, None, calib, prefix="gru")
    with torch.no_grad():
        want = model(torch.from_numpy(calib[:8])).numpy()
    assert np.abs(result.predict(calib[:8]) - want).max() < 0.05
    if "qg_recurrent_s8" in kernel_sources():
        assert result.verify(calib[:8]).exact


def _gru_model(**attrs):
    """A hand-written ONNX GRU (1 x 5 x 3 input, layout 1) with the given attributes."""
    from onnx import TensorProto, helper, numpy_helper

    h, i = 4, 3
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W", (1, 3 * h, i)), ("R", (1, 3 * h, h)), ("B", (1, 6 * h)))]
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["y", "y_h"], name="gru0", hidden_size=h, layout=1, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, i])],
                              [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, h])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_default_gru_is_refused_by_name():
    with pytest.raises(UserError, match=r"ONNX node 'gru0' \(GRU, opset 17\): GRU with linear_before_reset=0"):
        from_onnx_model(_gru_model())
    with pytest.raises(UserError, match="clip"):
        from_onnx_model(_gru_model(linear_before_reset=1, clip=3.0))


def test_onnx_gru_layout_1_reads_the_input_as_it_lies():
    g = from_onnx_model(_gru_model(linear_before_reset=1))
    (node,) = [n for n in g.nodes if n.op is Op.GRU]
    assert g.io_layout[g.inputs[0]] == "nlc" and g.tensors[g.inputs[0]].shape == (1, 5, 3)
    assert node.attrs["last"], g  # only Y_h is read


class ConvGRU(nn.Module):
    """A keyword-spotting front: Conv1d over (1, F, T), then a batch_first GRU on the transposed features."""

    def __init__(self):
        super().__init__()
        self.conv, self.rnn, self.fc = nn.Conv1d(10, 8, 3, padding=1), nn.GRU(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(torch.relu(self.conv(x)).transpose(1, 2))
        return self.fc(out[:, -1])


def test_conv1d_then_gru_needs_no_layout_copy(tmp_path):
    """torch.onnx (TorchScript exporter) writes Transpose(2, 0, 1) + Shape between the Conv and the GRU: the conv's
    (1, C, T) output is already the GRU's time-major input."""
    torch.manual_seed(0)
    model = ConvGRU().eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 10, 12),), str(tmp_path / "k.onnx"), dynamo=False)
    g = from_onnx_file(str(tmp_path / "k.onnx"))
    assert [n.op for n in g.nodes if n.op is not Op.RESHAPE] == [Op.CONV2D, Op.RELU, Op.GRU, Op.LINEAR], g
    assert [n for n in g.nodes if n.op is Op.GRU][0].attrs["last"]
    x = np.random.default_rng(0).normal(size=(2, 10, 12))
    got = run_float(g, to_qgen_layout(g, x))[g.outputs[0]]
    with torch.no_grad():
        want = model(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)
