"""ONNX import of a transformer block on (1, L, D) tokens (issue 16: "a small attention block compiles"): LayerNorm
over D, q/k/v/out nn.Linear (MatMul with a 2-D weight + Add bias), softmax(q k^T / sqrt(d)) v, residual add.
The ONNX front end holds such tokens in the natural layout (IR (1, L, D), io_layout nlc, _Act.natural): the
LayerNorm and the Linears (1x1 convs over the tokens) read D innermost, k^T is the same bytes as k, and only v^T
is copied. Both torch.onnx exporters (dynamo and TorchScript); the integers equal the PyTorch front end's and the
C equals the reference. Before, the importer refused the LayerNorm ("not its innermost ones")."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_onnx_import import export
from torch import nn

from codegen import compile as qcompile
from codegen.frontend.onnx_import import from_onnx_file
from codegen.ir import Op
from codegen.reference import run_float, to_qgen_layout, to_torch_layout

pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")


class Block(nn.Module):
    """x + Linear(softmax(q k^T / sqrt(d)) v), q, k, v = Linear(LayerNorm(x)); tokens (1, L, D)."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.d = d

    def forward(self, x):
        h = self.ln(x)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) / math.sqrt(self.d), dim=-1)
        return x + self.o(a @ self.v(h))


class ConvTokens(nn.Module):
    """A Conv1d front end on a (1, C, L) sequence, its output transposed to (1, L, D) tokens, a Block, a Linear
    head per token: the transpose is free (the conv's IR output is (1, L, D) already)."""

    def __init__(self):
        super().__init__()
        self.conv, self.block, self.head = nn.Conv1d(4, 8, 3, padding=1), Block(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.conv(x)).transpose(1, 2)))


CASES = {"block": (Block, (1, 6, 8), 1), "conv_tokens": (ConvTokens, (1, 4, 6), 1)}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("case", list(CASES))
def test_attention_block_from_onnx_is_exact(case, dynamo, tmp_path):
    if dynamo:
        pytest.importorskip("onnxscript", reason="torch.onnx's dynamo exporter needs onnxscript")
    make, shape, copies = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    path = export(model, x, tmp_path / "m.onnx", dynamo=dynamo)
    g = from_onnx_file(path)
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.MATMUL) == 2 and ops.count(Op.LAYER_NORM) == 1, g
    assert ops.count(Op.TRANSPOSE) == copies, g  # v^T only
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    calib = np.random.default_rng(0).standard_normal((24, *shape[1:])).astype(np.float32)
    via_onnx = qcompile(path, None, calib, prefix="m")
    direct = qcompile(model, x, calib, prefix="m")
    # the same integers (the input lies (1, L, D) through ONNX, (1, L, C)-of-(1, C, L) through PyTorch: compare in
    # PyTorch's layout, dequantised with the same output formats)
    assert np.array_equal(direct.predict(calib[:8]), via_onnx.predict(calib[:8])), f"{direct.graph}\n{via_onnx.graph}"
    check = via_onnx.verify(calib[:4])
    assert check.exact, str(check)
    want = model(torch.from_numpy(calib[:8])).detach().numpy()
    assert np.abs(via_onnx.predict(calib[:8]) - want).max() / np.abs(want).max() < 0.06
