"""maxpool2d, avgpool2d: channels-last windows (1-D pooling as H=1); output keeps the input's format."""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, _no_check, _zero_macs
from .window import conv_out_size, pool_windows


def pool_shape(g, n) -> tuple[int, ...]:
    h, w, c = g.tensors[n.inputs[0]].shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]
    return (conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr), c)


def f_maxpool(g, n, xs):
    return pool_windows(xs[0], n, -np.inf).max(axis=(3, 4))


def f_avgpool(g, n, xs):
    kh, kw = n.attrs["kernel"]
    return pool_windows(xs[0], n, 0.0).sum(axis=(3, 4)) / (kh * kw)


def i_maxpool(g, n, xs):
    return pool_windows(xs[0], n, np.iinfo(np.int64).min).max(axis=(3, 4))


def i_avgpool(g, n, xs):
    # sum * multiplier, then the rounding shift: multiplier = round(2**avg_shift / (KH*KW))
    from ..fixed import requantize

    total = pool_windows(xs[0], n, 0).sum(axis=(3, 4), dtype=np.int64)
    return requantize(total * n.attrs["avg_mult"], n.attrs["avg_shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_maxpool(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))


def q_avgpool(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))
    kh, kw = n.attrs["kernel"]
    n.attrs.update(q.avg_params(kh * kw), act_min=out.qformat.min_int, act_max=out.qformat.max_int)


def torch_maxpool(node, xs, const):
    from .. import torch_ir

    return torch_ir.pool(xs[0], node.attrs, float("-inf"), "max")


def torch_avgpool(node, xs, const):
    from .. import torch_ir

    return torch_ir.pool(xs[0], node.attrs, 0.0, "sum") / (node.attrs["kernel"][0] * node.attrs["kernel"][1])


def kernel_maxpool(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_maxpool2d_s8", "qg_pool2d_params_t"
    return "qg_maxpool2d_s16", "qg_pool2d_s16_params_t"


def kernel_avgpool(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_avgpool2d_s8", "qg_pool2d_params_t"
    return "qg_avgpool2d_s16", "qg_pool2d_s16_params_t"


_COMMON = Trait.SLIDING_WINDOW | Trait.KEEPS_FORMAT | Trait.CHANNELWISE
def py_pool(b, n, index: int):
    """MicroPython: maxpool2d / avgpool2d (average: sum * avg_mult * mul + rnd >> shr)."""
    g = b.g
    h, w, c = g.tensors[n.inputs[0]].shape
    oh, ow, _ = g.tensors[n.outputs[0]].shape
    params = [("in_h", h), ("in_w", w), ("channels", c), ("out_h", oh), ("out_w", ow),
              ("k_h", n.attrs["kernel"][0]), ("k_w", n.attrs["kernel"][1]),
              ("stride_h", n.attrs["stride"][0]), ("stride_w", n.attrs["stride"][1]),
              ("pad_top", n.attrs["padding"][0]), ("pad_left", n.attrs["padding"][1])]
    if n.op is Op.MAXPOOL2D:
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


def c_pool(b, index: int, n):
    """C, int8: qg_maxpool2d_s8 / qg_avgpool2d_s8."""
    io, avg = b.io(index, n), n.op is Op.AVGPOOL2D
    fields = [*_pool_fields(b.g, n, io.xs[0], io.out),
              ("act_min", n.attrs.get("act_min", -128)), ("act_max", n.attrs.get("act_max", 127)),
              ("avg_mult", n.attrs.get("avg_mult", 0) if avg else 0),
              ("avg_shift", n.attrs.get("avg_shift", 0) if avg else 0)]
    fn = "qg_avgpool2d_s8" if avg else "qg_maxpool2d_s8"
    return "qg_pool2d_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_pool_wide(b, index: int, n):
    """C, int16 activations: qg_maxpool2d_s16 / qg_avgpool2d_s16."""
    io, avg = b.io(index, n, wide=True), n.op is Op.AVGPOOL2D
    fields = [*_pool_fields(b.g, n, io.xs[0], io.out),
              ("act_min", n.attrs.get("act_min", -32768)), ("act_max", n.attrs.get("act_max", 32767)),
              ("avg_mult", n.attrs["avg_mult"] if avg else 0),
              ("avg_shift", n.attrs["avg_shift"] if avg else 0)]
    fn = "qg_avgpool2d_s16" if avg else "qg_maxpool2d_s16"
    return "qg_pool2d_s16_params_t", fields, f"{fn}(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def qat_maxpool(q, i: int, n, xs, s):
    from .. import torch_ir

    return torch_ir.pool(xs[0], n.attrs, float("-inf"), "max")


def qat_avgpool(q, i: int, n, xs, s):
    from .. import torch_ir
    from ..qat import pow2, requant

    total = torch_ir.pool(xs[0], n.attrs, 0.0, "sum")
    return requant(total * s.attrs["avg_mult"] * pow2(-s.attrs["avg_shift"]), s.attrs["act_min"],
                   s.attrs["act_max"], s.ste)


SPECS = [
    OpSpec(Op.MAXPOOL2D, "pool", _COMMON, pool_shape, _no_check, f_maxpool, i_maxpool, q_maxpool, _zero_macs,
           torch_maxpool, "MaxPool1d/2d", ("MaxPool",), ("qg_maxpool2d_s8", "qg_maxpool2d_s16"),
           "max pooling (padding never wins)", kernel=kernel_maxpool,
           emit_py=py_pool, emit_c=c_pool, emit_c_wide=c_pool_wide,
           qat=qat_maxpool),
    OpSpec(Op.AVGPOOL2D, "pool", _COMMON | Trait.FOLDS_PAD, pool_shape, _no_check, f_avgpool, i_avgpool, q_avgpool,
           _zero_macs, torch_avgpool, "AvgPool1d/2d, AdaptiveAvgPool2d, mean over H,W",
           ("AveragePool", "GlobalAveragePool", "ReduceMean"), ("qg_avgpool2d_s8", "qg_avgpool2d_s16"),
           "average pooling (zero padding counted), sum * mult >> shift", kernel=kernel_avgpool,
           emit_py=py_pool, emit_c=c_pool, emit_c_wide=c_pool_wide,
           qat=qat_avgpool),
]
