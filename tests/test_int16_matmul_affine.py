"""int16 activations (mixed precision, --precision LAYER=int16) for matmul of two activations and channel_affine
(a BatchNorm1d that cannot be folded): qg_matmul_wide and qg_channel_affine_wide over every int8 / int16 mix equal
the integer reference on the host (cffi; ASan/UBSan) and on Cortex-M0+ / M4 under QEMU (one firmware per core)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from qgen_testing import edge_inputs

import codegen
from codegen.errors import UserError
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native, verify
from codegen.ir import Op
from codegen.kernels import select


class Mixed(nn.Module):
    """Two matmuls (int16 x int8 -> int16, int8 x int8 -> int16) and two channel_affines (int16 -> int16,
    int16 -> int8) between int8 layers."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv1d(8, 8, 1), nn.Conv1d(8, 8, 1), nn.Conv1d(6, 4, 1)
        self.fc1, self.bn1 = nn.Linear(24, 10), nn.BatchNorm1d(10)
        self.bn2, self.fc2 = nn.BatchNorm1d(10), nn.Linear(10, 3)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 2)
            bn.bias.data.uniform_(-1, 1)

    def forward(self, x):
        a, b = self.a(x), torch.relu(self.b(x))
        y = self.c(torch.matmul(a.transpose(1, 2), b) + torch.matmul(b.transpose(1, 2), b))
        v = self.bn1(torch.relu(self.fc1(y.flatten(1))))  # after a ReLU: cannot fold -> channel_affine
        return self.fc2(self.bn2(torch.relu(v)))


SPEC = {"a": 16, "matmul": 16, "matmul_1": 16, "fc1": 16, "bn1": 16}
SHAPE = (1, 8, 6)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("mixed") / "m"
    calib = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    r = codegen.compile(Mixed().eval(), torch.zeros(SHAPE), calib, out_dir=out, precision=SPEC)
    x = np.concatenate([edge_inputs(np.random.default_rng(1), r.graph.tensors[r.graph.inputs[0]].shape, 2),
                        r.quantize_input(calib[:4])])
    return r, x, out


def test_kernels_and_widths(compiled):
    r, _, _ = compiled
    g = r.graph
    width = lambda t: 16 if g.tensors[t].dtype == "int16" else 8  # noqa: E731
    got = [(n.op, select(g, n).fn, [width(t) for t in n.inputs if not g.tensors[t].is_const], width(n.outputs[0]))
           for n in g.nodes if n.op in (Op.MATMUL, Op.CHANNEL_AFFINE)]
    assert got == [(Op.MATMUL, "qg_matmul_wide", [16, 8], 16), (Op.MATMUL, "qg_matmul_wide", [8, 8], 16),
                   (Op.CHANNEL_AFFINE, "qg_channel_affine_wide", [16], 16),
                   (Op.CHANNEL_AFFINE, "qg_channel_affine_wide", [16], 8)], g


def test_host_c_equals_reference_under_sanitizers(compiled, tmp_path):
    r, x, out = compiled
    check = verify(r.graph, r.host(), x)
    assert check.exact, str(check)
    exe = build_native(out, r.prefix, tmp_path / "asan", SANITIZE_FLAGS)
    assert np.array_equal(run_native(exe, x.reshape(len(x), -1), check.outputs.shape[1]), check.outputs)


@pytest.mark.parametrize("board", ["rp2040", "mps2-an386"])  # Cortex-M0+ (plain C), Cortex-M4
def test_bit_exact_on_cortex_m(compiled, board):
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    r, x, out = compiled
    run = deploy.run(out, board, x)
    assert run.exact, run.first_mismatch


def test_int16_is_closer_to_float():
    torch.manual_seed(0)
    model = Mixed().eval()
    calib = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    plain = codegen.compile(model, torch.zeros(SHAPE), calib)
    wide = codegen.compile(model, torch.zeros(SHAPE), calib, precision=SPEC)
    sqnr = lambda r: {layer["name"]: layer["sqnr_db"] for layer in r.report["layers"]}  # noqa: E731
    assert sqnr(wide)["bn1"] > sqnr(plain)["bn1"] + 3.0


def test_softmax_after_an_int16_matmul_is_a_clear_user_error():
    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Conv1d(4, 4, 1)

        def forward(self, x):
            q = self.q(x)
            return torch.softmax(torch.matmul(q.transpose(1, 2), q), dim=-1).flatten(1)

    calib = np.random.default_rng(0).standard_normal((8, 4, 5)).astype(np.float32)
    with pytest.raises(UserError, match=r"softmax.*int8 only.*keep matmul 'matmul'.* int8"):
        codegen.compile(Scores().eval(), torch.zeros(1, 4, 5), calib, precision={"matmul": 16})
