"""QAT's twin of the recurrent layers (codegen/ops/recurrent.py qat_rnn): exact mode == the integer spec, bit for
bit, before and after training steps; training mode is differentiable. One-node graphs built in the IR."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_recurrent_ref import recurrent_graph

from codegen import qat, torch_ir
from codegen.ops import recurrent as R
from codegen.passes import calibrate, quantize
from codegen.reference import run_int

pytestmark = pytest.mark.pure

KINDS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]


def _calibrated(kind, state_bits, seed=0, steps=10, inputs=5, hidden=9, **kw):
    g, _, _ = recurrent_graph(kind, inputs, hidden, steps, seed=seed, state_bits=state_bits, **kw)
    g.io_layout["x"] = g.io_layout["y"] = "ncl"
    x = (np.random.default_rng(seed + 1).normal(size=(48, inputs, steps)) * 1.5).astype(np.float32)
    calibrate.run(g, x)
    return g, x


def _qat_int(qm, xq):
    """The QAT module's exact forward on int8 input (N, 1, T, I): its integer output in the IR layout."""
    g = qm._graph
    fin, fout = qm.act_fracs()[g.inputs[0]], qm.act_fracs()[g.outputs[0]]
    x = torch.from_numpy(xq[:, 0].transpose(0, 2, 1) * 2.0 ** -fin)  # PyTorch's (N, C, L), exactly representable
    with torch.no_grad():
        y = qm.eval()(x)
    return torch_ir.to_ir_layout(y).numpy() * 2.0 ** fout


def _spec_int(qm, xq):
    """run_int of what qat.compile would quantise: convert(qm) -> quantize."""
    qg = quantize.run(copy.deepcopy(qat.convert(qm)))
    return run_int(qg, xq)["y"], qg


def _assert_equal(got, want, where):
    diff = np.argwhere(got != want)
    assert diff.size == 0, f"{where}: {len(diff)} differ, first at {tuple(diff[0])}: qat {got[tuple(diff[0])]} " \
                           f"vs run_int {want[tuple(diff[0])]}"


@pytest.mark.parametrize("state_bits", [16, 8])
@pytest.mark.parametrize("kind", KINDS)
def test_exact_mode_equals_int_run(kind, state_bits):
    g, x = _calibrated(kind, state_bits, h0=True)
    qm = qat.QATModel(g)
    xq = np.random.default_rng(5).integers(-128, 128, (16, 1, 10, 5))
    xq[0] = 127
    xq[1] = -128  # saturation of every gate
    want, qg = _spec_int(qm, xq)
    assert qg.nodes[0].attrs["state_bits"] == state_bits
    _assert_equal(_qat_int(qm, xq), want, f"{kind} state_bits {state_bits}")


@pytest.mark.parametrize("kind", KINDS)
def test_training_moves_weights_and_stays_exact(kind):
    """Training mode: gradients reach all four recurrent constants; after steps, exact mode == the spec of the
    converted graph (the weight formats follow the trained weights; an LSTM keeps its calibrated cell format)."""
    g, x = _calibrated(kind, 16, last=kind == "gru", reverse=kind == "lstm")
    qm = qat.QATModel(g)
    target = torch.from_numpy(np.random.default_rng(2).normal(size=qm.train()(torch.from_numpy(x)).shape))
    opt = torch.optim.Adam(qm.parameters(), lr=0.02)
    before = {k: v.detach().clone() for k, v in qm.params.items()}
    for _ in range(3):
        opt.zero_grad()
        loss = (qm(torch.from_numpy(x)) - target).square().mean()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in qm.params.values())
        opt.step()
    assert len(qm.params) == 4 and all(not torch.equal(before[k], v) for k, v in qm.params.items())
    xq = np.random.default_rng(6).integers(-128, 128, (12, 1, 10, 5))
    want, qg = _spec_int(qm, xq)
    if kind == "lstm":
        assert qg.nodes[0].attrs["cell_frac"] == quantize.run(copy.deepcopy(g)).nodes[0].attrs["cell_frac"]
    _assert_equal(_qat_int(qm, xq), want, kind)


def test_training_forward_tracks_exact_forward():
    """The float32 training forward is the same fake quantisation (within a few output LSB of the exact one)."""
    g, x = _calibrated("gru", 16)
    qm = qat.QATModel(g)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        exact = qm.eval()(xt)
        train = qm.train()(xt)
    step = 2.0 ** -qm.act_fracs()["y"]
    assert (exact - train).abs().max().item() <= 2 * step


def test_whole_model_qat_from_pytorch_equals_compiled_reference():
    """nn.GRU classifier (examples/sequence) through qat.prepare / finetune / compile: the QAT module's exact forward
    equals the compiled model's integer reference on every output, with int8 and with int16 state."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from examples.sequence.models import GRUClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 12)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    for bits in (16, 8):
        torch.manual_seed(0)
        model = GRUClassifier(hidden=8).eval()

        def set_bits(g, bits=bits):
            for n in g.nodes:
                if n.op in R.GATES:
                    n.attrs["state_bits"] = bits
            return g

        qm = qat.prepare(model, torch.from_numpy(x[:1]), x, extra_passes=[("state_bits", set_bits)])
        assert len(qm.params) == 4
        qat.finetune(qm, x, y, epochs=1, lr=1e-2, batch=16)
        result = qat.compile(qm, eval_data=x[:8])
        gru = next(n for n in result.graph.nodes if n.op in R.GATES)
        assert gru.attrs["state_bits"] == bits
        with torch.no_grad():
            got = qm.eval()(torch.from_numpy(x)).numpy()
        _assert_equal(got, result.predict(x), f"GRU classifier, state_bits {bits}")


def test_relu_rnn_state_format_survives_convert():
    """A relu RNN's int16 state frac comes from its output's calibrated range at 16 bits; convert must not pin that
    range to one that gives the same int8 frac but another int16 frac (63.7 * 2^-4: int8 frac 4, int16 frac 13,
    while 127 * 2^-4 gives 12)."""
    g, _ = _calibrated("rnn_relu", 16)
    g.ranges["y"] = 63.7 * 2.0 ** -4
    qm = qat.QATModel(g)
    xq = np.random.default_rng(5).integers(-128, 128, (16, 1, 10, 5))
    want, qg = _spec_int(qm, xq)
    assert qg.nodes[0].attrs["state_frac"] == 13
    _assert_equal(_qat_int(qm, xq), want, "relu RNN")
