"""Masked attention (issue 16): a constant mask before softmax is a masked_softmax (codegen/ops/attention.py).

- Spellings (frontend/masks.py): F.scaled_dot_product_attention(is_causal=True / bool attn_mask),
  nn.MultiheadAttention with a float (generate_square_subsequent_mask) or bool attn_mask, with a constant
  key_padding_mask, with need_weights=True (baddbmm), nn.TransformerEncoderLayer(src_mask, is_causal=True),
  hand-written `scores.masked_fill(self.mask[:T, :T] == 0, -inf)` and `scores + self.float_mask`: the float IR
  computes what PyTorch computes; a mask computed from the input, a fully masked row and a mask mixing -inf with
  a bias are refused by name.
- Kernel: one quantised graph of masked softmax cases (causal over odd T, one kept entry per row, a random mask
  repeating every 3 rows, 1 and 37 keys) on edge inputs: generated C == codegen.reference.run_int byte for byte
  on the host (strict and ASan/UBSan), on Cortex-M0+ and M4 under QEMU (one firmware per core) and on an
  ATmega2560 under simavr (tables and bitmap in flash).
- A causal sensor model compiles bit-exact in host C with argmax equal to torch's; QAT's twin equals the reference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgen_testing import act, assert_outputs_equal, const, finish
from torch import nn

from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import Graph, Node, Op
from codegen.ops.attention import pack_keep
from codegen.passes.quantize import EXP_TABLE_FRAC, SOFTMAX_FRAC, softmax_exp_table
from codegen.reference import run_float, run_int

T, D = 7, 8  # odd T


class Spelling(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.proj = nn.Linear(5, D)
        self.att = nn.MultiheadAttention(D, 2, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(D, 2, dim_feedforward=12, dropout=0.1, batch_first=True)
        self.q, self.k = nn.Linear(D, D), nn.Linear(D, D)
        self.register_buffer("float_mask", nn.Transformer.generate_square_subsequent_mask(T))
        self.register_buffer("bool_mask", torch.triu(torch.ones(T, T), 1).bool())  # True = masked (MHA's rule)
        self.register_buffer("tril", torch.tril(torch.ones(16, 16)))  # nanoGPT's buffer, sliced to T
        self.register_buffer("padding", torch.tensor([[False] * (T - 2) + [True] * 2]))  # last two steps padded
        self.fc = nn.Linear(D, 3)

    def forward(self, x):
        x = self.proj(x)
        how = self.how
        if how == "sdpa_causal":
            y = F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None], x[:, None], is_causal=True)[:, 0]
        elif how == "sdpa_bool":  # SDPA's bool rule: True = takes part
            y = F.scaled_dot_product_attention(self.q(x), self.k(x), x, attn_mask=~self.bool_mask)
        elif how == "mha_float":
            y = self.att(x, x, x, need_weights=False, attn_mask=self.float_mask)[0]
        elif how == "mha_bool":
            y = self.att(x, x, x, need_weights=False, attn_mask=self.bool_mask)[0]
        elif how == "mha_padding":
            y = self.att(x, x, x, need_weights=False, key_padding_mask=self.padding)[0]
        elif how == "mha_weights":  # need_weights=True (the default): baddbmm(mask, q, k^T) then softmax
            y = self.att(x, x, x, attn_mask=self.bool_mask)[0]
        elif how == "mask_in_forward":  # the mask made in forward(): folded at compile time
            mask = nn.Transformer.generate_square_subsequent_mask(x.size(1))
            y = self.att(x, x, x, need_weights=False, attn_mask=mask)[0]
        elif how == "bool_in_forward":
            mask = torch.triu(torch.ones(x.size(1), x.size(1), dtype=torch.bool), diagonal=1)
            y = self.att(x, x, x, attn_mask=mask)[0]
        elif how == "encoder_causal":
            y = self.enc(x, src_mask=self.float_mask, is_causal=True)
        elif how == "encoder_padding":
            y = self.enc(x, src_key_padding_mask=self.padding)
        elif how == "masked_fill":
            t = x.size(1)
            scores = self.q(x) @ self.k(x).transpose(-2, -1) * D ** -0.5
            scores = scores.masked_fill(self.tril[:t, :t] == 0, float("-inf"))
            y = F.softmax(scores, dim=-1) @ x
        elif how == "nanogpt":  # karpathy/nanoGPT CausalSelfAttention (slow path), -1e9 instead of -inf
            b, t, c = x.shape
            q = self.q(x).view(b, t, 2, c // 2).transpose(1, 2)
            k = self.k(x).view(b, t, 2, c // 2).transpose(1, 2)
            v = x.view(b, t, 2, c // 2).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
            att = att.masked_fill(self.tril.view(1, 1, 16, 16)[:, :, :t, :t] == 0, -1e9)
            y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(b, t, c)
        elif how == "additive":
            y = (self.q(x) @ self.k(x).transpose(-2, -1) + self.float_mask).softmax(-1) @ x
        return self.fc(x + y).mean(1)


SPELLINGS = ["sdpa_causal", "sdpa_bool", "mha_float", "mha_bool", "mha_padding", "mha_weights", "mask_in_forward",
             "bool_in_forward", "encoder_causal",
             "encoder_padding", "masked_fill", "nanogpt", "additive"]


def _float_of(g, x: torch.Tensor) -> np.ndarray:
    xin = x.numpy()
    if g.io_layout[g.inputs[0]] == "ncl":
        xin = xin.transpose(0, 2, 1)
    return np.concatenate([run_float(g, xi[None, None])[g.outputs[0]] for xi in xin])


@pytest.mark.parametrize("how", SPELLINGS)
def test_each_spelling_is_a_masked_softmax_and_matches_torch(how):
    torch.manual_seed(1)
    model = Spelling(how).eval()
    x = torch.randn(6, T, 5)
    g = from_module(model, x[:1])
    masked = [n for n in g.nodes if n.op is Op.MASKED_SOFTMAX]
    assert masked and Op.SOFTMAX not in {n.op for n in g.nodes}, g
    with torch.no_grad():
        want = np.concatenate([model(xi[None]).numpy() for xi in x])
    np.testing.assert_allclose(_float_of(g, x).reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_causal_mask_is_one_bitmap_row_per_query():
    """The mask repeats over heads: one (T, T) bitmap, lower triangle kept."""
    g = from_module(Spelling("mha_float").eval(), torch.randn(1, T, 5))
    n = next(n for n in g.nodes if n.op is Op.MASKED_SOFTMAX)
    keep = g.tensors[n.inputs[-1]].data
    assert keep.shape == (T, T) and np.array_equal(keep > 0.5, np.tril(np.ones((T, T), dtype=bool)))


# ------------------------------------------------------------------ refusals


class FromInput(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.att = nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        if self.how == "masked_fill":  # padding from the data: steps whose features are all zero
            scores = x @ x.transpose(-2, -1)
            return F.softmax(scores.masked_fill(x[:, :, :1] == 0, float("-inf")), -1) @ x
        if self.how == "sdpa":
            return F.scaled_dot_product_attention(x, x, x, attn_mask=x @ x.transpose(-2, -1))
        if self.how == "full_row":  # query 0 attends to nothing
            mask = (torch.arange(5)[:, None] > 0).expand(5, 5)
            return F.scaled_dot_product_attention(x, x, x, attn_mask=mask)
        if self.how == "mixed":
            bias = torch.triu(torch.full((5, 5), float("-inf")), 1) + torch.arange(5.0)
            return F.scaled_dot_product_attention(x, x, x, attn_mask=bias)
        if self.how == "not_softmax":
            scores = x @ x.transpose(-2, -1)
            return scores.masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf")).relu() @ x
        raise AssertionError(self.how)


@pytest.mark.parametrize("how, message", [
    ("masked_fill", r"'eq'.*test_masked_attention.py:\d+.*computed from the model's input.*constant masks"),
    ("sdpa", r"attn_mask \(or key_padding_mask\) computed from the model's input; qgen supports constant masks"),
    ("full_row", r"takes out entirely.*keep at least one entry in every row"),
    ("mixed", r"mixes -inf entries with finite non-zero values"),
    ("not_softmax", r"read by something other than a softmax"),
])
def test_unsupported_masks_are_refused_by_name(how, message):
    with pytest.raises(UserError, match=message):
        from_module(FromInput(how).eval(), torch.randn(1, 5, 4))


def test_a_mask_given_as_a_second_input_is_refused():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x, pad):
            return self.att(x, x, x, key_padding_mask=pad, need_weights=False)[0]

    with pytest.raises(UserError, match=r"takes 2 inputs \(x, pad\); qgen compiles a model with one input"):
        from_module(TwoInputs().eval(), (torch.randn(1, 5, 4), torch.zeros(1, 5, dtype=torch.bool)))


# ------------------------------------------------------------------ the kernel

ROWS = 14  # a multiple of the masks' periods (7, 1, 2, 14)


def _cases(rng):
    """(row size, input frac, keep mask (mask_rows, row size))."""
    one = np.zeros((ROWS, 13), dtype=bool)  # one kept entry per row, at different places
    one[np.arange(ROWS), (np.arange(ROWS) * 5) % 13] = True
    rand = rng.random((2, 37)) < 0.4
    rand[:, 36] = True
    return [(7, 3, np.tril(np.ones((7, 7), dtype=bool))),  # causal, odd T
            (13, 0, one),
            (37, 7, rand),  # repeats every 2 rows
            (9, 12, np.tril(np.ones((ROWS, 9), dtype=bool), -5) | np.eye(ROWS, 9, dtype=bool) | (np.arange(9) == 8))]


def _graph(rng) -> Graph:
    g = Graph({}, [], [], [], source="test")
    cases = _cases(rng)
    total = sum(s for s, _, _ in cases)
    g.tensors["x"] = act("x", (ROWS, total), 3)
    g.inputs.append("x")
    start = 0
    for i, (size, fin, keep) in enumerate(cases):
        x, y, t, k = f"x{i}", f"y{i}", f"t{i}", f"k{i}"
        g.tensors[x] = act(x, (ROWS, size), fin)
        g.nodes.append(Node(x, Op.SLICE, ["x"], [x], {"axis": 1, "start": start, "length": size}))
        start += size
        g.tensors[t] = const(t, softmax_exp_table(fin), 16, EXP_TABLE_FRAC)
        g.tensors[k] = const(k, pack_keep(keep), 8, 0)
        g.tensors[y] = act(y, (ROWS, size), SOFTMAX_FRAC)
        g.nodes.append(Node(y, Op.MASKED_SOFTMAX, [x, t, k], [y], {}))
        g.outputs.append(y)
    return finish(g)


def _inputs(rng, total: int) -> np.ndarray:
    edge = rng.integers(-128, 128, (ROWS, total))
    edge[0], edge[1], edge[2] = -128, 127, 0
    edge[3, ::3] = 127
    edge[4] = np.where(np.arange(total) % 2, -128, 127)
    return np.stack([edge, rng.integers(-128, 128, (ROWS, total)), rng.integers(100, 128, (ROWS, total))]).astype(
        np.int8)


@pytest.fixture(scope="module")
def kernel_model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic

    rng = np.random.default_rng(5)
    g = _graph(rng)
    out = tmp_path_factory.mktemp("masked") / "model"
    write_atomic(render(g, "ms", ["test"]), out)
    x = _inputs(rng, g.tensors["x"].shape[1])
    return g, out, x, reference_outputs(g, run_int(g, x))


def test_rule_masks_exactly_and_is_softmax_on_the_kept_entries(kernel_model):
    g, _, x, _ = kernel_model
    outs = run_int(g, x)
    start = 0
    for i, (size, fin, keep) in enumerate(_cases(np.random.default_rng(5))):
        xi = x[:, :, start:start + size].astype(np.float64) * 2.0**-fin
        start += size
        k = np.tile(keep, (ROWS // len(keep), 1))
        y = outs[f"y{i}"]
        assert np.all(y[:, ~k] == 0)  # masked: exactly 0
        exact = torch.softmax(torch.from_numpy(np.where(k, xi, -np.inf)), -1).numpy() * 128
        assert np.abs(y - np.minimum(exact, 127))[:, k].max() <= 0.5 + 128 * 2e-4 * size, (size, fin)
        alone = k.sum(-1) == 1
        assert np.all(y[:, alone][:, k[alone]] == 127)  # the one kept entry of a row: probability 1, saturated


@pytest.mark.parametrize("flags", ["strict", "sanitizers"])
def test_c_equals_reference_on_host(kernel_model, flags, tmp_path):
    g, out, x, expect = kernel_model
    exe = build_native(out, "ms", tmp_path / "ms", SANITIZE_FLAGS if flags == "sanitizers" else ["-O2"])
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, f"host C, {flags}")


QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


@pytest.mark.qemu
@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(kernel_model, core, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = kernel_model
    sources = [out / "ms_model.c", out / "ms_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "ms", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(result.outputs, expect, g, core)


def test_bit_exact_on_atmega2560(kernel_model, tmp_path):
    """16-bit int; the exp table and the keep bitmap in flash (QG_CONST, read through qg_w16 / qg_wu8)."""
    from codegen.target.avr import avr_missing_tools, run_avr

    if avr_missing_tools():
        pytest.skip(f"missing tools: {avr_missing_tools()}")
    g, out, x, expect = kernel_model
    run = run_avr("atmega2560", out, "ms", x, tmp_path / "avr", expect.shape[1])
    assert_outputs_equal(run.outputs, expect, g, "atmega2560")


# ------------------------------------------------------------------ a model, end to end


class CausalSensor(nn.Module):
    """GPT-style block for next-step prediction on a sensor sequence: causal MHA, masked_fill attention, FF."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, D)
        self.att = nn.MultiheadAttention(D, 2, batch_first=True)
        self.ln = nn.LayerNorm(D)
        self.q, self.k = nn.Linear(D, D), nn.Linear(D, D)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T))
        self.register_buffer("tril", torch.tril(torch.ones(T, T)))
        self.head = nn.Linear(D, 4)

    def forward(self, x):
        x = self.proj(x)
        x = self.ln(x + self.att(x, x, x, attn_mask=self.mask, need_weights=False, is_causal=True)[0])
        scores = (self.q(x) @ self.k(x).transpose(-2, -1)).masked_fill(self.tril == 0, float("-inf"))
        x = x + F.softmax(scores * D ** -0.5, dim=-1) @ x
        return self.head(x[:, -1])


@pytest.fixture(scope="module")
def sensor():
    import codegen

    torch.manual_seed(0)
    model = CausalSensor().eval()
    calib = np.random.default_rng(0).standard_normal((64, T, 3)).astype(np.float32)
    return model, calib, codegen.compile(model, torch.from_numpy(calib[:1]), calib, prefix="cs")


def test_causal_model_is_bit_exact_in_c_and_keeps_argmax(sensor):
    model, calib, result = sensor
    assert sum(n.op is Op.MASKED_SOFTMAX for n in result.graph.nodes) == 2, result.graph
    assert result.verify(calib[:8]).exact
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    got = result.predict(calib)
    gap = np.sort(want, axis=1)[:, -1] - np.sort(want, axis=1)[:, -2]
    clear = gap > 0.2
    assert clear.sum() > 20
    assert np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear])


def test_qat_twin_equals_the_reference():
    from codegen import qat

    torch.manual_seed(0)
    model = CausalSensor().eval()
    calib = np.random.default_rng(2).standard_normal((32, T, 3)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(calib[:1]), calib)
    result = qat.compile(qm, prefix="cs")
    with torch.no_grad():
        fake = qm.eval()(torch.from_numpy(calib)).numpy()
    assert np.array_equal(fake, result.predict(calib))


# ------------------------------------------------------------------ ONNX


@pytest.mark.parametrize("how", ["masked_fill", "additive"])
def test_onnx_where_or_add_of_a_constant_mask_before_softmax(how, tmp_path):
    """What torch.onnx.export writes: Where(mask, -inf, scores) / Add(scores, float_mask) -> Softmax."""
    pytest.importorskip("onnx")
    import contextlib
    import io
    import warnings

    from codegen.frontend.onnx_import import from_onnx_file

    torch.manual_seed(1)
    model = Spelling(how).eval()
    x = torch.randn(4, T, 5)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), dynamo=False)
    g = from_onnx_file(str(path))
    assert Op.MASKED_SOFTMAX in {n.op for n in g.nodes}, g
    with torch.no_grad():
        want = np.concatenate([model(xi[None]).numpy() for xi in x])
    np.testing.assert_allclose(_float_of(g, x).reshape(want.shape), want, rtol=1e-4, atol=1e-5)


def test_pure_micropython_refuses_it_like_softmax(sensor):
    """Table ops (softmax, LUTs) have no pure MicroPython kernel; the masked softmax is refused the same way."""
    from codegen.emit.micropython import render_micropython

    with pytest.raises(UserError, match="no MicroPython kernel for op masked_softmax"):
        render_micropython(sensor[2].graph, "cs", ["test"])


@pytest.mark.skipif(not hasattr(Op, "CONST"), reason="a finite additive mask is a constant operand (Op.CONST)")
def test_a_finite_float_mask_is_an_added_constant():
    """ALiBi-style bias as attn_mask: no -inf, so no masking; the scores get a constant added (CONST + add)."""
    class Biased(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.register_buffer("bias", -0.3 * (torch.arange(5)[:, None] - torch.arange(5)).abs().float())

        def forward(self, x):
            return (x + F.scaled_dot_product_attention(self.q(x), x, x, attn_mask=self.bias)).mean(1)

    torch.manual_seed(0)
    model = Biased().eval()
    x = torch.randn(3, 5, 4)
    g = from_module(model, x[:1])
    ops = {n.op for n in g.nodes}
    assert Op.SOFTMAX in ops and Op.CONST in ops and Op.MASKED_SOFTMAX not in ops, g
    with torch.no_grad():
        want = np.concatenate([model(xi[None]).numpy() for xi in x])
    np.testing.assert_allclose(_float_of(g, x).reshape(want.shape), want, rtol=1e-4, atol=1e-5)
