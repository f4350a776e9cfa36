import copy

import numpy as np
import torch
from torch import nn

from codegen.fixed import dequantize
from codegen.frontend import from_module
from codegen.passes import calibrate, equalize, fold_bn, fuse_activation, quantize
from codegen.reference import quantize_input, run_float, run_int, to_qgen_layout
from codegen.report import sqnr_db


def _graph(model, example):
    return fuse_activation.run(fold_bn.run(from_module(model.eval(), example)))


def _unbalanced_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[0].weight[:4] *= 1 / 64.0  # half the channels use 1/64 of the activation range
        model[0].bias[:4] *= 1 / 64.0
        model[3].weight[:, :4] *= 64.0
    return model


def _int8_sqnr(g, x):
    fg = copy.deepcopy(calibrate.run(g, x))
    q = quantize.run(g)
    out = q.outputs[0]
    y = dequantize(run_int(q, quantize_input(q, x))[out], q.tensors[out].qformat)
    return sqnr_db(run_float(fg, to_qgen_layout(fg, x.astype(np.float64)))[out], y)


def test_equalize_keeps_the_float_function_and_scales_by_powers_of_two():
    model = _unbalanced_model()
    x = np.random.default_rng(0).standard_normal((64, 2, 8, 8)).astype(np.float32)
    g0 = _graph(model, torch.from_numpy(x[:1]))
    g = equalize.run(copy.deepcopy(g0), x)
    xh = to_qgen_layout(g, x.astype(np.float64))
    a, b = run_float(g0, xh), run_float(g, xh)
    assert np.array_equal(a[g.outputs[0]], b[g.outputs[0]])  # power-of-two scaling is exact
    changed = False
    for name, t in g.tensors.items():
        if t.is_const:
            old = g0.tensors[name].data
            nz = old != 0
            ratio = np.log2(np.abs(t.data[nz] / old[nz]))
            assert np.array_equal(ratio, np.round(ratio))
            changed |= bool(np.any(ratio != 0))
    assert changed
    # the small channels were scaled up towards the large ones
    conv_out = g.nodes[0].outputs[0]
    r0 = np.abs(a[conv_out]).max(axis=(0, 1, 2))
    r1 = np.abs(b[conv_out]).max(axis=(0, 1, 2))
    assert r1.max() / r1.min() < r0.max() / r0.min() / 4


def test_equalize_improves_int8_accuracy_of_an_unbalanced_model():
    model = _unbalanced_model()
    x = np.random.default_rng(0).standard_normal((64, 2, 8, 8)).astype(np.float32)
    g0 = _graph(model, torch.from_numpy(x[:1]))
    plain = _int8_sqnr(copy.deepcopy(g0), x)
    equalized = _int8_sqnr(equalize.run(copy.deepcopy(g0), x), x)
    assert equalized > plain + 3.0


def test_depthwise_consumer_takes_the_whole_scale_and_weight_proxy_without_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=4))
    with torch.no_grad():
        model[0].weight[0] *= 1 / 32.0
        model[0].bias[0] *= 1 / 32.0
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    g0 = _graph(model, torch.from_numpy(x[:1]))
    for calib in (x, None):
        g = equalize.run(copy.deepcopy(g0), calib)
        xh = to_qgen_layout(g, x.astype(np.float64))
        assert np.array_equal(run_float(g0, xh)[g.outputs[0]], run_float(g, xh)[g.outputs[0]])
        scale = g.tensors[g.nodes[0].inputs[1]].data[0] / g0.tensors[g.nodes[0].inputs[1]].data[0]
        assert np.allclose(scale, 2.0**5 if calib is not None else scale.flat[0]) and scale.flat[0] > 1


def test_bounded_activation_and_shared_tensors_are_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3))
    with torch.no_grad():
        model[0].weight[0] *= 1 / 32.0
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    g0 = _graph(model, torch.from_numpy(x[:1]))
    g = equalize.run(copy.deepcopy(g0), x)
    for name, t in g.tensors.items():
        if t.is_const:
            assert np.array_equal(t.data, g0.tensors[name].data)  # ReLU6 does not commute with scaling
