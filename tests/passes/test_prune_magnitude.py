import numpy as np
import pytest
import torch
from torch import nn

from codegen import compile as qcompile
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import fold_bn, fuse_activation, prune_magnitude


def _mlp_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    return model, fuse_activation.run(fold_bn.run(from_module(model, torch.randn(1, 40))))


def _weights(g):
    return {n.name: g.tensors[n.inputs[1]].data for n in g.nodes if n.op in (Op.CONV2D, Op.LINEAR)}


def test_layer_scope_prunes_each_layer_exactly_and_keeps_the_largest():
    _, g = _mlp_graph()
    before = {k: v.copy() for k, v in _weights(g).items()}
    g = prune_magnitude.run(g, 0.75)
    verify(g)
    for name, w in _weights(g).items():
        assert np.count_nonzero(w == 0) == int(np.floor(0.75 * w.size))
        kept = np.abs(before[name][w != 0])
        assert kept.min() >= np.abs(before[name][w == 0]).max()  # magnitude order
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])  # survivors untouched
    assert all(n.attrs["weight_format"] == "sparse" for n in g.nodes if n.op is Op.LINEAR)


def test_global_scope_hits_the_total_and_uses_one_threshold():
    _, g = _mlp_graph()
    before = np.concatenate([v.reshape(-1) for v in _weights(g).values()])
    g = prune_magnitude.run(g, 0.6, scope="global")
    after = np.concatenate([v.reshape(-1) for v in _weights(g).values()])
    assert np.count_nonzero(after == 0) == int(np.floor(0.6 * after.size))
    assert np.abs(before[after != 0]).min() >= np.abs(before[after == 0]).max()
    per_layer = [np.mean(v == 0) for v in _weights(g).values()]
    assert max(per_layer) - min(per_layer) > 0.01  # layers end up with different sparsities


def test_given_importance_replaces_magnitude():
    _, g = _mlp_graph()
    name = g.nodes[0].name
    w = g.tensors[g.nodes[0].inputs[1]].data
    score = np.zeros_like(w)
    score[:, :10] = 1.0  # keep exactly the first 10 input columns
    g = prune_magnitude.run(g, 0.75, importance={name: score}, layers=[name])
    w = g.tensors[g.nodes[0].inputs[1]].data
    assert np.all(w[:, 10:] == 0) and np.all(w[:, :10] != 0)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, "0.5"])
def test_impossible_sparsity_is_refused(sparsity):
    _, g = _mlp_graph()
    with pytest.raises(UserError, match="impossible.*0 <= sparsity < 1"):
        prune_magnitude.run(g, sparsity)


def test_unknown_layers_and_scope_are_refused():
    _, g = _mlp_graph()
    with pytest.raises(UserError, match="not conv2d/linear layers"):
        prune_magnitude.run(g, 0.5, layers=["nope"])
    with pytest.raises(UserError, match="scope 'model' is unknown"):
        prune_magnitude.run(g, 0.5, scope="model")


def test_compiled_model_shrinks_and_stays_bit_exact():
    model, _ = _mlp_graph()
    calib = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    dense = qcompile(model, torch.randn(1, 40), calib, prefix="dense")
    sparse = qcompile(model, torch.randn(1, 40), calib, prefix="sparse",
                      extra_passes=[("prune", lambda g: prune_magnitude.run(g, 0.8))])
    assert sparse.report["flash_bytes"] < 0.45 * dense.report["flash_bytes"]
    assert "qg_fully_connected_sparse_s8(" in sparse.files["sparse_model.c"]
    check = sparse.verify(calib)
    assert check.exact, str(check)
