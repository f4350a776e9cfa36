"""conv2d, depthwise_conv2d, linear: the weighted ops (int8 weights, int32 bias, per-channel shift)."""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError
from .window import clip, conv2d_acc, conv_out_size, depthwise_acc


def dilation(n) -> tuple[int, int]:
    """(dh, dw) of a conv / depthwise node: tap (i, j) reads input offset (i*dh, j*dw); absent = (1, 1)."""
    return tuple(n.attrs.get("dilation", (1, 1)))


def groups(n) -> int:
    """Groups of a conv node (PyTorch order: output group g reads input channels of group g); absent = 1.
    Depthwise is its own op (groups = channels) and has none."""
    return int(n.attrs.get("groups", 1))


def is_plain(n) -> bool:
    """No groups and no dilation: the layouts the compressed-weight kernels and passes assume."""
    return groups(n) == 1 and dilation(n) == (1, 1)


def conv_shape(g, n) -> tuple[int, ...]:
    h, w, _ = g.tensors[n.inputs[0]].shape
    cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
    (sh, sw), (pt, pl, pb, pr) = n.attrs["stride"], n.attrs["padding"]
    dh, dw = dilation(n)
    return (conv_out_size(h, kh, sh, pt, pb, dh), conv_out_size(w, kw, sw, pl, pr, dw), cout)


def linear_shape(g, n) -> tuple[int, ...]:
    return (g.tensors[n.inputs[1]].shape[0],)


def check_conv(g, n) -> None:
    x, w = g.tensors[n.inputs[0]], g.tensors[n.inputs[1]]
    if len(x.shape) != 3 or len(w.shape) != 4:
        raise VerifyError(f"{n.where()}: expects (H,W,C) input and 4-D weight, got {x.shape}, {w.shape}")
    cin = w.shape[3] if n.op is Op.CONV2D else 1
    gr, dil = groups(n), dilation(n)
    if gr < 1 or x.shape[2] % gr or w.shape[0] % gr or (gr > 1 and n.op is not Op.CONV2D):
        raise VerifyError(f"{n.where()}: groups={gr} must divide input channels {x.shape[2]} and output "
                          f"channels {w.shape[0]} (conv2d only)")
    if len(dil) != 2 or min(dil) < 1:
        raise VerifyError(f"{n.where()}: dilation {dil} must be two integers >= 1")
    if n.op is Op.CONV2D and cin * gr != x.shape[2]:
        times = f" x groups {gr}" if gr != 1 else ""
        raise VerifyError(f"{n.where()}: weight Cin {cin}{times} != input channels {x.shape[2]}")
    if n.op is Op.DEPTHWISE_CONV2D and w.shape[0] % x.shape[2]:
        raise VerifyError(f"{n.where()}: depthwise Cout {w.shape[0]} not a multiple of C {x.shape[2]}")


def check_linear(g, n) -> None:
    x, w = g.tensors[n.inputs[0]], g.tensors[n.inputs[1]]
    if x.shape != (w.shape[1],):
        raise VerifyError(f"{n.where()}: input {x.shape} does not match weight {w.shape}")


# ---------------------------------------------------------------- references


def _conv_acc(g, n, x: np.ndarray) -> np.ndarray:
    return conv2d_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"], dilation(n), groups(n))


def _depthwise_acc(g, n, x: np.ndarray) -> np.ndarray:
    return depthwise_acc(x, g.tensors[n.inputs[1]].data, n.attrs["stride"], n.attrs["padding"], dilation(n))


def _f_act(n, y: np.ndarray) -> np.ndarray:
    return clip(y, *n.attrs.get("act", (None, None)))


def f_conv(g, n, xs):
    acc = _conv_acc(g, n, xs[0])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def f_depthwise(g, n, xs):
    acc = _depthwise_acc(g, n, xs[0])
    return _f_act(n, acc + g.tensors[n.inputs[2]].data)


def f_linear(g, n, xs):
    return _f_act(n, xs[0] @ g.tensors[n.inputs[1]].data.T + g.tensors[n.inputs[2]].data)


def requantize_acc(g, n, acc: np.ndarray) -> np.ndarray:
    """acc + bias, requantised per output channel by attrs shift, clamped to act_min/act_max."""
    from ..fixed import requantize

    acc = acc.astype(np.int64) + g.tensors[n.inputs[2]].data.astype(np.int64)
    return requantize(acc, np.asarray(n.attrs["shift"]), n.attrs["act_min"], n.attrs["act_max"])


def i_conv(g, n, xs):
    return requantize_acc(g, n, _conv_acc(g, n, xs[0]))


def i_depthwise(g, n, xs):
    return requantize_acc(g, n, _depthwise_acc(g, n, xs[0]))


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
        if variant == "int4":  # packed int4 weights (qg_conv2d_s4.c)
            return f"qg_{name}_s4", "qg_conv2d_s4_params_t"
        if variant in ("s8_to_s16", "s16_to_s8", "s16"):
            return f"qg_{name}_{variant}", wide_struct
        raise ValueError(f"no {name} kernel for variant {variant}")
    return kernel


kernel_conv = _weighted_kernel("conv2d", "qg_conv2d_wide_params_t", "qg_conv2d_params_t", sparse=True)
kernel_depthwise = _weighted_kernel("depthwise_conv2d", "qg_conv2d_wide_params_t", "qg_conv2d_params_t", sparse=False)
kernel_linear = _weighted_kernel("fully_connected", "qg_fully_connected_wide_params_t", "qg_fully_connected_params_t",
                                 sparse=True)


def py_window(b, n, index: int):
    """MicroPython: conv2d / depthwise_conv2d (weights as int8 rows, per-channel mul/rnd/shr)."""
    g, sym, out = b.g, f"L{index}", n.outputs[0]
    h, w, c = g.tensors[n.inputs[0]].shape
    oh, ow, oc = g.tensors[out].shape
    _, kh, kw, _ = g.tensors[n.inputs[1]].shape
    weights, bias = b.weight_rows(sym, n.inputs[1]), b.bias(sym, n.inputs[2])
    mul, rnd, shr = b.requant(sym, n.attrs["shift"])
    params = [("in_h", h), ("in_w", w), ("in_c", c), ("out_h", oh), ("out_w", ow), ("out_c", oc),
              ("k_h", kh), ("k_w", kw), ("stride_h", n.attrs["stride"][0]),
              ("stride_w", n.attrs["stride"][1]), ("pad_top", n.attrs["padding"][0]),
              ("pad_left", n.attrs["padding"][1]), ("weights", weights), ("bias", bias),
              ("mul", mul), ("rnd", rnd), ("shr", shr),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    if not is_plain(n):  # groups or dilation: one generic loop (depthwise = groups of one input channel)
        og, cg = (oc // groups(n), c // groups(n)) if n.op is Op.CONV2D else (oc // c, 1)
        params += [("dil_h", dilation(n)[0]), ("dil_w", dilation(n)[1]), ("group_out", og), ("group_in", cg)]
        return "_conv2d_general", params, ""
    if n.op is Op.CONV2D:
        b.scratch(kh * kw * c, kh * kw * c, oc)
        return "_conv2d", params, ", _S"
    return "_depthwise_conv2d", params, ""


def py_linear(b, n, index: int):
    g, sym = b.g, f"L{index}"
    o, i = g.tensors[n.inputs[1]].shape
    weights, bias = b.weight_rows(sym, n.inputs[1]), b.bias(sym, n.inputs[2])
    mul, rnd, shr = b.requant(sym, n.attrs["shift"])
    params = [("in_features", i), ("out_features", o), ("weights", weights), ("bias", bias),
              ("mul", mul), ("rnd", rnd), ("shr", shr),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    b.scratch(0, i, o)
    return "_linear", params, ", _S"


def _weights_bias_shift(b, sym: str, n, what: str) -> tuple[str, str, str]:
    weights = b.const_tensor(sym, n.inputs[1], "weights")
    bias = b.const_tensor(sym, n.inputs[2], "bias")
    shift = b.array(f"{sym}_shift", np.array(n.attrs["shift"]), "int8", f"requantisation shift per {what}")
    return weights, bias, shift


def _window_fields(g, n, x: str, out: str) -> list[tuple[str, int]]:
    h, w, c = g.tensors[x].shape
    oh, ow, oc = g.tensors[out].shape
    _, kh, kw, _ = g.tensors[n.inputs[1]].shape
    dh, dw = dilation(n)
    return [("in_h", h), ("in_w", w), ("in_c", c), ("out_h", oh), ("out_w", ow), ("out_c", oc),
            ("k_h", kh), ("k_w", kw), ("stride_h", n.attrs["stride"][0]), ("stride_w", n.attrs["stride"][1]),
            ("pad_top", n.attrs["padding"][0]), ("pad_left", n.attrs["padding"][1]),
            ("dil_h", dh), ("dil_w", dw), ("groups", groups(n))]


def c_window(b, index: int, n):
    """C, int8, dense weights: qg_conv2d_s8 / qg_depthwise_conv2d_s8 (emit/weight_formats.py: the others)."""
    from ..kernel_abi import conv2d_buffer_size, depthwise_conv2d_buffer_size

    g, io = b.g, b.io(index, n)
    _, _, c = g.tensors[io.xs[0]].shape
    _, kh, kw, _ = g.tensors[n.inputs[1]].shape
    oc = g.tensors[io.out].shape[2]
    weights, bias, shift = _weights_bias_shift(b, io.sym, n, "output channel")
    fields = [*_window_fields(g, n, io.xs[0], io.out), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"]), ("weights", weights), ("bias", bias), ("shift", shift)]
    if "out_stride" in n.attrs:  # writes its channels of a wider concat output (passes/concat_in_place)
        fields.append(("out_stride", n.attrs["out_stride"]))
    fn = "qg_conv2d_s8" if n.op is Op.CONV2D else "qg_depthwise_conv2d_s8"
    need = (conv2d_buffer_size(c // groups(n), kh, kw, oc) if n.op is Op.CONV2D
            else depthwise_conv2d_buffer_size(c, kh, kw, oc))
    b.check_scratch(index, n, need)
    return "qg_conv2d_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr}, {io.scratch});"


def c_linear(b, index: int, n):
    from ..kernel_abi import fully_connected_buffer_size

    g, io = b.g, b.io(index, n)
    o, i = g.tensors[n.inputs[1]].shape
    weights, bias, shift = _weights_bias_shift(b, io.sym, n, "output")
    fields = [("in_features", i), ("out_features", o), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"]), ("weights", weights), ("bias", bias), ("shift", shift)]
    b.check_scratch(index, n, fully_connected_buffer_size(i, o))
    return ("qg_fully_connected_params_t", fields,
            f"qg_fully_connected_s8(&{io.struct}, {io.ins[0]}, {io.out_expr}, {io.scratch});")


def c_weighted_wide(b, index: int, n):
    """C, an int16 input or output: qg_<op>_s8_to_s16 / _s16_to_s8 / _s16 (qg_wide.c, int8 weights)."""
    g, io = b.g, b.io(index, n, wide=True)
    weights, bias, shift = _weights_bias_shift(b, io.sym, n, "output channel")
    tail = [("acc64", int(bool(n.attrs.get("acc64")))), *io.act, ("weights", weights), ("bias", bias),
            ("shift", shift)]
    if n.op is Op.LINEAR:
        o, i = g.tensors[n.inputs[1]].shape
        struct_type, fields = "qg_fully_connected_wide_params_t", [("in_features", i), ("out_features", o), *tail]
        fn = f"qg_fully_connected_{io.suffix}"
    else:
        struct_type, fields = "qg_conv2d_wide_params_t", [*_window_fields(g, n, io.xs[0], io.out), *tail]
        fn = f"qg_{'conv2d' if n.op is Op.CONV2D else 'depthwise_conv2d'}_{io.suffix}"
    return struct_type, fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def qat_weighted(q, i: int, n, xs, s):
    """QAT: fake-quantised weights (straight-through), integer accumulate, requantise."""
    return q._weighted(i, n, xs[0], s.fin, s.fout, s.attrs, s.exact, s.dtype)


_COMMON = Trait.WEIGHTED | Trait.FUSES_ACT | Trait.CHOOSES_FORMAT
SPECS = [
    OpSpec(Op.CONV2D, "conv", _COMMON | Trait.MATMUL | Trait.SLIDING_WINDOW | Trait.FOLDS_PAD | Trait.STRIDED_OUT,
           conv_shape, check_conv, f_conv, i_conv, quantize_weighted, macs_conv, torch_weighted,
           "Conv1d/Conv2d (any groups, dilation, padding='same')", ("Conv",),
           ("qg_conv2d_s8", "qg_conv2d_s8_to_s16", "qg_conv2d_s16", "qg_conv2d_s16_to_s8",
            "qg_conv2d_sparse_s8", "qg_conv2d_cluster_s8", "qg_conv2d_s4"),
           "2-D convolution (1-D as H=1), channels last, bias, per-channel shift, fused clamp", kernel=kernel_conv,
           emit_py=py_window, emit_c=c_window, emit_c_wide=c_weighted_wide,
           qat=qat_weighted),
    OpSpec(Op.DEPTHWISE_CONV2D, "conv", _COMMON | Trait.SLIDING_WINDOW | Trait.FOLDS_PAD,
           conv_shape, check_conv, f_depthwise, i_depthwise, quantize_weighted, macs_depthwise, torch_weighted,
           "depthwise Conv1d/Conv2d (groups=in_channels, any multiplier, dilation)", ("Conv",),
           ("qg_depthwise_conv2d_s8", "qg_depthwise_conv2d_s8_to_s16", "qg_depthwise_conv2d_s16",
            "qg_depthwise_conv2d_s16_to_s8", "qg_depthwise_conv2d_cluster_s8", "qg_depthwise_conv2d_s4"),
           "depthwise convolution (groups = in channels, any multiplier)", kernel=kernel_depthwise,
           emit_py=py_window, emit_c=c_window, emit_c_wide=c_weighted_wide,
           qat=qat_weighted),
    OpSpec(Op.LINEAR, "conv", _COMMON | Trait.MATMUL,
           linear_shape, check_linear, f_linear, i_linear, quantize_weighted, macs_linear, torch_weighted,
           "Linear", ("Gemm", "MatMul"),
           ("qg_fully_connected_s8", "qg_fully_connected_s8_to_s16", "qg_fully_connected_s16",
            "qg_fully_connected_s16_to_s8", "qg_fully_connected_sparse_s8", "qg_fully_connected_cluster_s8",
            "qg_fully_connected_s4"),
           "fully connected layer", kernel=kernel_linear,
           emit_py=py_linear, emit_c=c_linear, emit_c_wide=c_weighted_wide,
           qat=qat_weighted),
]
