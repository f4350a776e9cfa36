import copy

import numpy as np
import torch
from torch import nn

from codegen.frontend import from_module
from codegen.ir import verify
from codegen.passes import bias_correction, calibrate, fold_bn, fuse_activation, quantize
from codegen.reference import conv2d_acc, quantize_input, run_float, run_int, to_qgen_layout


def _float_and_quantized(model, example, calib):
    g = fuse_activation.run(fold_bn.run(from_module(model.eval(), example)))
    g = calibrate.run(g, calib)
    return g, quantize.run(copy.deepcopy(g))


def _mean_acc_error(g, fg, node, x):
    """Per-channel mean of (dequantised integer accumulator - float accumulator) for a conv node."""
    x_int = run_int(g, quantize_input(g, x))[node.inputs[0]]
    x_f = run_float(fg, to_qgen_layout(fg, x.astype(np.float64)))[node.inputs[0]]
    w, b = g.tensors[node.inputs[1]], g.tensors[node.inputs[2]]
    scale = np.exp2(g.tensors[node.inputs[0]].qformat.frac + w.qformat.frac_array())
    acc_q = (conv2d_acc(x_int, w.data, node.attrs["stride"], node.attrs["padding"]) + b.data) / scale
    acc_f = conv2d_acc(x_f, fg.tensors[node.inputs[1]].data, node.attrs["stride"], node.attrs["padding"]) \
        + fg.tensors[node.inputs[2]].data
    return (acc_q - acc_f).reshape(-1, acc_q.shape[-1]).mean(axis=0), 1.0 / scale


def test_bias_correction_removes_the_mean_error_of_every_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (128, 3, 8, 8)).astype(np.float32)  # all positive: rounding errors add up
    fg, g = _float_and_quantized(model, torch.zeros(1, 3, 8, 8), calib)
    before = [_mean_acc_error(g, fg, n, calib)[0] for n in g.nodes if n.op.value == "conv2d"]
    g = bias_correction.run(g, fg, calib)
    verify(g, quantized=True)
    for node, err0 in zip([n for n in g.nodes if n.op.value == "conv2d"], before):
        err1, unit = _mean_acc_error(g, fg, node, calib)
        assert np.all(np.abs(err1) <= unit / 2 + 1e-12)  # what is left is below half an accumulator step
        assert np.abs(err1).sum() < np.abs(err0).sum()
        w, b = g.tensors[node.inputs[1]].data.astype(np.int64), g.tensors[node.inputs[2]].data.astype(np.int64)
        assert (np.abs(w).reshape(w.shape[0], -1).sum(1) * 128 + np.abs(b)).max() == node.attrs["acc_bound"] <= 2**31 - 1


def test_bias_correction_keeps_the_accumulator_bound():
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    calib = np.full((4, 2), 0.3)
    fg, g = _float_and_quantized(model, torch.zeros(1, 2), calib)
    node = g.nodes[0]
    node_b = g.tensors[node.inputs[2]]
    g.tensors[node.inputs[1]].data[:] = 127
    node_b.data[:] = 2**31 - 1 - 2 * 127 * 128  # at the bound: any correction that grows |b| is refused
    old = node_b.data.copy()
    g = bias_correction.run(g, fg, calib)
    new = g.tensors[node.inputs[2]].data
    assert np.abs(new.astype(np.int64)).max() <= np.abs(old.astype(np.int64)).max()
    assert node.attrs["acc_bound"] <= 2**31 - 1
