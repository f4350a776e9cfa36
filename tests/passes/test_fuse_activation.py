import numpy as np
import torch
import torch.nn as nn
from models import make_residual

from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import fold_bn, fuse_activation
from codegen.reference import run_float


def test_relus_fused_into_producers():
    model, _ = make_residual()
    g = fold_bn.run(from_module(model, torch.randn(1, 3, 16, 16)))
    x = np.random.default_rng(0).standard_normal((3, 16, 16, 3))
    before = run_float(g, x)[g.outputs[0]]
    g = fuse_activation.run(g)
    verify(g)
    assert not any(n.op is Op.RELU for n in g.nodes)
    acts = {n.name: n.attrs.get("act") for n in g.nodes}
    assert acts["c1"] == (0.0, None) and acts["c2"] == (0.0, 6.0) and acts["add"] == (0.0, None)
    np.testing.assert_allclose(run_float(g, x)[g.outputs[0]], before)


def test_relu_after_pool_or_shared_producer_stays():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            y = self.c(x)
            return torch.relu(y) + y, torch.relu(nn.functional.max_pool2d(x, 2))

    g = fuse_activation.run(from_module(M().eval(), torch.randn(1, 1, 4, 4)))
    assert sum(n.op is Op.RELU for n in g.nodes) == 2
