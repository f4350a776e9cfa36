"""relu (clamp), add, lut, softmax, and the arithmetic ops mul, sub, maximum, minimum, affine (scalar
x * scale + offset) and prelu: element-wise ops (softmax: along the last axis).

Integer rules of the arithmetic ops (one rounding each: codegen/fixed.py requantize = round half up,
then saturate to [act_min, act_max], the output range narrowed by a fused clamp):
- add / sub / maximum / minimum of a (frac fa) and b (frac fb), output frac fo: each input is aligned to a
  common frac fc = min(max(fa, fb), min(fa, fb) + 22) by round_shift(x, fx - fc) (an exact left shift
  unless the fracs differ by more than 22), then a + b / a - b / max(a, b) / min(a, b) in int32, then
  requantize(., fc - fo). max and min therefore equal max/min of both inputs each requantised once to the
  output format (requantize is monotonic). The difference is taken in int32: -(-128) cannot overflow.
- mul: a * b is exact in int32 (|int8 * int8| <= 2^14, |int16 * int16| <= 2^30) at frac fa + fb, then
  requantize(a * b, fa + fb - fo) (shift capped to [-31, 31], which changes no int8 result). b may be one
  (1, 1, C) vector against an (H, W, C) or (1, L, C) a: b[c] multiplies every pixel's channel c.
- affine (x * scale + offset, scalar constants): scale -> mult, int16 at frac fm (the largest frac that
  holds |scale|, lowered until |offset| * 2^(fx + fm) < 2^29), offset -> bias, int32 at frac fx + fm;
  requantize(x * mult + bias, fx + fm - fo). |x * mult + bias| < 2^22 + 2^29 (int8 x), < 2^30 + 2^29
  (int16 x): int32.
- prelu (slope alpha[c], per channel or one for all): slopes -> int16 at frac fa (the largest frac <= 14
  that holds max|alpha|); acc = x >= 0 ? x * 2^fa : x * alpha_q[c] (exact in int32), then
  requantize(acc, fx + fa - fo): both branches round once, with the same shift.
"""
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
    a, b = (g.tensors[t].shape for t in n.inputs[:2])
    if a != b and bcast_plan(a, b) is None:
        raise VerifyError(f"{n.where()}: {n.op.value} of shapes {a} and {b}: not the same rank with each dim equal "
                          f"or 1, or more than {BCAST_RANK} axes after merging")


# ---------------------------------------------------------------- broadcasting (add, sub, mul, maximum, minimum)

BCAST_RANK = 4  # depth of the broadcasting kernels' loop nest (qg_bcast_s8.c)


def bcast_shape(g, n) -> tuple[int, ...]:
    """Output shape of a binary element-wise op: the broadcast of its two inputs (equal ranks)."""
    a, b = (g.tensors[t].shape for t in n.inputs[:2])
    if len(a) != len(b):
        return a
    return tuple(max(x, y) for x, y in zip(a, b))


def bcast_plan(a: tuple, b: tuple) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(dims, a's strides, b's strides) of out = broadcast(a, b) as a BCAST_RANK-deep row-major loop nest:
    axes of size 1 dropped, neighbours that both operands read alike (each full or each broadcast) merged,
    padded with outer 1s; strides in elements, 0 where the operand broadcasts. None: ranks differ, a dim
    pair neither equal nor 1, or more than BCAST_RANK axes remain."""
    if len(a) != len(b) or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    axes: list[list] = []  # [size, (a full, b full)]
    for x, y in zip(a, b):
        size = max(x, y)
        if size == 1:
            continue
        key = (x == size, y == size)
        if axes and axes[-1][1] == key:
            axes[-1][0] *= size
        else:
            axes.append([size, key])
    if len(axes) > BCAST_RANK:
        return None
    axes = [[1, (False, False)]] * (BCAST_RANK - len(axes)) + axes

    def strides(which: int) -> tuple[int, ...]:
        out, run = [], 1
        for size, key in reversed(axes):
            out.append(run if key[which] else 0)
            run *= size if key[which] else 1
        return tuple(reversed(out))

    return tuple(int(s) for s, _ in axes), strides(0), strides(1)


def is_bcast(g, n) -> bool:
    """Inputs of different shapes, other than mul's (1, 1, C) gate (qg_mul_s8's own form)."""
    a, b = (g.tensors[t].shape for t in n.inputs[:2])
    return a != b and not (n.op is Op.MUL and broadcasts(a, b))


def form_bcast(g, n, var: str) -> str:
    return f"{var}_bcast" if is_bcast(g, n) else var


def kernel_rule(op: str, same: Callable[[str], tuple[str, str]]) -> Callable[[str], tuple[str, str]]:
    """The op's kernels: `same` for equal shapes, qg_<op>_bcast_s8 / _wide for the "bcast" form."""
    def rule(variant: str) -> tuple[str, str]:
        if variant.endswith("_bcast"):
            return (f"qg_{op}_bcast_s8" if variant == "s8_bcast" else f"qg_{op}_bcast_wide"), "qg_bcast_params_t"
        return same(variant)
    return rule


_BCAST_OP = {"add": 0, "sub": 1, "mul": 2, "maximum": 3, "minimum": 4}  # qg_bcast_s8.c / _kernels.py _bcast


def _bcast_fields(b, n, bits: dict | None = None) -> list[tuple[str, int]]:
    g = b.g
    dims, sa, sb = bcast_plan(*(g.tensors[t].shape for t in n.inputs[:2]))
    fields = [*((f"n{i}", d) for i, d in enumerate(dims)), *((f"a_s{i}", s) for i, s in enumerate(sa)),
              *((f"b_s{i}", s) for i, s in enumerate(sb))]
    if bits is not None:
        fields += [("a_bits", bits[n.inputs[0]]), ("b_bits", bits[n.inputs[1]]), ("out_bits", bits[n.outputs[0]])]
    else:
        fields += [("a_bits", 8), ("b_bits", 8), ("out_bits", 8)]
    return fields + [("shift_a", n.attrs.get("shift_a", 0)), ("shift_b", n.attrs.get("shift_b", 0)),
                     ("shift", n.attrs["shift"]), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]


def c_bcast(b, index: int, n):
    io = b.io(index, n)
    return ("qg_bcast_params_t", _bcast_fields(b, n),
            f"qg_{n.op.value}_bcast_s8(&{io.struct}, {io.ins[0]}, {io.ins[1]}, {io.out_expr});")


def c_bcast_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return ("qg_bcast_params_t", _bcast_fields(b, n, io.bits),
            f"qg_{n.op.value}_bcast_wide(&{io.struct}, {io.raw[0]}, {io.raw[1]}, {io.out_raw});")


def py_bcast(b, n, index: int):
    dims, sa, sb = bcast_plan(*(b.g.tensors[t].shape for t in n.inputs[:2]))
    (ma,), (ra,), (sha,) = b.triples([n.attrs.get("shift_a", 0)])
    (mb,), (rb,), (shb,) = b.triples([n.attrs.get("shift_b", 0)])
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    params = [("op", _BCAST_OP[n.op.value]), ("dims", dims), ("a_strides", sa), ("b_strides", sb),
              ("mul_a", ma), ("rnd_a", ra), ("shr_a", sha), ("mul_b", mb), ("rnd_b", rb), ("shr_b", shb),
              ("mul", mo), ("rnd", ro), ("shr", so), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_bcast", params, ""


def bcast_or(same: Callable) -> Callable:
    """An emitter that takes the "bcast" form's (c_bcast, c_bcast_wide, py_bcast) when the inputs broadcast."""
    form = {c_add: c_bcast, c_add_wide: c_bcast_wide, py_add: py_bcast, c_mul: c_bcast, c_mul_wide: c_bcast_wide,
            py_mul: py_bcast, c_binary: c_bcast, c_binary_wide: c_bcast_wide, py_binary: py_bcast}

    def emit(b, *args):
        n = args[0] if not isinstance(args[0], int) else args[1]
        return (form[same] if is_bcast(b.g, n) else same)(b, *args)
    return emit


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


# ---------------------------------------------------------------- sub, maximum, minimum (aligned like add)

_COMBINE = {"sub": np.subtract, "maximum": np.maximum, "minimum": np.minimum}


def f_binary(g, n, xs):
    return clip(_COMBINE[n.op.value](xs[0], xs[1]), *n.attrs.get("act", (None, None)))


def i_binary(g, n, xs):
    # the rule of add (module docstring): align both inputs to a common frac, combine in int64, requantise
    from ..fixed import requantize, round_shift

    acc = _COMBINE[n.op.value](round_shift(xs[0], n.attrs["shift_a"]), round_shift(xs[1], n.attrs["shift_b"]))
    return requantize(acc, n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def torch_binary(node, xs, const):
    import torch

    from .. import torch_ir

    fn = {"sub": torch.sub, "maximum": torch.maximum, "minimum": torch.minimum}[node.op.value]
    return torch_ir.clamp(fn(xs[0], xs[1]), *node.attrs.get("act", (None, None)))


def kernel_binary(op: str) -> Callable[[str], tuple[str, str]]:
    def rule(variant: str) -> tuple[str, str]:
        return (f"qg_{op}_s8", "qg_add_params_t") if variant == "s8" else (f"qg_{op}_wide", "qg_add_wide_params_t")
    return kernel_rule(op, rule)


def py_binary(b, n, index: int):
    fn, params, extra = py_add(b, n, index)
    return f"_{n.op.value}", params, extra


def c_binary(b, index: int, n):
    struct, fields, call = c_add(b, index, n)
    return struct, fields, call.replace("qg_add_s8(", f"qg_{n.op.value}_s8(", 1)


def c_binary_wide(b, index: int, n):
    struct, fields, call = c_add_wide(b, index, n)
    return struct, fields, call.replace("qg_add_wide(", f"qg_{n.op.value}_wide(", 1)


def qat_binary(q, i: int, n, xs, s):
    import torch

    from ..qat import pow2, requant

    a = requant(xs[0] * pow2(-s.attrs["shift_a"]), None, None, s.ste)
    b = requant(xs[1] * pow2(-s.attrs["shift_b"]), None, None, s.ste)
    fn = {"sub": torch.sub, "maximum": torch.maximum, "minimum": torch.minimum}[n.op.value]
    return requant(fn(a, b) * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"], s.ste)


# ---------------------------------------------------------------- mul (with a (1, 1, C) broadcast)


def broadcasts(a: tuple, b: tuple) -> bool:
    """b is one (1, 1, C) pixel repeated over every pixel of the 3-D a (SE gates, (1, L, C) sequences)."""
    return len(a) == 3 and b == (1, 1, a[2]) and a != b


def check_mul(g, n) -> None:
    a, b = (g.tensors[t].shape for t in n.inputs[:2])
    if a != b and not broadcasts(a, b):
        check_add(g, n)


def f_mul(g, n, xs):
    return clip(xs[0] * xs[1], *n.attrs.get("act", (None, None)))


def i_mul(g, n, xs):
    # a * b exact at frac fa + fb, requantised once (module docstring); numpy broadcasts (N,1,1,C)
    from ..fixed import requantize

    return requantize(xs[0] * xs[1], n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_mul(g, n, act) -> None:
    from ..fixed import MAX_SHIFT
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    fa, fb = (g.tensors[t].qformat.frac for t in n.inputs)
    lo, hi = q._act_bounds(n.attrs.get("act", (None, None)), out.qformat)
    shift = max(-MAX_SHIFT, min(fa + fb - out.qformat.frac, MAX_SHIFT))
    n.attrs.update(shift=int(shift), act_min=lo, act_max=hi)


def torch_mul(node, xs, const):
    from .. import torch_ir

    return torch_ir.clamp(xs[0] * xs[1], *node.attrs.get("act", (None, None)))


def macs_elements(g, n) -> int:
    return g.tensors[n.outputs[0]].size  # one multiply per output element


def kernel_mul(variant: str) -> tuple[str, str]:
    return ("qg_mul_s8", "qg_mul_params_t") if variant == "s8" else ("qg_mul_wide", "qg_mul_wide_params_t")


def _b_size(b, n) -> int:
    return b.g.tensors[n.inputs[1]].size


def py_mul(b, n, index: int):
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    params = [("size", b.g.tensors[n.outputs[0]].size), ("b_size", _b_size(b, n)), ("mul", mo), ("rnd", ro),
              ("shr", so), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_mul", params, ""


def c_mul(b, index: int, n):
    io = b.io(index, n)
    fields = [("size", b.g.tensors[io.out].size), ("b_size", _b_size(b, n)), ("shift", n.attrs["shift"]),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "qg_mul_params_t", fields, f"qg_mul_s8(&{io.struct}, {io.ins[0]}, {io.ins[1]}, {io.out_expr});"


def c_mul_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    fields = [("size", b.g.tensors[io.out].size), ("b_size", _b_size(b, n)), ("a_bits", io.bits[io.xs[0]]),
              ("b_bits", io.bits[io.xs[1]]), ("out_bits", io.bits[io.out]), ("shift", n.attrs["shift"]), *io.act]
    return "qg_mul_wide_params_t", fields, f"qg_mul_wide(&{io.struct}, {io.raw[0]}, {io.raw[1]}, {io.out_raw});"


def qat_mul(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    return requant(xs[0] * xs[1] * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"], s.ste)


# ---------------------------------------------------------------- affine: x * scale + offset (scalars)

AFFINE_BIAS_MAX = 1 << 29  # |bias| < 2^29 and |x * mult| <= 2^30: the sum stays inside int32


def f_affine(g, n, xs):
    return clip(xs[0] * n.attrs["scale"] + n.attrs["offset"], *n.attrs.get("act", (None, None)))


def i_affine(g, n, xs):
    from ..fixed import requantize

    acc = xs[0] * n.attrs["mult"] + n.attrs["bias"]
    return requantize(acc, n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def affine_params(scale: float, offset: float, fx: int, fout: int) -> dict[str, int]:
    """(mult, bias, shift) of x * scale + offset from input frac fx to output frac fout (module docstring)."""
    from ..fixed import MAX_SHIFT, QFormat, frac_for_range, quantize

    fm = min(frac_for_range(abs(scale), 16), MAX_SHIFT + fout - fx)  # shift <= 31
    fm = max(fm, fx - fout - MAX_SHIFT)  # shift >= -31 (a scale far above the output range saturates)
    while abs(offset) * 2.0 ** (fx + fm) >= AFFINE_BIAS_MAX and fx + fm - fout > -MAX_SHIFT:
        fm -= 1
    mult = int(quantize(np.array(scale), QFormat(16, fm)))
    bias = int(np.clip(quantize(np.array(offset), QFormat(64, fx + fm)), -AFFINE_BIAS_MAX, AFFINE_BIAS_MAX))
    return {"mult": mult, "bias": bias, "shift": int(fx + fm - fout)}


def q_affine(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    fx = g.tensors[n.inputs[0]].qformat.frac
    lo, hi = q._act_bounds(n.attrs.get("act", (None, None)), out.qformat)
    n.attrs.update(**affine_params(n.attrs["scale"], n.attrs["offset"], fx, out.qformat.frac), act_min=lo, act_max=hi)


def torch_affine(node, xs, const):
    from .. import torch_ir

    return torch_ir.clamp(xs[0] * node.attrs["scale"] + node.attrs["offset"], *node.attrs.get("act", (None, None)))


def kernel_affine(variant: str) -> tuple[str, str]:
    return ("qg_affine_s8", "qg_affine_params_t") if variant == "s8" else ("qg_affine_wide", "qg_affine_wide_params_t")


def _affine_fields(b, n) -> list[tuple[str, int]]:
    return [("size", b.g.tensors[n.outputs[0]].size), ("bias", n.attrs["bias"]), ("mult", n.attrs["mult"]),
            ("shift", n.attrs["shift"])]


def py_affine(b, n, index: int):
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    params = [("size", b.g.tensors[n.outputs[0]].size), ("mult", n.attrs["mult"]), ("bias", n.attrs["bias"]),
              ("mul", mo), ("rnd", ro), ("shr", so), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_affine", params, ""


def c_affine(b, index: int, n):
    io = b.io(index, n)
    fields = [*_affine_fields(b, n), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "qg_affine_params_t", fields, f"qg_affine_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_affine_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    fields = [*_affine_fields(b, n), ("in_bits", io.bits[io.xs[0]]), ("out_bits", io.bits[io.out]), *io.act]
    return "qg_affine_wide_params_t", fields, f"qg_affine_wide(&{io.struct}, {io.raw[0]}, {io.out_raw});"


def qat_affine(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    acc = xs[0] * s.attrs["mult"] + s.attrs["bias"]
    return requant(acc * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"], s.ste)


# ---------------------------------------------------------------- prelu

PRELU_MAX_FRAC = 14  # x * 2^14 and x * alpha_q stay inside int32 for int16 x


def _alpha(n, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(n.attrs["alpha"], dtype=np.float64).reshape(-1), (channels,))


def check_prelu(g, n) -> None:
    c = g.tensors[n.inputs[0]].shape[-1]
    if len(n.attrs["alpha"]) not in (1, c):
        raise VerifyError(f"{n.where()}: prelu with {len(n.attrs['alpha'])} slopes on {c} channels")


def f_prelu(g, n, xs):
    x = xs[0]
    return clip(np.where(x >= 0, x, x * _alpha(n, x.shape[-1])), *n.attrs.get("act", (None, None)))


def i_prelu(g, n, xs):
    from ..fixed import requantize

    x = xs[0]
    slope = g.tensors[n.inputs[1]].data.astype(np.int64)
    acc = np.where(x >= 0, x << n.attrs["slope_frac"], x * slope)
    return requantize(acc, n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_prelu(g, n, act) -> None:
    from ..errors import UserError
    from ..fixed import MAX_SHIFT, QFormat, frac_for_range, quantize
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    x = g.tensors[n.inputs[0]]
    alpha = _alpha(n, x.shape[-1])
    fa = min(frac_for_range(float(np.abs(alpha).max()), 16), PRELU_MAX_FRAC)
    if fa < 0:
        raise UserError(f"{n.where()}: PReLU slope {float(np.abs(alpha).max()):.6g} is too large for an int16 slope "
                        "(|slope| < 32768); rescale the layer.")
    shift = max(-MAX_SHIFT, min(x.qformat.frac + fa - out.qformat.frac, MAX_SHIFT))
    q._add_table(g, n, "slope", quantize(alpha, QFormat(16, fa)), 16, fa)
    lo, hi = q._act_bounds(n.attrs.get("act", (None, None)), out.qformat)
    n.attrs.update(slope_frac=int(fa), shift=int(shift), act_min=lo, act_max=hi)


def torch_prelu(node, xs, const):
    import torch

    from .. import torch_ir

    x = xs[0]
    alpha = torch.as_tensor(np.asarray(node.attrs["alpha"], dtype=np.float64).reshape(-1), dtype=x.dtype)
    return torch_ir.clamp(torch.where(x >= 0, x, x * alpha), *node.attrs.get("act", (None, None)))


def kernel_prelu(variant: str) -> tuple[str, str]:
    return ("qg_prelu_s8", "qg_prelu_params_t") if variant == "s8" else ("qg_prelu_wide", "qg_prelu_wide_params_t")


def _prelu_fields(b, n) -> list[tuple[str, int]]:
    return [("size", b.g.tensors[n.outputs[0]].size), ("channels", b.g.tensors[n.outputs[0]].shape[-1]),
            ("slope_frac", n.attrs["slope_frac"]), ("shift", n.attrs["shift"])]


def py_prelu(b, n, index: int):
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    slope = tuple(int(v) for v in b.g.tensors[n.inputs[1]].data)
    params = [("size", b.g.tensors[n.outputs[0]].size), ("one", 1 << n.attrs["slope_frac"]), ("mul", mo),
              ("rnd", ro), ("shr", so), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]),
              ("slope", slope)]
    return "_prelu", params, ""


def c_prelu(b, index: int, n):
    io = b.io(index, n)
    slope = b.const_tensor(io.sym, n.inputs[1], "slope")
    fields = [*_prelu_fields(b, n), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]), ("slope", slope)]
    return "qg_prelu_params_t", fields, f"qg_prelu_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_prelu_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    slope = b.const_tensor(io.sym, n.inputs[1], "slope")
    fields = [*_prelu_fields(b, n), ("in_bits", io.bits[io.xs[0]]), ("out_bits", io.bits[io.out]), *io.act,
              ("slope", slope)]
    return "qg_prelu_wide_params_t", fields, f"qg_prelu_wide(&{io.struct}, {io.raw[0]}, {io.out_raw});"


def qat_prelu(q, i: int, n, xs, s):
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    slope = q._tables[n.outputs[0]].to(x.dtype)
    acc = torch.where(x >= 0, x * pow2(s.attrs["slope_frac"]), x * slope)
    return requant(acc * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"], s.ste)


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
    if fn == "exp":
        return np.exp
    if fn == "softplus":  # log(1 + exp(beta x)) / beta, linear above threshold (PyTorch's rule)
        beta, threshold = attrs.get("beta", 1.0), attrs.get("threshold", 20.0)
        return lambda v: np.where(v * beta > threshold, v, np.logaddexp(0.0, v * beta) / beta)
    if fn == "mish":  # x * tanh(softplus(x))
        return lambda v: v * np.tanh(np.logaddexp(0.0, v))
    if fn == "selu":
        alpha, scale = 1.6732632423543772, 1.0507009873554805
        return lambda v: scale * np.where(v > 0, v, alpha * (np.exp(np.minimum(v, 0)) - 1.0))
    if fn == "celu":
        return lambda v: np.where(v > 0, v, attrs["alpha"] * (np.exp(np.minimum(v, 0) / attrs["alpha"]) - 1.0))
    if fn == "log_sigmoid":
        return lambda v: -np.logaddexp(0.0, -v)
    if fn == "hardshrink":
        return lambda v: np.where(np.abs(v) > attrs["lambd"], v, 0.0)
    if fn == "softshrink":
        return lambda v: np.where(v > attrs["lambd"], v - attrs["lambd"],
                                  np.where(v < -attrs["lambd"], v + attrs["lambd"], 0.0))
    if fn == "threshold":
        return lambda v: np.where(v > attrs["threshold"], v, attrs["value"])
    if fn == "abs":
        return np.abs
    if fn == "softsign":
        return lambda v: v / (1.0 + np.abs(v))
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


# ---------------------------------------------------------------- log_softmax

LN_TABLE_Q16 = np.floor(np.log1p(np.arange(33) / 32.0) * 65536 + 0.5).astype(np.int64)  # ln(1 + i/32), Q16
LN2_Q16 = 45426  # round(ln 2 * 2^16) == LN_TABLE_Q16[32]
LOG_SOFTMAX_MAX_ROW = 65536  # the Q14 exp sum stays below 2^31


def f_log_softmax(g, n, xs):
    x = xs[0]
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ln_sum_q16(total: np.ndarray) -> np.ndarray:
    """ln(total / 2^14) in Q16 for integers 2^14 <= total < 2^31: k = position of the leading bit, the mantissa
    total / 2^k in [1, 2) normalised to Q30, its top 5 fraction bits index LN_TABLE_Q16 and the next 16
    interpolate linearly (floor); (k - 14) * LN2_Q16 + that. Exact integers (qg_log_softmax.c: qg_ln_sum_q16)."""
    t = total.astype(np.int64)
    k = np.full(t.shape, 14, dtype=np.int64)
    for _ in range(16):
        k = np.where((k < 30) & ((t >> (k + 1)) != 0), k + 1, k)
    m30 = t << (30 - k)
    idx = (m30 >> 25) & 31
    rem = (m30 >> 9) & 0xFFFF
    lo = LN_TABLE_Q16[idx]
    return (k - 14) * LN2_Q16 + lo + (((LN_TABLE_Q16[idx + 1] - lo) * rem) >> 16)


def log_softmax_shifts(fin: int, fout: int) -> tuple[int, int, int]:
    """(d_shift, l_shift, out_shift): the common scale 2^(16 + a) with a = max(fin, 0) of (max - x) and the Q16 ln."""
    a = max(fin, 0)
    return 16 + a - fin, a, 16 + a - fout


def i_log_softmax(g, n, xs):
    """Integer log_softmax over the last axis; output s8.f4 (LOG_SOFTMAX_FRAC).

    d = max - x (0..255), e = exp_table[d] (softmax's Q14 table of exp(-d * 2^-f_in)), S = sum(e) (>= 2^14),
    L = ln(S / 2^14) in Q16 (ln_sum_q16). With a = max(f_in, 0) and s = 16 + a - f_out:
    neg = d * 2^(16 + a - f_in) + L * 2^a (the value -(x - max) * 2^-f_in + ln(sum) at scale 2^(16 + a)),
    out = -floor((neg + 2^(s-1) - 1) / 2^s) = round_half_up(-neg / 2^s), saturated at -128 (never above 0).
    """
    x = xs[0].astype(np.int64)
    table = g.tensors[n.inputs[1]].data.astype(np.int64)
    fin = g.tensors[n.inputs[0]].qformat.frac
    fout = g.tensors[n.outputs[0]].qformat.frac
    d_shift, l_shift, out_shift = log_softmax_shifts(fin, fout)
    d = x.max(axis=-1, keepdims=True) - x
    total = table[d].sum(axis=-1, keepdims=True)
    neg = (d << d_shift) + (ln_sum_q16(total) << l_shift)
    q = (neg + (1 << (out_shift - 1)) - 1) >> out_shift
    return np.maximum(-q, -128)


def q_log_softmax(g, n, act) -> None:
    from ..errors import UserError
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    if out.shape[-1] > LOG_SOFTMAX_MAX_ROW:
        raise UserError(f"{n.where()}: log_softmax over {out.shape[-1]} values; qgen supports up to "
                        f"{LOG_SOFTMAX_MAX_ROW} (split the dim or use softmax)")
    fin = g.tensors[n.inputs[0]].qformat.frac
    q._set_act(out, act(out.name, q.LOG_SOFTMAX_FRAC))
    q._add_table(g, n, "exp_table", q.softmax_exp_table(fin), 16, q.EXP_TABLE_FRAC)


def torch_log_softmax(node, xs, const):
    import torch

    return torch.log_softmax(xs[0], dim=-1)


def kernel_log_softmax(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"log_softmax has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_log_softmax_s8", "qg_log_softmax_params_t"


def c_log_softmax(b, index: int, n):
    io = b.io(index, n)
    shape = b.g.tensors[io.out].shape
    table = b.const_tensor(io.sym, n.inputs[1], "exp_table")
    fin = b.g.tensors[n.inputs[0]].qformat.frac
    d_shift, l_shift, out_shift = log_softmax_shifts(fin, b.g.tensors[io.out].qformat.frac)
    fields = [("rows", b.g.tensors[io.out].size // shape[-1]), ("row_size", shape[-1]), ("d_shift", d_shift),
              ("l_shift", l_shift), ("out_shift", out_shift), ("exp_table", table)]
    return "qg_log_softmax_params_t", fields, f"qg_log_softmax_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def qat_log_softmax(q, i: int, n, xs, s):
    """exact: the integer rule above in int64 torch; training: float log_softmax, fake-quantised to s8.f4."""
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    if s.exact:
        table = q._tables[n.outputs[0]]
        lt = torch.as_tensor(LN_TABLE_Q16, device=x.device)
        d_shift, l_shift, out_shift = log_softmax_shifts(s.fin, s.fout)
        xi = x.to(torch.int64)
        d = xi.max(dim=-1, keepdim=True).values - xi
        t = table[d].to(torch.int64).sum(dim=-1, keepdim=True)
        k = torch.full_like(t, 14)
        for _ in range(16):
            k = torch.where((k < 30) & ((t >> (k + 1)) != 0), k + 1, k)
        m30 = t << (30 - k)
        idx = (m30 >> 25) & 31
        rem = (m30 >> 9) & 0xFFFF
        lo = lt[idx]
        ln = (k - 14) * LN2_Q16 + lo + (((lt[idx + 1] - lo) * rem) >> 16)
        neg = (d << d_shift) + (ln << l_shift)
        qv = (neg + (1 << (out_shift - 1)) - 1) >> out_shift
        return torch.clamp(-qv, min=-128).to(s.dtype)
    y = torch.log_softmax(x * pow2(-s.fin), dim=-1)
    return requant(y * pow2(s.fout), -128, 127, s.ste)


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


TWO_INPUTS = (Op.ADD, Op.SUB, Op.MUL, Op.MAXIMUM, Op.MINIMUM)  # element-wise ops of two activations
COMMUTATIVE = (Op.ADD, Op.MUL, Op.MAXIMUM, Op.MINIMUM)  # the front ends put a broadcast operand second

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
           bcast_shape, check_add, f_add, i_add, q_add, _zero_macs, torch_add,
           "residual add, broadcasting", ("Add",), ("qg_add_s8", "qg_add_wide", "qg_add_bcast_s8", "qg_add_bcast_wide"),
           "sum of two activations, each aligned by a shift, requantised", kernel=kernel_rule("add", kernel_add),
           emit_py=bcast_or(py_add), emit_c=bcast_or(c_add), emit_c_wide=bcast_or(c_add_wide),
           qat=qat_add, form=form_bcast),
    OpSpec(Op.SOFTMAX, "eltwise", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, _no_check, f_softmax, i_softmax, q_softmax, _zero_macs, torch_softmax,
           "softmax", ("Softmax",), ("qg_softmax_s8",),
           "softmax over the last axis through a Q14 exp table, output s8.f7", kernel=kernel_softmax,
           no_py=_NO_PY_TABLE, emit_c=c_softmax,
           qat=qat_softmax),
    OpSpec(Op.LOG_SOFTMAX, "eltwise", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, _no_check, f_log_softmax, i_log_softmax, q_log_softmax, _zero_macs, torch_log_softmax,
           "log_softmax, LogSoftmax", ("LogSoftmax",), ("qg_log_softmax_s8",),
           "log_softmax over the last axis: softmax's Q14 exp sum and an integer ln, output s8.f4",
           kernel=kernel_log_softmax, no_py=_NO_PY_TABLE, emit_c=c_log_softmax,
           qat=qat_log_softmax),
    OpSpec(Op.LUT, "eltwise",
           Trait.IN_PLACE | Trait.CHANNELWISE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, _no_check, f_lut, i_lut, q_lut, _zero_macs, torch_lut,
           "sigmoid, tanh, hardsigmoid, hardswish, SiLU, GELU, LeakyReLU, ELU, exp, Softplus, Mish, SELU, CELU, "
           "LogSigmoid, Hardshrink, Softshrink, Threshold, RReLU (eval), abs, Softsign",
           ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "LeakyRelu", "Elu", "Exp", "Softplus", "Mish",
            "Selu", "Celu", "Abs", "Softsign", "ThresholdedRelu", "Shrink"),
           ("qg_lut_s8",),
           "any element-wise function through a 256-entry int8 table", kernel=kernel_lut,
           no_py=_NO_PY_TABLE, emit_c=c_lut,
           qat=qat_lut),
    OpSpec(Op.MUL, "eltwise", Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT,
           bcast_shape, check_mul, f_mul, i_mul, q_mul, macs_elements, torch_mul,
           "mul of two activations (x * gate, broadcasting)", ("Mul",),
           ("qg_mul_s8", "qg_mul_wide", "qg_mul_bcast_s8", "qg_mul_bcast_wide"),
           "product of two activations (either may broadcast), requantised once",
           kernel=kernel_rule("mul", kernel_mul), emit_py=bcast_or(py_mul), emit_c=bcast_or(c_mul),
           emit_c_wide=bcast_or(c_mul_wide), qat=qat_mul, form=form_bcast),
    OpSpec(Op.SUB, "eltwise", Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT,
           bcast_shape, check_add, f_binary, i_binary, q_add, _zero_macs, torch_binary,
           "sub of two activations", ("Sub",), ("qg_sub_s8", "qg_sub_wide", "qg_sub_bcast_s8",
            "qg_sub_bcast_wide"),
           "difference of two activations, each aligned by a shift, requantised", kernel=kernel_binary("sub"),
           emit_py=bcast_or(py_binary), emit_c=bcast_or(c_binary),
           emit_c_wide=bcast_or(c_binary_wide), qat=qat_binary, form=form_bcast),
    OpSpec(Op.MAXIMUM, "eltwise", Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT,
           bcast_shape, check_add, f_binary, i_binary, q_add, _zero_macs, torch_binary,
           "torch.maximum/max(a, b)", ("Max",), ("qg_maximum_s8", "qg_maximum_wide", "qg_maximum_bcast_s8",
            "qg_maximum_bcast_wide"),
           "element-wise max of two activations in the output format", kernel=kernel_binary("maximum"),
           emit_py=bcast_or(py_binary), emit_c=bcast_or(c_binary),
           emit_c_wide=bcast_or(c_binary_wide), qat=qat_binary, form=form_bcast),
    OpSpec(Op.MINIMUM, "eltwise", Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT,
           bcast_shape, check_add, f_binary, i_binary, q_add, _zero_macs, torch_binary,
           "torch.minimum/min(a, b)", ("Min",), ("qg_minimum_s8", "qg_minimum_wide", "qg_minimum_bcast_s8",
            "qg_minimum_bcast_wide"),
           "element-wise min of two activations in the output format", kernel=kernel_binary("minimum"),
           emit_py=bcast_or(py_binary), emit_c=bcast_or(c_binary),
           emit_c_wide=bcast_or(c_binary_wide), qat=qat_binary, form=form_bcast),
    OpSpec(Op.AFFINE, "eltwise",
           Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT | Trait.CHANNELWISE | Trait.KEEPS_ORDER,
           same_shape, _no_check, f_affine, i_affine, q_affine, macs_elements, torch_affine,
           "x * c, x / c, x + c, x - c, c - x, -x (scalar c)", ("Mul", "Div", "Add", "Sub", "Neg"),
           ("qg_affine_s8", "qg_affine_wide"),
           "x * scale + offset with scalar constants: an int16 multiplier and an int32 bias, requantised",
           kernel=kernel_affine, emit_py=py_affine, emit_c=c_affine, emit_c_wide=c_affine_wide, qat=qat_affine),
    OpSpec(Op.PRELU, "eltwise",
           Trait.IN_PLACE | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT | Trait.KEEPS_ORDER | Trait.TABLE,
           same_shape, check_prelu, f_prelu, i_prelu, q_prelu, macs_elements, torch_prelu,
           "PReLU", ("PRelu",), ("qg_prelu_s8", "qg_prelu_wide"),
           "x >= 0 ? x : x * slope[c] with int16 slopes, requantised", kernel=kernel_prelu,
           emit_py=py_prelu, emit_c=c_prelu, emit_c_wide=c_prelu_wide, qat=qat_prelu),
]
