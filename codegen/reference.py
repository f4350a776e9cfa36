"""NumPy interpreters over the IR.

`run_int` is THE SPEC: it executes the quantised IR with the exact integer arithmetic the C kernels
must reproduce (codegen/fixed.py rules). `run_float` executes the float IR (before quantisation) and
is used for calibration and for the float side of accuracy/error reports.

Both take a batch: x has shape (N, *input_shape) and every intermediate keeps the leading N.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .fixed import int_range, quantize, requantize, round_shift
from .ir import Graph, Node, Op

# ---------------------------------------------------------------- shared window helpers


def pad_hw(x: np.ndarray, padding: tuple[int, int, int, int], value=0) -> np.ndarray:
    top, left, bottom, right = padding
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, KH, KW, C) sliding windows (a view; no copy)."""
    v = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))  # (N, H', W', C, KH, KW)
    v = v[:, :: stride[0], :: stride[1]]
    return v.transpose(0, 1, 2, 4, 5, 3)


def conv2d_acc(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """Plain convolution sums (N, OH, OW, Cout) of x (N,H,W,Cin) with w (Cout,KH,KW,Cin).

    Integer inputs are summed in float64, which is exact while |sum| < 2**53 (int8 products over any
    realistic kernel stay far below that), and cast back.
    """
    cout, kh, kw, _ = w.shape
    cols = windows(pad_hw(x, padding), (kh, kw), stride)
    n, oh, ow = cols.shape[:3]
    acc = cols.reshape(n * oh * ow, -1).astype(np.float64) @ w.reshape(cout, -1).T.astype(np.float64)
    return acc.reshape(n, oh, ow, cout)


def depthwise_acc(x: np.ndarray, w: np.ndarray, stride, padding) -> np.ndarray:
    """Depthwise sums: output channel o reads input channel o // multiplier (PyTorch groups order).

    One vectorised multiply-add per kernel tap over the strided, padded input (exact in float64).
    """
    cout, kh, kw, _ = w.shape
    mult = cout // x.shape[3]
    xp = pad_hw(x, padding).astype(np.float64)
    if mult > 1:
        xp = np.repeat(xp, mult, axis=3)
    sh, sw = stride
    oh = (xp.shape[1] - kh) // sh + 1
    ow = (xp.shape[2] - kw) // sw + 1
    acc = np.zeros((x.shape[0], oh, ow, cout))
    taps = w[..., 0].astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            acc += xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] * taps[:, i, j]
    return acc


def pool_windows(x: np.ndarray, node: Node, pad_value) -> np.ndarray:
    return windows(pad_hw(x, node.attrs["padding"], pad_value), node.attrs["kernel"], node.attrs["stride"])


# ---------------------------------------------------------------- float interpreter


def _f_conv(g, n, x):
    acc = conv2d_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def _f_dw(g, n, x):
    acc = depthwise_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def _f_linear(g, n, x):
    return _f_act(n, x @ g.tensors[n.inputs[1]].data.T + g.tensors[n.inputs[2]].data)


def _f_act(n: Node, y: np.ndarray) -> np.ndarray:
    lo, hi = n.attrs.get("act", (None, None))
    return np.clip(y, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)


def _f_relu(g, n, x):
    lo, hi = n.attrs["lo"], n.attrs["hi"]
    return np.clip(x, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)


def _f_bn(g, n, x):
    return x * g.tensors[n.inputs[1]].data + g.tensors[n.inputs[2]].data


def _f_maxpool(g, n, x):
    return pool_windows(x, n, -np.inf).max(axis=(3, 4))


def _f_avgpool(g, n, x):
    kh, kw = n.attrs["kernel"]
    return pool_windows(x, n, 0.0).sum(axis=(3, 4)) / (kh * kw)


def _f_reshape(g, n, x):
    return x.reshape((x.shape[0],) + tuple(n.attrs["shape"]))


def _f_pad(g, n, x):
    return pad_hw(x, n.attrs["padding"], 0.0)


def _f_softmax(g, n, x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _f_lut(g, n, x):
    return lut_function(n.attrs)(x)


def lut_function(attrs: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The float function behind a LUT node (also used to build its integer table)."""
    from math import sqrt

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


FLOAT_OPS: dict[Op, Callable] = {
    Op.PAD: _f_pad, Op.SOFTMAX: _f_softmax, Op.LUT: _f_lut,
    Op.CONV2D: _f_conv, Op.DEPTHWISE_CONV2D: _f_dw, Op.LINEAR: _f_linear, Op.RELU: _f_relu,
    Op.BATCH_NORM: _f_bn, Op.MAXPOOL2D: _f_maxpool, Op.AVGPOOL2D: _f_avgpool, Op.RESHAPE: _f_reshape,
}


def run_float(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Execute the float IR on a batch; returns every activation tensor by name."""
    values = {g.inputs[0]: np.asarray(x, dtype=np.float64)}
    for n in g.nodes:
        xs = [values[t] for t in n.inputs if not g.tensors[t].is_const]
        if n.op is Op.ADD:
            y = _f_act(n, xs[0] + xs[1])
        elif n.op is Op.CONCAT:
            y = np.concatenate(xs, axis=n.attrs["axis"] + 1)
        else:
            y = FLOAT_OPS[n.op](g, n, xs[0])
        values[n.outputs[0]] = y
    return values


# ---------------------------------------------------------------- integer interpreter (the spec)


def _i_bounds(g: Graph, n: Node) -> tuple[int, int]:
    return n.attrs["act_min"], n.attrs["act_max"]


def _i_conv_like(g: Graph, n: Node, acc: np.ndarray) -> np.ndarray:
    acc = acc.astype(np.int64) + g.tensors[n.inputs[2]].data.astype(np.int64)
    lo, hi = _i_bounds(g, n)
    return requantize(acc, np.asarray(n.attrs["shift"]), lo, hi)


def _i_conv(g, n, x):
    return _i_conv_like(g, n, conv2d_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"]))


def _i_dw(g, n, x):
    return _i_conv_like(g, n, depthwise_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"]))


def _i_linear(g, n, x):
    w = g.tensors[n.inputs[1]].data
    return _i_conv_like(g, n, x.astype(np.float64) @ w.T.astype(np.float64))


def _i_relu(g, n, x):
    lo, hi = _i_bounds(g, n)
    return np.clip(x, lo, hi)


def _i_maxpool(g, n, x):
    return pool_windows(x, n, np.iinfo(np.int64).min).max(axis=(3, 4))


def _i_avgpool(g, n, x):
    # sum * multiplier, then the rounding shift: multiplier = round(2**avg_shift / (KH*KW))
    total = pool_windows(x, n, 0).sum(axis=(3, 4), dtype=np.int64)
    lo, hi = _i_bounds(g, n)
    return requantize(total * n.attrs["avg_mult"], n.attrs["avg_shift"], lo, hi)


def _i_reshape(g, n, x):
    return x.reshape((x.shape[0],) + tuple(n.attrs["shape"]))


def _i_add(g, n, a, b):
    # align both inputs to a common frac (exact left shift, or rounding right shift), add, requantise
    acc = round_shift(a, n.attrs["shift_a"]) + round_shift(b, n.attrs["shift_b"])
    lo, hi = _i_bounds(g, n)
    return requantize(acc, n.attrs["shift"], lo, hi)


def _i_pad(g, n, x):
    return pad_hw(x, n.attrs["padding"], 0)


def _i_concat(g, n, xs):
    # each input is requantised to the output format (round_shift + saturate), then concatenated
    lo, hi = int_range(g.tensors[n.outputs[0]].qformat.bits)
    parts = [requantize(x, shift, lo, hi) for x, shift in zip(xs, n.attrs["shifts"])]
    return np.concatenate(parts, axis=n.attrs["axis"] + 1)


def _i_softmax(g, n, x):
    """Integer softmax over the last axis; output s8.f7.

    e = exp_table[max - x] (Q14 values of exp(-k * 2^-f_in), k = 0..255); out = round_half_up(128 * e /
    sum(e)) computed as floor((256 * e + sum) / (2 * sum)), then saturated to 127.
    """
    table = g.tensors[n.inputs[1]].data.astype(np.int64)
    d = x.max(axis=-1, keepdims=True) - x
    e = table[d]
    total = e.sum(axis=-1, keepdims=True)
    return np.minimum((256 * e + total) // (2 * total), 127)


def _i_lut(g, n, x):
    return g.tensors[n.inputs[1]].data.astype(np.int64)[x + 128]


INT_OPS: dict[Op, Callable] = {
    Op.PAD: _i_pad, Op.SOFTMAX: _i_softmax, Op.LUT: _i_lut,
    Op.CONV2D: _i_conv, Op.DEPTHWISE_CONV2D: _i_dw, Op.LINEAR: _i_linear, Op.RELU: _i_relu,
    Op.MAXPOOL2D: _i_maxpool, Op.AVGPOOL2D: _i_avgpool, Op.RESHAPE: _i_reshape,
}


def run_int(g: Graph, x_q: np.ndarray) -> dict[str, np.ndarray]:
    """Execute the quantised IR on integer input (N, *input_shape); every activation by name (int64)."""
    x_q = np.asarray(x_q)
    if not np.issubdtype(x_q.dtype, np.integer):
        raise TypeError(f"run_int takes integer input, got {x_q.dtype}; use quantize_input first")
    values = {g.inputs[0]: x_q.astype(np.int64)}
    for n in g.nodes:
        xs = [values[t] for t in n.inputs if not g.tensors[t].is_const]
        if n.op is Op.ADD:
            y = _i_add(g, n, xs[0], xs[1])
        elif n.op is Op.CONCAT:
            y = _i_concat(g, n, xs)
        else:
            y = INT_OPS[n.op](g, n, xs[0])
        values[n.outputs[0]] = y.astype(np.int64)
    return values


def to_qgen_layout(g: Graph, x: np.ndarray) -> np.ndarray:
    """Input batch in PyTorch layout -> qgen layout: (N,C,H,W) -> (N,H,W,C), (N,C,L) -> (N,1,L,C)."""
    x = np.asarray(x)
    if x.ndim == 4:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 3:
        return x.transpose(0, 2, 1)[:, None, :, :]
    return x


def quantize_input(g: Graph, x_torch: np.ndarray) -> np.ndarray:
    """Float input in PyTorch layout -> the model's input type (int8, or int16 with `input=int16`) in
    qgen layout, with the rounding rule (fixed.quantize)."""
    x = to_qgen_layout(g, np.asarray(x_torch, dtype=np.float32))
    inp = g.tensors[g.inputs[0]]
    return quantize(x, inp.qformat).astype(inp.dtype)


def to_torch_layout(x: np.ndarray, layout: str | None = None) -> np.ndarray:
    """qgen layout -> PyTorch layout: (N,H,W,C) -> (N,C,H,W); with layout 'ncl', (N,1,L,C) -> (N,C,L)."""
    if x.ndim == 4 and layout == "ncl":
        return x[:, 0].transpose(0, 2, 1)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
