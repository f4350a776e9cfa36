"""Constant tensors combined with activations (codegen/ops/const.py CONST): a sinusoidal positional-encoding
buffer `x + self.pe[:, :x.size(1)]`, a learned `nn.Parameter` positional embedding, a cls token concatenated with
`torch.cat([cls.expand(B, -1, -1), x], 1)`, sub / mul by constants that vary along time or space, a (1, C, H, W)
learned bias, broadcast (1, 1, D) / (T, 1) / (1, 1, H, W) constants, CoordConv's constant channels.

- Front end: each spelling becomes a CONST node (the constant broadcast to the activation and laid out as it
  lies) feeding add / sub / mul / concat; the float IR equals torch.
- One model holding every spelling: generated C == codegen.reference.run_int byte for byte on the host (strict and
  ASan/UBSan) and on Cortex-M0+ and M4 under QEMU (one firmware per core).
- Edge values: a hand-built quantised graph whose constants sit at the top of their format (codes -127/127, and
  -128 written directly) and one 2^10 times larger than the activation's range: C == reference on the host.
- The constant's format: frac_for_range(max|C|), round half up; ONNX Add / Mul / Concat with an initializer;
  QAT's twin equals the reference; what stays refused is a UserError naming the call.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qgen_testing import act, assert_outputs_equal, const, finish
from torch import nn

from codegen.errors import UserError
from codegen.ir import Graph, Node, Op
from codegen.reference import run_float, run_int, to_qgen_layout

T, D = 9, 16  # 3 x 3 pixels as 9 tokens of D features


def sinusoidal(max_len: int, d: int) -> torch.Tensor:
    pe = torch.zeros(max_len, d)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


class Everything(nn.Module):
    """Every spelling in one model: image constants, then the 3 x 3 pixels as a token sequence."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)  # (1, 6, 3, 3)
        self.bias_map = nn.Parameter(torch.randn(1, 6, 3, 3) * 0.5)  # learned (1, C, H, W) bias
        self.register_buffer("gain", torch.rand(1, 1, 3, 3) + 0.5)  # (1, 1, H, W): broadcast over channels
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3), indexing="ij")
        self.register_buffer("coords", torch.stack([ys, xs])[None])  # CoordConv: (1, 2, H, W) channels
        self.embed = nn.Linear(8, D)
        self.register_buffer("pe", sinusoidal(64, D))
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.pos_embedding = nn.Parameter(torch.randn(1, T + 1, D) * 0.3)
        self.register_buffer("shift", torch.randn(T + 1, 1))  # (T, 1): one value per token
        self.register_buffer("scale", torch.rand(1, T + 1, D) + 0.5)
        self.register_buffer("extra", torch.randn(1, 1, 4))  # concatenated along the feature dim
        self.register_buffer("huge", torch.randn(1, T + 1, 4) * 1000.0)  # far beyond the activation's range
        self.head = nn.Linear(D + 4, 5)

    def forward(self, x):
        y = self.conv(x) + self.bias_map
        y = torch.relu(y) * self.gain
        y = torch.cat([y, self.coords.expand(y.shape[0], -1, -1, -1)], dim=1)  # (1, 8, 3, 3)
        t = self.embed(y.flatten(2).transpose(1, 2))  # (1, 9, D) tokens
        t = t + self.pe[:, :t.size(1)]
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)  # (1, 10, D)
        t = t + self.pos_embedding
        t = (t - self.shift) * self.scale
        t = self.pos_embedding - t  # constant first: C - x
        t = torch.cat([t, self.extra.expand(t.shape[0], T + 1, 4)], dim=2)  # (1, 10, D + 4)
        far = t[:, :, D:] + self.huge  # (1, 10, 4): the constant dominates
        return torch.cat([self.head(t[:, 0]), far.flatten(1) * 1e-3], dim=1)


def _calib(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 6, 6)).astype(np.float32)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Everything().eval()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    import codegen

    out = tmp_path_factory.mktemp("const") / "model"
    calib = _calib()
    return codegen.compile(_model(), torch.from_numpy(calib[:1]), calib, out_dir=out, prefix="co"), out


def test_every_spelling_is_a_const_node_and_the_float_ir_is_torch():
    from codegen.frontend import from_module

    model, calib = _model(), _calib(4)
    g = from_module(model, torch.from_numpy(calib[:1]))
    consts = [n for n in g.nodes if n.op is Op.CONST]
    # bias_map, gain, coords, pe, cls, pos, scale, pos again (pos - t), extra, huge; `t - shift` with a (T, 1)
    # shift varies along PyTorch's dim 1 only: the existing per-channel affine (no CONST)
    assert len(consts) == 10, g
    readers = {m.op for n in consts for m in g.consumers(n.outputs[0])}
    assert readers == {Op.ADD, Op.SUB, Op.MUL, Op.CONCAT}, readers
    # the (1, 1, H, W) gain stays 3 x 3 (the mul's broadcasting form reads it), the (1, C, H, W) bias is full size
    shapes = [g.tensors[n.outputs[0]].shape for n in consts]
    assert (3, 3, 1) in shapes and (3, 3, 6) in shapes, shapes
    got = run_float(g, to_qgen_layout(g, calib))[g.outputs[0]]
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_probe_shapes_compile_bit_exact(compiled):
    result, _ = compiled
    assert result.verify(_calib(8)).exact
    calib = _calib(64)
    with torch.no_grad():
        want = _model()(torch.from_numpy(calib)).numpy()
    got = result.predict(calib)
    assert np.array_equal(got[:, :5].argmax(1), want[:, :5].argmax(1)) or \
        (got[:, :5].argmax(1) == want[:, :5].argmax(1)).mean() >= 0.9
    # the far branch: the constant (|C| up to ~3000) survives in its own coarse format
    np.testing.assert_allclose(got[:, 5:], want[:, 5:], atol=0.1)


class ProbeTransformer(nn.Module):
    """The two probe models of issue 16 (probeseq7): a sinusoidal PE buffer before nn.TransformerEncoder, and a
    ViT-style cls token + learned pos_embedding before nn.TransformerEncoderLayer, reading x[:, 0]."""

    def __init__(self, cls: bool, n_feat: int = 9, d: int = 32, t: int = 16):
        super().__init__()
        self.cls = cls
        self.embed = nn.Linear(n_feat, d)
        self.register_buffer("pe", sinusoidal(64, d))
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.randn(1, t + 1, d))
        self.enc = nn.TransformerEncoderLayer(d, 4, 64, batch_first=True)
        self.head = nn.Linear(d, 6)

    def forward(self, x):
        x = self.embed(x)
        if self.cls:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embedding
            return self.head(self.enc(x)[:, 0])
        x = x * math.sqrt(32) + self.pe[:, :x.size(1)]
        return self.head(self.enc(x).mean(dim=1))


@pytest.mark.parametrize("cls", [False, True], ids=["pe_buffer", "cls_token"])
def test_probe_transformers_compile_bit_exact(cls):
    import codegen

    torch.manual_seed(0)
    model = ProbeTransformer(cls).eval()
    calib = np.random.default_rng(0).standard_normal((32, 16, 9)).astype(np.float32)
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    assert Op.CONST in {n.op for n in result.graph.nodes}
    assert result.verify(calib[:4]).exact
    with torch.no_grad():
        want = np.concatenate([model(torch.from_numpy(calib[i:i + 1])).numpy() for i in range(len(calib))])
    assert (result.predict(calib).argmax(1) == want.argmax(1)).mean() >= 0.9


def _quantised_inputs(result) -> np.ndarray:
    from codegen.reference import quantize_input

    rng = np.random.default_rng(5)
    x = np.concatenate([_calib(6), 8 * rng.standard_normal((2, 3, 6, 6)).astype(np.float32)])  # 2 saturating
    return quantize_input(result.graph, x)


@pytest.mark.parametrize("flags", ["strict", "sanitizers"])
def test_c_equals_reference_on_host(compiled, flags, tmp_path):
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native

    result, out = compiled
    g = result.graph
    x = _quantised_inputs(result)
    expect = reference_outputs(g, run_int(g, x))
    exe = build_native(out, "co", tmp_path / "co", SANITIZE_FLAGS if flags == "sanitizers" else ["-O2"])
    assert_outputs_equal(run_native(exe, x.reshape(len(x), -1), expect.shape[1]), expect, g, f"host C, {flags}")


QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


@pytest.mark.qemu
@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(compiled, core, tmp_path):
    from codegen.hostcheck import reference_outputs
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    result, out = compiled
    g = result.graph
    x = _quantised_inputs(result)
    expect = reference_outputs(g, run_int(g, x))
    sources = [out / "co_model.c", out / "co_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "co", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    run = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(run.outputs, expect, g, core)


def test_a_constant_the_broadcasting_form_cannot_take_is_stored_full_size(monkeypatch):
    """When the op's broadcasting form refuses the operands (more broadcast runs than its kernels hold), the nodes
    it added are undone and the constant is stored at the activation's size."""
    from codegen.frontend import from_module
    from codegen.ops import eltwise

    model, calib = _model(), _calib(2)
    monkeypatch.setattr(eltwise, "bcast_plan", lambda *shapes: None)
    g = from_module(model, torch.from_numpy(calib[:1]))
    gain = next(n for n in g.nodes if n.op is Op.CONST and g.consumers(n.outputs[0])[0].op is Op.MUL)
    assert g.tensors[gain.outputs[0]].shape == (3, 3, 6), g
    assert all(g.consumers(n.outputs[0]) or n.outputs[0] in g.outputs for n in g.nodes), "an undone node is left"
    got = run_float(g, to_qgen_layout(g, calib))[g.outputs[0]]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(calib)).numpy(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ the Q-format rule and edge values


def test_const_format_is_frac_for_range_rounded_half_up():
    from codegen.fixed import QFormat, frac_for_range, quantize
    from codegen.ops.const import const_format

    assert const_format(np.array([127 / 128, -0.5])) == QFormat(8, 7)  # the top code exactly: 127
    assert const_format(np.array([1.0])) == QFormat(8, 6)  # 1.0 * 2^7 = 128 would saturate
    assert const_format(np.array([3000.0, -1.0])) == QFormat(8, frac_for_range(3000.0))
    assert const_format(np.zeros(4)) == QFormat(8, 7)
    values = np.array([1.0, -1.0, 1 / 128, -1 / 128, 1 / 256])
    assert quantize(values, const_format(values)).tolist() == [64, -64, 1, 0, 0]  # s8.f6, half up


def _edge_graph(wide: bool = True) -> Graph:
    """x (int8 s8.f7, |x| < 1) with constants at the top of their format and a constant 2^10 times larger:
    add, sub (constant first), mul, concat (a constant part on either side); wide: an int16 constant (codes
    -32768 / 32767) added to x through qg_add_wide."""
    rng = np.random.default_rng(11)
    g = Graph({}, [], [], [], source="test")
    g.tensors["x"] = act("x", (1, 6, 8), 7)
    g.inputs.append("x")
    top = np.where(rng.random((1, 6, 8)) < 0.5, 127, -128).astype(np.int64)  # saturated codes (-128 included)
    big = rng.integers(-128, 128, (1, 6, 8))
    cases = [("top", top, 7, Op.ADD, 7), ("big", big, -3, Op.ADD, -3), ("sub", top, 7, Op.SUB, 6),
             ("mul", top, 7, Op.MUL, 7), ("mulbig", big, -3, Op.MUL, 0)]
    for name, data, frac, op, fout in cases:
        g.tensors[f"{name}_v"] = const(f"{name}_v", data, 8, frac)
        g.tensors[f"{name}_c"] = act(f"{name}_c", data.shape, frac)
        g.nodes.append(Node(f"{name}_c", Op.CONST, [f"{name}_v"], [f"{name}_c"], {}))
        g.tensors[name] = act(name, data.shape, fout)
        inputs = [f"{name}_c", "x"] if op is Op.SUB else ["x", f"{name}_c"]
        g.nodes.append(Node(name, op, inputs, [name], {}))
    from codegen.fixed import QFormat
    from codegen.passes import quantize as q

    for n in g.nodes:  # integer attributes of add / sub / mul at the chosen formats
        if n.op is Op.MUL:
            fa, fb = (g.tensors[i].qformat.frac for i in n.inputs)
            n.attrs.update(shift=fa + fb - g.tensors[n.outputs[0]].qformat.frac, act_min=-128, act_max=127)
        elif n.op is not Op.CONST:
            q._quantize_add(g, n, QFormat(8, g.tensors[n.outputs[0]].qformat.frac))
    if wide:
        from codegen.ir import Tensor

        g.tensors["w16_v"] = const("w16_v", np.where(top > 0, 32767, -32768), 16, 13)
        g.tensors["w16_c"] = Tensor("w16_c", top.shape, "int16", QFormat(16, 13))
        g.tensors["w16"] = act("w16", top.shape, 5)
        g.nodes += [Node("w16_c", Op.CONST, ["w16_v"], ["w16_c"], {}), Node("w16", Op.ADD, ["x", "w16_c"], ["w16"], {})]
        q._quantize_add(g, g.nodes[-1], QFormat(8, 5))
        g.outputs.append("w16")
    g.tensors["cls_v"] = const("cls_v", np.array([[[127], [-128], [0], [1], [-1], [64]]]), 8, 2)
    g.tensors["cls"] = act("cls", (1, 6, 1), 2)
    g.nodes.append(Node("cls", Op.CONST, ["cls_v"], ["cls"], {}))
    g.tensors["cat"] = act("cat", (1, 6, 10), 5)
    g.nodes.append(Node("cat", Op.CONCAT, ["cls", "x", "cls"], ["cat"], {"axis": 2, "shifts": [-3, 2, -3]}))
    g.outputs += [name for name, *_ in cases] + ["cat"]
    return finish(g)


def test_edge_constants_c_equals_reference_on_host(tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native

    g = _edge_graph()
    rng = np.random.default_rng(2)
    x = np.stack([np.full((1, 6, 8), 127), np.full((1, 6, 8), -128), rng.integers(-128, 128, (1, 6, 8))])
    expect = reference_outputs(g, run_int(g, x.astype(np.int8)))
    assert {-128, 127} <= set(np.unique(expect)), "the edge cases saturate"
    out = tmp_path / "edge"
    write_atomic(render(g, "ed", ["test"]), out)
    exe = build_native(out, "ed", tmp_path / "ed", SANITIZE_FLAGS)
    assert_outputs_equal(run_native(exe, x.reshape(len(x), -1), expect.shape[1]), expect, g, "host C, sanitizers")


def test_edge_constants_bit_exact_on_atmega2560(tmp_path):
    """The constants in flash (QG_CONST, read through qg_w8: qg_const_s8 is a FLASH_READER), 16-bit int."""
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import reference_outputs
    from codegen.target.avr import avr_missing_tools, run_avr

    if avr_missing_tools():
        pytest.skip(f"missing tools: {avr_missing_tools()}")
    g = _edge_graph()
    x = np.stack([np.full((1, 6, 8), 127), np.random.default_rng(2).integers(-128, 128, (1, 6, 8))]).astype(np.int8)
    expect = reference_outputs(g, run_int(g, x))
    out = tmp_path / "edge"
    write_atomic(render(g, "ed", ["test"]), out)
    assert "QG_CONST" in (out / "ed_weights.c").read_text()
    run = run_avr("atmega2560", out, "ed", x, tmp_path / "avr", expect.shape[1])
    assert_outputs_equal(run.outputs, expect, g, "atmega2560")


# ------------------------------------------------------------------ spellings, ONNX, QAT, MicroPython, refusals


class Spelling(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(5, D)
        self.register_buffer("c", torch.randn(1, 7, D))
        self.register_buffer("per_time", torch.randn(7, 1))  # (T, 1) against (1, T, D)
        self.register_buffer("per_feature", torch.randn(1, 1, D))  # (1, 1, D): the existing channel affine
        self.cls = nn.Parameter(torch.randn(1, 1, D))

    def forward(self, x):
        t = self.fc(x)
        k = self.kind
        if k == "add":
            return t + self.c
        if k == "radd":
            return self.c + t
        if k == "sub":
            return t - self.c
        if k == "rsub":
            return self.c - t
        if k == "mul":
            return self.c * t
        if k == "per_time":
            return t * self.per_time + self.per_time
        if k == "per_feature":
            return t + self.per_feature
        if k == "max":
            return torch.maximum(t, self.c)
        if k == "cls_last":
            return torch.cat([t, self.cls.expand(t.shape[0], -1, -1)], 1)
        if k == "cls_two":  # the constant expanded to two rows
            return torch.cat([self.cls.expand(t.shape[0], 2, -1), t], 1)
        if k == "expand_as":  # stays the channel affine (the expanded constant is not materialised)
            return t * self.per_feature.expand_as(t)
        if k == "folded":  # arithmetic of constants only: folded at compile time, then one const
            return t * (0.5 * self.c + 1.0) + torch.maximum(self.c, self.c * -1.0) - self.c
        if k == "cls_plain":  # batch 1 (the ONNX exporter writes expand(t.shape[0]) as shape arithmetic)
            return torch.cat([t, self.cls], 1)
        if k == "cls_features":
            return torch.cat([self.c[:, :, :3].expand(t.shape[0], -1, -1), t], -1)
        raise AssertionError(k)


KINDS = ["add", "radd", "sub", "rsub", "mul", "per_time", "per_feature", "max", "cls_last", "cls_two", "cls_features",
         "expand_as", "folded"]


@pytest.mark.parametrize("kind", KINDS)
def test_spellings_float_ir_equals_torch_and_reference_runs(kind):
    import codegen

    torch.manual_seed(0)
    model = Spelling(kind).eval()
    calib = np.random.default_rng(1).standard_normal((16, 7, 5)).astype(np.float32)
    from codegen.frontend import from_module

    g = from_module(model, torch.from_numpy(calib[:1]))
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    got = run_float(g, to_qgen_layout(g, calib))[g.outputs[0]]
    from codegen.reference import to_torch_layout

    np.testing.assert_allclose(to_torch_layout(got, g.io_layout[g.outputs[0]]), want, rtol=1e-5, atol=1e-5)
    # (1, 1, D) and (T, 1) vary along one PyTorch dim: the existing channel affine, no CONST
    assert (Op.CONST in {n.op for n in g.nodes}) == (kind not in ("per_feature", "per_time", "expand_as")), g
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    pred = result.predict(calib)
    assert np.abs(pred - want).max() < 0.1 * np.abs(want).max() + 0.1


def test_spellings_host_c_bit_exact():
    """A few spellings through the host C check (cffi): one build each; an int16 constant (--precision)."""
    import codegen

    torch.manual_seed(0)
    calib = np.random.default_rng(1).standard_normal((16, 7, 5)).astype(np.float32)
    for kind, precision in (("rsub", {"sub_const": 16}), ("cls_features", None)):
        result = codegen.compile(Spelling(kind).eval(), torch.from_numpy(calib[:1]), calib, precision=precision)
        assert result.verify(calib[:4]).exact, kind
        if precision:
            assert result.graph.tensors["sub_const"].qformat.bits == 16


def _onnx(model, x, path):
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False)


@pytest.mark.parametrize("kind", ["add", "rsub", "mul", "cls_plain", "cls_last"])  # cls_last: Equal/Where/Expand
def test_onnx_initializer_operands(kind, tmp_path):
    pytest.importorskip("onnx")
    from codegen.frontend.onnx_import import from_onnx_file

    torch.manual_seed(0)
    model = Spelling(kind).eval()
    calib = np.random.default_rng(1).standard_normal((8, 7, 5)).astype(np.float32)
    _onnx(model, torch.from_numpy(calib[:1]), tmp_path / "m.onnx")
    g = from_onnx_file(str(tmp_path / "m.onnx"))
    assert Op.CONST in {n.op for n in g.nodes}, g
    from codegen.reference import to_torch_layout

    with torch.no_grad():  # one sample at a time: cls_plain is batch 1
        want = np.concatenate([model(torch.from_numpy(calib[i:i + 1])).numpy() for i in range(len(calib))])
    got = to_torch_layout(run_float(g, to_qgen_layout(g, calib))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_qat_twin_equals_the_reference():
    from codegen.frontend import from_module
    from codegen.qat import QATModel

    torch.manual_seed(0)
    model = Spelling("rsub").eval()
    calib = np.random.default_rng(1).standard_normal((16, 7, 5)).astype(np.float32)
    import codegen

    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    g = from_module(model, torch.from_numpy(calib[:1]))
    from codegen.passes import calibrate, fold_bn

    g = calibrate.run(fold_bn.run(g), calib)
    q = QATModel(g)
    with torch.no_grad():
        got = q(torch.from_numpy(calib).double()).numpy()
    np.testing.assert_array_equal(got, result.predict(calib))


def test_micropython_module_is_bit_exact(tmp_path):
    """The pure MicroPython module (_const copies the values) on the edge graph: CPython and MicroPython."""
    from test_micropython import check_graph

    x = np.stack([np.full((1, 6, 8), -128), np.random.default_rng(3).integers(-128, 128, (1, 6, 8))]).astype(np.int8)
    check_graph(_edge_graph(wide=False), x, tmp_path, "ed")  # the pure module is int8 only


class Refused(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(5, D)
        self.register_buffer("long", torch.randn(1, 7, D))
        self.register_buffer("mask", torch.where(torch.rand(1, 7, D) < 0.5, float("inf"), 1.0))

    def forward(self, x):
        t = self.fc(x)
        if self.kind == "broadcast_activation":  # the activation would have to grow to the constant's shape
            return t[:, :1] + self.long
        return t * self.mask  # inf: no int8 format holds it (an additive -inf mask before softmax: masks.py)


@pytest.mark.parametrize("kind, message", [
    ("broadcast_activation", r"add of an activation of shape \[1, 1, 16\] and a constant of shape \[1, 7, 16\]; "
                             r"qgen supports a constant that broadcasts to the activation's shape"),
    ("inf", r"mul with a constant of shape \[1, 7, 16\] holding inf or NaN; .*use a large finite value"),
])
def test_what_stays_refused_is_a_user_error(kind, message):
    from codegen.frontend import from_module

    with pytest.raises(UserError, match=message):
        from_module(Refused(kind).eval(), torch.randn(1, 7, 5))
