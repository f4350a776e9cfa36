"""Arithmetic ops (codegen/ops/eltwise.py): mul (same shape and a (1, 1, C) broadcast), sub, maximum, minimum,
affine (x * scale + offset) and prelu.

- Kernels: one quantised graph holding every op with edge parameters (shifts right, zero and left, capped
  at 31; fused clamps; int16 slopes and multipliers at their extremes; -128 * -128; broadcast gates), int8
  and the int16 (qg_wide.c) variants, built once: generated C == codegen.reference.run_int byte for byte
  on random and extreme inputs on the host, under ASan/UBSan, and on Cortex-M0+ and M4 under QEMU.
- The integer rules themselves: exact against arbitrary-precision arithmetic on every int8 pair.
- Front ends: PyTorch spellings (torch.mul, x.mul_(), x / 6, x + 3, torch.maximum, torch.max(a, b), PReLU ...)
  and ONNX give these ops; a squeeze-and-excitation block and the hand-written hardswish
  x * relu6(x + 3) / 6 compile and verify bit-exact; QAT's integer twin equals the reference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish
from torch import nn

from codegen.fixed import QFormat, requantize, round_shift
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import Graph, Node, Op
from codegen.reference import run_int

SHAPE = (5, 7, 6)  # 210 elements: odd sizes, 6 channels


class _Builder:
    """A quantised graph over one int8 input; every branch output (int8) is a model output."""

    def __init__(self, shape, rng):
        self.rng = rng
        self.g = Graph({"x": act("x", shape, 3)}, [], ["x"], [], source="test")

    def node(self, name: str, op: Op, inputs: list[str], shape, bits: int = 8, output: bool = True, **attrs) -> str:
        self.g.nodes.append(Node(name, op, inputs, [name], attrs))
        t = act(name, shape, 3)
        if bits == 16:
            t.dtype, t.qformat = "int16", QFormat(16, 3)
        self.g.tensors[name] = t
        if output:
            self.g.outputs.append(name)
        return name

    def other(self, name: str, src: str, shape, mpy: bool = False) -> str:
        """An int8 tensor independent of src: a random permutation of all 256 values (-128 included) through a
        table; for the MicroPython module (no table kernel there) a clamp of src."""
        if mpy:
            return self.node(name, Op.RELU, [src], shape, output=False, lo=None, hi=None, act_min=-100, act_max=90)
        table = self.rng.permutation(np.arange(-128, 128))
        self.g.tensors[f"{name}_t"] = const(f"{name}_t", table, 8, 3)
        return self.node(name, Op.LUT, [src, f"{name}_t"], shape, output=False, fn="tanh")

    def prelu(self, name: str, src: str, slope: np.ndarray, bits: int = 8, **attrs) -> str:
        self.g.tensors[f"{name}_slope"] = const(f"{name}_slope", slope, 16, attrs["slope_frac"])
        shape = self.g.tensors[src].shape
        return self.node(name, Op.PRELU, [src, f"{name}_slope"], shape, bits, alpha=(0.25,), **attrs)


def _binary(shift_a: int, shift_b: int, shift: int, lo: int = -128, hi: int = 127) -> dict:
    return {"shift_a": shift_a, "shift_b": shift_b, "shift": shift, "act_min": lo, "act_max": hi}


def eltwise_graph(rng, mpy: bool = False) -> Graph:
    """Every case (mpy: the int8 ones, the pure MicroPython module has no table and no int16 kernels)."""
    h, w, c = SHAPE
    b = _Builder(SHAPE, rng)
    a = b.other("a", "x", SHAPE, mpy)
    pooled = b.node("pooled", Op.AVGPOOL2D, ["x"], (1, 1, c), output=False, kernel=(h, w), stride=(h, w),
                    padding=(0, 0, 0, 0), avg_mult=1, avg_shift=5, act_min=-128, act_max=127)
    gate = b.other("gate", pooled, (1, 1, c), mpy)
    rq = {"act_min": -128, "act_max": 127}
    # mul: same shape, a (1, 1, C) gate, right / zero / left / capped shifts, fused clamps
    b.node("mul_s7", Op.MUL, ["x", a], SHAPE, shift=7, **rq)
    b.node("mul_relu_s3", Op.MUL, [a, "x"], SHAPE, shift=3, act_min=0, act_max=127)
    b.node("mul_any_s5", Op.MUL, ["x", a], SHAPE, shift=5, act_min=-50, act_max=90)
    b.node("mul_gate_s6", Op.MUL, ["x", gate], SHAPE, shift=6, **rq)
    b.node("mul_gate_s0", Op.MUL, [a, gate], SHAPE, shift=0, act_min=-20, act_max=100)
    b.node("mul_gate_left", Op.MUL, ["x", gate], SHAPE, shift=-3, **rq)
    b.node("mul_s31", Op.MUL, ["x", "x"], SHAPE, shift=31, **rq)
    b.node("mul_s14", Op.MUL, [a, a], SHAPE, shift=14, **rq)  # -128 * -128 = 2^14 -> 1
    # sub / maximum / minimum: exact left alignment, rounding alignment, a capped right shift, clamps
    b.node("sub", Op.SUB, ["x", a], SHAPE, **_binary(0, -3, 2))
    b.node("sub_round", Op.SUB, [a, "x"], SHAPE, **_binary(4, -1, -2, 0, 127))
    b.node("sub_far", Op.SUB, ["x", a], SHAPE, **_binary(-22, 0, 25))
    b.node("max", Op.MAXIMUM, ["x", a], SHAPE, **_binary(-2, 0, 1))
    b.node("max_round", Op.MAXIMUM, [a, "x"], SHAPE, **_binary(3, 0, -1, -60, 60))
    b.node("min", Op.MINIMUM, ["x", a], SHAPE, **_binary(0, -5, 3))
    b.node("min_capped", Op.MINIMUM, [a, "x"], SHAPE, **_binary(31, -1, 0, 0, 127))
    b.node("sub_relu", Op.SUB, [a, "x"], SHAPE, **_binary(0, -1, 1, 0, 127))  # fast path, each clamp kind
    b.node("max_any", Op.MAXIMUM, ["x", a], SHAPE, **_binary(-1, 0, 2, -50, 60))
    b.node("min_relu", Op.MINIMUM, ["x", a], SHAPE, **_binary(-4, 0, 5, 0, 127))
    # affine: x * mult + bias, extreme multipliers and biases
    for name, mult, bias, shift, lo, hi in [("aff_plus3", 16384, 3 << 17, 15, 0, 96),
                                            ("aff_neg", -32768, 0, 14, -128, 127),
                                            ("aff_sixth", 21845, -(1 << 29) + 1, 20, -128, 127),
                                            ("aff_left", 12345, 777, -3, -128, 127),
                                            ("aff_big_bias", 32767, (1 << 29) - 1, 23, -100, 100),
                                            ("aff_relu", -20000, -5, 12, 0, 127)]:
        b.node(name, Op.AFFINE, [a], SHAPE, scale=1.0, offset=0.0, mult=mult, bias=bias, shift=shift, act_min=lo,
               act_max=hi)
    slopes = rng.integers(-32768, 32768, c)
    slopes[:2] = [-32768, 32767]
    b.prelu("prelu_f14", "x", slopes, slope_frac=14, shift=14, **rq)
    b.prelu("prelu_f0", a, slopes, slope_frac=0, shift=5, act_min=-128, act_max=100)
    b.prelu("prelu_left", "x", np.array([3, -5, 0, 1, -1, 7]), slope_frac=2, shift=-1, **rq)
    b.prelu("prelu_relu", a, slopes, slope_frac=13, shift=11, act_min=0, act_max=127)
    if mpy:
        return finish(b.g)
    # int16 (qg_wide.c): widened by an affine, every op with int16 inputs and / or outputs
    w16 = b.node("w16", Op.AFFINE, ["x"], SHAPE, 16, output=False, scale=1.0, offset=0.0, mult=-29000, bias=777,
                 shift=7, act_min=-32768, act_max=32767)
    v16 = b.node("v16", Op.AFFINE, [a], SHAPE, 16, output=False, scale=1.0, offset=0.0, mult=32767, bias=-12345,
                 shift=6, act_min=-32768, act_max=32767)
    b.node("wmul_16x8", Op.MUL, [w16, "x"], SHAPE, shift=12, **rq)
    b.node("wmul_16x16", Op.MUL, [w16, v16], SHAPE, shift=24, **rq)
    b.node("wmul_gate", Op.MUL, [v16, gate], SHAPE, shift=9, act_min=0, act_max=127)
    m16 = b.node("wmul_to16", Op.MUL, ["x", a], SHAPE, 16, output=False, shift=-2, act_min=-32768, act_max=32767)
    b.node("wsub", Op.SUB, [w16, a], SHAPE, **_binary(0, -8, 8))
    b.node("wmax", Op.MAXIMUM, [a, v16], SHAPE, **_binary(-8, 0, 8))
    b.node("wmin", Op.MINIMUM, [w16, v16], SHAPE, **_binary(0, 1, 7, -100, 127))
    b.node("waff", Op.AFFINE, [m16], SHAPE, scale=1.0, offset=0.0, mult=-32768, bias=(1 << 29) - 1, shift=22, **rq)
    b.prelu("wprelu", w16, slopes, slope_frac=14, shift=22, **rq)
    p16 = b.prelu("wprelu16", v16, slopes, bits=16, output=False, slope_frac=10, shift=9, act_min=-32768,
                  act_max=32767)
    b.node("wsub16", Op.SUB, [p16, m16], SHAPE, **_binary(0, 0, 9))
    # a chain whose inputs die at each step: the planner writes each output over its input (the gate, smaller,
    # is never overwritten)
    t = b.other("a2", "x", SHAPE)
    t = b.node("ip_affine", Op.AFFINE, [t], SHAPE, output=False, scale=1.0, offset=0.0, mult=-16384, bias=99,
               shift=14, **rq)
    t = b.node("ip_mul", Op.MUL, [t, gate], SHAPE, output=False, shift=6, **rq)
    t = b.node("ip_sub", Op.SUB, [t, "x"], SHAPE, output=False, **_binary(0, 0, 1))
    t = b.node("ip_max", Op.MAXIMUM, [t, a], SHAPE, output=False, **_binary(0, 0, 0))
    b.prelu("ip_prelu", t, slopes, slope_frac=14, shift=14, **rq)
    return finish(b.g)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic

    rng = np.random.default_rng(16)
    g = eltwise_graph(rng)
    out = tmp_path_factory.mktemp("eltwise") / "model"
    write_atomic(render(g, "ew", ["test"]), out)
    x = edge_inputs(rng, SHAPE, n_random=6)
    return g, out, x, reference_outputs(g, run_int(g, x))


def test_every_variant_is_exercised(model):
    from codegen.kernels import select

    g = model[0]
    called = {select(g, n).fn for n in g.nodes}
    for op in (Op.MUL, Op.SUB, Op.MAXIMUM, Op.MINIMUM, Op.AFFINE, Op.PRELU):
        from codegen.ops import SPEC

        same_shape = {k for k in SPEC[op].kernels if "_bcast_" not in k}  # broadcasting: tests/test_broadcast.py
        assert same_shape <= called, (op, SPEC[op].kernels)
    in_place = [n.name for n in g.nodes if g.memory[n.outputs[0]] == g.memory[n.inputs[0]]]
    assert {"ip_affine", "ip_mul", "ip_sub", "ip_max"} <= set(in_place), in_place


@pytest.mark.parametrize("flags", ["strict", "sanitizers"])
def test_c_equals_reference_on_host(model, flags, tmp_path):
    g, out, x, expect = model
    exe = build_native(out, "ew", tmp_path / "ew", SANITIZE_FLAGS if flags == "sanitizers" else ["-O2"])
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, f"host C, {flags}")


QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


@pytest.mark.qemu
@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(model, core, tmp_path):
    from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = model
    sources = [out / "ew_model.c", out / "ew_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "ew", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"), count_layers=True)
    result = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert result.outputs.shape == expect.shape
    assert_outputs_equal(result.outputs, expect, g, core)
    for n, count in zip(g.nodes, result.instructions_per_layer or []):  # the note reports M4's
        print(f"{core} {n.name}: {count / g.tensors[n.outputs[0]].size:.1f} instructions/element")


# ------------------------------------------------------------------ the integer rules


def test_mul_rule_is_one_rounding_of_the_exact_product():
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
    prod = a * b
    for shift in (1, 7, 14, 15):
        g = Graph({}, [], [], [])
        n = Node("m", Op.MUL, [], [], {"shift": shift, "act_min": -128, "act_max": 127})
        from codegen.ops.eltwise import i_mul

        got = i_mul(g, n, [a, b])
        exact = np.floor(prod / 2.0**shift + 0.5).clip(-128, 127)  # round half up, saturate
        assert np.array_equal(got, exact)


def test_sub_of_minus_128_does_not_wrap():
    from codegen.ops.eltwise import i_binary

    n = Node("s", Op.SUB, [], [], _binary(0, 0, 0))
    assert int(i_binary(None, n, [np.array(0), np.array(-128)])) == 127
    assert int(i_binary(None, n, [np.array(127), np.array(-128)])) == 127
    assert int(i_binary(None, n, [np.array(-128), np.array(127)])) == -128


def test_maximum_is_max_of_each_input_requantised_once():
    """The documented rule: aligning exactly then requantising the max == max of the two requantisations."""
    from codegen.ops.eltwise import i_binary
    from codegen.passes.quantize import _quantize_add

    a, b = (v.ravel() for v in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    for fa, fb, fo in [(5, 2, 3), (0, 7, 7), (6, 6, 1), (2, 4, 6)]:
        g = Graph({"a": act("a", (1,), fa), "b": act("b", (1,), fb)}, [], [], [])
        for op, fn in ((Op.MAXIMUM, np.maximum), (Op.MINIMUM, np.minimum)):
            n = Node("m", op, ["a", "b"], ["y"], {})
            _quantize_add(g, n, QFormat(8, fo))
            want = fn(requantize(a, fa - fo, -128, 127), requantize(b, fb - fo, -128, 127))
            assert np.array_equal(i_binary(g, n, [a, b]), want), (op, fa, fb, fo)


def test_affine_params_hold_the_constants():
    from codegen.ops.eltwise import affine_params

    for scale, offset, fx, fo in [(0.5, 0.0, 5, 6), (1 / 6, 0.0, 4, 6), (1.0, 3.0, 5, 4), (-1.0, 2.0, 7, 5),
                                  (3.0, -1000.0, 6, -3), (1e-6, 0.0, 7, 7), (0.0, 0.25, 3, 7)]:
        p = affine_params(scale, offset, fx, fo)
        fm = p["shift"] - fx + fo
        assert abs(p["mult"]) <= 32767 and abs(p["bias"]) < 2**29 and -31 <= p["shift"] <= 31
        assert abs(p["mult"] * 2.0**-fm - scale) <= 2.0 ** -(fm + 1) + 1e-12
        x = np.arange(-128, 128)
        got = requantize(x * p["mult"] + p["bias"], p["shift"], -128, 127) * 2.0**-fo
        want = np.clip(x * 2.0**-fx * scale + offset, -128 * 2.0**-fo, 127 * 2.0**-fo)
        assert np.max(np.abs(got - want)) <= 2.0**-fo + abs(scale) * 2.0 ** -(fm + 1) * 128 * 2.0**-fx, (scale, offset)


def test_prelu_rule():
    from codegen.ops.eltwise import i_prelu

    x = np.arange(-128, 128).reshape(1, -1, 1).repeat(2, axis=2)  # (1, 256, 2): channels 2
    g = Graph({"s": const("s", np.array([-8192, 4096]), 16, 14)}, [], [], [])
    n = Node("p", Op.PRELU, ["x", "s"], ["y"], {"slope_frac": 14, "shift": 14, "act_min": -128, "act_max": 127})
    y = i_prelu(g, n, [x])
    assert np.array_equal(y[0, :, 0], np.where(x[0, :, 0] >= 0, x[0, :, 0], round_shift(x[0, :, 0] * -8192, 14)))
    assert np.array_equal(y[0, :, 1], np.where(x[0, :, 1] >= 0, x[0, :, 1], round_shift(x[0, :, 1] * 4096, 14)))


# ------------------------------------------------------------------ front ends and whole models


class Spellings(nn.Module):
    def __init__(self):
        super().__init__()
        self.prelu = nn.PReLU(3)
        self.prelu1 = nn.PReLU()

    def forward(self, x):
        a = torch.mul(x, 0.5) + x / 6 - (2 - x) + x.mul(2.0) - 1.5 + (-x)
        b = torch.maximum(a, x) + torch.max(x, a) + torch.minimum(a, x) + torch.min(x, a) - torch.sub(a, x)
        c = self.prelu(x) * self.prelu1(a) + F.prelu(x, torch.tensor([0.1]))
        d = x.clone()
        d.mul_(torch.sigmoid(x))
        return b + c + d + x * torch.tensor(3.0) + x.div(4)


def _ops(g: Graph) -> set[Op]:
    return {n.op for n in g.nodes}


def test_pytorch_spellings_lower_to_the_new_ops():
    from codegen.frontend import from_module

    torch.manual_seed(0)
    g = from_module(Spellings().eval(), torch.randn(1, 3, 4, 5))
    assert {Op.MUL, Op.SUB, Op.MAXIMUM, Op.MINIMUM, Op.AFFINE, Op.PRELU} <= _ops(g)
    affine = [(n.attrs["scale"], n.attrs["offset"]) for n in g.nodes if n.op is Op.AFFINE]
    for expected in [(0.5, 0.0), (1 / 6, 0.0), (-1.0, 2.0), (2.0, 0.0), (1.0, -1.5), (-1.0, 0.0), (3.0, 0.0),
                     (0.25, 0.0)]:
        assert any(abs(s - expected[0]) < 1e-12 and abs(o - expected[1]) < 1e-12 for s, o in affine), expected


@pytest.mark.parametrize("model, message", [
    (lambda m, x: x / (x + 1), "division by an activation"),
    (lambda m, x: F.avg_pool2d(x, (4, 1)) * m.k,
     r"mul of an activation of shape \[1, 3, 1, 5\] and a constant of shape \[1, 3, 4, 5\]"),
    (lambda m, x: torch.sub(x, x * 2, alpha=2), "alpha=2"),
    (lambda m, x: F.relu(F.avg_pool2d(x, (4, 1)).expand_as(x)),  # broadcasts work in ops: tests/test_broadcast.py
     r"expands \[1, 3, 1, 5\] to \[1, 3, 4, 5\]; qgen supports broadcasting only where an op does it"),
])
def test_unsupported_arithmetic_is_a_clear_user_error(model, message):
    from codegen.errors import UserError
    from codegen.frontend import from_module

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.ones(1, 3, 4, 5))  # larger than the activation it meets: refused

        def forward(self, x):
            return model(self, x)

    with pytest.raises(UserError, match=message):
        from_module(Wrap().eval(), torch.randn(1, 3, 4, 5))


class SqueezeExcite(nn.Module):
    """conv -> global average -> 1x1 conv -> relu -> 1x1 conv -> sigmoid / hardsigmoid -> x * gate."""

    def __init__(self, hard: bool, linear: bool):
        super().__init__()
        self.hard, self.linear = hard, linear
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 4) if linear else nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Linear(4, 8) if linear else nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        s = F.adaptive_avg_pool2d(y, 1)
        if self.linear:
            s = self.fc2(torch.relu(self.fc1(torch.flatten(s, 1)))).view(-1, 8, 1, 1)
        else:
            s = self.fc2(torch.relu(self.fc1(s)))
        gate = F.hardsigmoid(s) if self.hard else torch.sigmoid(s)
        return self.head(y * gate)


class HandHardswish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.out(y * F.relu6(y + 3.) / 6.)


class SequenceGate(nn.Module):
    """(1, C, L) sequences: x * sigmoid(mean over L), PReLU, x - y, torch.maximum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.act = nn.PReLU(6)

    def forward(self, x):
        y = self.act(self.conv(x))
        y = y * torch.sigmoid(F.avg_pool1d(y, y.shape[2]))
        return torch.maximum(y, 0.1 * y) - torch.minimum(y, y * 0.25)


def _compile_and_verify(model: nn.Module, shape, ops: set[Op], max_error: float):
    import codegen

    torch.manual_seed(1)
    model = model.eval()
    calib = np.random.default_rng(0).standard_normal((48, *shape)).astype(np.float32)
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib)
    assert ops <= _ops(result.graph), result.graph
    check = result.verify(calib[:16])
    assert check.exact, check
    with torch.no_grad():
        want = model(torch.from_numpy(calib)).numpy()
    err = np.abs(result.predict(calib) - want).max()
    assert err <= max_error * np.abs(want).max(), (err, np.abs(want).max())
    return result


@pytest.mark.parametrize("hard", [False, True], ids=["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("linear", [False, True], ids=["conv1x1", "linear"])
def test_squeeze_excitation_compiles_bit_exact(hard, linear):
    torch.manual_seed(0)
    result = _compile_and_verify(SqueezeExcite(hard, linear), (3, 8, 8), {Op.MUL}, 0.1)
    mul = next(n for n in result.graph.nodes if n.op is Op.MUL)
    assert result.graph.tensors[mul.inputs[1]].shape == (1, 1, 8)  # the gate is broadcast, not expanded


def test_hand_written_hardswish_compiles_bit_exact():
    torch.manual_seed(0)
    result = _compile_and_verify(HandHardswish(), (2, 6, 6), {Op.AFFINE, Op.MUL}, 0.1)
    affine = [n for n in result.graph.nodes if n.op is Op.AFFINE]
    assert any(n.attrs.get("act") == (0.0, 6.0) for n in affine), "relu6(x + 3) fuses into the affine op"


def test_sequence_ops_compile_bit_exact():
    torch.manual_seed(0)
    _compile_and_verify(SequenceGate(), (4, 11), {Op.MUL, Op.PRELU, Op.SUB, Op.MAXIMUM, Op.MINIMUM, Op.AFFINE},
                        0.1)


def test_qat_twin_equals_the_reference():
    from codegen import qat

    torch.manual_seed(0)
    model = SequenceGate().eval()
    calib = np.random.default_rng(0).standard_normal((32, 4, 11)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(calib[:1]), calib)
    result = qat.compile(qm, prefix="sq")
    with torch.no_grad():
        fake = qm.eval()(torch.from_numpy(calib)).numpy()
    assert np.array_equal(fake, result.predict(calib))


@pytest.mark.parametrize("name", ["sequence", "se", "hardswish"])
def test_onnx_lowers_to_the_new_ops(name, tmp_path):
    pytest.importorskip("onnx")
    import contextlib
    import io
    import warnings

    from codegen.frontend import from_module
    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout

    torch.manual_seed(0)
    model, shape, ops = {"sequence": (SequenceGate(), (4, 11), {Op.MUL, Op.PRELU, Op.SUB, Op.MAXIMUM, Op.MINIMUM,
                                                                 Op.AFFINE}),
                         "se": (SqueezeExcite(True, False), (3, 8, 8), {Op.MUL, Op.LUT}),
                         "hardswish": (HandHardswish(), (2, 6, 6), {Op.MUL, Op.AFFINE})}[name]
    model = model.eval()
    x = torch.randn(1, *shape)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path))
    g = from_onnx_file(str(path))
    assert ops <= _ops(g), g
    want = run_float(from_module(model, x), to_qgen_layout(None, x.numpy()))
    got = run_float(g, to_qgen_layout(None, x.numpy()))
    np.testing.assert_allclose(got[g.outputs[0]], list(want.values())[-1], rtol=1e-5, atol=1e-5)


def test_micropython_kernels_equal_the_reference(model, tmp_path):
    """The pure MicroPython module's kernels (run under CPython) on the int8 cases of the kernel graph."""
    import importlib.util

    from codegen.emit.micropython import render_micropython

    g = eltwise_graph(np.random.default_rng(5), mpy=True)
    for name, text in render_micropython(g, "ewpy", ["test"]).items():
        (tmp_path / name).write_text(text)
    spec = importlib.util.spec_from_file_location("qgen_mpy_ewpy", tmp_path / "ewpy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = model[2]
    expect = reference_outputs(g, run_int(g, x))
    got = np.array([np.frombuffer(module.predict(v.tobytes()), dtype=np.int8) for v in x])
    assert_outputs_equal(got, expect, g, "MicroPython")


class PerChannelConstants(nn.Module):
    """(x - mean) / std on the input, conv * k[c], + k[c], and per-feature constants on a vector."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1))
        self.register_buffer("w", torch.tensor([0.5, -1.0, 2.0, 0.25, 1.5]))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = self.conv((x - self.mean) / self.std) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
        y = torch.relu(y) + torch.tensor([-1.0, -0.3, 0.3, 1.0]).view(4, 1, 1)
        v = self.fc(y.mean((2, 3)))
        return (1 - v) * self.w - self.w


def test_per_channel_constants_fold_or_lower_bit_exact():
    """Constant tensors along the channel dim become a BatchNorm: folded into the conv before it, else a
    depthwise 1x1 (images) or channel_affine (vectors); torch.tensor([...]).view(...) constants included."""
    from codegen.frontend import from_module

    torch.manual_seed(0)
    g = from_module(PerChannelConstants().eval(), torch.randn(1, 3, 6, 6))
    assert [n.op for n in g.nodes].count(Op.BATCH_NORM) == 6, g
    result = _compile_and_verify(PerChannelConstants(), (3, 6, 6), {Op.DEPTHWISE_CONV2D, Op.CHANNEL_AFFINE}, 0.2)
    assert not any(n.op is Op.MUL for n in result.graph.nodes)
