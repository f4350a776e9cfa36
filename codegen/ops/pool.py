"""maxpool2d, avgpool2d: channels-last windows (1-D pooling as H=1); reduce: mean / max over the last IR
axis. Every output keeps the input's format.

Windows. Output pixel (oy, ox) of a pool reads the input rectangle rows[oy] x cols[ox], each an interval
[start, end) clipped to the input (`axis_windows`, the one definition the references, kernels and QAT read):
- sliding (attrs kernel, stride, padding = (top, left, bottom, right)): start = o * stride - pad_lo,
  end = start + kernel. Cells outside the input are padding: never the max, zeros in the average.
  PyTorch's ceil_mode is extra bottom/right padding (the last window starts inside the input or the left
  padding; the part of a window that runs past the input is clipped away).
- adaptive (attrs adaptive = (OH, OW)): start = floor(o * size / OUT), end = ceil((o + 1) * size / OUT),
  PyTorch's adaptive pooling (uneven windows where the sizes do not divide).

Average divisor of a window: d = row count * column count, per axis the cells of [start, end) (unclipped)
inside the counted region [-count_pad_lo, size + count_pad_hi); attrs count_pad (top, left, bottom, right)
defaults to the padding, i.e. d = KH * KW for every window (PyTorch's count_include_pad=True). The front
ends set count_pad = 0 for count_include_pad=False and = the original padding in ceil mode (PyTorch clips
the divisor to input + padding). Adaptive windows count themselves.

The average rule (integer): out = round_shift(sum * mult(d), shift(d)), then the output range, with
mult(d) = round(2**23 / d) and shift 23 (fixed.avg_multiplier: the rounding rule's round half up on the
exact quotient), or mult 1 and shift log2(d) for a power of two d (the same values, exactly). A layer
whose windows all have d = KH * KW (uniform) keeps one (avg_mult, avg_shift) pair and the fast kernels;
a layer with clipped windows or adaptive windows ("windows" form) carries per-window classes and a small
table of mult(d) (shift 23) and runs the *_windows kernels. Max keeps the input format; so does mean.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _zero_macs
from .window import conv_out_size

# ------------------------------------------------------------------------------------------ windows


def axis_windows(attrs: dict, axis: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along `axis` (0: rows, 1: columns) of an input `size` long, per output index: the first and end
    input index of its window, clipped to the input, and the cells the average's divisor counts. A window
    that reads no input cell (an average over a folded zero pad) is [0, 0): its sum is 0."""
    if "adaptive" in attrs:
        out = int(attrs["adaptive"][axis])
        o = np.arange(out, dtype=np.int64)
        start, end = o * size // out, -((-(o + 1) * size) // out)
        return start, end, end - start
    k, s = int(attrs["kernel"][axis]), int(attrs["stride"][axis])
    pad = attrs["padding"]
    count_pad = attrs.get("count_pad", pad)
    out = conv_out_size(size, k, s, int(pad[axis]), int(pad[axis + 2]))
    start = np.arange(out, dtype=np.int64) * s - int(pad[axis])
    end = start + k
    count = np.minimum(end, size + int(count_pad[axis + 2])) - np.maximum(start, -int(count_pad[axis]))
    first, end = np.clip(start, 0, size), np.clip(end, 0, size)
    empty = end <= first
    return np.where(empty, 0, first), np.where(empty, 0, end), count


def uses_windows(attrs: dict, op: Op, h: int, w: int) -> bool:
    """The "windows" form: adaptive windows, or an average whose divisor is not KH * KW everywhere."""
    if "adaptive" in attrs:
        return True
    if op is not Op.AVGPOOL2D or "count_pad" not in attrs:
        return False
    return any(np.any(axis_windows(attrs, a, size)[2] != attrs["kernel"][a]) for a, size in ((0, h), (1, w)))


def _classes(count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, cls = np.unique(count, return_inverse=True)
    return values, cls.reshape(-1)


def window_table(attrs: dict, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The windows form's data: rows (OH, 3) and cols (OW, 3) = [first, end, divisor class], the table
    mult[row class * col classes + col class] = fixed.avg_multiplier(row count * col count), col classes."""
    from ..fixed import avg_multiplier

    y0, y1, cy = axis_windows(attrs, 0, h)
    x0, x1, cx = axis_windows(attrs, 1, w)
    ry, ky = _classes(cy)
    rx, kx = _classes(cx)
    mult = np.array([avg_multiplier(int(a) * int(b)) for a in ry for b in rx], dtype=np.int64)
    return np.stack([y0, y1, ky], 1), np.stack([x0, x1, kx], 1), mult, len(rx)


def _window_reduce(x, attrs: dict, reduce):
    """reduce(x[:, rows, cols, :]) over every window: separable, rows first (NumPy or torch arrays)."""
    y0, y1, _ = axis_windows(attrs, 0, x.shape[1])
    x0, x1, _ = axis_windows(attrs, 1, x.shape[2])
    stack = np.stack if isinstance(x, np.ndarray) else _torch_stack
    rows = stack([reduce(x[:, a:b], 1) for a, b in zip(y0, y1)], 1)
    return stack([reduce(rows[:, :, a:b], 2) for a, b in zip(x0, x1)], 2)


def _torch_stack(parts, axis):
    import torch

    return torch.stack(parts, axis)


def _divisors(attrs: dict, h: int, w: int) -> np.ndarray:
    """(OH, OW, 1) divisor of every window."""
    return (axis_windows(attrs, 0, h)[2][:, None] * axis_windows(attrs, 1, w)[2][None, :])[..., None]


def _multipliers(attrs: dict, h: int, w: int) -> tuple[np.ndarray, int]:
    """(per-window multiplier (OH, OW, 1) or a scalar, shift) of a quantised average."""
    if "avg_mult" in attrs:
        return np.int64(attrs["avg_mult"]), int(attrs["avg_shift"])
    rows, cols, mult, ncols = window_table(attrs, h, w)
    return mult[rows[:, 2][:, None] * ncols + cols[:, 2][None, :]][..., None], int(attrs["avg_shift"])


def _np_max(v, axis):
    return v.max(axis=axis)


def _np_sum(v, axis):
    return v.sum(axis=axis)


# ------------------------------------------------------------------------------------------ rules


def pool_shape(g, n) -> tuple[int, ...]:
    h, w, c = g.tensors[n.inputs[0]].shape
    if "adaptive" in n.attrs:
        return (int(n.attrs["adaptive"][0]), int(n.attrs["adaptive"][1]), c)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]
    return (conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr), c)


def check_pool(g, n) -> None:
    """Every max window reads an input cell (padding never wins); every average divisor is positive."""
    h, w, _ = g.tensors[n.inputs[0]].shape
    for axis, size in ((0, h), (1, w)):
        start, end, count = axis_windows(n.attrs, axis, size)
        if n.op is Op.MAXPOOL2D and np.any(end <= start):
            raise VerifyError(f"{n.where()}: a max pooling window reads no input cell (axis {axis})")
        if n.op is Op.AVGPOOL2D and np.any(count <= 0):
            raise VerifyError(f"{n.where()}: an average pooling window counts no cell (axis {axis})")


def f_maxpool(g, n, xs):
    return _window_reduce(xs[0], n.attrs, _np_max)


def f_avgpool(g, n, xs):
    return _window_reduce(xs[0], n.attrs, _np_sum) / _divisors(n.attrs, xs[0].shape[1], xs[0].shape[2])


def i_maxpool(g, n, xs):
    return _window_reduce(xs[0], n.attrs, _np_max)


def i_avgpool(g, n, xs):
    """The average rule: round_shift(sum * mult(d), shift), clamped (module docstring)."""
    from ..fixed import requantize

    total = _window_reduce(xs[0].astype(np.int64), n.attrs, _np_sum)
    mult, shift = _multipliers(n.attrs, xs[0].shape[1], xs[0].shape[2])
    return requantize(total * mult, shift, n.attrs["act_min"], n.attrs["act_max"])


def q_maxpool(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))


def q_avgpool(g, n, act) -> None:
    from ..fixed import AVG_SHIFT
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))
    h, w, _ = g.tensors[n.inputs[0]].shape
    n.attrs.pop("avg_mult", None)
    if uses_windows(n.attrs, n.op, h, w):
        n.attrs.update(avg_shift=AVG_SHIFT)  # mult(d) per window class: window_table
    else:
        kh, kw = n.attrs["kernel"]
        n.attrs.update(q.avg_params(kh * kw))
    n.attrs.update(act_min=out.qformat.min_int, act_max=out.qformat.max_int)


def torch_maxpool(node, xs, const):
    return _window_reduce(xs[0], node.attrs, _torch_max)


def torch_avgpool(node, xs, const):
    import torch

    d = _divisors(node.attrs, xs[0].shape[1], xs[0].shape[2])
    return _window_reduce(xs[0], node.attrs, _torch_sum) / torch.as_tensor(d, dtype=xs[0].dtype)


def _torch_max(v, axis):
    return v.amax(dim=axis)


def _torch_sum(v, axis):
    return v.sum(dim=axis)


def _form(g, n, variant: str) -> str:
    h, w, _ = g.tensors[n.inputs[0]].shape
    return variant + "_windows" if uses_windows(n.attrs, n.op, h, w) else variant


def _pick(table: dict, variant: str) -> tuple[str, str]:
    if variant not in table:  # pooling and reduce keep their input's type: s8, s16 (and the windows forms)
        raise ValueError(f"no {variant} kernel")
    return table[variant]


def kernel_maxpool(variant: str) -> tuple[str, str]:
    return _pick({"s8": ("qg_maxpool2d_s8", "qg_pool2d_params_t"),
                  "s16": ("qg_maxpool2d_s16", "qg_pool2d_s16_params_t"),
                  "s8_windows": ("qg_maxpool2d_windows_s8", "qg_pool2d_windows_params_t"),
                  "s16_windows": ("qg_maxpool2d_windows_s16", "qg_pool2d_windows_params_t")}, variant)


def kernel_avgpool(variant: str) -> tuple[str, str]:
    return _pick({"s8": ("qg_avgpool2d_s8", "qg_pool2d_params_t"),
                  "s16": ("qg_avgpool2d_s16", "qg_pool2d_s16_params_t"),
                  "s8_windows": ("qg_avgpool2d_windows_s8", "qg_pool2d_windows_params_t"),
                  "s16_windows": ("qg_avgpool2d_windows_s16", "qg_pool2d_windows_params_t")}, variant)


_COMMON = Trait.SLIDING_WINDOW | Trait.KEEPS_FORMAT | Trait.CHANNELWISE


def py_pool(b, n, index: int):
    """MicroPython: maxpool2d / avgpool2d (average: sum * avg_mult * mul + rnd >> shr); the windows form
    passes its rows, cols and multiplier table (_maxpool2d_windows / _avgpool2d_windows)."""
    g = b.g
    h, w, c = g.tensors[n.inputs[0]].shape
    oh, ow, _ = g.tensors[n.outputs[0]].shape
    avg = n.op is Op.AVGPOOL2D
    if uses_windows(n.attrs, n.op, h, w):
        rows, cols, mult, ncols = window_table(n.attrs, h, w)
        params = [("in_w", w), ("channels", c), ("rows", tuple(int(v) for v in rows.reshape(-1))),
                  ("cols", tuple(int(v) for v in cols.reshape(-1)))]
        if not avg:
            return "_maxpool2d_windows", params, ""
        (_,), (rnd,), (shr,) = b.triples([n.attrs["avg_shift"]])
        params += [("mult", tuple(int(v) for v in mult)), ("col_classes", ncols), ("rnd", rnd), ("shr", shr),
                   ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
        return "_avgpool2d_windows", params, ""
    params = [("in_h", h), ("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow),
              ("k_h", n.attrs["kernel"][0]), ("k_w", n.attrs["kernel"][1]),
              ("stride_h", n.attrs["stride"][0]), ("stride_w", n.attrs["stride"][1]),
              ("pad_top", n.attrs["padding"][0]), ("pad_left", n.attrs["padding"][1])]
    if not avg:
        return "_maxpool2d", params, ""
    (mul,), (rnd,), (shr,) = b.triples([n.attrs["avg_shift"]])
    params += [("avg_mult", n.attrs["avg_mult"] * mul), ("rnd", rnd), ("shr", shr),
               ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_avgpool2d", params, ""


def _pool_fields(g, n, x: str, out: str) -> list[tuple[str, int]]:
    h, w, c = g.tensors[x].shape
    oh, ow, _ = g.tensors[out].shape
    return [("in_h", h), ("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow),
            ("k_h", n.attrs["kernel"][0]), ("k_w", n.attrs["kernel"][1]),
            ("stride_h", n.attrs["stride"][0]), ("stride_w", n.attrs["stride"][1]),
            ("pad_top", n.attrs["padding"][0]), ("pad_left", n.attrs["padding"][1])]


def _windows_call(b, io, n, width: str, lo: int, hi: int):
    """C: the *_windows kernels (one struct for both widths): rows/cols triples and the multiplier table."""
    g, avg = b.g, n.op is Op.AVGPOOL2D
    h, w, c = g.tensors[io.xs[0]].shape
    oh, ow, _ = g.tensors[io.out].shape
    rows, cols, mult, ncols = window_table(n.attrs, h, w)
    what = "first row, end row, divisor class" if avg else "first row, end row (class unused)"
    fields = [("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow),
              ("col_classes", ncols if avg else 1),
              ("act_min", n.attrs.get("act_min", lo)), ("act_max", n.attrs.get("act_max", hi)),
              ("avg_shift", n.attrs["avg_shift"] if avg else 0),
              ("rows", b.array(f"{io.sym}_rows", rows, "int16", f"{oh} x ({what})")),
              ("cols", b.array(f"{io.sym}_cols", cols, "int16", f"{ow} x (first col, end col, class)"))]
    if avg:  # max leaves mult out (NULL)
        fields.append(("mult", b.array(f"{io.sym}_mult", mult, "int32",
                                       f"round(2^{n.attrs['avg_shift']} / d) per (row class, col class)")))
    fn = ("qg_avgpool2d_windows_" if avg else "qg_maxpool2d_windows_") + width
    return "qg_pool2d_windows_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_pool(b, index: int, n):
    """C, int8: qg_maxpool2d_s8 / qg_avgpool2d_s8 (uniform windows) or their *_windows_s8 twins."""
    io, avg = b.io(index, n), n.op is Op.AVGPOOL2D
    h, w, _ = b.g.tensors[io.xs[0]].shape
    if uses_windows(n.attrs, n.op, h, w):
        return _windows_call(b, io, n, "s8", -128, 127)
    fields = [*_pool_fields(b.g, n, io.xs[0], io.out),
              ("act_min", n.attrs.get("act_min", -128)), ("act_max", n.attrs.get("act_max", 127)),
              ("avg_mult", n.attrs.get("avg_mult", 0) if avg else 0),
              ("avg_shift", n.attrs.get("avg_shift", 0) if avg else 0)]
    fn = "qg_avgpool2d_s8" if avg else "qg_maxpool2d_s8"
    return "qg_pool2d_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_pool_wide(b, index: int, n):
    """C, int16 activations: qg_maxpool2d_s16 / qg_avgpool2d_s16 or their *_windows_s16 twins."""
    io, avg = b.io(index, n, wide=True), n.op is Op.AVGPOOL2D
    h, w, _ = b.g.tensors[io.xs[0]].shape
    if uses_windows(n.attrs, n.op, h, w):
        return _windows_call(b, io, n, "s16", -32768, 32767)
    fields = [*_pool_fields(b.g, n, io.xs[0], io.out),
              ("act_min", n.attrs.get("act_min", -32768)), ("act_max", n.attrs.get("act_max", 32767)),
              ("avg_mult", n.attrs["avg_mult"] if avg else 0),
              ("avg_shift", n.attrs["avg_shift"] if avg else 0)]
    fn = "qg_avgpool2d_s16" if avg else "qg_maxpool2d_s16"
    return "qg_pool2d_s16_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def qat_maxpool(q, i: int, n, xs, s):
    return _window_reduce(xs[0], n.attrs, _torch_max)


def qat_avgpool(q, i: int, n, xs, s):
    import torch

    from ..qat import pow2, requant

    total = _window_reduce(xs[0], n.attrs, _torch_sum)
    mult, shift = _multipliers(s.attrs, xs[0].shape[1], xs[0].shape[2])
    mult = torch.as_tensor(np.asarray(mult, dtype=np.float64), dtype=total.dtype)
    return requant(total * mult * pow2(-shift), s.attrs["act_min"], s.attrs["act_max"], s.ste)


# ------------------------------------------------------------------------------------------ reduce
# attrs kind = "mean" | "max" | "sum": over the last IR axis (channels / features), the axis kept with size 1.
# mean: the average rule with d = the axis length (one avg_mult, avg_shift); max keeps the values.
# sum (torch.sum): the exact int32 sum at the input frac fi requantised once to the output's own calibrated
# format fo: avg_mult = 1, avg_shift = fi - fo (|sum| <= 255 * 128 * 255: int32), output keeps the input's width.


def reduce_shape(g, n) -> tuple[int, ...]:
    return tuple(g.tensors[n.inputs[0]].shape[:-1]) + (1,)


def check_reduce(g, n) -> None:
    if n.attrs.get("kind") not in ("mean", "max", "sum"):
        raise VerifyError(f"{n.where()}: reduce kind {n.attrs.get('kind')!r} (mean, max or sum)")


def f_reduce(g, n, xs):
    x = xs[0].astype(np.float64)
    if n.attrs["kind"] == "sum":
        return x.sum(axis=-1, keepdims=True)
    return x.max(axis=-1, keepdims=True) if n.attrs["kind"] == "max" else x.mean(axis=-1, keepdims=True)


def i_reduce(g, n, xs):
    from ..fixed import requantize

    if n.attrs["kind"] == "max":
        return xs[0].max(axis=-1, keepdims=True)
    total = xs[0].astype(np.int64).sum(axis=-1, keepdims=True)
    return requantize(total * n.attrs["avg_mult"], n.attrs["avg_shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_reduce(g, n, act) -> None:
    from ..passes import quantize as q

    x, out = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    if n.attrs["kind"] == "sum":  # its own range; requantised once from the input frac
        from ..fixed import MAX_SHIFT

        fo = max(x.qformat.frac - MAX_SHIFT, min(act(out.name).frac, x.qformat.frac + MAX_SHIFT))
        q._set_act(out, act(out.name, fo))
        n.attrs.update(act_min=out.qformat.min_int, act_max=out.qformat.max_int, avg_mult=1,
                       avg_shift=int(x.qformat.frac - out.qformat.frac))
        return
    q._set_act(out, act(out.name, x.qformat.frac))
    n.attrs.update(act_min=out.qformat.min_int, act_max=out.qformat.max_int)
    if n.attrs["kind"] == "mean":
        n.attrs.update(q.avg_params(int(x.shape[-1])))


def torch_reduce(node, xs, const):
    x = xs[0]
    if node.attrs["kind"] == "sum":
        return x.sum(dim=-1, keepdim=True)
    return x.amax(dim=-1, keepdim=True) if node.attrs["kind"] == "max" else x.mean(dim=-1, keepdim=True)


def kernel_reduce(variant: str) -> tuple[str, str]:
    return _pick({"s8": ("qg_reduce_s8", "qg_reduce_params_t"), "s16": ("qg_reduce_s16", "qg_reduce_params_t")},
                 variant)


def _reduce_fields(g, n) -> list[tuple[str, int]]:
    x = g.tensors[n.inputs[0]]
    mean = n.attrs["kind"] != "max"  # mean and sum: requantise(sum * avg_mult, avg_shift)
    return [("rows", x.size // x.shape[-1]), ("size", x.shape[-1]), ("is_max", 0 if mean else 1),
            ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"]),
            ("avg_mult", n.attrs["avg_mult"] if mean else 0), ("avg_shift", n.attrs["avg_shift"] if mean else 0)]


def c_reduce(b, index: int, n):
    io = b.io(index, n)
    return "qg_reduce_params_t", _reduce_fields(b.g, n), f"qg_reduce_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_reduce_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return ("qg_reduce_params_t", _reduce_fields(b.g, n),
            f"qg_reduce_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def py_reduce(b, n, index: int):
    """MicroPython: _reduce (mean: sum * avg_mult * mul + rnd >> shr; max: avg_mult 0)."""
    fields = dict(_reduce_fields(b.g, n))
    (mul,), (rnd,), (shr,) = b.triples([fields["avg_shift"]])
    params = [("rows", fields["rows"]), ("size", fields["size"]), ("is_max", fields["is_max"]),
              ("avg_mult", fields["avg_mult"] * mul), ("rnd", rnd), ("shr", shr),
              ("act_min", fields["act_min"]), ("act_max", fields["act_max"])]
    return "_reduce", params, ""


def qat_reduce(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    x = xs[0]
    if n.attrs["kind"] == "max":
        return x.amax(dim=-1, keepdim=True)
    total = x.sum(dim=-1, keepdim=True)
    return requant(total * s.attrs["avg_mult"] * pow2(-s.attrs["avg_shift"]), s.attrs["act_min"],
                   s.attrs["act_max"], s.ste)


SPECS = [
    OpSpec(Op.MAXPOOL2D, "pool", _COMMON, pool_shape, check_pool, f_maxpool, i_maxpool, q_maxpool, _zero_macs,
           torch_maxpool, "MaxPool1d/2d (ceil_mode), AdaptiveMaxPool1d/2d, amax / max(dim) over H,W",
           ("MaxPool", "GlobalMaxPool", "ReduceMax"),
           ("qg_maxpool2d_s8", "qg_maxpool2d_s16", "qg_maxpool2d_windows_s8", "qg_maxpool2d_windows_s16"),
           "max pooling (padding never wins; clipped or adaptive windows)", kernel=kernel_maxpool,
           emit_py=py_pool, emit_c=c_pool, emit_c_wide=c_pool_wide, qat=qat_maxpool, form=_form),
    OpSpec(Op.AVGPOOL2D, "pool", _COMMON | Trait.FOLDS_PAD, pool_shape, check_pool, f_avgpool, i_avgpool, q_avgpool,
           _zero_macs, torch_avgpool,
           "AvgPool1d/2d (ceil_mode, count_include_pad), AdaptiveAvgPool1d/2d, mean over H,W",
           ("AveragePool", "GlobalAveragePool", "ReduceMean"),
           ("qg_avgpool2d_s8", "qg_avgpool2d_s16", "qg_avgpool2d_windows_s8", "qg_avgpool2d_windows_s16"),
           "average pooling, sum * mult(d) >> shift per window divisor d", kernel=kernel_avgpool,
           emit_py=py_pool, emit_c=c_pool, emit_c_wide=c_pool_wide, qat=qat_avgpool, form=_form),
    OpSpec(Op.REDUCE, "pool", Trait.KEEPS_FORMAT, reduce_shape, check_reduce, f_reduce, i_reduce, q_reduce,
           _zero_macs, torch_reduce, "mean / amax / max(dim) over channels, torch.sum(dim)",
           ("ReduceMean", "ReduceMax"), ("qg_reduce_s8", "qg_reduce_s16"),
           "mean, max or sum over the last IR axis (channels)",
           kernel=kernel_reduce, emit_py=py_reduce, emit_c=c_reduce, emit_c_wide=c_reduce_wide, qat=qat_reduce),
]
