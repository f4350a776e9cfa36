import numpy as np
import pytest
import torch
from models import MLP, make_residual, randomize_bn
from torch import nn

from codegen import compile as qcompile
from codegen.compress import bn_importance
from codegen.demo import make_model
from codegen.emit.c import layer_macs
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import fold_bn, fuse_activation, prune_channels
from codegen.reference import run_float


def _float_ir(model, example):
    return fuse_activation.run(fold_bn.run(from_module(model, example)))


def _macs(g):
    return sum(layer_macs(g, n) for n in g.nodes)


def _weight_shapes(g):
    return [g.tensors[n.inputs[1]].shape for n in g.nodes if n.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.LINEAR)]


def test_digits_cnn_halved_through_bn_relu_pool_and_flatten():
    torch.manual_seed(0)
    model = randomize_bn(make_model())
    g = _float_ir(model, torch.randn(1, 1, 8, 8))
    macs = _macs(g)
    g = prune_channels.run(g, 0.5)
    verify(g)
    assert _weight_shapes(g) == [(4, 3, 3, 1), (8, 3, 3, 4), (10, 128)]  # flatten: 4*4 pixels x 8 channels
    assert [n.attrs["shape"] for n in g.nodes if n.op is Op.RESHAPE] == [(128,)]
    assert _macs(g) <= macs / 2  # ~4x: both sides of the middle conv shrink


def test_removing_dead_channels_is_exact_across_a_residual_add():
    """ResidualNet: c1 -> (depthwise c2 + skip) add -> BN-as-depthwise -> pools -> flatten -> fc; all one
    coupled space. Channels whose fc columns are zero do not matter: removing them changes nothing."""
    model, example = make_residual()
    dead = [1, 5]
    with torch.no_grad():
        for c in dead:
            model.c1.weight[c] *= 1e-3  # lowest importance
            model.fc.weight.view(10, 8, 2, 2)[:, c] = 0.0  # NCHW flatten: column c*4 + s
    g = _float_ir(model, example)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3))
    before = run_float(g, x)[g.outputs[0]]
    spaces = prune_channels.channel_spaces(g)
    assert len(spaces) == 1 and len(spaces[0].depthwise) == 2 and any(n.op is Op.ADD for n in g.nodes)
    g = prune_channels.run(g, 0.25)
    verify(g)
    add = next(n for n in g.nodes if n.op is Op.ADD)
    assert all(g.tensors[t].shape[-1] == 6 for t in add.inputs + add.outputs)
    assert g.tensors[g.nodes[-1].inputs[1]].shape == (10, 24)
    np.testing.assert_allclose(run_float(g, x)[g.outputs[0]], before, rtol=1e-9, atol=1e-9)


def test_mlp_hidden_neurons_shrink_and_outputs_stay():
    torch.manual_seed(0)
    g = _float_ir(MLP().eval(), torch.randn(1, 20))
    g = prune_channels.run(g, 0.5, criterion="l2")
    verify(g)
    assert _weight_shapes(g) == [(16, 20), (8, 16), (3, 8)]
    assert g.tensors[g.outputs[0]].shape == (3,)


def test_bn_scale_criterion_prunes_the_smallest_gammas():
    torch.manual_seed(0)
    model = randomize_bn(make_model())
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1, 9, dtype=torch.float32))  # channels 0..3 have the smallest gamma
    example = torch.randn(1, 1, 8, 8)
    scores = bn_importance(model, example)
    g = _float_ir(model, example)
    w = g.tensors[g.nodes[0].inputs[1]].data.copy()
    g = prune_channels.run(g, 0.5, criterion="scores", scores=scores)
    np.testing.assert_array_equal(g.tensors[g.nodes[0].inputs[1]].data, w[4:])


@pytest.mark.parametrize("ratio", [1.0, -0.5, 2])
def test_impossible_ratio_is_refused(ratio):
    g = _float_ir(MLP().eval(), torch.randn(1, 20))
    with pytest.raises(UserError, match="impossible.*0 <= ratio < 1"):
        prune_channels.run(g, ratio)


def test_nothing_prunable_is_refused():
    g = _float_ir(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval(), torch.randn(1, 1, 6, 6))
    with pytest.raises(UserError, match="no output channels can be pruned"):
        prune_channels.run(g, 0.5)


def test_pruned_model_compiles_smaller_and_bit_exact():
    torch.manual_seed(0)
    model = randomize_bn(make_model())
    calib = np.random.default_rng(0).random((32, 1, 8, 8)).astype(np.float32)
    dense = qcompile(model, torch.randn(1, 1, 8, 8), calib, prefix="d")
    small = qcompile(model, torch.randn(1, 1, 8, 8), calib, prefix="p",
                     extra_passes=[("prune_channels", lambda g: prune_channels.run(g, 0.5))])
    assert small.report["macs"] * 2 <= dense.report["macs"]
    assert small.report["flash_bytes"] * 2 <= dense.report["flash_bytes"]
    assert small.report["arena_bytes"] < dense.report["arena_bytes"]
    check = small.verify(calib)
    assert check.exact, str(check)
