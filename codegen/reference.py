"""NumPy interpreters over the IR.

`run_int` is THE SPEC: it executes the quantised IR with the exact integer arithmetic the C kernels
must reproduce (codegen/fixed.py rules). `run_float` executes the float IR (before quantisation) and
is used for calibration and for the float side of accuracy/error reports.

Both take a batch: x has shape (N, *input_shape) and every intermediate keeps the leading N.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .fixed import quantize, requantize, round_shift
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
    """Depthwise sums: output channel o reads input channel o // multiplier (PyTorch groups order)."""
    cout, kh, kw, _ = w.shape
    mult = cout // x.shape[3]
    cols = windows(pad_hw(x, padding), (kh, kw), stride).astype(np.float64)  # (N,OH,OW,KH,KW,C)
    cols = np.repeat(cols, mult, axis=5)
    return np.einsum("nhwijc,cij->nhwc", cols, w[..., 0].astype(np.float64))


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


FLOAT_OPS: dict[Op, Callable] = {
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


INT_OPS: dict[Op, Callable] = {
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
        y = _i_add(g, n, xs[0], xs[1]) if n.op is Op.ADD else INT_OPS[n.op](g, n, xs[0])
        values[n.outputs[0]] = y.astype(np.int64)
    return values


def quantize_input(g: Graph, x_nchw: np.ndarray) -> np.ndarray:
    """Float input in PyTorch layout (N, C, H, W) or (N, F) -> int8 in qgen layout (N, H, W, C)."""
    x = np.asarray(x_nchw, dtype=np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    return quantize(x, g.tensors[g.inputs[0]].qformat).astype(np.int8)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    """qgen layout (N, H, W, C) -> PyTorch layout (N, C, H, W); vectors unchanged."""
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
