"""conv2d, depthwise_conv2d, linear: the weighted ops (int8 weights, int32 bias, per-channel shift)."""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError
from .window import clip, conv2d_acc, conv_out_size, depthwise_acc


def conv_shape(g, n) -> tuple[int, ...]:
    h, w, _ = g.tensors[n.inputs[0]].shape
    cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
    (sh, sw), (pt, pl, pb, pr) = n.attrs["stride"], n.attrs["padding"]
    return (conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr), cout)


def linear_shape(g, n) -> tuple[int, ...]:
    return (g.tensors[n.inputs[1]].shape[0],)


def check_conv(g, n) -> None:
    x, w = g.tensors[n.inputs[0]], g.tensors[n.inputs[1]]
    if len(x.shape) != 3 or len(w.shape) != 4:
        raise VerifyError(f"{n.where()}: expects (H,W,C) input and 4-D weight, got {x.shape}, {w.shape}")
    cin = w.shape[3] if n.op is Op.CONV2D else 1
    if n.op is Op.CONV2D and cin != x.shape[2]:
        raise VerifyError(f"{n.where()}: weight Cin {cin} != input channels {x.shape[2]}")
    if n.op is Op.DEPTHWISE_CONV2D and w.shape[0] % x.shape[2]:
        raise VerifyError(f"{n.where()}: depthwise Cout {w.shape[0]} not a multiple of C {x.shape[2]}")


def check_linear(g, n) -> None:
    x, w = g.tensors[n.inputs[0]], g.tensors[n.inputs[1]]
    if x.shape != (w.shape[1],):
        raise VerifyError(f"{n.where()}: input {x.shape} does not match weight {w.shape}")


# ---------------------------------------------------------------- references


def _f_act(n, y: np.ndarray) -> np.ndarray:
    return clip(y, *n.attrs.get("act", (None, None)))


def f_conv(g, n, xs):
    acc = conv2d_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def f_depthwise(g, n, xs):
    acc = depthwise_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def f_linear(g, n, xs):
    return _f_act(n, xs[0] @ g.tensors[n.inputs[1]].data.T + g.tensors[n.inputs[2]].data)


def requantize_acc(g, n, acc: np.ndarray) -> np.ndarray:
    """acc + bias, requantised per output channel by attrs shift, clamped to act_min/act_max."""
    from ..fixed import requantize

    acc = acc.astype(np.int64) + g.tensors[n.inputs[2]].data.astype(np.int64)
    return requantize(acc, np.asarray(n.attrs["shift"]), n.attrs["act_min"], n.attrs["act_max"])


def i_conv(g, n, xs):
    return requantize_acc(g, n, conv2d_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"]))


def i_depthwise(g, n, xs):
    return requantize_acc(g, n, depthwise_acc(xs[0], g.tensors[n.inputs[1]].data, n.attrs["stride"],
                                              n.attrs["padding"]))


def i_linear(g, n, xs):
    w = g.tensors[n.inputs[1]].data
    return requantize_acc(g, n, xs[0].astype(np.float64) @ w.T.astype(np.float64))


# ---------------------------------------------------------------- quantisation, MACs, torch


def quantize_weighted(g, n, act) -> None:
    from ..passes import quantize as q

    out, x_in = g.tensors[n.outputs[0]], g.tensors[n.inputs[0]]
    q._set_act(out, act(out.name))
    q._quantize_weighted(g, n, x_in.qformat, out.qformat)


def macs_conv(g, n) -> int:
    _, kh, kw, cin = g.tensors[n.inputs[1]].shape
    return g.tensors[n.outputs[0]].size * kh * kw * cin


def macs_depthwise(g, n) -> int:
    _, kh, kw, _ = g.tensors[n.inputs[1]].shape
    return g.tensors[n.outputs[0]].size * kh * kw


def macs_linear(g, n) -> int:
    return int(np.prod(g.tensors[n.inputs[1]].shape))


def torch_weighted(node, xs, const):
    from .. import torch_ir

    y = torch_ir.weighted_sums(xs[0], const(node.inputs[1]), node) + const(node.inputs[2])
    return torch_ir.clamp(y, *node.attrs.get("act", (None, None)))


def _weighted_kernel(name: str, wide_struct: str, s8_struct: str, sparse: bool):
    def kernel(variant: str) -> tuple[str, str]:
        if variant == "s8":
            return f"qg_{name}_s8", s8_struct
        if variant in ("bitmap", "index") and sparse:
            return f"qg_{name}_sparse_s8", "qg_conv2d_sparse_params_t"
        if variant == "cluster":
            return f"qg_{name}_cluster_s8", "qg_conv2d_cluster_params_t"
        if variant in ("s8_to_s16", "s16_to_s8", "s16"):
            return f"qg_{name}_{variant}", wide_struct
        raise ValueError(f"no {name} kernel for variant {variant}")
    return kernel


kernel_conv = _weighted_kernel("conv2d", "qg_conv2d_wide_params_t", "qg_conv2d_params_t", sparse=True)
kernel_depthwise = _weighted_kernel("depthwise_conv2d", "qg_conv2d_wide_params_t", "qg_conv2d_params_t", sparse=False)
kernel_linear = _weighted_kernel("fully_connected", "qg_fully_connected_wide_params_t", "qg_fully_connected_params_t",
                                 sparse=True)


_COMMON = Trait.WEIGHTED | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT
SPECS = [
    OpSpec(Op.CONV2D, "conv", _COMMON | Trait.MATMUL | Trait.SLIDING_WINDOW | Trait.FOLDS_PAD,
           conv_shape, check_conv, f_conv, i_conv, quantize_weighted, macs_conv, torch_weighted,
           "Conv1d/Conv2d (groups=1)", ("Conv",),
           ("qg_conv2d_s8", "qg_conv2d_s8_to_s16", "qg_conv2d_s16", "qg_conv2d_s16_to_s8",
            "qg_conv2d_sparse_s8", "qg_conv2d_cluster_s8"),
           "2-D convolution (1-D as H=1), channels last, bias, per-channel shift, fused clamp", kernel=kernel_conv),
    OpSpec(Op.DEPTHWISE_CONV2D, "conv", _COMMON | Trait.SLIDING_WINDOW | Trait.FOLDS_PAD,
           conv_shape, check_conv, f_depthwise, i_depthwise, quantize_weighted, macs_depthwise, torch_weighted,
           "depthwise Conv1d/Conv2d (groups=in_channels, any multiplier)", ("Conv",),
           ("qg_depthwise_conv2d_s8", "qg_depthwise_conv2d_s8_to_s16", "qg_depthwise_conv2d_s16",
            "qg_depthwise_conv2d_s16_to_s8", "qg_depthwise_conv2d_cluster_s8"),
           "depthwise convolution (groups = in channels, any multiplier)", kernel=kernel_depthwise),
    OpSpec(Op.LINEAR, "conv", _COMMON | Trait.MATMUL,
           linear_shape, check_linear, f_linear, i_linear, quantize_weighted, macs_linear, torch_weighted,
           "Linear", ("Gemm", "MatMul"),
           ("qg_fully_connected_s8", "qg_fully_connected_s8_to_s16", "qg_fully_connected_s16",
            "qg_fully_connected_s16_to_s8", "qg_fully_connected_sparse_s8", "qg_fully_connected_cluster_s8"),
           "fully connected layer", kernel=kernel_linear),
]
