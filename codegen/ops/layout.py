"""reshape, pad, concat: data movement (reshape: none at all, the planner aliases the buffers)."""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _no_check, _zero_macs
from .window import pad_hw

# ---------------------------------------------------------------- reshape


def reshape_shape(g, n) -> tuple[int, ...]:
    return tuple(n.attrs["shape"])


def check_reshape(g, n) -> None:
    if int(np.prod(n.attrs["shape"])) != g.tensors[n.inputs[0]].size:
        raise VerifyError(f"{n.where()}: reshape {g.tensors[n.inputs[0]].shape} -> {n.attrs['shape']} changes size")


def ref_reshape(g, n, xs):
    return xs[0].reshape((xs[0].shape[0],) + tuple(n.attrs["shape"]))


def q_keep(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))


def torch_reshape(node, xs, const):
    from .. import torch_ir

    return torch_ir.reshape(xs[0], node.attrs)


# ---------------------------------------------------------------- pad


def pad_shape(g, n) -> tuple[int, ...]:
    h, w, c = g.tensors[n.inputs[0]].shape
    top, left, bottom, right = n.attrs["padding"]
    return (h + top + bottom, w + left + right, c)


def f_pad(g, n, xs):
    return pad_hw(xs[0], n.attrs["padding"], 0.0)


def i_pad(g, n, xs):
    return pad_hw(xs[0], n.attrs["padding"], 0)


def torch_pad(node, xs, const):
    from .. import torch_ir

    return torch_ir.pad(xs[0], node.attrs)


# ---------------------------------------------------------------- concat


def concat_shape(g, n) -> tuple[int, ...]:
    shapes = [g.tensors[t].shape for t in n.inputs]
    axis = n.attrs["axis"]
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def check_concat(g, n) -> None:
    shapes = [g.tensors[i].shape for i in n.inputs]
    axis = n.attrs["axis"]
    if any(len(s) != len(shapes[0]) or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]
           for s in shapes):
        raise VerifyError(f"{n.where()}: concat on axis {axis} of mismatched shapes {shapes}")


def f_concat(g, n, xs):
    return np.concatenate(xs, axis=n.attrs["axis"] + 1)


def i_concat(g, n, xs):
    # each input is requantised to the output format (round_shift + saturate), then concatenated
    from ..fixed import int_range, requantize

    lo, hi = int_range(g.tensors[n.outputs[0]].qformat.bits)
    parts = [requantize(x, shift, lo, hi) for x, shift in zip(xs, n.attrs["shifts"])]
    return np.concatenate(parts, axis=n.attrs["axis"] + 1)


def q_concat(g, n, act) -> None:
    from ..fixed import MAX_SHIFT
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    fy = out.qformat.frac
    n.attrs["shifts"] = [max(-MAX_SHIFT, min(MAX_SHIFT, g.tensors[i].qformat.frac - fy)) for i in n.inputs]


def torch_concat(node, xs, const):
    from .. import torch_ir

    return torch_ir.concat(xs, node.attrs)


def kernel_none(variant: str) -> tuple[None, None]:
    return None, None  # reshape: same bytes, new shape


def kernel_pad(variant: str) -> tuple[str, str]:
    return ("qg_pad_s8" if variant == "s8" else "qg_pad_s16"), "qg_pad_params_t"


def kernel_concat(variant: str) -> tuple[str | None, str | None]:
    if variant == "none":  # every input written in place (passes/concat_in_place)
        return None, None
    return ("qg_concat_s8", "qg_concat_params_t") if variant == "s8" else ("qg_concat_wide", "qg_concat_wide_params_t")


def py_concat(b, n, index: int):
    """MicroPython: _concat (every part copied and requantised; the module plans no concat in place)."""
    g = b.g
    xs = [t for t in n.inputs if not g.tensors[t].is_const]
    outer, blocks = _concat_blocks(g, n, xs, n.outputs[0])
    mul, rnd, shr = b.triples(n.attrs["shifts"])
    return "_concat", [("outer", outer), ("out_block", sum(blocks)), ("block_size", tuple(blocks)),
                       ("mul", tuple(mul)), ("rnd", tuple(rnd)), ("shr", tuple(shr))], ""


def py_none(b, n, index: int) -> None:
    return None  # reshape: the planner aliased the buffers, no code


def c_none(b, index: int, n):
    return None, [], None  # reshape: same bytes, new shape: the planner aliased the buffers


def _pad_fields(g, x: str, n) -> list[tuple[str, int]]:
    h, w, c = g.tensors[x].shape
    top, left, bottom, right = n.attrs["padding"]
    return [("in_h", h), ("in_w", w), ("channels", c), ("pad_top", top), ("pad_left", left),
            ("pad_bottom", bottom), ("pad_right", right)]


def c_pad(b, index: int, n):
    io = b.io(index, n)
    return "qg_pad_params_t", _pad_fields(b.g, io.xs[0], n), f"qg_pad_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_pad_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return "qg_pad_params_t", _pad_fields(b.g, io.xs[0], n), f"qg_pad_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def _concat_blocks(g, n, xs: list[str], out: str) -> tuple[int, list[int]]:
    shape, axis = g.tensors[out].shape, n.attrs["axis"]
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return int(np.prod(shape[:axis], dtype=np.int64)), [g.tensors[t].shape[axis] * inner for t in xs]


def c_concat(b, index: int, n):
    io = b.io(index, n)
    in_place = n.attrs.get("in_place") or [False] * len(io.xs)  # passes/concat_in_place: already there
    if all(in_place):
        return None, [], None  # no call, and no parameter data either
    outer, blocks = _concat_blocks(b.g, n, io.xs, io.out)
    block_arr = b.array(f"{io.sym}_block_size", np.array(blocks), "int32", "bytes per input block")
    shift_arr = b.array(f"{io.sym}_shift", np.array(n.attrs["shifts"]), "int8", "requantisation shift per input")
    out_block = n.attrs.get("out_stride", sum(blocks))  # passes/concat_in_place: written into a wider concat
    fields = [("n_inputs", len(io.xs)), ("outer", outer), ("out_block", out_block), ("block_size", block_arr),
              ("shift", shift_arr)]
    parts = ["NULL" if flag else expr for flag, expr in zip(in_place, io.ins)]
    call = (f"{{ const int8_t *const parts[{len(io.xs)}] = {{{', '.join(parts)}}}; "
            f"qg_concat_s8(&{io.struct}, parts, {io.out_expr}); }}")
    return "qg_concat_params_t", fields, call


def c_concat_wide(b, index: int, n):
    """qg_concat_wide: untyped inputs with their widths (any mix of int8 and int16)."""
    io = b.io(index, n, wide=True)
    outer, blocks = _concat_blocks(b.g, n, io.xs, io.out)
    block_arr = b.array(f"{io.sym}_block_size", np.array(blocks), "int32", "elements per input block")
    shift_arr = b.array(f"{io.sym}_shift", np.array(n.attrs["shifts"]), "int8", "requantisation shift per input")
    bits_arr = b.array(f"{io.sym}_in_bits", np.array([io.bits[t] for t in io.xs]), "uint8", "bits per input")
    fields = [("n_inputs", len(io.xs)), ("outer", outer), ("out_block", sum(blocks)), ("block_size", block_arr),
              ("shift", shift_arr), ("in_bits", bits_arr), ("out_bits", io.bits[io.out])]
    call = (f"{{ const void *const parts[{len(io.xs)}] = {{{', '.join(io.raw)}}}; "
            f"qg_concat_wide(&{io.struct}, parts, {io.out_raw}); }}")
    return "qg_concat_wide_params_t", fields, call


def qat_reshape(q, i: int, n, xs, s):
    from .. import torch_ir

    return torch_ir.reshape(xs[0], n.attrs)


def qat_pad(q, i: int, n, xs, s):
    from .. import torch_ir

    return torch_ir.pad(xs[0], n.attrs)


def qat_concat(q, i: int, n, xs, s):
    from .. import torch_ir
    from ..qat import pow2, requant

    parts = [requant(v * pow2(-sh), -128, 127, s.ste) for v, sh in zip(xs, s.attrs["shifts"])]
    return torch_ir.concat(parts, n.attrs)


_NO_PY_LAYOUT = "its kernel is not written in MicroPython (the C target and the natmod module run it)"

SPECS = [
    OpSpec(Op.RESHAPE, "layout", Trait.KEEPS_FORMAT, reshape_shape, check_reshape, ref_reshape, ref_reshape,
           q_keep, _zero_macs, torch_reshape, "flatten/view/reshape", ("Reshape", "Flatten"), (),
           "no code: the planner aliases input and output", kernel=kernel_none,
           emit_py=py_none, emit_c=c_none, emit_c_wide=c_none,
           qat=qat_reshape),
    OpSpec(Op.PAD, "layout", Trait.KEEPS_FORMAT | Trait.CHANNELWISE, pad_shape, _no_check, f_pad, i_pad,
           q_keep, _zero_macs, torch_pad, "zero padding", ("Pad",), ("qg_pad_s8", "qg_pad_s16"),
           "zero padding (folded into a following conv/avgpool where possible)", kernel=kernel_pad,
           no_py=_NO_PY_LAYOUT, emit_c=c_pad, emit_c_wide=c_pad_wide,
           qat=qat_pad),
    OpSpec(Op.CONCAT, "layout", Trait.CHOOSES_FORMAT | Trait.STRIDED_OUT, concat_shape, check_concat, f_concat,
           i_concat, q_concat,
           _zero_macs, torch_concat, "torch.cat", ("Concat",), ("qg_concat_s8", "qg_concat_wide"),
           "concatenation along any axis, each input requantised to the output format", kernel=kernel_concat,
           emit_py=py_concat, emit_c=c_concat, emit_c_wide=c_concat_wide,
           qat=qat_concat),
]
