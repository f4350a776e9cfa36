"""NumPy window helpers shared by the references of the sliding-window ops (re-exported by reference.py)."""
from __future__ import annotations

import numpy as np


def conv_out_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int = 1) -> int:
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def pad_hw(x: np.ndarray, padding: tuple[int, int, int, int], value=0) -> np.ndarray:
    top, left, bottom, right = padding
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, KH, KW, C) sliding windows (a view; no copy)."""
    v = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))  # (N, H', W', C, KH, KW)
    v = v[:, :: stride[0], :: stride[1]]
    return v.transpose(0, 1, 2, 4, 5, 3)


def conv2d_acc(x: np.ndarray, w: np.ndarray, stride, padding, dilation=(1, 1), groups: int = 1) -> np.ndarray:
    """Plain convolution sums (N, OH, OW, Cout) of x (N,H,W,Cin) with w (Cout,KH,KW,Cin/groups).

    Tap (i, j) of output pixel (y, x) reads padded input pixel (y*sh + i*dh, x*sw + j*dw) (PyTorch's
    dilation). Groups: output channels [g*Cout/G, (g+1)*Cout/G) read input channels [g*Cin/G, (g+1)*Cin/G)
    (PyTorch's order). Integer inputs are summed in float64, which is exact while |sum| < 2**53 (int8
    products over any realistic kernel stay far below that), and cast back.
    """
    cout, kh, kw, cin_g = w.shape
    dh, dw = dilation
    cols = windows(pad_hw(x, padding), (dh * (kh - 1) + 1, dw * (kw - 1) + 1), stride)[:, :, :, ::dh, ::dw]
    n, oh, ow = cols.shape[:3]
    cout_g = cout // groups
    acc = np.empty((n * oh * ow, cout))
    for gi in range(groups):
        xg = cols[..., gi * cin_g:(gi + 1) * cin_g].reshape(n * oh * ow, -1).astype(np.float64)
        wg = w[gi * cout_g:(gi + 1) * cout_g].reshape(cout_g, -1).astype(np.float64)
        acc[:, gi * cout_g:(gi + 1) * cout_g] = xg @ wg.T
    return acc.reshape(n, oh, ow, cout)


def depthwise_acc(x: np.ndarray, w: np.ndarray, stride, padding, dilation=(1, 1)) -> np.ndarray:
    """Depthwise sums: output channel o reads input channel o // multiplier (PyTorch groups order).

    One vectorised multiply-add per kernel tap (tap (i, j) at offset (i*dh, j*dw)) over the strided,
    padded input (exact in float64).
    """
    cout, kh, kw, _ = w.shape
    mult = cout // x.shape[3]
    dh, dw = dilation
    xp = pad_hw(x, padding).astype(np.float64)
    if mult > 1:
        xp = np.repeat(xp, mult, axis=3)
    sh, sw = stride
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((x.shape[0], oh, ow, cout))
    taps = w[..., 0].astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            acc += xp[:, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw, :] * taps[:, i, j]
    return acc


def pool_windows(x: np.ndarray, node, pad_value) -> np.ndarray:
    return windows(pad_hw(x, node.attrs["padding"], pad_value), node.attrs["kernel"], node.attrs["stride"])


def same_shape(g, n) -> tuple[int, ...]:
    return g.tensors[n.inputs[0]].shape


def clip(y: np.ndarray, lo, hi) -> np.ndarray:
    """Float clamp with None = unbounded (a fused or stand-alone ReLU/clamp)."""
    return np.clip(y, lo if lo is not None else -np.inf, hi if hi is not None else np.inf)
