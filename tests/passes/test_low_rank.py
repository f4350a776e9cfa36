import numpy as np
import pytest
import torch
from torch import nn

from codegen import compile as qcompile
from codegen.emit.c import layer_macs
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import fold_bn, fuse_activation, low_rank
from codegen.reference import run_float


def _rank_limited(shape, rank, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, int(np.prod(shape[1:]))))).reshape(shape)


def _model(rank=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(24 * 4 * 4, 48), nn.ReLU(), nn.Linear(48, 6)).eval()
    with torch.no_grad():  # weights of known low rank: the factorisation is exact
        conv_w = _rank_limited((24, 3, 3, 4), rank)  # IR layout (Cout, KH, KW, Cin)
        model[0].weight.copy_(torch.tensor(conv_w.transpose(0, 3, 1, 2), dtype=torch.float32) * 0.1)
        model[3].weight.copy_(torch.tensor(_rank_limited((48, 384), rank, 1), dtype=torch.float32) * 0.02)
    return model


def _graph(model):
    return fuse_activation.run(fold_bn.run(from_module(model, torch.randn(1, 4, 8, 8))))


def _macs(g):
    return sum(layer_macs(g, n) for n in g.nodes)


def test_exact_low_rank_layers_are_split_and_keep_their_function():
    g = _graph(_model())
    x = np.random.default_rng(0).standard_normal((5, 8, 8, 4))
    before, macs = run_float(g, x)[g.outputs[0]], _macs(g)
    g = low_rank.run(g, energy=0.999)
    verify(g)
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.CONV2D) == 2 and ops.count(Op.LINEAR) == 3  # the last linear (48 -> 6) gains nothing
    first, second = g.nodes[0], g.nodes[1]
    assert g.tensors[first.inputs[1]].shape == (3, 3, 3, 4) and g.tensors[second.inputs[1]].shape == (24, 1, 1, 3)
    assert first.attrs["stride"] == (2, 2) and second.attrs["stride"] == (1, 1) and "act" in second.attrs
    np.testing.assert_allclose(run_float(g, x)[g.outputs[0]], before, rtol=1e-6, atol=1e-8)
    assert _macs(g) < 0.5 * macs


def test_rank_choice():
    s = np.array([4.0, 2.0, 1.0, 0.5])
    assert low_rank.choose_rank(s, 0.75, None) == 1  # 16 / 21.25 = 0.753
    assert low_rank.choose_rank(s, 0.94, None) == 2  # 20 / 21.25 = 0.941
    assert low_rank.choose_rank(s, 0.95, None) == 3
    assert low_rank.choose_rank(s, 1.0, None) == 4
    assert low_rank.choose_rank(s, None, 10) == 4


def test_no_gain_no_change():
    g = _graph(_model(rank=3))
    n = len(g.nodes)
    g = low_rank.run(g, rank=1000)  # full rank costs more than the layer: left alone
    assert len(g.nodes) == n


@pytest.mark.parametrize("kwargs,match", [
    ({"rank": 0}, "rank 0 is impossible"), ({"energy": 0.0}, "energy 0.0 is impossible"),
    ({"energy": 1.5}, "energy 1.5 is impossible"), ({}, "exactly one of"),
    ({"rank": 2, "energy": 0.9}, "exactly one of"),
])
def test_impossible_settings_are_refused(kwargs, match):
    with pytest.raises(UserError, match=match):
        low_rank.run(_graph(_model()), **kwargs)


def test_factorised_model_compiles_smaller_and_bit_exact():
    model = _model()
    calib = np.random.default_rng(0).standard_normal((32, 4, 8, 8)).astype(np.float32)
    dense = qcompile(model, torch.randn(1, 4, 8, 8), calib, prefix="d")
    lr = qcompile(model, torch.randn(1, 4, 8, 8), calib, prefix="lr",
                  extra_passes=[("low_rank", lambda g: low_rank.run(g, energy=0.999))])
    assert lr.report["flash_bytes"] < 0.5 * dense.report["flash_bytes"]
    assert lr.report["macs"] < 0.5 * dense.report["macs"]
    with torch.no_grad():
        expect = model(torch.from_numpy(calib)).numpy()
    err = lambda r: float(np.sqrt(np.mean((r.predict(calib) - expect) ** 2)))
    assert err(lr) < 2 * err(dense) + 0.05 * float(np.std(expect))  # two int8 layers instead of one
    check = lr.verify(calib)
    assert check.exact, str(check)
