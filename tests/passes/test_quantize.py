import numpy as np
import pytest
import torch
import torch.nn as nn

from codegen.errors import UserError
from codegen.fixed import dequantize
from codegen.frontend import from_module
from codegen.ir import verify
from codegen.passes import calibrate, fold_bn, fuse_activation, quantize


def _quantized(model, x, calib):
    g = fuse_activation.run(fold_bn.run(from_module(model.eval(), x)))
    g = quantize.run(calibrate.run(g, calib))
    verify(g, quantized=True)
    return g


@pytest.mark.parametrize("calib", [np.zeros((4, 6)), np.full((4, 6), 3.0), np.full((4, 6), 1e6),
                                   np.full((4, 6), -1e-6)], ids=["zeros", "const", "huge", "tiny"])
def test_valid_formats_for_degenerate_ranges(calib):
    torch.manual_seed(0)
    g = _quantized(nn.Sequential(nn.Linear(6, 3)), torch.zeros(1, 6), calib)
    fx = g.tensors[g.inputs[0]].qformat.frac
    assert g.tensors[g.inputs[0]].qformat.bits == 8
    top = float(np.max(np.abs(calib)))
    assert top * 2.0**fx <= 127  # calibration maximum never saturates
    node = g.nodes[0]
    assert all(-31 <= s <= 31 for s in node.attrs["shift"])


def test_weights_per_channel_and_bias_at_sum_of_fracs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    with torch.no_grad():
        model[0].weight[0] *= 100.0  # channel 0 needs a coarser format than the others
    g = _quantized(model, torch.zeros(1, 2, 5, 5), np.random.default_rng(0).standard_normal((8, 2, 5, 5)))
    w, b = g.tensors[g.nodes[0].inputs[1]], g.tensors[g.nodes[0].inputs[2]]
    assert w.qformat.per_channel and w.qformat.frac[0] < w.qformat.frac[1]
    assert b.qformat.frac == tuple(g.tensors[g.inputs[0]].qformat.frac + f for f in w.qformat.frac)
    assert np.abs(w.data).max(axis=(1, 2, 3)).min() >= 64  # every channel uses the int8 range
    wf = model[0].weight.detach().numpy().transpose(0, 2, 3, 1)
    assert np.max(np.abs(dequantize(w.data, w.qformat) - wf)) <= 2.0 ** -min(w.qformat.frac) / 2 + 1e-12


def test_accumulator_bound_is_proven():
    torch.manual_seed(0)
    g = _quantized(nn.Sequential(nn.Linear(300, 4)), torch.zeros(1, 300), np.ones((2, 300)))
    node = g.nodes[0]
    w, b = g.tensors[node.inputs[1]].data.astype(np.int64), g.tensors[node.inputs[2]].data.astype(np.int64)
    worst = np.abs(w).sum(axis=1) * 128 + np.abs(b)
    assert worst.max() == node.attrs["acc_bound"] <= 2**31 - 1


def test_adversarial_fan_in_lowers_weight_precision_instead_of_overflowing():
    # 40,000 inputs with all weights equal: 127*128*40000 > 2^31 at full precision
    model = nn.Sequential(nn.Linear(40000, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[0].bias.zero_()
    g = _quantized(model, torch.zeros(1, 40000), np.ones((2, 40000)))
    node = g.nodes[0]
    assert node.attrs["acc_bound"] <= 2**31 - 1
    assert np.abs(g.tensors[node.inputs[1]].data).max() < 127  # precision was reduced to stay safe


def test_huge_bias_gets_coarse_formats_and_stays_accurate():
    model = nn.Sequential(nn.Linear(4, 1))
    with torch.no_grad():
        model[0].bias.fill_(1e12)
    x = np.ones((2, 4))
    g = _quantized(model, torch.zeros(1, 4), x)
    from codegen.reference import quantize_input, run_int

    out = g.tensors[g.outputs[0]]
    got = dequantize(run_int(g, quantize_input(g, x))[out.name], out.qformat)
    lsb = 2.0 ** -out.qformat.frac
    assert np.all(np.abs(got - 1e12) <= lsb) and g.nodes[0].attrs["acc_bound"] <= 2**31 - 1


def test_requires_calibration():
    g = fold_bn.run(from_module(nn.Sequential(nn.Linear(2, 2)).eval(), torch.zeros(1, 2)))
    with pytest.raises(UserError, match="calibration"):
        quantize.run(g)


def test_weight_formats_is_what_quantize_uses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3))
    g0 = fuse_activation.run(fold_bn.run(from_module(model.eval(), torch.zeros(1, 2, 5, 5))))
    g0 = calibrate.run(g0, np.random.default_rng(0).standard_normal((8, 2, 5, 5)))
    w, b = g0.tensors[g0.nodes[0].inputs[1]].data.copy(), g0.tensors[g0.nodes[0].inputs[2]].data.copy()
    g = quantize.run(g0)
    fin, fout = g.tensors[g.inputs[0]].qformat.frac, g.tensors[g.outputs[0]].qformat.frac
    fw, w_q, b_q, bound = quantize.weight_formats(w, b, fin, fout)
    assert tuple(fw) == g.tensors[g.nodes[0].inputs[1]].qformat.frac
    assert np.array_equal(w_q, g.tensors[g.nodes[0].inputs[1]].data)
    assert np.array_equal(b_q, g.tensors[g.nodes[0].inputs[2]].data)
    assert int(bound.max()) == g.nodes[0].attrs["acc_bound"]


@pytest.mark.parametrize("frac", [-5, 0, 3, 7, 12])
def test_pinned_range_maps_back_to_its_frac(frac):
    # calibrate (mse) and qat.convert pin a tensor's format by storing the range 127 * 2^-frac
    from codegen.fixed import frac_for_range

    assert frac_for_range(127.0 * 2.0**-frac) == frac
