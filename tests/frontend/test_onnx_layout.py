"""ONNX import of activation-layout ops (issue 16): Slice, Split, Transpose (channel shuffle, permutes) and MatMul
of two activations. Small PyTorch models exported with torch.onnx compile to the same integers as through the
PyTorch front end, and the C equals the reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_onnx_import import export
from torch import nn

from codegen import compile as qcompile
from codegen.errors import UserError
from codegen.frontend.onnx_import import from_onnx_file
from codegen.ir import Op

pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
pytest.importorskip("onnxscript", reason="torch.onnx's default (dynamo) exporter needs onnxscript")


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit (chunk, branch, cat, channel shuffle) plus row / column slices and a split."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        x1, x2 = y.chunk(2, dim=1)
        y = torch.cat([x1, torch.relu(self.b(x2))], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        top, bottom = y[:, :, :3], y[:, :, 3:]  # rows
        left, right = torch.split(self.c(top + bottom), [2, 3], dim=3)  # columns
        return torch.cat([right, left.transpose(2, 3).transpose(2, 3)], 3)


class SeqAttention(nn.Module):
    """Attention over a (1, D, L) sequence: scores k^T q (1, L, L), softmax over the keys (dim 1), v @ scores."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.q, self.k, self.v = nn.Conv1d(d, d, 1), nn.Conv1d(d, d, 1), nn.Conv1d(d, d, 1)

    def forward(self, x):
        s = torch.matmul(self.k(x).transpose(1, 2), self.q(x)) * 0.35
        return torch.matmul(self.v(x), torch.softmax(s, dim=1)) + x


class HeadsMatMul(nn.Module):
    """(1, B, M, K) @ (1, B, K, N) of two image activations (B = 2 'heads')."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return torch.matmul(self.a(x), self.b(x).transpose(2, 3))


CASES = [(ShuffleBlock, (1, 3, 6, 5), {Op.SLICE: 6, Op.TRANSPOSE: 1}),
         (SeqAttention, (1, 8, 6), {Op.MATMUL: 2}),
         (HeadsMatMul, (1, 3, 4, 6), {Op.MATMUL: 1})]


@pytest.mark.parametrize("make,shape,ops", CASES, ids=[c[0].__name__ for c in CASES])
def test_onnx_layout_ops_give_the_pytorch_routes_integers(make, shape, ops, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    path = export(model, x, tmp_path / "m.onnx", dynamo=True)
    g = from_onnx_file(path)
    for op, count in ops.items():
        assert sum(n.op is op for n in g.nodes) >= count, (op, g)
    calib = np.random.default_rng(0).standard_normal((24, *shape[1:])).astype(np.float32)
    direct = qcompile(model, x, calib, prefix="m")
    via_onnx = qcompile(path, None, calib, prefix="m")
    xq = direct.quantize_input(calib[:8])
    assert np.array_equal(xq, via_onnx.quantize_input(calib[:8]))
    assert np.array_equal(direct.reference(xq), via_onnx.reference(xq)), f"{direct.graph}\n{via_onnx.graph}"
    check = via_onnx.verify(calib[:4])
    assert check.exact, str(check)


def test_unsupported_layout_ops_are_clear_user_errors(tmp_path):
    class BatchSlice(nn.Module):
        def forward(self, x):
            return torch.relu(x).transpose(0, 1)

    class StepSlice(nn.Module):  # along H or W a step is a 1 x 1 max pool with that stride; along C it is refused
        def forward(self, x):
            return torch.relu(x)[:, ::2]

    for model, shape, match in [(BatchSlice(), (1, 3, 4, 4), "batch dimension"),
                                (StepSlice(), (1, 3, 4, 4), "step 2")]:
        path = export(model, torch.randn(shape), tmp_path / f"{type(model).__name__}.onnx", dynamo=True)
        with pytest.raises(UserError, match=match):
            from_onnx_file(path)
