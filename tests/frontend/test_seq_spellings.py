"""Sequence-model spellings users bring (issue 16): weight_norm'ed convs (the locuslab TCN), F.glu / nn.GLU
(conformer conv modules), F.scaled_dot_product_attention (nn.MultiheadAttention with need_weights=False,
nn.TransformerEncoderLayer in eval) lower to the ops a hand-written version gets; a mask computed from the input is
refused by name (constant masks: tests/frontend/test_masked_attention.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import codegen
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op
from codegen.reference import run_float


def _float_matches(model, x):
    """The float IR computes what PyTorch computes on x (N, C, L) or (N, T, F)."""
    model.eval()
    g = from_module(model, x[:1])
    xin = x.numpy()
    if g.io_layout[g.inputs[0]] == "ncl":
        xin = xin.transpose(0, 2, 1)
    got = run_float(g, xin[:, None])[g.outputs[0]]
    with torch.no_grad():
        want = model(x).numpy()
    if g.io_layout[g.outputs[0]] == "ncl":  # (N, L, C) in the IR
        got = got.reshape(want.shape[0], want.shape[2], want.shape[1]).transpose(0, 2, 1)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-4, atol=1e-5)
    return g


class WeightNormConv(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        conv = nn.Conv1d(3, 5, 3, padding=2, dilation=2)
        if kind == "hook":
            conv = nn.utils.weight_norm(conv)
        elif kind == "hook_dim_none":
            conv = nn.utils.weight_norm(conv, dim=None)
        else:
            conv = nn.utils.parametrizations.weight_norm(conv)
        self.conv = conv
        self.fc = nn.Linear(5, 4, bias=False)
        self.fc = nn.utils.parametrizations.weight_norm(self.fc, dim=1)

    def forward(self, x):
        y = torch.relu(self.conv(x)[:, :, :-4].contiguous())
        return self.fc(y[:, :, -1])


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["hook", "hook_dim_none", "parametrizations"])
def test_weight_norm_folds_into_the_weights(kind):
    torch.manual_seed(0)
    g = _float_matches(WeightNormConv(kind), torch.randn(4, 3, 12))
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.CONV2D) == 1 and ops.count(Op.LINEAR) == 1  # g and v folded into the two weights


class Glu(nn.Module):
    def __init__(self, module: bool):
        super().__init__()
        self.pw = nn.Conv1d(4, 12, 1)
        self.glu = nn.GLU(dim=1) if module else None
        self.dw = nn.Conv1d(6, 6, 3, padding=1, groups=6)

    def forward(self, x):
        y = self.pw(x)
        y = self.glu(y) if self.glu is not None else F.glu(y, dim=1)
        return self.dw(y)


@pytest.mark.parametrize("module", [False, True])
def test_glu_is_two_halves_a_sigmoid_and_a_mul(module):
    torch.manual_seed(1)
    g = _float_matches(Glu(module), torch.randn(3, 4, 10))
    ops = [n.op for n in g.nodes]
    assert Op.LUT in ops and Op.MUL in ops and ops.count(Op.SLICE) == 2


class Attention(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.proj = nn.Linear(6, 16)
        if how == "encoder":
            self.enc = nn.TransformerEncoderLayer(16, 2, dim_feedforward=24, dropout=0.1, batch_first=True)
        else:
            self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(7))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.proj(x)
        if self.how == "encoder":
            x = self.enc(x)
        elif self.how == "mha":
            x = x + self.att(x, x, x, need_weights=False)[0]
        elif self.how == "causal":
            x = x + self.att(x, x, x, need_weights=False, attn_mask=self.mask)[0]
        elif self.how == "data_mask":  # a mask computed from the input (constant masks compile: test_masked_attention)
            x = x + self.att(x, x, x, need_weights=False, attn_mask=(x @ x.transpose(1, 2))[0])[0]
        return self.fc(x.mean(dim=1))


@pytest.mark.parametrize("how", ["mha", "encoder"])
def test_scaled_dot_product_attention_lowers_to_matmul_softmax(how):
    torch.manual_seed(2)
    g = _float_matches(Attention(how), torch.randn(3, 7, 6))
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.MATMUL) == 2 and Op.SOFTMAX in ops


def test_masked_attention_names_the_layer():
    with pytest.raises(UserError, match=r"nn.MultiheadAttention 'att'.*test_seq_spellings.py:\d+.*attn_mask .*computed "
                                        r"from the model's input; qgen supports constant masks"):
        from_module(Attention("data_mask").eval(), torch.randn(1, 7, 6))


class ConformerConv(nn.Module):
    """The three spellings in one small model, as a conformer-lite block writes them."""
    def __init__(self):
        super().__init__()
        self.inp = nn.utils.parametrizations.weight_norm(nn.Linear(5, 8))
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = nn.LayerNorm(8)
        self.pw = nn.Conv1d(8, 16, 1)
        self.dw = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.att(x, x, x, need_weights=False)[0]
        y = self.ln(x).transpose(1, 2)
        y = F.silu(self.bn(self.dw(F.glu(self.pw(y), dim=1))))
        x = x + 0.5 * y.transpose(1, 2)
        return self.fc(x.mean(dim=1))


def test_conformer_spellings_are_bit_exact_in_c():
    torch.manual_seed(3)
    model = ConformerConv()
    model.bn.running_mean.data = torch.randn(8) * 0.3
    model.bn.running_var.data = torch.rand(8) + 0.5
    calib = np.random.default_rng(3).standard_normal((8, 6, 5)).astype(np.float32)
    result = codegen.compile(model.eval(), torch.zeros(1, 6, 5), calib, prefix="conf")
    assert result.verify(calib[:3]).exact


class LongPool(nn.Module):
    """Global pooling over more than 255 steps, as ECG / audio models write it."""
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv1d(2, 6, 5, padding=2)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.how == "mean":
            s = x.mean(-1)
        elif self.how == "amax":
            s = torch.amax(x, dim=2)
        else:
            s = self.gap(x).view(x.size(0), -1)
        return self.fc(s)


@pytest.mark.parametrize("how,length", [("mean", 300), ("amax", 510), ("adaptive", 256)])
def test_global_pool_over_more_than_255_steps(how, length):
    torch.manual_seed(4)
    g = _float_matches(LongPool(how), torch.randn(3, 2, length))
    pool = next(n for n in g.nodes if n.op in (Op.AVGPOOL2D, Op.MAXPOOL2D))
    assert max(pool.attrs["kernel"]) <= 255 and int(np.prod(pool.attrs["kernel"])) == length


def test_global_pool_over_a_long_sequence_is_bit_exact_in_c():
    torch.manual_seed(5)
    calib = np.random.default_rng(5).standard_normal((8, 2, 1000)).astype(np.float32)
    result = codegen.compile(LongPool("mean").eval(), torch.zeros(1, 2, 1000), calib, prefix="ecg")
    assert result.verify(calib[:3]).exact


def test_global_pool_over_a_prime_length_above_255_is_refused_clearly():
    with pytest.raises(UserError, match="k_w = 257"):
        codegen.compile(LongPool("mean").eval(), torch.zeros(1, 2, 257),
                        np.random.default_rng(0).standard_normal((4, 2, 257)).astype(np.float32))


class LSTMZeroState(nn.Module):
    """The tutorial LSTM: explicit zero initial states moved to the input's device."""
    def __init__(self, cast: str = ""):
        super().__init__()
        self.cast = cast
        self.lstm = nn.LSTM(3, 8, num_layers=2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h0 = torch.zeros(2, x.size(0), 8).to(x.device)
        c0 = torch.zeros(2, x.size(0), 8, device=x.device).to(torch.float32)
        x = x.to(torch.long).to(torch.float32) if self.cast == "long" else x.to(x.device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


def test_zero_initial_state_moved_to_the_device():
    torch.manual_seed(6)
    g = _float_matches(LSTMZeroState(), torch.randn(3, 10, 3))
    assert [n.op for n in g.nodes].count(Op.LSTM) == 2


def test_integer_cast_names_the_call_site():
    with pytest.raises(UserError, match=r"test_seq_spellings.py:\d+.*casts to torch.int64"):
        from_module(LSTMZeroState("long").eval(), torch.randn(1, 10, 3))


class PositionalEncoding(nn.Module):
    def __init__(self, d: int, max_len: int = 32):
        super().__init__()
        self.register_buffer("pe", torch.randn(1, max_len, d))

    def forward(self, x):
        return x + self.pe[:, :x.size(1)]


def test_positional_encoding_slice_is_folded_and_added_as_a_const():
    """self.pe[:, :x.size(1)] slices the constant (it was an internal KeyError); the add of the time-varying constant
    reads it through a CONST node (codegen/ops/const.py; tests/frontend/test_const_operands.py)."""
    model = nn.Sequential(nn.Linear(3, 16), PositionalEncoding(16), nn.Linear(16, 2)).eval()
    g = _float_matches(model, torch.randn(4, 7, 3))
    const = next(n for n in g.nodes if n.op is Op.CONST)
    assert g.tensors[const.inputs[0]].shape == (1, 7, 16)  # the slice, laid out as the Linear's output lies


class ExpSoftplus(nn.Module):
    """A VAE's std = exp(0.5 * logvar) and a softplus scale head: 256-entry tables."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.sp = nn.Softplus(beta=2.0, threshold=1.5)

    def forward(self, x):
        h = self.fc(x)
        return torch.exp(0.5 * h) + self.sp(h) + F.softplus(h)


def test_exp_and_softplus_are_tables():
    torch.manual_seed(7)
    model = ExpSoftplus().eval()
    g = _float_matches(model, torch.randn(5, 6))
    assert sorted(n.attrs["fn"] for n in g.nodes if n.op is Op.LUT) == ["exp", "softplus", "softplus"]
    calib = np.random.default_rng(7).standard_normal((8, 6)).astype(np.float32)
    result = codegen.compile(model, torch.zeros(1, 6), calib, prefix="sp")
    assert result.verify(calib[:3]).exact


def test_cls_token_concat_is_a_const_part():
    class Cls(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.cls_token = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x):
            x = self.embed(x)
            return torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)[:, 0]

    g = from_module(Cls().eval(), torch.randn(1, 5, 3))
    cat = next(n for n in g.nodes if n.op is Op.CONCAT)
    assert g.producer(cat.inputs[0]).op is Op.CONST, g
