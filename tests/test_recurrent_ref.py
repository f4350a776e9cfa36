"""Recurrent layers (codegen/ops/recurrent.py): the float rule is PyTorch's, the integer spec tracks it.

Graphs are built directly in the IR (one node), so these tests pin the reference independently of the front end.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from codegen.fixed import dequantize
from codegen.ir import Graph, Node, Op, Tensor, verify
from codegen.ops import recurrent as R
from codegen.passes import calibrate, quantize
from codegen.reference import run_float, run_int

pytestmark = pytest.mark.pure


def recurrent_graph(kind: str, inputs: int, hidden: int, steps: int, seed: int = 0, last: bool = False,
                    reverse: bool = False, h0: bool = False, state_bits: int = 16):
    """(graph, torch module): one layer of nn.GRU / nn.LSTM / nn.RNN(tanh|relu) as one IR node."""
    torch.manual_seed(seed)
    cls = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}[kind]
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    m = cls(inputs, hidden, batch_first=True, **extra).eval()
    op = {"gru": Op.GRU, "lstm": Op.LSTM}.get(kind, Op.RNN)
    rng = np.random.default_rng(seed)
    consts = {"w_ih": m.weight_ih_l0, "w_hh": m.weight_hh_l0, "b_ih": m.bias_ih_l0, "b_hh": m.bias_hh_l0}
    tensors = {"x": Tensor("x", (1, steps, inputs)), "y": Tensor("y", (1, 1 if last else steps, hidden))}
    for name, p in consts.items():
        tensors[name] = Tensor(name, tuple(p.shape), data=p.detach().double().numpy().copy())
    state = rng.uniform(-0.5, 0.5, (2, hidden)) if h0 else np.zeros((2, hidden))
    tensors["h0"] = Tensor("h0", (hidden,), data=state[0].copy())
    names = ["x", "w_ih", "w_hh", "b_ih", "b_hh", "h0"]
    if op is Op.LSTM:
        tensors["c0"] = Tensor("c0", (hidden,), data=state[1].copy())
        names.append("c0")
    attrs = {"hidden": hidden, "last": last, "reverse": reverse, "state_bits": state_bits, **extra}
    g = Graph(tensors, [Node("rnn", op, names, ["y"], attrs)], ["x"], ["y"])
    verify(g)
    return g, m, state


def torch_out(m, kind, x, state, last, reverse):
    xt = torch.tensor(x[:, 0], dtype=torch.float32)
    if reverse:
        xt = xt.flip(1)
    h = torch.tensor(state[0], dtype=torch.float32).expand(1, x.shape[0], -1).contiguous()
    hx = (h, torch.tensor(state[1], dtype=torch.float32).expand(1, x.shape[0], -1).contiguous()) \
        if kind == "lstm" else h
    with torch.no_grad():
        y, _ = m(xt, hx)
    if reverse:
        y = y.flip(1)
    y = y[:, -1:] if last and not reverse else (y[:, :1] if last else y)
    return y.numpy()[:, None]


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("last,reverse,h0", [(False, False, False), (True, False, True), (False, True, True)])
def test_float_rule_is_pytorchs(kind, last, reverse, h0):
    g, m, state = recurrent_graph(kind, 5, 7, 9, last=last, reverse=reverse, h0=h0)
    x = np.random.default_rng(1).normal(size=(4, 1, 9, 5))
    got = run_float(g, x)["y"]
    want = torch_out(m, kind, x, state, last, reverse)
    if last and reverse:  # the final state of a reversed run is its output at position 0
        want = torch_out(m, kind, x, state, False, True)[:, :, :1]
    np.testing.assert_allclose(got, want, atol=2e-5)


def _quantised(kind, state_bits=16, seed=0, steps=20, **kw):
    g, m, state = recurrent_graph(kind, 6, 12, steps, seed=seed, state_bits=state_bits, **kw)
    rng = np.random.default_rng(seed + 7)
    x = rng.normal(size=(64, 1, steps, 6)) * 1.5
    g.io_layout["x"] = "ncl"
    calibrate.run(g, x[:, 0].transpose(0, 2, 1))  # PyTorch's (N, C, L) layout
    ref = run_float(g, x)["y"]
    quantize.run(g)
    verify(g, quantized=True)
    xq = np.clip(np.floor(x * 2.0 ** g.tensors["x"].qformat.frac + 0.5), -128, 127).astype(np.int64)
    return g, ref, run_int(g, xq)["y"]


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
def test_integer_spec_tracks_float(kind):
    g, ref, yq = _quantised(kind)
    y = dequantize(yq, g.tensors["y"].qformat)
    scale = max(float(np.abs(ref).max()), 1e-3)
    err = np.abs(y - ref).max() / scale
    assert err < 0.06, (kind, err, g.nodes[0].attrs)
    # int8 state loses accuracy against int16 state, never the other way round by much
    g8, ref8, yq8 = _quantised(kind, state_bits=8)
    err8 = np.abs(dequantize(yq8, g8.tensors["y"].qformat) - ref8).max() / scale
    assert err <= err8 + 0.02, (err, err8)


def test_lstm_cell_range_is_calibrated():
    g, _, _ = _quantised("lstm")
    assert "y#cell" in g.ranges and g.ranges["y#cell"] > 0
    assert g.nodes[0].attrs["cell_frac"] == min(15, __import__("codegen.fixed", fromlist=["x"]).frac_for_range(
        2 * g.ranges["y#cell"], 16))


def test_activation_tables():
    u = np.arange(-32768, 32768)
    assert np.abs(R.tanh_q12(u) - np.tanh(u / 4096) * 32768).max() < 4
    assert np.abs(R.sigmoid_q11(u) - 32768 / (1 + np.exp(-u / 2048))).max() < 3
    s = R.sigmoid_q11(u)
    assert s.min() == 0 and s.max() == 32767 and np.all(np.diff(s) >= 0)
    assert np.all(np.diff(R.tanh_q12(u)) >= 0)


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn_relu"])
def test_frame_by_frame_equals_whole_sequence(kind):
    """int_run's state hand-over (what streaming relies on): one frame at a time gives the same bytes."""
    g, _, _ = _quantised(kind, steps=12, h0=True)
    n = g.nodes[0]
    xq = np.random.default_rng(3).integers(-128, 128, (5, 1, 12, 6))
    whole, final = R.int_run(g, n, xq)
    state, outs = None, []
    for t in range(12):
        y, state = R.int_run(g, n, xq[:, :, t:t + 1], state)
        outs.append(y)
    np.testing.assert_array_equal(np.concatenate(outs, axis=2), whole)
    np.testing.assert_array_equal(state[0], final[0])


def test_lstm_with_a_huge_calibrated_cell_saturates_instead_of_failing():
    """A calibrated cell range beyond 2^16 keeps cell_frac >= -1 (the i*g shift stays <= 31): the spec runs."""
    g, m, _ = recurrent_graph("lstm", 3, 4, 5)
    x = np.random.default_rng(0).normal(size=(8, 1, 5, 3))
    g.io_layout["x"] = "ncl"
    calibrate.run(g, x[:, 0].transpose(0, 2, 1))
    g.ranges["y#cell"] = 3e5
    quantize.run(g)
    assert g.nodes[0].attrs["cell_frac"] == -1
    run_int(g, np.zeros((1, 1, 5, 3), dtype=np.int64))
