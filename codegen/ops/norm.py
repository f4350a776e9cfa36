"""batch_norm (float only), channel_affine, layer_norm, group_norm: normalisation ops.

- batch_norm: a per-channel affine x * scale + shift, only in the float IR. fold_bn folds it into the
  conv/linear producing its input; an image/sequence BN with no such producer becomes a depthwise 1x1 conv,
  any other one (a vector BN after a ReLU, a pool, an add, or first) becomes a `channel_affine`.
- channel_affine: y = clamp(round_shift(x * scale_q[c] + shift_q[c], sh[c])), int16 scale per channel.
- layer_norm / group_norm: statistics in exact integers, a fixed-point reciprocal square root from an
  integer square root, one final requantisation (`norm_int` documents the Q-format rule).
"""
from __future__ import annotations

import math

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _no_check, _zero_macs
from .window import clip, same_shape

# ------------------------------------------------------------------------------------------- batch_norm


def f_batch_norm(g, n, xs):
    return xs[0] * g.tensors[n.inputs[1]].data + g.tensors[n.inputs[2]].data


def torch_batch_norm(node, xs, const):
    return xs[0] * const(node.inputs[1]) + const(node.inputs[2])


def kernel_none(variant: str) -> tuple[None, None]:
    return None, None


# --------------------------------------------------------------------------------------- the integer core

RSQRT_ONE = 60  # inv = round(2^60 / isqrt(W * 4^e)): 1/sqrt(W) = inv * 2^(e - 60)
MAX_SHIFT64 = 62  # the int64 rounding shifts of this family stay in [0, 62]
MAX_SET = {8: 1 << 22, 16: 1 << 15}  # largest statistics set: every int64/int32 bound below holds
BIAS_BITS = 30  # |beta_q| <= 2^30 (headroom in int32)
MAX_BIAS_SHIFT = 24  # |beta_q << bias_shift| <= 2^54: with |xhat * gamma| <= 2^46 the sum stays in int64


def round_shift64(x: np.ndarray, shift) -> np.ndarray:
    """The rounding rule (fixed.round_shift: round half up) on int64 for shifts 0..62 (fixed.round_shift caps
    at 31): (x >> s) + bit (s-1) of x, which cannot overflow. C: qg_round_shift64 (qg_fixed.h)."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any(s < 0) or np.any(s > MAX_SHIFT64):
        raise ValueError(f"shift outside [0, {MAX_SHIFT64}]")
    return np.where(s > 0, (x >> s) + ((x >> np.maximum(s - 1, 0)) & 1), x)


def rsqrt_q(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal square root of integers 1 <= w < 2^62: (inv, e) with 1/sqrt(w) ~= inv * 2^(e - 60).

    e = the smallest e >= 0 with w * 4^e >= 2^60 (so w * 4^e is in [2^60, 2^62)); s = isqrt(w * 4^e) (floor
    square root, in [2^30, 2^31)); inv = floor((2^60 + floor(s / 2)) / s) (round half up, in [2^29, 2^30]).
    C: qg_norm_rsqrt in qg_norm_s8.c (a bit-by-bit integer square root: the same floor square root)."""
    w = np.asarray(w, dtype=np.int64)
    flat = w.reshape(-1)
    inv = np.empty(flat.shape, dtype=np.int64)
    exp = np.empty(flat.shape, dtype=np.int64)
    for i, v in enumerate(flat.tolist()):
        assert 1 <= v < (1 << 62), v
        e = max(0, (62 - v.bit_length()) // 2)
        s = math.isqrt(v << (2 * e))
        inv[i], exp[i] = ((1 << RSQRT_ONE) + (s >> 1)) // s, e
    return inv.reshape(w.shape), exp.reshape(w.shape)


def xhat_frac(count: int) -> int:
    """Fraction bits of x-hat for a statistics set of `count` values: |x - mean| / sigma <= sqrt(count - 1)
    <= 2^hb, so 30 - hb keeps |x-hat| below 2^30 (plus the reciprocal's rounding: below 2^31, an int32)."""
    hb = ((count - 1).bit_length() + 1) // 2
    return 30 - hb


def norm_int(x: np.ndarray, rows: int, pixels: int, channels: int, groups: int, attrs: dict,
             gamma_q: np.ndarray, beta_q: np.ndarray) -> np.ndarray:
    """The integer layer/group norm (THE SPEC; C: qg_norm_s8).

    x: (N, rows * pixels * channels) integers in format f_in, channels innermost. A statistics set is one
    row and one group: pixels x channels/groups values, count = pixels * channels / groups of them.

    Q-format rule, for each set (all sums exact):
        S = sum x, Q = sum x^2                                       (int32 / int64)
        W = count * Q - S^2 + eps_q  = count^2 * (var + eps) * 2^(2 f_in), in int64, W >= 1, W < 2^62
            eps_q = max(1, round(count^2 * eps * 2^(2 f_in))), at most 2^62 - 1 - count^2 * 2^(2 bits - 2)
                                                              (epsilon in W's format, compile time)
        (inv, e) = rsqrt_q(W)                                        1/sqrt(W) ~= inv * 2^(e - 60)
        d = count * x - S   = count * (x - mean) * 2^f_in            (int32, exact)
        xhat = round_shift64(d * inv, 60 - e - F_h)                 x-hat in int32 with F_h = xhat_frac(count)
                                                                      fraction bits: (x - mean) / sqrt(var + eps)
        acc = xhat * gamma_q[c] + beta_q[c] * 2^bias_shift          int64 at frac F_h + f_gamma
              (gamma int16 at f_gamma; beta int32 at F_h + f_gamma - bias_shift)
        y = clamp(round_shift64(acc, out_shift), act_min, act_max)  out_shift = F_h + f_gamma - f_out, the
                                                                      ONE requantisation to the output format
    Rounding everywhere is the project's rule (round half up, fixed.py).
    """
    n = x.shape[0]
    cg = channels // groups
    count = pixels * cg
    xs = np.asarray(x, dtype=np.int64).reshape(n, rows, pixels, groups, cg)
    s = xs.sum(axis=(2, 4), keepdims=True)
    q = (xs * xs).sum(axis=(2, 4), keepdims=True)
    w = count * q - s * s + int(attrs["eps_q"])
    inv, e = rsqrt_q(w)
    fh = xhat_frac(count)
    xhat = round_shift64((count * xs - s) * inv, RSQRT_ONE - e - fh)
    gamma = np.asarray(gamma_q, dtype=np.int64).reshape(groups, cg)
    bias = np.asarray(beta_q, dtype=np.int64).reshape(groups, cg) << int(attrs["bias_shift"])
    acc = xhat * gamma[None, None, None] + bias[None, None, None]
    y = np.clip(round_shift64(acc, attrs["out_shift"]), attrs["act_min"], attrs["act_max"])
    return y.reshape(x.shape)


def norm_params(gamma: np.ndarray, beta: np.ndarray, eps: float, count: int, in_bits: int, fin: int, fout: int,
                where: str) -> tuple[dict, np.ndarray, np.ndarray, int, int]:
    """The integer parameters of one layer/group norm: (attrs, gamma_q int16, beta_q int32, f_gamma, f_beta).
    One function for the quantiser and QAT (same formats)."""
    from ..errors import UserError
    from ..fixed import QFormat, frac_for_range
    from ..fixed import quantize as quantize_array

    if count > MAX_SET[in_bits]:
        raise UserError(f"{where}: normalises {count} values at once; qgen's integer norm supports at most "
                        f"{MAX_SET[in_bits]} per statistics set with int{in_bits} input (more groups, or a "
                        "smaller layer).")
    fh = xhat_frac(count)
    fg = frac_for_range(float(np.abs(gamma).max()) if gamma.size else 0.0, 16)
    fg = min(fg, MAX_SHIFT64 + fout - fh)  # out_shift <= 62
    out_shift = fh + fg - fout
    if out_shift < 0:
        raise UserError(f"{where}: the output format s8.f{fout} is finer than the normalised values allow "
                        f"(needs out_shift {out_shift} < 0); scale gamma up or the output range.")
    fb_range = frac_for_range(float(np.abs(beta).max()) if beta.size else 0.0, BIAS_BITS + 1)
    fb = max(min(fh + fg, fb_range), fh + fg - MAX_BIAS_SHIFT)
    # eps in W's format, capped so that W stays below 2^62. The cap only binds for a very fine input format,
    # where eps dwarfs the variance: x-hat is then below count * 2^-23 (sqrt(var_max / 2^61)) with or without
    # the cap, so the output is beta either way.
    var_max = count * count * (1 << (2 * (in_bits - 1)))
    eps_q = min(max(1, int(np.floor(count * count * float(eps) * 2.0 ** (2 * fin) + 0.5))),
                (1 << 62) - 1 - var_max)
    gamma_q = quantize_array(gamma, QFormat(16, fg))
    beta_q = quantize_array(beta, QFormat(32, fb))
    attrs = {"eps_q": eps_q, "xhat_frac": fh, "bias_shift": fh + fg - fb, "out_shift": out_shift}
    return attrs, gamma_q, beta_q, fg, fb


# ----------------------------------------------------------------------------------- layer_norm / group_norm


def geometry(g, n) -> tuple[int, int, int, int]:
    """(rows, pixels, channels, groups) of a layer/group norm over its IR input (channels innermost)."""
    shape = g.tensors[n.inputs[0]].shape
    size = int(np.prod(shape))
    if n.op is Op.LAYER_NORM:
        span = int(np.prod(shape[len(shape) - n.attrs["axes"]:]))
        return size // span, 1, span, 1
    return 1, size // shape[-1], shape[-1], n.attrs["groups"]


def check_norm(g, n) -> None:
    shape = g.tensors[n.inputs[0]].shape
    _, _, channels, groups = geometry(g, n)
    if n.op is Op.LAYER_NORM and not 1 <= n.attrs["axes"] <= len(shape):
        raise VerifyError(f"{n.where()}: normalises {n.attrs['axes']} trailing axes of {shape}")
    if groups < 1 or channels % groups:
        raise VerifyError(f"{n.where()}: {groups} groups do not divide {channels} channels")
    for t in n.inputs[1:]:
        if g.tensors[t].size != channels:
            raise VerifyError(f"{n.where()}: affine parameter {t} {g.tensors[t].shape} for {channels} channels")


def _sets(g, n, x: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    rows, pixels, channels, groups = geometry(g, n)
    return x.reshape(x.shape[0], rows, pixels, groups, channels // groups), rows, pixels, channels, groups


def f_norm(g, n, xs):
    x = xs[0]
    v, rows, pixels, channels, groups = _sets(g, n, x)
    mean = v.mean(axis=(2, 4), keepdims=True)
    var = ((v - mean) ** 2).mean(axis=(2, 4), keepdims=True)
    xhat = ((v - mean) / np.sqrt(var + n.attrs["eps"])).reshape(x.shape[0], -1, channels)
    gamma = g.tensors[n.inputs[1]].data.reshape(-1)
    beta = g.tensors[n.inputs[2]].data.reshape(-1)
    return (xhat * gamma + beta).reshape(x.shape)


def i_norm(g, n, xs):
    rows, pixels, channels, groups = geometry(g, n)
    x = xs[0]
    y = norm_int(x.reshape(x.shape[0], -1), rows, pixels, channels, groups, n.attrs,
                 g.tensors[n.inputs[1]].data.reshape(-1), g.tensors[n.inputs[2]].data.reshape(-1))
    return y.reshape(x.shape)


def q_norm(g, n, act) -> None:
    from ..fixed import QFormat
    from ..passes import quantize as q

    x, out = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    rows, pixels, channels, groups = geometry(g, n)
    gt, bt = g.tensors[n.inputs[1]], g.tensors[n.inputs[2]]
    attrs, gamma_q, beta_q, fg, fb = norm_params(gt.data, bt.data, n.attrs["eps"], pixels * channels // groups,
                                                 x.qformat.bits, x.qformat.frac, out.qformat.frac, n.where())
    gt.data, gt.dtype, gt.qformat = gamma_q.astype(np.int16), "int16", QFormat(16, fg)
    bt.data, bt.dtype, bt.qformat = beta_q.astype(np.int32), "int32", QFormat(32, fb)
    n.attrs.update(attrs, act_min=out.qformat.min_int, act_max=out.qformat.max_int)


def macs_norm(g, n) -> int:
    return 3 * g.tensors[n.inputs[0]].size  # x^2 for the variance, d * inv, x-hat * gamma


def torch_norm(node, xs, const):
    import torch.nn.functional as F

    x = xs[0]
    gamma, beta = const(node.inputs[1]), const(node.inputs[2])
    if node.op is Op.LAYER_NORM:
        shape = tuple(x.shape[x.ndim - node.attrs["axes"]:])
        return F.layer_norm(x, shape, gamma.reshape(shape), beta.reshape(shape), node.attrs["eps"])
    y = F.group_norm(x.movedim(-1, 1), node.attrs["groups"], gamma.reshape(-1), beta.reshape(-1), node.attrs["eps"])
    return y.movedim(1, -1)


def kernel_norm(variant: str) -> tuple[str, str]:
    """qg_norm_s8 for int8 activations, qg_norm_wide (the widths in its struct) for any int16 one."""
    if variant == "s8":
        return "qg_norm_s8", "qg_norm_params_t"
    if variant in ("s8_to_s16", "s16_to_s8", "s16"):
        return "qg_norm_wide", "qg_norm_params_t"
    raise ValueError(f"no layer/group norm kernel for variant {variant}")


def _norm_fields(b, io, n, in_bits: int, out_bits: int) -> list[tuple[str, object]]:
    rows, pixels, channels, groups = geometry(b.g, n)
    gamma = b.const_tensor(io.sym, n.inputs[1], "gamma")
    beta = b.const_tensor(io.sym, n.inputs[2], "beta")
    return [("rows", rows), ("pixels", pixels), ("channels", channels), ("groups", groups),
            ("eps", int(n.attrs["eps_q"])), ("xhat_frac", n.attrs["xhat_frac"]),
            ("bias_shift", n.attrs["bias_shift"]), ("out_shift", n.attrs["out_shift"]), ("in_bits", in_bits),
            ("out_bits", out_bits), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]),
            ("gamma", gamma), ("beta", beta)]


def c_norm(b, index: int, n):
    io = b.io(index, n)
    return ("qg_norm_params_t", _norm_fields(b, io, n, 8, 8),
            f"qg_norm_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def c_norm_wide(b, index: int, n):
    """An int16 input or output: qg_norm_wide on the untyped buffers, widths in the struct."""
    io = b.io(index, n, wide=True)
    return ("qg_norm_params_t", _norm_fields(b, io, n, io.bits[io.xs[0]], io.bits[io.out]),
            f"qg_norm_wide(&{io.struct}, {io.raw[0]}, {io.out_raw});")


def _py_int_array(b, sym: str, tensor: str, role: str, typecode: str, nbytes: int) -> str:
    """A constant tensor as a MicroPython array('h' / 'i') named _<sym>_<role>."""
    from ..emit.micropython import _int_lines

    t = b.g.tensors[tensor]
    name = f"_{sym}_{role}"
    comment = (f"{role} [{t.data.size}] {t.dtype} {t.qformat}, values [{int(t.data.min()) if t.data.size else 0}, "
               f"{int(t.data.max()) if t.data.size else 0}]")
    return b.const(name, comment, f"{name} = array('{typecode}', (", _int_lines(t.data), "))", nbytes * t.data.size)


def py_norm(b, n, index: int):
    """MicroPython: _norm (templates/micropython/_kernels.py), Python ints for the 64-bit steps."""
    rows, pixels, channels, groups = geometry(b.g, n)
    sym = f"L{index}"
    gamma = _py_int_array(b, sym, n.inputs[1], "GAMMA", "h", 2)
    beta = _py_int_array(b, sym, n.inputs[2], "BETA", "i", 4)
    params = [("rows", rows), ("pixels", pixels), ("channels", channels), ("groups", groups),
              ("eps", int(n.attrs["eps_q"])), ("xhat_frac", n.attrs["xhat_frac"]),
              ("bias_shift", n.attrs["bias_shift"]), ("out_shift", n.attrs["out_shift"]),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]), ("gamma", gamma), ("beta", beta)]
    return "_norm", params, ""


def _qat_norm_consts(q, i: int, n, s):
    """The integer gamma/beta and attrs QAT uses: norm_params on the float graph's constants (the same
    function the quantiser runs, so the same integers)."""
    g = q._graph
    rows, pixels, channels, groups = geometry(g, n)
    attrs, gamma_q, beta_q, _, _ = norm_params(g.tensors[n.inputs[1]].data, g.tensors[n.inputs[2]].data,
                                               n.attrs["eps"], pixels * channels // groups, 8, s.fin, s.fout,
                                               n.where())
    return (rows, pixels, channels, groups), {**attrs, "act_min": s.attrs["act_min"],
                                              "act_max": s.attrs["act_max"]}, gamma_q, beta_q


def qat_norm(q, i: int, n, xs, s):
    """exact: the integer spec itself (norm_int) on the integer activations; training: float norm of the
    dequantised input with the float gamma/beta, fake-quantised to the output format (straight-through)."""
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    if s.exact:
        (rows, pixels, channels, groups), attrs, gamma_q, beta_q = _qat_norm_consts(q, i, n, s)
        xi = x.detach().to(torch.int64).cpu().numpy().reshape(x.shape[0], -1)
        y = norm_int(xi, rows, pixels, channels, groups, attrs, gamma_q, beta_q)
        return torch.from_numpy(y.reshape(tuple(x.shape))).to(s.dtype)
    const = lambda name: torch.as_tensor(q._graph.tensors[name].data, dtype=x.dtype)  # noqa: E731
    y = torch_norm(n, [x * pow2(-s.fin)], const)
    return requant(y * pow2(s.fout), s.attrs["act_min"], s.attrs["act_max"], s.ste)


# -------------------------------------------------------------------------------------------- channel_affine


def check_affine(g, n) -> None:
    c = g.tensors[n.inputs[0]].shape[-1]
    for t in n.inputs[1:]:
        if g.tensors[t].shape != (c,):
            raise VerifyError(f"{n.where()}: per-channel parameter {t} {g.tensors[t].shape} for {c} channels")


def f_affine(g, n, xs):
    y = xs[0] * g.tensors[n.inputs[1]].data + g.tensors[n.inputs[2]].data
    return clip(y, *n.attrs.get("act", (None, None)))


def affine_int(x: np.ndarray, scale_q: np.ndarray, shift_q: np.ndarray, shifts, act_min: int, act_max: int):
    """THE SPEC of channel_affine (C: qg_channel_affine_s8, qg_channel_affine_wide): per channel c (the last axis),
    acc = x * scale_q[c] + shift_q[c] in int32 (|x| <= 2^(b-1) for b-bit x (8 or 16), |scale_q| <= 2^15,
    |shift_q| <= 2^31 - 2^(b+14) - 1: it cannot overflow), y = clamp(round_shift(acc, sh[c]), act_min, act_max)
    (fixed.requantize) to an int8 or int16 output."""
    from ..fixed import requantize

    acc = np.asarray(x, dtype=np.int64) * scale_q.astype(np.int64) + shift_q.astype(np.int64)
    return requantize(acc, np.asarray(shifts, dtype=np.int64), act_min, act_max)


def i_affine(g, n, xs):
    return affine_int(xs[0], g.tensors[n.inputs[1]].data, g.tensors[n.inputs[2]].data, n.attrs["shift"],
                      n.attrs["act_min"], n.attrs["act_max"])


def affine_params(scale: np.ndarray, shift: np.ndarray, fin: int, fout: int, where: str, in_bits: int = 8):
    """(scale_q int16, shift_q int32, f_scale per channel, sh per channel): scale at the finest int16 format
    of each channel, shift at f_in + f_scale[c], coarsened where |shift_q| would break the int32 bound
    (|x * scale_q| <= 2^(in_bits - 1 + 15))."""
    from ..errors import UserError
    from ..fixed import MAX_SHIFT, QFormat, frac_for_range
    from ..fixed import quantize as quantize_array

    fs = np.array([frac_for_range(float(abs(v)), 16) for v in scale], dtype=np.int64)
    fs = np.minimum(fs, MAX_SHIFT + fout - fin)  # sh <= 31
    room = (1 << 31) - 1 - (1 << (in_bits + 14))  # |x * scale_q| <= 2^(in_bits - 1) * 2^15
    for c, t in enumerate(shift):
        if t != 0:
            fs[c] = min(fs[c], math.floor(math.log2(room / abs(float(t)))) - fin)
    sh = fin + fs - fout
    if np.any(sh < -MAX_SHIFT):
        raise UserError(f"{where}: a per-channel scale of {float(np.abs(scale).max()):.3g} needs a requantisation "
                        f"shift below -{MAX_SHIFT}; rescale the layer.")
    scale_q = np.concatenate([quantize_array(scale[c:c + 1], QFormat(16, int(f))) for c, f in enumerate(fs)])
    shift_q = np.concatenate([quantize_array(shift[c:c + 1], QFormat(32, int(fin + f))) for c, f in enumerate(fs)])
    return scale_q, shift_q, fs, sh


def q_affine(g, n, act) -> None:
    from ..fixed import QFormat
    from ..passes import quantize as q

    x, out = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    st, tt = g.tensors[n.inputs[1]], g.tensors[n.inputs[2]]
    scale_q, shift_q, fs, sh = affine_params(st.data, tt.data, x.qformat.frac, out.qformat.frac, n.where(),
                                             x.qformat.bits)
    st.data, st.dtype, st.qformat = scale_q.astype(np.int16), "int16", QFormat(16, tuple(int(f) for f in fs))
    tt.data, tt.dtype = shift_q.astype(np.int32), "int32"
    tt.qformat = QFormat(32, tuple(int(x.qformat.frac + f) for f in fs))
    lo, hi = q._act_bounds(n.attrs.get("act", (None, None)), out.qformat)
    n.attrs.update(shift=[int(v) for v in sh], act_min=lo, act_max=hi)


def macs_affine(g, n) -> int:
    return g.tensors[n.inputs[0]].size


def torch_affine(node, xs, const):
    from .. import torch_ir

    return torch_ir.clamp(xs[0] * const(node.inputs[1]) + const(node.inputs[2]), *node.attrs.get("act", (None, None)))


def kernel_affine(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_channel_affine_s8", "qg_channel_affine_params_t"
    return "qg_channel_affine_wide", "qg_channel_affine_wide_params_t"  # any int8 / int16 mix


def c_affine(b, index: int, n):
    io = b.io(index, n)
    size = b.g.tensors[io.out].size
    channels = b.g.tensors[io.out].shape[-1]
    scale = b.const_tensor(io.sym, n.inputs[1], "scale")
    shift_q = b.const_tensor(io.sym, n.inputs[2], "offset")
    shift = b.array(f"{io.sym}_shift", np.array(n.attrs["shift"]), "int8", "requantisation shift per channel")
    fields = [("size", size), ("channels", channels), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"]), ("scale", scale), ("offset", shift_q), ("shift", shift)]
    return ("qg_channel_affine_params_t", fields,
            f"qg_channel_affine_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def c_affine_wide(b, index: int, n):
    """qg_channel_affine_wide: int8 or int16 input and output (mixed precision)."""
    io = b.io(index, n, wide=True)
    out = b.g.tensors[io.out]
    scale = b.const_tensor(io.sym, n.inputs[1], "scale")
    shift_q = b.const_tensor(io.sym, n.inputs[2], "offset")
    shift = b.array(f"{io.sym}_shift", np.array(n.attrs["shift"]), "int8", "requantisation shift per channel")
    fields = [("size", out.size), ("channels", out.shape[-1]), *io.act, ("in_bits", io.bits[io.xs[0]]),
              ("out_bits", io.bits[io.out]), ("scale", scale), ("offset", shift_q), ("shift", shift)]
    return ("qg_channel_affine_wide_params_t", fields,
            f"qg_channel_affine_wide(&{io.struct}, {io.raw[0]}, {io.out_raw});")


def py_affine(b, n, index: int):
    sym = f"L{index}"
    out = b.g.tensors[n.outputs[0]]
    scale = _py_int_array(b, sym, n.inputs[1], "SCALE", "h", 2)
    offset = _py_int_array(b, sym, n.inputs[2], "OFFSET", "i", 4)
    mul, rnd, shr = b.requant(sym, n.attrs["shift"])
    params = [("size", out.size), ("channels", out.shape[-1]), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"]), ("scale", scale), ("offset", offset), ("mul", mul), ("rnd", rnd),
              ("shr", shr)]
    return "_channel_affine", params, ""


def qat_affine(q, i: int, n, xs, s):
    """exact and training alike: the integer scale/offset of affine_params (frozen BatchNorm statistics, as
    fold_bn freezes them), integer multiply-add, the rounding rule (straight-through in training)."""
    import torch

    from ..qat import requant

    g = q._graph
    from ..passes.assign_precision import tensor_bits

    scale_q, shift_q, fs, sh = affine_params(g.tensors[n.inputs[1]].data, g.tensors[n.inputs[2]].data, s.fin,
                                             s.fout, n.where(), tensor_bits(g).get(n.inputs[0], 8))
    acc = xs[0] * torch.tensor(scale_q, dtype=s.dtype) + torch.tensor(shift_q, dtype=s.dtype)
    return requant(acc * torch.tensor(np.exp2(-sh.astype(np.float64)), dtype=s.dtype), s.attrs["act_min"],
                   s.attrs["act_max"], s.ste)



SPECS = [
    OpSpec(Op.BATCH_NORM, "norm", Trait.FLOAT_ONLY | Trait.KEEPS_ORDER,
           same_shape, _no_check, f_batch_norm, None, None, _zero_macs, torch_batch_norm,
           "BatchNorm", ("BatchNormalization",), (),
           "folded into the preceding conv/linear (fold_bn)", kernel=kernel_none,
           no_py="float only: fold_bn folds it into the preceding conv/linear before any target"),
    OpSpec(Op.CHANNEL_AFFINE, "norm",
           Trait.IN_PLACE | Trait.FUSES_ACT | Trait.KEEPS_ORDER | Trait.CHOOSES_FORMAT,
           same_shape, check_affine, f_affine, i_affine, q_affine, macs_affine, torch_affine,
           "BatchNorm that cannot be folded (vectors)", (),
           ("qg_channel_affine_s8", "qg_channel_affine_wide"),
           "x * scale[c] + offset[c], int16 scale per channel, fused clamp (a BatchNorm fold_bn cannot fold)",
           kernel=kernel_affine, emit_py=py_affine, emit_c=c_affine, emit_c_wide=c_affine_wide, qat=qat_affine),
    OpSpec(Op.LAYER_NORM, "norm", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.CHOOSES_FORMAT,
           same_shape, check_norm, f_norm, i_norm, q_norm, macs_norm, torch_norm,
           "LayerNorm (over the innermost IR axes)", ("LayerNormalization",), ("qg_norm_s8", "qg_norm_wide"),
           "layer norm over the trailing IR axes: exact integer statistics, integer rsqrt, one requantisation",
           kernel=kernel_norm, emit_py=py_norm, emit_c=c_norm, emit_c_wide=c_norm_wide,
           qat=qat_norm),
    OpSpec(Op.GROUP_NORM, "norm", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.CHOOSES_FORMAT,
           same_shape, check_norm, f_norm, i_norm, q_norm, macs_norm, torch_norm,
           "GroupNorm, InstanceNorm (affine, no running stats)",
           ("GroupNormalization", "InstanceNormalization"), ("qg_norm_s8", "qg_norm_wide"),
           "group norm over H*W*C/G per group: exact integer statistics, integer rsqrt, one requantisation",
           kernel=kernel_norm, emit_py=py_norm, emit_c=c_norm, emit_c_wide=c_norm_wide,
           qat=qat_norm),
]
