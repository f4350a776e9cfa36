"""relu (clamp), add, lut, softmax: element-wise ops (softmax: along the last axis)."""
from __future__ import annotations

from math import sqrt
from typing import Callable

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _no_check, _zero_macs
from .window import clip, same_shape

# ---------------------------------------------------------------- relu / clamp


def f_relu(g, n, xs):
    return clip(xs[0], n.attrs["lo"], n.attrs["hi"])


def i_relu(g, n, xs):
    return np.clip(xs[0], n.attrs["act_min"], n.attrs["act_max"])


def q_relu(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))
    n.attrs["act_min"], n.attrs["act_max"] = q._act_bounds((n.attrs["lo"], n.attrs["hi"]), out.qformat)


def torch_relu(node, xs, const):
    from .. import torch_ir

    return torch_ir.clamp(xs[0], node.attrs["lo"], node.attrs["hi"])


# ---------------------------------------------------------------- add


def check_add(g, n) -> None:
    t = g.tensors
    if t[n.inputs[0]].shape != t[n.inputs[1]].shape:
        raise VerifyError(f"{n.where()}: add of shapes {t[n.inputs[0]].shape} and {t[n.inputs[1]].shape}")


def f_add(g, n, xs):
    return clip(xs[0] + xs[1], *n.attrs.get("act", (None, None)))


def i_add(g, n, xs):
    # align both inputs to a common frac (exact left shift, or rounding right shift), add, requantise
    from ..fixed import requantize, round_shift

    acc = round_shift(xs[0], n.attrs["shift_a"]) + round_shift(xs[1], n.attrs["shift_b"])
    return requantize(acc, n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_add(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    q._quantize_add(g, n, out.qformat)


def torch_add(node, xs, const):
    from .. import torch_ir

    return torch_ir.clamp(xs[0] + xs[1], *node.attrs.get("act", (None, None)))


# ---------------------------------------------------------------- lut


def lut_function(attrs: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The float function behind a LUT node (also used to build its integer table)."""
    fn = attrs["fn"]
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    if fn == "sigmoid":
        return sigmoid
    if fn == "tanh":
        return np.tanh
    if fn == "hardsigmoid":
        return lambda v: np.clip(v / 6.0 + 0.5, 0.0, 1.0)
    if fn == "hardswish":
        return lambda v: v * np.clip(v + 3.0, 0.0, 6.0) / 6.0
    if fn == "silu":
        return lambda v: v * sigmoid(v)
    if fn == "gelu":
        if attrs.get("approximate", "none") == "tanh":
            return lambda v: 0.5 * v * (1.0 + np.tanh(sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))
        from scipy.special import erf  # noqa: PLC0415 - only for exact GELU

        return lambda v: 0.5 * v * (1.0 + erf(v / sqrt(2.0)))
    if fn == "leaky_relu":
        return lambda v: np.where(v >= 0, v, v * attrs["alpha"])
    if fn == "elu":
        return lambda v: np.where(v >= 0, v, attrs["alpha"] * (np.exp(np.minimum(v, 0)) - 1.0))
    raise KeyError(fn)


def f_lut(g, n, xs):
    return lut_function(n.attrs)(xs[0])


def i_lut(g, n, xs):
    return g.tensors[n.inputs[1]].data.astype(np.int64)[xs[0] + 128]


def q_lut(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    fin = g.tensors[n.inputs[0]].qformat.frac
    q._set_act(out, act(out.name, q.LUT_OUTPUT_FRAC.get(n.attrs["fn"])))
    q._add_table(g, n, "table", q.lut_table(n.attrs, fin, out.qformat.frac), 8, out.qformat.frac)


def torch_lut(node, xs, const):
    from .. import torch_ir

    return torch_ir.lut_function(node.attrs)(xs[0])


# ---------------------------------------------------------------- softmax


def f_softmax(g, n, xs):
    x = xs[0]
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def i_softmax(g, n, xs):
    """Integer softmax over the last axis; output s8.f7.

    e = exp_table[max - x] (Q14 values of exp(-k * 2^-f_in), k = 0..255); out = round_half_up(128 * e /
    sum(e)) computed as floor((256 * e + sum) / (2 * sum)), then saturated to 127.
    """
    x = xs[0]
    table = g.tensors[n.inputs[1]].data.astype(np.int64)
    d = x.max(axis=-1, keepdims=True) - x
    e = table[d]
    total = e.sum(axis=-1, keepdims=True)
    return np.minimum((256 * e + total) // (2 * total), 127)


def q_softmax(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    fin = g.tensors[n.inputs[0]].qformat.frac
    q._set_act(out, act(out.name, q.SOFTMAX_FRAC))
    q._add_table(g, n, "exp_table", q.softmax_exp_table(fin), 16, q.EXP_TABLE_FRAC)


def torch_softmax(node, xs, const):
    import torch

    return torch.softmax(xs[0], dim=-1)


def kernel_relu(variant: str) -> tuple[str, None]:
    return ("qg_clamp_s8" if variant == "s8" else "qg_clamp_s16"), None  # scalar arguments


def kernel_add(variant: str) -> tuple[str, str]:
    return ("qg_add_s8", "qg_add_params_t") if variant == "s8" else ("qg_add_wide", "qg_add_wide_params_t")


def kernel_softmax(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"softmax has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_softmax_s8", "qg_softmax_params_t"


def kernel_lut(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"lut has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_lut_s8", "qg_lut_params_t"


def py_relu(b, n, index: int):
    params = [("size", b.g.tensors[n.outputs[0]].size), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"])]
    return "_clamp", params, ""


def py_add(b, n, index: int):
    (ma,), (ra,), (sa,) = b.triples([n.attrs["shift_a"]])
    (mb,), (rb,), (sb,) = b.triples([n.attrs["shift_b"]])
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    params = [("size", b.g.tensors[n.outputs[0]].size), ("mul_a", ma), ("rnd_a", ra), ("shr_a", sa),
              ("mul_b", mb), ("rnd_b", rb), ("shr_b", sb), ("mul", mo), ("rnd", ro), ("shr", so),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_add", params, ""


def c_relu(b, index: int, n):
    io = b.io(index, n)
    return None, [], (f"qg_clamp_s8({b.g.tensors[io.out].size}, {n.attrs['act_min']}, {n.attrs['act_max']}, "
                      f"{io.ins[0]}, {io.out_expr});")


def c_relu_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return None, [], (f"qg_clamp_s16({b.g.tensors[io.out].size}, {n.attrs['act_min']}, {n.attrs['act_max']}, "
                      f"{io.ins[0]}, {io.out_expr});")


def c_add(b, index: int, n):
    io = b.io(index, n)
    fields = [("size", b.g.tensors[io.out].size), ("shift_a", n.attrs["shift_a"]), ("shift_b", n.attrs["shift_b"]),
              ("shift", n.attrs["shift"]), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "qg_add_params_t", fields, f"qg_add_s8(&{io.struct}, {io.ins[0]}, {io.ins[1]}, {io.out_expr});"


def c_add_wide(b, index: int, n):
    """qg_add_wide: untyped operands with their widths (any mix of int8 and int16)."""
    io = b.io(index, n, wide=True)
    fields = [("size", b.g.tensors[io.out].size), ("a_bits", io.bits[io.xs[0]]), ("b_bits", io.bits[io.xs[1]]),
              ("out_bits", io.bits[io.out]), ("shift_a", n.attrs["shift_a"]), ("shift_b", n.attrs["shift_b"]),
              ("shift", n.attrs["shift"]), *io.act]
    return ("qg_add_wide_params_t", fields,
            f"qg_add_wide(&{io.struct}, {io.raw[0]}, {io.raw[1]}, {io.out_raw});")


def c_softmax(b, index: int, n):
    io = b.io(index, n)
    shape = b.g.tensors[io.out].shape
    table = b.const_tensor(io.sym, n.inputs[1], "exp_table")
    fields = [("rows", b.g.tensors[io.out].size // shape[-1]), ("row_size", shape[-1]), ("exp_table", table)]
    return "qg_softmax_params_t", fields, f"qg_softmax_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_lut(b, index: int, n):
    io = b.io(index, n)
    table = b.const_tensor(io.sym, n.inputs[1], f"{n.attrs['fn']}_table")
    fields = [("size", b.g.tensors[io.out].size), ("table", table)]
    return "qg_lut_params_t", fields, f"qg_lut_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def qat_relu(q, i: int, n, xs, s):
    import torch

    return torch.clamp(xs[0], s.attrs["act_min"], s.attrs["act_max"])


def qat_add(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    a = requant(xs[0] * pow2(-s.attrs["shift_a"]), None, None, s.ste)
    b = requant(xs[1] * pow2(-s.attrs["shift_b"]), None, None, s.ste)
    return requant((a + b) * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"], s.ste)


def qat_softmax(q, i: int, n, xs, s):
    """exact: the Q14 exp table as the kernel; training: float softmax, fake-quantised to s8.f7."""
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    if s.exact:
        table = q._tables[n.outputs[0]]
        xi = x.to(torch.int64)
        e = table[xi.max(dim=-1, keepdim=True).values - xi]
        total = e.sum(dim=-1, keepdim=True)
        return torch.clamp(torch.div(256 * e + total, 2 * total, rounding_mode="floor"), max=127).to(s.dtype)
    p = torch.softmax(x * pow2(-s.fin), dim=-1)
    return requant(p * pow2(s.fout), -128, 127, s.ste)


def qat_lut(q, i: int, n, xs, s):
    import torch

    from .. import torch_ir
    from ..qat import pow2, requant

    x = xs[0]
    if s.exact:
        return q._tables[n.outputs[0]][x.to(torch.int64) + 128].to(s.dtype)
    return requant(torch_ir.lut_function(n.attrs)(x * pow2(-s.fin)) * pow2(s.fout), -128, 127, s.ste)


_NO_PY_TABLE = "its table kernel is not written in MicroPython (the C target and the natmod module run it)"

SPECS = [
    OpSpec(Op.RELU, "eltwise",
           Trait.IN_PLACE | Trait.KEEPS_FORMAT | Trait.CHANNELWISE | Trait.KEEPS_ORDER,
           same_shape, _no_check, f_relu, i_relu, q_relu, _zero_macs, torch_relu,
           "ReLU, ReLU6/Hardtanh/clamp", ("Relu", "Clip"), ("qg_clamp_s8", "qg_clamp_s16"),
           "clamp to [lo, hi] (fused into the producer where possible)", kernel=kernel_relu,
           emit_py=py_relu, emit_c=c_relu, emit_c_wide=c_relu_wide,
           qat=qat_relu),
    OpSpec(Op.ADD, "eltwise", Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT,
           same_shape, check_add, f_add, i_add, q_add, _zero_macs, torch_add,
           "residual add", ("Add",), ("qg_add_s8", "qg_add_wide"),
           "sum of two activations, each aligned by a shift, requantised", kernel=kernel_add,
           emit_py=py_add, emit_c=c_add, emit_c_wide=c_add_wide,
           qat=qat_add),
    OpSpec(Op.SOFTMAX, "eltwise", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, _no_check, f_softmax, i_softmax, q_softmax, _zero_macs, torch_softmax,
           "softmax", ("Softmax",), ("qg_softmax_s8",),
           "softmax over the last axis through a Q14 exp table, output s8.f7", kernel=kernel_softmax,
           no_py=_NO_PY_TABLE, emit_c=c_softmax,
           qat=qat_softmax),
    OpSpec(Op.LUT, "eltwise",
           Trait.IN_PLACE | Trait.CHANNELWISE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, _no_check, f_lut, i_lut, q_lut, _zero_macs, torch_lut,
           "sigmoid, tanh, hardsigmoid, hardswish, SiLU, GELU, LeakyReLU, ELU",
           ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "LeakyRelu", "Elu"), ("qg_lut_s8",),
           "any element-wise function through a 256-entry int8 table", kernel=kernel_lut,
           no_py=_NO_PY_TABLE, emit_c=c_lut,
           qat=qat_lut),
]
