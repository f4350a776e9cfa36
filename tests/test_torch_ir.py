"""codegen.torch_ir: the torch interpreter of the float IR equals the NumPy spec (reference.run_float) and
the PyTorch model, on 2-D and 1-D models and every op; QAT and compression fine-tuning both run on it."""
import numpy as np
import pytest
import torch
from models import GlobalPoolNet, PadCatNet, SequenceNet, make_residual, randomize_bn
from torch import nn

from codegen import torch_ir
from codegen.frontend import from_module
from codegen.passes import fold_bn, fuse_activation
from codegen.reference import run_float, to_qgen_layout, to_torch_layout


def _conv1d_out():
    """1-D in and out: the output stays (N, C, L) (io_layout 'ncl')."""
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool1d(2), nn.Conv1d(4, 3, 1))


CASES = {
    "residual": (lambda: make_residual()[0], (3, 16, 16)),
    "global_pool_depthwise": (GlobalPoolNet, (2, 9, 9)),
    "sequence_lut_concat_softmax": (lambda: randomize_bn(SequenceNet()), (3, 16)),
    "pad_lut_maxpool": (PadCatNet, (1, 19, 11)),
    "conv1d_out": (_conv1d_out, (2, 12)),
}


@pytest.mark.parametrize("name", CASES)
def test_float_module_equals_run_float_and_torch(name):
    torch.manual_seed(0)
    factory, shape = CASES[name]
    model = factory().eval()
    g = fuse_activation.run(fold_bn.run(from_module(model, torch.zeros(1, *shape))))
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    with torch.no_grad():
        got = torch_ir.FloatModule(g)(torch_ir.to_ir_layout(torch.from_numpy(x))).numpy()
        expect = model(torch.from_numpy(x)).numpy()
    spec = run_float(g, to_qgen_layout(g, x).astype(np.float64))[g.outputs[0]]
    np.testing.assert_allclose(got, to_torch_layout(spec, g.io_layout.get(g.outputs[0])), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def test_layouts_round_trip():
    for shape, layout in (((2, 3, 5, 7), "nchw"), ((2, 3, 5), "ncl"), ((2, 6), "nf")):
        x = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
        ir = torch_ir.to_ir_layout(x)
        np.testing.assert_array_equal(ir.numpy(), to_qgen_layout(None, x.numpy()))
        np.testing.assert_array_equal(torch_ir.to_torch_layout(ir, layout).numpy(), x.numpy())


def test_float_module_trains_its_parameters():
    model = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(8, 2))
    g = from_module(model, torch.zeros(1, 1, 4))
    module = torch_ir.FloatModule(g)
    module(torch_ir.to_ir_layout(torch.randn(5, 1, 4))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.params.values())
    w = next(n for n in g.nodes if n.op.value == "conv2d").inputs[1]
    with torch.no_grad():
        module.params[w].add_(1.0)
    before = g.tensors[w].data.copy()
    module.write_back()
    np.testing.assert_allclose(g.tensors[w].data, before + 1.0, rtol=1e-6)
