"""torch.export -> IR: the float IR computes what PyTorch computes; bad models get clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from models import MLP, GlobalPoolNet, PadCatNet, SequenceNet, Unsupported, make_residual, randomize_bn

from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op
from codegen.reference import run_float, to_torch_layout


def _float_ir_matches_torch(model, x):
    g = from_module(model, x[:1])
    xin = x.numpy().transpose(0, 2, 3, 1) if x.ndim == 4 else x.numpy()
    got = to_torch_layout(run_float(g, xin)[g.outputs[0]])
    with torch.no_grad():
        expect = model(x).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5)
    return g


def test_residual_net_lowering_matches_torch():
    model, _ = make_residual()
    g = _float_ir_matches_torch(model, torch.randn(8, 3, 16, 16))
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.CONV2D) == 1 and ops.count(Op.DEPTHWISE_CONV2D) == 1 and Op.ADD in ops
    assert g.tensors[g.inputs[0]].shape == (16, 16, 3)  # channels last
    assert any(n.source.startswith("models.py:") for n in g.nodes)


def test_global_pool_clamp_depthwise_multiplier():
    torch.manual_seed(1)
    _float_ir_matches_torch(GlobalPoolNet().eval(), torch.randn(4, 2, 9, 9))


def test_mlp_with_batchnorm1d_and_dropout():
    torch.manual_seed(2)
    model = MLP().eval()
    bn = model.net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    _float_ir_matches_torch(model, torch.randn(5, 20))


def test_flatten_then_linear_permutes_weights_for_channels_last():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 5, 2)).eval()
    _float_ir_matches_torch(model, torch.randn(3, 2, 6, 7))


def test_unsupported_op_names_node_and_source_line():
    with pytest.raises(UserError) as e:
        from_module(Unsupported(), torch.randn(1, 1, 5, 5))
    msg = str(e.value)
    assert "cumsum" in msg and "models.py:" in msg and "Supported:" in msg


def test_grouped_and_dilated_conv_lower_to_conv2d_attrs():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, dilation=(2, 1), padding="same")).eval()
    g = from_module(model, torch.randn(1, 4, 7, 6))
    (node,) = g.nodes
    assert (node.attrs["groups"], node.attrs["dilation"], node.attrs["padding"]) == (2, (2, 1), (2, 1, 2, 1))
    _float_ir_matches_torch(model, torch.randn(3, 4, 7, 6))


def test_nan_weight_refused():
    model = nn.Sequential(nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1, 2] = float("nan")
    with pytest.raises(UserError, match=r"contains nan at index \(1, 2\)"):
        from_module(model, torch.randn(1, 4))


def test_export_failure_is_a_user_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(UserError, match="torch.export failed"):
        from_module(DataDependent(), torch.randn(1, 4))


def test_batch_size_must_be_one():
    with pytest.raises(UserError, match="batch size 1"):
        from_module(nn.Sequential(nn.Linear(4, 2)), torch.randn(3, 4))


def test_batchnorm_alone_becomes_depthwise():
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()))
    from codegen.passes import fold_bn

    g = from_module(model, torch.randn(1, 3, 4, 4))
    g = fold_bn.run(g)
    assert [n.op for n in g.nodes] == [Op.DEPTHWISE_CONV2D, Op.RELU]
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        np.testing.assert_allclose(to_torch_layout(run_float(g, x.numpy().transpose(0, 2, 3, 1))[g.outputs[0]]),
                                   model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_sequence_ops_match_torch():
    torch.manual_seed(4)
    model = randomize_bn(SequenceNet())
    x = torch.randn(6, 3, 16)
    g = from_module(model, x[:1])
    assert g.tensors[g.inputs[0]].shape == (1, 16, 3) and g.io_layout[g.inputs[0]] == "ncl"
    got = run_float(g, x.numpy().transpose(0, 2, 1)[:, None])[g.outputs[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_pad_cat_and_activation_functions_match_torch():
    torch.manual_seed(5)
    g = _float_ir_matches_torch(PadCatNet().eval(), torch.randn(3, 1, 49, 10))
    assert [n.op for n in g.nodes].count(Op.PAD) == 2


def test_pad_folds_into_conv_but_not_maxpool():
    from codegen.passes import fold_pad

    torch.manual_seed(5)
    g = fold_pad.run(from_module(PadCatNet().eval(), torch.randn(1, 1, 49, 10)))
    conv = next(n for n in g.nodes if n.op is Op.CONV2D)
    assert conv.attrs["padding"] == (4, 1, 5, 1)
    assert [n.op for n in g.nodes].count(Op.PAD) == 1  # the one before max pooling stays


def test_flattened_image_order_survives_elementwise_ops_cat_and_batchnorm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2 * 3 * 4 * 4)
            self.fc = nn.Linear(2 * 3 * 4 * 4, 5)

        def forward(self, x):
            f = torch.flatten(x, 1)
            y = torch.cat([torch.relu(f) + f, torch.sigmoid(f)], 1)
            return self.fc(self.bn(y))

    torch.manual_seed(7)
    _float_ir_matches_torch(randomize_bn(M()), torch.randn(4, 3, 4, 4))
