"""matmul of two activations and the layout ops it needs (attention blocks, channel shuffle, split).

transpose: a physical permutation copy of the buffer (the torch front end inserts it where an op needs its
input in another layout; permute/transpose/view themselves are metadata). slice: a block range along one IR
axis (chunk/split/narrow/slice/select/unbind). Both only move elements: the output keeps the input's Q-format
and width.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _zero_macs

MAX_RANK = 6  # qg_transpose_params_t holds up to 6 dims

# ---------------------------------------------------------------- transpose


def transpose_shape(g, n) -> tuple[int, ...]:
    shape = g.tensors[n.inputs[0]].shape
    return tuple(shape[p] for p in n.attrs["perm"])


def check_transpose(g, n) -> None:
    perm = tuple(n.attrs["perm"])
    rank = len(g.tensors[n.inputs[0]].shape)
    if sorted(perm) != list(range(rank)) or not 1 <= rank <= MAX_RANK:
        raise VerifyError(f"{n.where()}: perm {perm} is not a permutation of {rank} <= {MAX_RANK} axes")


def ref_transpose(g, n, xs):
    """out[batch, i_0..i_r] = in[batch, ...] with in axis perm[k] read along out axis k (np.transpose)."""
    return np.transpose(xs[0], (0,) + tuple(p + 1 for p in n.attrs["perm"]))


def torch_transpose(node, xs, const):
    return xs[0].permute((0,) + tuple(p + 1 for p in node.attrs["perm"]))


def qat_transpose(q, i: int, n, xs, s):
    return torch_transpose(n, xs, None)


def kernel_transpose(variant: str) -> tuple[str, str]:
    return ("qg_transpose_s8" if variant == "s8" else "qg_transpose_s16"), "qg_transpose_params_t"


def transpose_fields(b, sym: str, n) -> list[tuple[str, object]]:
    """Output dims (outermost first) and the input element stride along each (the C kernel walks the output
    in order and gathers)."""
    shape = b.g.tensors[n.inputs[0]].shape
    strides = [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]
    perm = n.attrs["perm"]
    out_shape = np.array([shape[p] for p in perm])
    in_stride = np.array([strides[p] for p in perm])
    return [("rank", len(perm)),
            ("out_shape", b.array(f"{sym}_out_shape", out_shape, "int32", "output dims, outermost first")),
            ("in_stride", b.array(f"{sym}_in_stride", in_stride, "int32", "input element stride per output dim"))]


def c_transpose(b, index: int, n):
    io = b.io(index, n)
    return ("qg_transpose_params_t", transpose_fields(b, io.sym, n),
            f"qg_transpose_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def c_transpose_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return ("qg_transpose_params_t", transpose_fields(b, io.sym, n),
            f"qg_transpose_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});")


# ---------------------------------------------------------------- slice


def slice_shape(g, n) -> tuple[int, ...]:
    shape = list(g.tensors[n.inputs[0]].shape)
    shape[n.attrs["axis"]] = n.attrs["length"]
    return tuple(shape)


def check_slice(g, n) -> None:
    shape = g.tensors[n.inputs[0]].shape
    axis, start, length = n.attrs["axis"], n.attrs["start"], n.attrs["length"]
    if not (0 <= axis < len(shape) and 0 <= start and 1 <= length and start + length <= shape[axis]):
        raise VerifyError(f"{n.where()}: slice [{start}, {start}+{length}) of axis {axis} of {shape}")


def ref_slice(g, n, xs):
    """out[batch, ..., i, ...] = in[batch, ..., start + i, ...] along IR axis `axis`, i < length."""
    axis, start, length = n.attrs["axis"], n.attrs["start"], n.attrs["length"]
    index = [slice(None)] * xs[0].ndim
    index[axis + 1] = slice(start, start + length)
    return xs[0][tuple(index)]


def torch_slice(node, xs, const):
    return xs[0].narrow(node.attrs["axis"] + 1, node.attrs["start"], node.attrs["length"])


def qat_slice(q, i: int, n, xs, s):
    return torch_slice(n, xs, None)


def kernel_slice(variant: str) -> tuple[str, str]:
    return ("qg_slice_s8" if variant == "s8" else "qg_slice_s16"), "qg_slice_params_t"


def slice_fields(g, n) -> list[tuple[str, int]]:
    """outer blocks of in_block elements; each gives out_block elements from element `offset` on."""
    shape = g.tensors[n.inputs[0]].shape
    axis = n.attrs["axis"]
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return [("outer", int(np.prod(shape[:axis], dtype=np.int64))), ("in_block", shape[axis] * inner),
            ("out_block", n.attrs["length"] * inner), ("offset", n.attrs["start"] * inner)]


def c_slice(b, index: int, n):
    io = b.io(index, n)
    return "qg_slice_params_t", slice_fields(b.g, n), f"qg_slice_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_slice_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    return "qg_slice_params_t", slice_fields(b.g, n), f"qg_slice_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def _q_keep(g, n, act) -> None:
    from .layout import q_keep

    q_keep(g, n, act)


_NO_PY = ("a pure-Python element gather is slower than the C target and the natmod module, which run it; "
          "compile for C")

SPECS = [
    OpSpec(Op.TRANSPOSE, "matmul", Trait.KEEPS_FORMAT, transpose_shape, check_transpose, ref_transpose,
           ref_transpose, _q_keep, _zero_macs, torch_transpose,
           "permute/transpose/view that reorders elements (copied only where an op needs another layout)", (),
           ("qg_transpose_s8", "qg_transpose_s16"),
           "physical permutation copy of up to 6 axes (inserted by the front end where a layout must change)",
           kernel=kernel_transpose, no_py=_NO_PY, emit_c=c_transpose, emit_c_wide=c_transpose_wide,
           qat=qat_transpose),
    OpSpec(Op.SLICE, "matmul", Trait.KEEPS_FORMAT, slice_shape, check_slice, ref_slice, ref_slice, _q_keep,
           _zero_macs, torch_slice, "chunk/split/narrow/slice/select/unbind/indexing", (),
           ("qg_slice_s8", "qg_slice_s16"), "a block range along one axis (copied)",
           kernel=kernel_slice, no_py=_NO_PY, emit_c=c_slice, emit_c_wide=c_slice_wide, qat=qat_slice),
]
