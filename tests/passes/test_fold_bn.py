import numpy as np
import torch
from models import make_residual

from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import fold_bn
from codegen.reference import run_float


def test_fold_bn_removes_bn_and_keeps_function():
    model, _ = make_residual()
    g = from_module(model, torch.randn(1, 3, 16, 16))
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3))
    before = run_float(g, x)[g.outputs[0]]
    n_nodes = len(g.nodes)
    g = fold_bn.run(g)
    verify(g)
    assert not any(n.op is Op.BATCH_NORM for n in g.nodes)
    assert len(g.nodes) == n_nodes - 1  # bn folded into c1; bn2 (after an add) became a depthwise 1x1
    assert not any("batch_norm_scale" in t for t in g.tensors)
    np.testing.assert_allclose(run_float(g, x)[g.outputs[0]], before, rtol=1e-9, atol=1e-9)


def test_bn_not_folded_into_conv_with_two_consumers():
    class TwoUsers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(2, 2, 1)
            self.bn = torch.nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.c(x)
            return self.bn(y) + y

    g = fold_bn.run(from_module(TwoUsers().eval(), torch.randn(1, 2, 3, 3)))
    assert [n.op for n in g.nodes] == [Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.ADD]
