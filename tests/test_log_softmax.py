"""log_softmax (codegen/ops/eltwise.py LOG_SOFTMAX): softmax's Q14 exp sum, an integer natural log and one rounding
into s8.f4.

- The integer rule: its ln of the sum within 2^-12 of math.log for every reachable sum shape; on random and edge
  rows the output within 1/2 LSB (+ the ln error) of the exact log_softmax of the int8 inputs; argmax kept.
- Kernel: one quantised graph of log_softmax over rows of 1, 10, 37 and 256 values at input fracs 0, 3, 7 and 12,
  built once: generated C == codegen.reference.run_int byte for byte on edge inputs (all equal, one huge, -128,
  127) on the host (strict and ASan/UBSan) and on Cortex-M0+ and M4 under QEMU.
- Front ends: F.log_softmax, nn.LogSoftmax, torch.log_softmax, x.log_softmax (any dim) and ONNX LogSoftmax give
  the op; a classifier head compiles bit-exact with argmax equal to torch's; QAT's integer twin equals the
  reference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgen_testing import act, assert_outputs_equal, const, finish
from torch import nn

from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import Graph, Node, Op
from codegen.ops.eltwise import LN2_Q16, LN_TABLE_Q16, ln_sum_q16
from codegen.passes.quantize import EXP_TABLE_FRAC, LOG_SOFTMAX_FRAC, softmax_exp_table
from codegen.reference import run_int

ROWS = 8  # the edge rows of _edge_rows
CASES = [(1, 3), (10, 0), (37, 7), (256, 12), (37, 3)]  # (row size, input frac)


def _edge_rows(rng, size: int) -> np.ndarray:
    """All -128, all 127, all 0, one huge among -128, two extremes, random, random near the top."""
    rows = [np.full(size, -128), np.full(size, 127), np.zeros(size), np.full(size, -128), np.full(size, -128),
            rng.integers(-128, 128, size), rng.integers(-128, 128, size), rng.integers(100, 128, size)]
    rows[3][0] = 127
    rows[4][size // 2] = 127
    rows[4][size - 1] = -127
    return np.stack(rows).astype(np.int8)


def _graph() -> Graph:
    """Every case in one graph of one input (ROWS, sum of sizes): a slice per case (its own input frac)."""
    g = Graph({}, [], [], [], source="test")
    total = sum(s for s, _ in CASES)
    g.tensors["x"] = act("x", (ROWS, total), 3)
    g.inputs.append("x")
    start = 0
    for i, (size, fin) in enumerate(CASES):
        x, y, t = f"x{i}", f"y{i}", f"t{i}"
        g.tensors[x] = act(x, (ROWS, size), fin)
        g.nodes.append(Node(x, Op.SLICE, ["x"], [x], {"axis": 1, "start": start, "length": size}))
        start += size
        g.tensors[t] = const(t, softmax_exp_table(fin), 16, EXP_TABLE_FRAC)
        g.tensors[y] = act(y, (ROWS, size), LOG_SOFTMAX_FRAC)
        g.nodes.append(Node(y, Op.LOG_SOFTMAX, [x, t], [y], {}))
        g.outputs.append(y)
    return finish(g)


def _inputs(rng) -> np.ndarray:
    one = np.concatenate([_edge_rows(rng, size) for size, _ in CASES], axis=1)
    two = rng.integers(-128, 128, one.shape).astype(np.int8)
    return np.stack([one, two])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic

    rng = np.random.default_rng(7)
    g = _graph()
    out = tmp_path_factory.mktemp("logsm") / "model"
    write_atomic(render(g, "ls", ["test"]), out)
    x = _inputs(rng)
    return g, out, x, reference_outputs(g, run_int(g, x))


# ------------------------------------------------------------------ the integer rule


def test_ln_of_the_sum_is_close_to_math_log():
    total = np.unique(np.concatenate([np.arange(16384, 70000), np.geomspace(16384, 2**31 - 1, 20000).astype(np.int64),
                                      [2**31 - 1, 2**30, 2**30 - 1]]))
    got = ln_sum_q16(total) / 65536.0
    want = np.log(total / 16384.0)
    assert np.abs(got - want).max() < 2.0**-12
    assert np.all(np.diff(ln_sum_q16(total)) >= 0)  # monotone


def test_c_ln_table_is_the_reference_table():
    import re
    from pathlib import Path

    src = (Path(__file__).parents[1] / "firmware" / "kernels" / "qg_log_softmax.c").read_text()
    body = re.search(r"qg_ln_table_q16\[33\] QG_CONST = \{([^}]*)\}", src).group(1)
    assert [int(v) for v in body.replace("\n", " ").split(",")] == LN_TABLE_Q16.tolist()
    assert LN_TABLE_Q16[32] == LN2_Q16 == 45426 and "45426" in src


def test_rule_is_close_to_the_exact_log_softmax_and_keeps_argmax():
    g = _graph()
    rng = np.random.default_rng(3)
    x = _inputs(rng)
    outs = run_int(g, x)
    start = 0
    for i, (size, fin) in enumerate(CASES):
        xi = x[:, :, start:start + size].astype(np.float64) * 2.0**-fin
        start += size
        exact = torch.log_softmax(torch.from_numpy(xi), dim=-1).numpy()
        got = outs[f"y{i}"].astype(np.float64) * 2.0**-LOG_SOFTMAX_FRAC
        inside = exact > -128 * 2.0**-LOG_SOFTMAX_FRAC
        # one rounding (1/2 LSB) plus the Q14 exp table's and the ln's errors
        assert np.abs(got - exact)[inside].max() <= 0.5 * 2.0**-LOG_SOFTMAX_FRAC + 2e-3, (size, fin)
        assert np.all(got[~inside] == -8.0)
        assert np.all(got <= 0)
        # monotone: the largest input gets the largest output (ties only where f_in > f_out rounds inputs together)
        top = xi.argmax(axis=-1)
        assert np.array_equal(np.take_along_axis(outs[f"y{i}"], top[..., None], -1)[..., 0], outs[f"y{i}"].max(-1))


def test_rows_over_65536_values_are_a_clear_user_error():
    from codegen.errors import UserError
    from codegen.ops.eltwise import q_log_softmax

    g = Graph({"x": act("x", (65537,), 3), "y": act("y", (65537,), 4)}, [Node("y", Op.LOG_SOFTMAX, ["x"], ["y"], {})],
              ["x"], ["y"], source="test")
    with pytest.raises(UserError, match="log_softmax over 65537 values; qgen supports up to 65536"):
        q_log_softmax(g, g.nodes[0], None)


# ------------------------------------------------------------------ the kernel


@pytest.mark.parametrize("flags", ["strict", "sanitizers"])
def test_c_equals_reference_on_host(model, flags, tmp_path):
    g, out, x, expect = model
    exe = build_native(out, "ls", tmp_path / "ls", SANITIZE_FLAGS if flags == "sanitizers" else ["-O2"])
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, f"host C, {flags}")


QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


@pytest.mark.qemu
@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(model, core, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = model
    sources = [out / "ls_model.c", out / "ls_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "ls", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(result.outputs, expect, g, core)


def test_bit_exact_on_atmega2560(model, tmp_path):
    """16-bit int and the exp / ln tables in flash (QG_CONST, read through qg_w16 / qg_w32)."""
    from codegen.target.avr import avr_missing_tools, run_avr

    if avr_missing_tools():
        pytest.skip(f"missing tools: {avr_missing_tools()}")
    g, out, x, expect = model
    run = run_avr("atmega2560", out, "ls", x, tmp_path / "avr", expect.shape[1])
    assert_outputs_equal(run.outputs, expect, g, "atmega2560")


# ------------------------------------------------------------------ front ends, QAT


class Head(nn.Module):
    def __init__(self, spelling: str, dim: int = 1):
        super().__init__()
        self.fc = nn.Linear(12, 10)
        self.spelling, self.dim = spelling, dim
        self.ls = nn.LogSoftmax(dim=dim)

    def forward(self, x):
        z = self.fc(x)
        if self.spelling == "F":
            return F.log_softmax(z, dim=self.dim)
        if self.spelling == "module":
            return self.ls(z)
        if self.spelling == "torch":
            return torch.log_softmax(z, self.dim)
        return z.log_softmax(-1)


class ConvHead(nn.Module):
    """log_softmax over the channel dim of a (N, C, L) map: not the innermost PyTorch dim."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)

    def forward(self, x):
        return F.log_softmax(self.conv(x), dim=1)


def _ops(g) -> set:
    return {n.op for n in g.nodes}


@pytest.mark.parametrize("spelling", ["F", "module", "torch", "method"])
def test_pytorch_spellings_compile_bit_exact_and_keep_argmax(spelling):
    import codegen

    torch.manual_seed(0)
    model = Head(spelling).eval()
    calib = (3 * np.random.default_rng(0).standard_normal((48, 12))).astype(np.float32)
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    assert Op.LOG_SOFTMAX in _ops(result.graph), result.graph
    assert result.verify(calib[:16]).exact
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    got = result.predict(calib)
    inside = want > -7.5
    assert np.abs(got - want)[inside].max() < 0.25, np.abs(got - want)[inside].max()
    gap = np.sort(want, axis=1)[:, -1] - np.sort(want, axis=1)[:, -2]
    clear = gap > 0.3
    assert np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear])


def test_log_softmax_over_channels_of_a_sequence():
    import codegen

    torch.manual_seed(0)
    model = ConvHead().eval()
    calib = np.random.default_rng(1).standard_normal((32, 4, 9)).astype(np.float32)
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    assert Op.LOG_SOFTMAX in _ops(result.graph)
    assert result.verify(calib[:8]).exact
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    inside = want > -7.5
    assert np.abs(result.predict(calib) - want)[inside].max() < 0.25


def test_onnx_log_softmax(tmp_path):
    pytest.importorskip("onnx")
    import contextlib
    import io
    import warnings

    from codegen.frontend import from_module
    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout

    torch.manual_seed(0)
    model = Head("F").eval()
    x = torch.randn(1, 12)
    path = tmp_path / "ls.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path))
    g = from_onnx_file(str(path))
    assert Op.LOG_SOFTMAX in _ops(g), g
    want = run_float(from_module(model, x), to_qgen_layout(None, x.numpy()))
    got = run_float(g, to_qgen_layout(None, x.numpy()))
    np.testing.assert_allclose(got[g.outputs[0]], list(want.values())[-1], rtol=1e-5, atol=1e-5)


def test_qat_twin_equals_the_reference():
    from codegen import qat

    torch.manual_seed(0)
    model = Head("F").eval()
    calib = (3 * np.random.default_rng(0).standard_normal((32, 12))).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(calib[:1]), calib)
    result = qat.compile(qm, prefix="ls")
    with torch.no_grad():
        fake = qm.eval()(torch.from_numpy(calib)).numpy()
    assert np.array_equal(fake, result.predict(calib))
