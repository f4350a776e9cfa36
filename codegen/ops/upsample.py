"""conv_transpose2d, resize: ops that make an image larger (1-D as H=1), channels last.

conv_transpose2d (ConvTranspose1d/2d, any groups, any dilation): weights (Cout, KH, KW, Cin / groups) like
conv2d, attrs groups (absent = 1), dilation (dh, dw) (absent = (1, 1)), stride (sh, sw) and crop (top, left,
bottom, right) = torch's padding, less output_padding at the bottom/right (so bottom/right may be negative: rows
that only the bias reaches). Output
  out[oy, ox, o] = bias[o] + sum over ky, kx, i with oy + top = iy * sh + ky * dh, ox + left = ix * sw + kx * dw
                   (iy, ix inside the input) of x[iy, ix, gi * cg + i] * w[o, ky, kx, i],
with cg = Cin / groups input channels per group, gi = o // (Cout / groups) the output channel's group,
requantised per output channel like conv2d (acc + bias, round_shift by shift[o], clamp to act_min/act_max).
The kernels gather: output row oy (t = oy + top) meets only the taps with ky * dh = t (mod sh). With
g = gcd(dh, sh), a phase r = t % sh that is not a multiple of g gets no tap (the bias alone); the others get
ky = k0(r), k0(r) + sh / g, ... (`phase_geometry`) at input rows iy = (t - k0 * dh) / sh - j * dh / g. So no zero
is ever multiplied for a stride or a dilation (MACs count only the taps that land on an output pixel); dilation 1
is k0 = r, taps sh apart, input rows one apart. The C weights are stored in phase order (`phase_weights`): for
each phase (ry, rx) of (oy + top, ox + left) modulo the stride, the (Cout, its ky, its kx, Cin) block, so one
output pixel is one contiguous dot product per output channel.

resize (Upsample / F.interpolate, nearest, nearest-exact, bilinear / linear with align_corners False or
True, scale_factor or size): the source coordinates are computed here once, in torch's float32 arithmetic,
into small per-axis tables (`resize_tables`): nearest keeps an index per output row / column; bilinear an
index pair (i0, i1) and the Q`frac_bits` weight of i1 (w0 = 2^s - w1). The integer rule (the spec):
  nearest:  out = x[y0[oy], x0[ox]]                       (a copy: same format, no rounding)
  bilinear: acc = wy0 * (wx0 * x[y0, x0] + wx1 * x[y0, x1]) + wy1 * (wx0 * x[y1, x0] + wx1 * x[y1, x1])
            out = round_shift(acc, 2 * s)                 (one rounding, half up; keeps the input format)
acc is a convex combination times 2^(2s), so the result stays inside the input's range (no saturation) and
fits int32: s = 10 for int8 activations (|acc| <= 2^7 * 2^20), s = 7 for int16 ones (2^15 * 2^14).
"""
from __future__ import annotations

from math import gcd

import numpy as np

from . import Op, OpSpec, Trait, VerifyError
from .window import clip

# ================================================================ conv_transpose2d


def conv_transpose_size(size: int, kernel: int, stride: int, crop_lo: int, crop_hi: int, dil: int = 1) -> int:
    return (size - 1) * stride + (kernel - 1) * dil + 1 - crop_lo - crop_hi


def dilation(n) -> tuple[int, int]:
    return tuple(int(d) for d in n.attrs.get("dilation", (1, 1)))


def conv_transpose_shape(g, n) -> tuple[int, ...]:
    h, w, _ = g.tensors[n.inputs[0]].shape
    cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
    (sh, sw), (top, left, bottom, right), (dh, dw) = n.attrs["stride"], n.attrs["crop"], dilation(n)
    return (conv_transpose_size(h, kh, sh, top, bottom, dh), conv_transpose_size(w, kw, sw, left, right, dw), cout)


def groups(n) -> int:
    return int(n.attrs.get("groups", 1))


def check_conv_transpose(g, n) -> None:
    x, w, gr = g.tensors[n.inputs[0]], g.tensors[n.inputs[1]], groups(n)
    if len(x.shape) != 3 or len(w.shape) != 4 or gr < 1 or w.shape[3] * gr != x.shape[2] or w.shape[0] % gr:
        raise VerifyError(f"{n.where()}: expects (H,W,C) input and (Cout,KH,KW,C/groups) weight with groups={gr} "
                          f"dividing C and Cout, got {x.shape}, {w.shape}")
    (sh, sw), (top, left, _, _) = n.attrs["stride"], n.attrs["crop"]
    if min(sh, sw) < 1 or min(top, left) < 0:
        raise VerifyError(f"{n.where()}: stride {n.attrs['stride']} / crop {n.attrs['crop']} out of range")
    if len(dilation(n)) != 2 or not 1 <= min(dilation(n)) <= max(dilation(n)) <= 255:
        raise VerifyError(f"{n.where()}: dilation {dilation(n)} must be two integers in [1, 255]")


def conv_transpose_acc(x: np.ndarray, w: np.ndarray, stride, crop, groups: int = 1, dil=(1, 1)) -> np.ndarray:
    """Transposed-convolution sums (N, OH, OW, Cout) of x (N,H,W,Cin) with w (Cout,KH,KW,Cin/groups): the scatter
    form (every input pixel adds x . w[:, ky, kx] at (iy*sh + ky*dh, ix*sw + kx*dw)), then the crop; groups:
    output group gi reads input group gi. Exact in float64 for integer inputs (as conv2d_acc)."""
    if groups > 1:
        cg, og = x.shape[-1] // groups, w.shape[0] // groups
        return np.concatenate([conv_transpose_acc(x[..., gi * cg:(gi + 1) * cg], w[gi * og:(gi + 1) * og], stride,
                                                  crop, 1, dil) for gi in range(groups)], axis=-1)
    n, h, wd, _ = x.shape
    cout, kh, kw, _ = w.shape
    (sh, sw), (dh, dw) = stride, dil
    top, left, bottom, right = crop
    full = np.zeros((n, (h - 1) * sh + (kh - 1) * dh + 1 + max(0, -bottom),
                     (wd - 1) * sw + (kw - 1) * dw + 1 + max(0, -right), cout))
    xf, wf = x.astype(np.float64), w.astype(np.float64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dh, kx * dw
            full[:, y0:y0 + (h - 1) * sh + 1:sh, x0:x0 + (wd - 1) * sw + 1:sw] += xf @ wf[:, ky, kx, :].T
    return full[:, top:full.shape[1] - max(0, bottom), left:full.shape[2] - max(0, right)]


def f_conv_transpose(g, n, xs):
    acc = conv_transpose_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["crop"], groups(n),
                             dilation(n))
    return clip(acc + g.tensors[n.inputs[2]].data, *n.attrs.get("act", (None, None)))


def i_conv_transpose(g, n, xs):
    from .conv import requantize_acc

    return requantize_acc(g, n, conv_transpose_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"],
                                                    n.attrs["crop"], groups(n), dilation(n)))


def quantize_conv_transpose(g, n, act) -> None:
    """As conv2d (weight_formats bounds the accumulator by all KH*KW*Cin taps: more than any output reads)."""
    from .conv import quantize_weighted

    quantize_weighted(g, n, act)


def _taps_per_axis(size: int, out: int, kernel: int, stride: int, crop_lo: int, dil: int = 1) -> int:
    """Number of (input index, kernel index) pairs of one axis that land inside the output."""
    i = np.arange(size)[:, None] * stride + np.arange(kernel)[None, :] * dil - crop_lo
    return int(((i >= 0) & (i < out)).sum())


def macs_conv_transpose(g, n) -> int:
    """Only the products that land on an output pixel (no zero inserted between input pixels)."""
    h, w, _ = g.tensors[n.inputs[0]].shape
    cout, kh, kw, cg = g.tensors[n.inputs[1]].shape
    oh, ow, _ = g.tensors[n.outputs[0]].shape
    (sh, sw), (top, left, _, _), (dh, dw) = n.attrs["stride"], n.attrs["crop"], dilation(n)
    return _taps_per_axis(h, oh, kh, sh, top, dh) * _taps_per_axis(w, ow, kw, sw, left, dw) * cg * cout


def torch_conv_transpose(node, xs, const):
    from .. import torch_ir

    y = torch_ir.conv_transpose(xs[0], const(node.inputs[1]), node) + const(node.inputs[2])
    return torch_ir.clamp(y, *node.attrs.get("act", (None, None)))


def phase_geometry(kernel: int, stride: int, dil: int, phase: int) -> tuple[int, int, int, int]:
    """One axis, output positions t = phase (mod stride): (k0, taps, k_step, in_step). The taps k with
    k * dil = phase (mod stride) are k0, k0 + k_step, ... < kernel (k_step = stride / g, g = gcd(dil, stride));
    tap j reads input index (t - k0 * dil) / stride - j * in_step (in_step = dil / g). No tap if g does not
    divide the phase. Dilation 1: k0 = phase, k_step = stride, in_step = 1."""
    g = gcd(dil, stride)
    k_step, in_step = stride // g, dil // g
    if phase % g:
        return 0, 0, k_step, in_step
    k0 = next(k for k in range(k_step) if k * dil % stride == phase)
    return k0, max(0, -(-(kernel - k0) // k_step)), k_step, in_step


def phase_taps(kernel: int, stride: int, phase: int, dil: int = 1) -> int:
    """Number of kernel taps of one axis in a phase (dilation 1: k = phase, phase + stride, ... < kernel)."""
    return phase_geometry(kernel, stride, dil, phase)[1]


def weight_from_torch(w: np.ndarray, groups: int) -> np.ndarray:
    """PyTorch / ONNX ConvTranspose weight (Cin, Cout/groups, KH, KW) -> the IR's (Cout, KH, KW, Cin/groups):
    output channel gi * og + o of group gi reads input channels gi * cg + i."""
    cin, og, kh, kw = w.shape
    cg = cin // groups
    return w.reshape(groups, cg, og, kh, kw).transpose(0, 2, 3, 4, 1).reshape(groups * og, kh, kw, cg)


def phase_weights(w: np.ndarray, stride, dil=(1, 1)) -> np.ndarray:
    """(Cout, KH, KW, Cin) -> the C kernel's order: phases (ry, rx) in row-major order, each the block
    w[:, ky0::ky_step, kx0::kx_step, :] of its taps (`phase_geometry`; dilation 1: w[:, ry::sh, rx::sw, :]),
    (Cout, its taps, Cin) flattened (same values, another order: every tap is in exactly one phase)."""
    (sh, sw), (dh, dw) = stride, dil
    _, kh, kw, _ = w.shape
    blocks = []
    for ry in range(sh):
        ky0, nty, ky_step, _ = phase_geometry(kh, sh, dh, ry)
        for rx in range(sw):
            kx0, ntx, kx_step, _ = phase_geometry(kw, sw, dw, rx)
            if nty and ntx:
                blocks.append(w[:, ky0::ky_step, kx0::kx_step, :].reshape(-1))
    return np.concatenate(blocks + [np.zeros(0, w.dtype)])


def conv_transpose_scratch(g, n) -> int:
    """qg_conv_transpose2d_s8_buffer_size: 4 int16 columns + one int8 column of the largest phase (K = taps * one
    group's channels, rounded up to 4); the plain path uses the first K bytes."""
    _, kh, kw, cin = g.tensors[n.inputs[1]].shape
    (sh, sw), (dh, dw) = n.attrs["stride"], dilation(n)
    k4 = (phase_taps(kh, sh, 0, dh) * phase_taps(kw, sw, 0, dw) * cin + 3) & ~3  # phase 0 (k0 = 0) has the most
    return 9 * k4


def pointwise_form(g, n) -> bool:
    """Kernel == stride, no crop (padding 0, output_padding 0), dilation 1, groups 1 (the U-Net decoder's
    ConvTranspose2d(k=2, stride=2)): every output gets exactly one tap and the input pixels' output blocks do not
    overlap, so each (input row, tap row) is a 1x1 conv Cin -> stride_w * Cout writing one contiguous run of an
    output row (qg_conv_transpose2d_pointwise_s8: qg_conv2d_s8 per row; same integers, one tap, one rounding)."""
    cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
    (sh, sw), crop = n.attrs["stride"], n.attrs["crop"]
    return ((kh, kw) == (sh, sw) and tuple(crop) == (0, 0, 0, 0) and dilation(n) == (1, 1) and groups(n) == 1
            and sw * max(cout, n.attrs.get("out_stride", 0)) <= 0xFFFF)  # uint16 out_c / out_stride of a row call


def form_conv_transpose(g, n, variant: str) -> str:
    return "s8_pointwise" if variant == "s8" and pointwise_form(g, n) else variant


def kernel_conv_transpose(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_conv_transpose2d_s8", "qg_conv2d_params_t"
    if variant == "s8_pointwise":
        return "qg_conv_transpose2d_pointwise_s8", "qg_conv2d_params_t"
    if variant in ("s8_to_s16", "s16_to_s8", "s16"):
        return f"qg_conv_transpose2d_{variant}", "qg_conv2d_wide_params_t"
    raise ValueError(f"conv_transpose2d has dense kernels only, not {variant} (no sparse or clustered storage)")


def _conv_transpose_fields(b, io, n, repeat: int = 1) -> list[tuple[str, object]]:
    """The qg_conv2d_params_t fields; repeat > 1: bias and shift repeated that many times (pointwise_form)."""
    g = b.g
    h, w, c = g.tensors[io.xs[0]].shape
    oh, ow, oc = g.tensors[io.out].shape
    w_t = g.tensors[n.inputs[1]]
    _, kh, kw, _ = w_t.shape
    (sh, sw), (top, left, _, _) = n.attrs["stride"], n.attrs["crop"]
    data = w_t.data
    dil = dilation(n)
    weights = b.array(f"{io.sym}_weights", phase_weights(data, (sh, sw), dil), "int8",
                      f"weights {list(w_t.shape)} int8 {w_t.qformat} in phase order (stride {sh}x{sw}"
                      + (f", dilation {dil[0]}x{dil[1]}" if dil != (1, 1) else "") + "), values "
                      f"[{int(data.min()) if data.size else 0}, {int(data.max()) if data.size else 0}]")
    if repeat == 1:
        bias = b.const_tensor(io.sym, n.inputs[2], "bias")
        shift = b.array(f"{io.sym}_shift", np.array(n.attrs["shift"]), "int8",
                        "requantisation shift per output channel")
    else:
        b_t = g.tensors[n.inputs[2]]
        lo, hi = (int(b_t.data.min()), int(b_t.data.max())) if b_t.data.size else (0, 0)
        bias = b.array(f"{io.sym}_bias", np.tile(b_t.data, repeat), b_t.dtype,
                       f"bias {list(b_t.shape)} {b_t.dtype} {b_t.qformat} repeated {repeat} times (stride), values "
                       f"[{lo}, {hi}]")
        shift = b.array(f"{io.sym}_shift", np.tile(np.array(n.attrs["shift"]), repeat), "int8",
                        f"requantisation shift per output channel, repeated {repeat} times (stride)")
    return ([("in_h", h), ("in_w", w), ("in_c", c), ("out_h", oh), ("out_w", ow), ("out_c", oc),
             ("k_h", kh), ("k_w", kw), ("stride_h", sh), ("stride_w", sw), ("pad_top", top), ("pad_left", left),
             ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]),
             ("weights", weights), ("bias", bias), ("shift", shift)]
            + ([("groups", groups(n))] if groups(n) > 1 else [])
            + ([("dil_h", dil[0]), ("dil_w", dil[1])] if dil != (1, 1) else []))  # absent (0) means 1


def c_conv_transpose(b, index: int, n):
    """C, int8: qg_conv_transpose2d_s8 (weights in phase order, crop top/left as pad_top/pad_left), or for
    kernel == stride (pointwise_form) qg_conv_transpose2d_pointwise_s8 (the same weights; bias and shift repeated
    stride_w times, in the (dx, channel) order of its row convolutions' output channels)."""
    from ..kernels import scratch_for

    io, pointwise = b.io(index, n), pointwise_form(b.g, n)
    fields = _conv_transpose_fields(b, io, n, n.attrs["stride"][1] if pointwise else 1)
    if "out_stride" in n.attrs:  # writes its channels of a wider concat output (passes/concat_in_place)
        fields.append(("out_stride", n.attrs["out_stride"]))
    fn = "qg_conv_transpose2d_pointwise_s8" if pointwise else "qg_conv_transpose2d_s8"
    b.check_scratch(index, n, scratch_for(fn, b.g, n, None) if pointwise else conv_transpose_scratch(b.g, n))
    return "qg_conv2d_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr}, {io.scratch});"


def c_conv_transpose_wide(b, index: int, n):
    """C, an int16 input or output: qg_conv_transpose2d_s8_to_s16 / _s16_to_s8 / _s16 (acc64 for int64 sums)."""
    io = b.io(index, n, wide=True)
    base = _conv_transpose_fields(b, io, n)
    fields = [*base[:12], ("acc64", int(bool(n.attrs.get("acc64")))), *io.act, *base[14:]]  # groups, dil_*: last
    return ("qg_conv2d_wide_params_t", fields,
            f"qg_conv_transpose2d_{io.suffix}(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def py_conv_transpose(b, n, index: int):
    """MicroPython: _conv_transpose2d (gather form, weights as int8 rows in the IR order, per-channel mul/rnd/shr)."""
    g, sym = b.g, f"L{index}"
    h, w, c = g.tensors[n.inputs[0]].shape
    oh, ow, oc = g.tensors[n.outputs[0]].shape
    _, kh, kw, _ = g.tensors[n.inputs[1]].shape
    (sh, sw), (top, left, _, _) = n.attrs["stride"], n.attrs["crop"]
    weights, bias = b.weight_rows(sym, n.inputs[1]), b.bias(sym, n.inputs[2])
    mul, rnd, shr = b.requant(sym, n.attrs["shift"])
    params = [("in_h", h), ("in_w", w), ("in_c", c), ("out_h", oh), ("out_w", ow), ("out_c", oc), ("k_h", kh),
              ("k_w", kw), ("stride_h", sh), ("stride_w", sw), ("crop_top", top), ("crop_left", left),
              ("weights", weights), ("bias", bias), ("mul", mul), ("rnd", rnd), ("shr", shr),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]), ("groups", groups(n)),
              ("dil_h", dilation(n)[0]), ("dil_w", dilation(n)[1])]
    return "_conv_transpose2d", params, ""


def qat_conv_transpose(q, i: int, n, xs, s):
    """QAT: fake-quantised weights (straight-through), integer accumulate, requantise (as conv2d)."""
    return q._weighted(i, n, xs[0], s.fin, s.fout, s.attrs, s.exact, s.dtype)


# ================================================================ resize

RESIZE_MODES = ("nearest", "nearest_exact", "bilinear")


def resize_frac_bits(bits: int) -> int:
    """Fraction bits s of the bilinear weights: acc = sum of 4 products |x| * 2^(2s) within int32."""
    return 10 if bits == 8 else 7


def _f32(v) -> np.float32:
    return np.float32(v)


def _axis_scale(in_size: int, out_size: int, scale: float | None) -> np.float32:
    """torch's compute_scales_value<float>: 1/scale_factor when given, else in/out (float32)."""
    if scale is not None and scale > 0:
        return _f32(1.0 / scale)
    return _f32(in_size) / _f32(out_size)


def resize_axis(in_size: int, out_size: int, mode: str, align_corners: bool, scale: float | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis as torch computes it (float32): (i0, i1, lambda1) per output index; nearest: i1 = i0, lambda 0."""
    dst = np.arange(out_size)
    if mode in ("nearest", "nearest_exact"):
        if mode == "nearest" and out_size == in_size:
            i0 = dst
        elif mode == "nearest" and out_size == 2 * in_size:
            i0 = dst >> 1
        else:
            s = _axis_scale(in_size, out_size, scale)
            if mode == "nearest":  # floorf(dst_index * scale): int64 * float -> float
                src = np.floor(dst.astype(np.float32) * s)
            else:  # floorf((dst_index + 0.5) * scale): double * float -> double
                src = np.floor((dst.astype(np.float64) + 0.5) * np.float64(s))
            i0 = np.minimum(src.astype(np.int64), in_size - 1)
        return i0.astype(np.int64), i0.astype(np.int64), np.zeros(out_size)
    if align_corners:
        s = _f32(in_size - 1) / _f32(out_size - 1) if out_size > 1 else _f32(0)
        src = s * dst.astype(np.float32)
    else:
        s = _axis_scale(in_size, out_size, scale)
        src = s * (dst.astype(np.float32) + _f32(0.5)) - _f32(0.5)
        src = np.where(src < 0, _f32(0), src).astype(np.float32)
    i0 = src.astype(np.int64)  # truncation toward zero of a non-negative value
    i1 = i0 + (i0 < in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float64)
    return i0, i1, lam


def resize_tables(g, n) -> dict[str, np.ndarray]:
    """The integer tables of a resize node: y0, y1, wy (Q s weight of y1), x0, x1, wx (per output row/column)."""
    h, w, _ = g.tensors[n.inputs[0]].shape
    oh, ow, _ = g.tensors[n.outputs[0]].shape
    s = int(n.attrs.get("frac_bits", resize_frac_bits(8)))
    tables = {}
    for axis, size, out, scale in (("y", h, oh, n.attrs["scales"][0]), ("x", w, ow, n.attrs["scales"][1])):
        i0, i1, lam = resize_axis(size, out, n.attrs["mode"], n.attrs["align_corners"], scale)
        wq = np.floor(lam * (1 << s) + 0.5).astype(np.int64)  # round half up; lambda in [0, 1]
        tables[f"{axis}0"], tables[f"{axis}1"], tables[f"w{axis}"] = i0, i1, wq
    return tables


def resize_shape(g, n) -> tuple[int, ...]:
    oh, ow = n.attrs["size"]
    return (oh, ow, g.tensors[n.inputs[0]].shape[2])


def check_resize(g, n) -> None:
    if len(g.tensors[n.inputs[0]].shape) != 3:
        raise VerifyError(f"{n.where()}: resize expects an (H,W,C) input, got {g.tensors[n.inputs[0]].shape}")
    if n.attrs["mode"] not in RESIZE_MODES or min(n.attrs["size"]) < 1:
        raise VerifyError(f"{n.where()}: resize mode {n.attrs['mode']} / size {n.attrs['size']} invalid")


def f_resize(g, n, xs):
    x = xs[0]
    h, w, _ = x.shape[1:]
    oh, ow = n.attrs["size"]
    args = (n.attrs["mode"], n.attrs["align_corners"])
    y0, y1, ly = resize_axis(h, oh, *args, n.attrs["scales"][0])
    x0, x1, lx = resize_axis(w, ow, *args, n.attrs["scales"][1])
    ly, lx = ly[None, :, None, None], lx[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - lx) + x[:, y0][:, :, x1] * lx
    bottom = x[:, y1][:, :, x0] * (1 - lx) + x[:, y1][:, :, x1] * lx
    return top * (1 - ly) + bottom * ly


def i_resize(g, n, xs):
    from ..fixed import int_range, requantize

    x, t = xs[0].astype(np.int64), resize_tables(g, n)
    if n.attrs["mode"] != "bilinear":
        return x[:, t["y0"]][:, :, t["x0"]]
    s = int(n.attrs["frac_bits"])
    wy1, wx1 = t["wy"][None, :, None, None], t["wx"][None, None, :, None]
    wy0, wx0 = (1 << s) - wy1, (1 << s) - wx1
    r0, r1 = x[:, t["y0"]], x[:, t["y1"]]
    acc = wy0 * (wx0 * r0[:, :, t["x0"]] + wx1 * r0[:, :, t["x1"]]) + wy1 * (wx0 * r1[:, :, t["x0"]]
                                                                          + wx1 * r1[:, :, t["x1"]])
    return requantize(acc, 2 * s, *int_range(g.tensors[n.inputs[0]].qformat.bits))


def quantize_resize(g, n, act) -> None:
    """Output format = input format (a copy or a convex combination); the weights' fraction bits by width."""
    from ..errors import UserError
    from ..passes import quantize as q

    x, out = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, x.qformat.frac))
    n.attrs["frac_bits"] = resize_frac_bits(x.qformat.bits)
    if max(x.shape[:2]) > 32767:
        raise UserError(f"{n.where()}: input {x.shape[0]}x{x.shape[1]} is too large for the int16 index tables")


def macs_resize(g, n) -> int:
    """Bilinear: 4 multiplies per output value (+2 for the row weights); nearest: a copy."""
    return 4 * g.tensors[n.outputs[0]].size if n.attrs["mode"] == "bilinear" else 0


def _torch_resize(x, node):
    """Table-driven resize in torch (differentiable): the float rule of f_resize."""
    import torch

    h, w = x.shape[1:3]
    oh, ow = node.attrs["size"]
    args = (node.attrs["mode"], node.attrs["align_corners"])
    y0, y1, ly = resize_axis(h, oh, *args, node.attrs["scales"][0])
    x0, x1, lx = resize_axis(w, ow, *args, node.attrs["scales"][1])
    idx = [torch.as_tensor(a) for a in (y0, y1, x0, x1)]
    ly_t = torch.as_tensor(ly, dtype=x.dtype)[None, :, None, None]
    lx_t = torch.as_tensor(lx, dtype=x.dtype)[None, None, :, None]
    r0, r1 = x[:, idx[0]], x[:, idx[1]]
    top = r0[:, :, idx[2]] * (1 - lx_t) + r0[:, :, idx[3]] * lx_t
    bottom = r1[:, :, idx[2]] * (1 - lx_t) + r1[:, :, idx[3]] * lx_t
    return top * (1 - ly_t) + bottom * ly_t


def torch_resize(node, xs, const):
    return _torch_resize(xs[0], node)


def qat_resize(q, i: int, n, xs, s):
    """QAT: integer gather; bilinear sums the Q s weights' products and rounds once (requant, as i_resize)."""
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    if n.attrs["mode"] != "bilinear":
        return _torch_resize(x, n)
    h, w = x.shape[1:3]
    fb = int(s.attrs["frac_bits"])
    oh, ow = n.attrs["size"]
    y0, y1, ly = resize_axis(h, oh, n.attrs["mode"], n.attrs["align_corners"], n.attrs["scales"][0])
    x0, x1, lx = resize_axis(w, ow, n.attrs["mode"], n.attrs["align_corners"], n.attrs["scales"][1])
    wy = torch.as_tensor(np.floor(ly * (1 << fb) + 0.5), dtype=x.dtype)[None, :, None, None]
    wx = torch.as_tensor(np.floor(lx * (1 << fb) + 0.5), dtype=x.dtype)[None, None, :, None]
    one = float(1 << fb)
    r0, r1 = x[:, torch.as_tensor(y0)], x[:, torch.as_tensor(y1)]
    x0_t, x1_t = torch.as_tensor(x0), torch.as_tensor(x1)
    acc = (one - wy) * ((one - wx) * r0[:, :, x0_t] + wx * r0[:, :, x1_t]) \
        + wy * ((one - wx) * r1[:, :, x0_t] + wx * r1[:, :, x1_t])
    return requant(acc * pow2(-2 * fb), None, None, s.ste)


def kernel_resize(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_resize_s8", "qg_resize_params_t"
    if variant == "s16":
        return "qg_resize_s16", "qg_resize_params_t"
    raise ValueError(f"resize keeps its input's type: no {variant} kernel")


def _resize_fields(b, io, n) -> list[tuple[str, object]]:
    g = b.g
    h, w, c = g.tensors[io.xs[0]].shape
    oh, ow, _ = g.tensors[io.out].shape
    t = resize_tables(g, n)
    bilinear = n.attrs["mode"] == "bilinear"
    fields = [("in_h", h), ("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow),
              ("bilinear", int(bilinear)), ("frac_bits", int(n.attrs["frac_bits"]) if bilinear else 0)]
    for key, what in (("y0", "source row"), ("x0", "source column"), ("y1", "second source row"),
                      ("x1", "second source column"), ("wy", "Q weight of y1"), ("wx", "Q weight of x1")):
        if bilinear or key in ("y0", "x0"):
            fields.append((key, b.array(f"{io.sym}_{key}", t[key], "int16", f"{what} per output index")))
        else:
            fields.append((key, "0"))  # a null pointer (weights.c includes no <stddef.h>)
    if "out_stride" in n.attrs:  # writes its channels of a wider concat output (passes/concat_in_place)
        fields.append(("out_stride", n.attrs["out_stride"]))
    return fields


def py_resize(b, n, index: int):
    """MicroPython: _resize with the same int16 tables as the C kernel (array('h'))."""
    g, sym = b.g, f"L{index}"
    h, w, c = g.tensors[n.inputs[0]].shape
    oh, ow, _ = g.tensors[n.outputs[0]].shape
    t, bilinear = resize_tables(g, n), n.attrs["mode"] == "bilinear"
    params = [("in_h", h), ("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow), ("bilinear", int(bilinear)),
              ("frac_bits", int(n.attrs["frac_bits"]))]
    for key in ("y0", "x0", "y1", "x1", "wy", "wx"):
        if not bilinear and key not in ("y0", "x0"):
            params.append((key, None))
            continue
        flat = [str(int(v)) for v in t[key]]
        lines = [", ".join(flat[i:i + 16]) + "," for i in range(0, len(flat), 16)]
        name = f"_{sym}_{key.upper()}"
        params.append((key, b.const(name, f"resize table {key} [{len(flat)}]", f"{name} = array('h', (", lines,
                                    "))", 2 * len(flat))))
    return "_resize", params, ""


def c_resize(b, index: int, n):
    io = b.io(index, n)
    return "qg_resize_params_t", _resize_fields(b, io, n), f"qg_resize_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_resize_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return "qg_resize_params_t", _resize_fields(b, io, n), f"qg_resize_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});"


SPECS = [
    OpSpec(Op.CONV_TRANSPOSE2D, "upsample", Trait.WEIGHTED | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT | Trait.STRIDED_OUT,
           conv_transpose_shape, check_conv_transpose, f_conv_transpose, i_conv_transpose, quantize_conv_transpose,
           macs_conv_transpose, torch_conv_transpose,
           "ConvTranspose1d/2d (any groups, any dilation)", ("ConvTranspose",),
           ("qg_conv_transpose2d_s8", "qg_conv_transpose2d_pointwise_s8", "qg_conv_transpose2d_s8_to_s16",
            "qg_conv_transpose2d_s16_to_s8", "qg_conv_transpose2d_s16"),
           "transposed convolution (stride, padding, output_padding, dilation), gather form: no zero MACs, "
           "per-channel shift, fused clamp", kernel=kernel_conv_transpose,
           emit_py=py_conv_transpose, emit_c=c_conv_transpose, emit_c_wide=c_conv_transpose_wide,
           qat=qat_conv_transpose, form=form_conv_transpose),
    OpSpec(Op.RESIZE, "upsample", Trait.KEEPS_FORMAT | Trait.CHANNELWISE | Trait.STRIDED_OUT,
           resize_shape, check_resize, f_resize, i_resize, quantize_resize, macs_resize, torch_resize,
           "Upsample/F.interpolate (nearest, nearest-exact, bilinear/linear)", ("Resize", "Upsample"),
           ("qg_resize_s8", "qg_resize_s16"),
           "nearest / bilinear resize through per-axis index and Q10 weight tables, one rounding",
           kernel=kernel_resize, emit_py=py_resize, emit_c=c_resize, emit_c_wide=c_resize_wide, qat=qat_resize),
]
