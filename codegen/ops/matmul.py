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


def _merge_axes(in_shape, perm) -> tuple[list[int], list[int]]:
    """The same permutation over fewer input axes: size-1 axes dropped, runs of output axes that read
    consecutive input axes merged into one."""
    keep = [a for a in range(len(in_shape)) if in_shape[a] != 1] or [0]
    perm = [a for a in perm if a in keep]
    groups: list[list[int]] = []
    for a in perm:
        if groups and groups[-1][-1] + 1 == a:
            groups[-1].append(a)
        else:
            groups.append([a])
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])  # merged input axes, in input order
    shape = [int(np.prod([in_shape[a] for a in groups[g]], dtype=np.int64)) for g in order]
    return shape, [order.index(g) for g in range(len(groups))]


def transpose_loops(in_shape, perm) -> tuple[list[int], list[int], list[int]]:
    """The C kernel's loop dims (shape, input strides, output strides): the output dims, with the innermost
    loop a contiguous run on both sides if there is one (a block copy), else the longest dim. Size-1 axes are
    dropped and input axes that stay neighbours in the output are merged first (fewer, longer loops: a
    (6, 8, 16) -> (16, 6, 8) permutation is a 2-D (48, 16) transpose)."""
    in_shape, perm = _merge_axes(in_shape, perm)
    in_strides = [int(np.prod(in_shape[k + 1:], dtype=np.int64)) for k in range(len(in_shape))]
    out_shape = [int(in_shape[p]) for p in perm]
    out_strides = [int(np.prod(out_shape[k + 1:], dtype=np.int64)) for k in range(len(out_shape))]
    dims = [(out_shape[k], in_strides[perm[k]], out_strides[k]) for k in range(len(perm))]
    inner = next((k for k, (_, si, so) in enumerate(dims) if si == 1 and so == 1), None)
    tile = None  # a 2-D transpose of 4 x 4 byte tiles: the dim contiguous in the input, then the output's
    if inner is None:
        rows = next((k for k, (n, si, _) in enumerate(dims) if si == 1 and n >= 4), None)
        cols = next((k for k, (n, _, so) in enumerate(dims) if so == 1 and (n >= 4 or n == 2)), None)
        if rows is not None and cols is not None:
            tile = (dims[rows], dims[cols])
            dims = [d for k, d in enumerate(dims) if k not in (rows, cols)] + list(tile)
        else:
            inner = max(range(len(dims)), key=lambda k: (dims[k][0], k))
    if tile is None:
        dims.append(dims.pop(inner))
    return [d[0] for d in dims], [d[1] for d in dims], [d[2] for d in dims]


def transpose_fields(b, sym: str, n) -> list[tuple[str, object]]:
    shape, in_stride, out_stride = transpose_loops(b.g.tensors[n.inputs[0]].shape, n.attrs["perm"])
    return [("rank", len(shape)),
            ("shape", b.array(f"{sym}_shape", np.array(shape), "int32", "loop dims, innermost last")),
            ("in_stride", b.array(f"{sym}_in_stride", np.array(in_stride), "int32", "input stride per loop dim")),
            ("out_stride", b.array(f"{sym}_out_stride", np.array(out_stride), "int32", "output stride per loop dim"))]


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


def slice_alias(g, n) -> int | None:
    """Byte offset of slice `n`'s output inside its input when the output can alias the input's bytes (no
    copy, no code), else None. qgen's buffers are dense row-major (channels-last images (H, W, C), sequences
    (1, L, C), vectors): a slice whose axes before `axis` all have size 1 (rows of an image, time steps of a
    sequence, a range of a vector, or channels of a 1x1 image) is one contiguous run of the input. A slice of
    channels of a larger image is strided: copied. Not aliased: a slice of the model input or into the model
    output (the caller's buffers), nor of a tensor written in place into a concat (it lies at a stride there)."""
    x = g.tensors[n.inputs[0]]
    axis = n.attrs["axis"]
    if any(d != 1 for d in x.shape[:axis]) or x.qformat is None:
        return None
    root = n.inputs[0]  # the tensor whose bytes it would lie in: through reshapes and aliased slices
    producers = {o: m for m in g.nodes for o in m.outputs}
    while root in producers and (producers[root].op is Op.RESHAPE or (
            producers[root].op is Op.SLICE and slice_alias(g, producers[root]) is not None)):
        root = producers[root].inputs[0]
    if {n.inputs[0], root} & set(g.inputs + g.outputs) or n.outputs[0] in g.outputs:
        return None
    from ..passes.concat_in_place import in_place_offsets

    if n.inputs[0] in in_place_offsets(g):
        return None
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    return n.attrs["start"] * inner * (x.nbytes // max(x.size, 1))


def form_slice(g, n, variant: str) -> str:
    return "none" if slice_alias(g, n) is not None else variant  # aliased: no code


def kernel_slice(variant: str) -> tuple[str | None, str | None]:
    if variant == "none":  # the output aliases its input's bytes (slice_alias): no code
        return None, None
    return ("qg_slice_s8" if variant == "s8" else "qg_slice_s16"), "qg_slice_params_t"


def slice_fields(g, n) -> list[tuple[str, int]]:
    """outer blocks of in_block elements; each gives out_block elements from element `offset` on."""
    shape = g.tensors[n.inputs[0]].shape
    axis = n.attrs["axis"]
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return [("outer", int(np.prod(shape[:axis], dtype=np.int64))), ("in_block", shape[axis] * inner),
            ("out_block", n.attrs["length"] * inner), ("offset", n.attrs["start"] * inner)]


def c_slice(b, index: int, n):
    if slice_alias(b.g, n) is not None:
        return None, [], None  # the planner placed the output inside its input (slice_alias)
    io = b.io(index, n)
    return "qg_slice_params_t", slice_fields(b.g, n), f"qg_slice_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def c_slice_wide(b, index: int, n):
    if slice_alias(b.g, n) is not None:
        return None, [], None
    io = b.io(index, n, wide=True)
    return "qg_slice_params_t", slice_fields(b.g, n), f"qg_slice_s16(&{io.struct}, {io.ins[0]}, {io.out_expr});"


# ---------------------------------------------------------------- matmul of two activations

MAX_K = (1 << 31) // (128 * 128) - 1  # K int8 products of at most 2^14 each stay inside the int32 accumulator


def matmul_shape(g, n) -> tuple[int, ...]:
    (bt, m, _), (_, nn, _) = (g.tensors[t].shape for t in n.inputs)
    return (bt, m, nn)


def check_matmul(g, n) -> None:
    sa, sb = (g.tensors[t].shape for t in n.inputs)
    if len(sa) != 3 or len(sb) != 3 or sa[0] != sb[0] or sa[2] != sb[2] or sa[2] > MAX_K:
        raise VerifyError(f"{n.where()}: matmul of A {sa} (batch, M, K) and B {sb} (batch, N, K)")


def f_matmul(g, n, xs):
    return np.einsum("zbmk,zbnk->zbmn", xs[0], xs[1])


def i_matmul(g, n, xs):
    # acc[m, n] = sum_k a[m, k] * b[n, k] exact at frac fa + fb (int8 operands: in int32, K <= MAX_K; int16 ones,
    # mixed precision: in int64, any K); one requantisation (fixed.requantize: round half up, saturate) to the
    # output format (int8 or int16): shift = fa + fb - fo
    from ..fixed import requantize

    acc = np.einsum("zbmk,zbnk->zbmn", xs[0].astype(np.int64), xs[1].astype(np.int64))
    return requantize(acc, n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])


def q_matmul(g, n, act) -> None:
    from ..fixed import MAX_SHIFT
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    fa, fb = (g.tensors[t].qformat.frac for t in n.inputs)
    shift = max(-MAX_SHIFT, min(fa + fb - out.qformat.frac, MAX_SHIFT))
    lo, hi = q._act_bounds((None, None), out.qformat)  # the output's full int8 or int16 range
    n.attrs.update(shift=int(shift), act_min=lo, act_max=hi)


def macs_matmul(g, n) -> int:
    bt, m, nn = g.tensors[n.outputs[0]].shape
    return bt * m * nn * g.tensors[n.inputs[0]].shape[2]


def torch_matmul(node, xs, const):
    return xs[0] @ xs[1].transpose(-2, -1)


def qat_matmul(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    return requant((xs[0] @ xs[1].transpose(-2, -1)) * pow2(-s.attrs["shift"]), s.attrs["act_min"],
                   s.attrs["act_max"], s.ste)


def kernel_matmul(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_matmul_s8", "qg_matmul_params_t"
    return "qg_matmul_wide", "qg_matmul_wide_params_t"  # any int8 / int16 mix (mixed precision)


def c_matmul(b, index: int, n):
    io = b.io(index, n)
    bt, m, k = b.g.tensors[io.xs[0]].shape
    fields = [("batch", bt), ("m", m), ("n", b.g.tensors[io.xs[1]].shape[1]), ("k", k), ("shift", n.attrs["shift"]),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "qg_matmul_params_t", fields, f"qg_matmul_s8(&{io.struct}, {io.ins[0]}, {io.ins[1]}, {io.out_expr});"


def c_matmul_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    bt, m, k = b.g.tensors[io.xs[0]].shape
    fields = [("batch", bt), ("m", m), ("n", b.g.tensors[io.xs[1]].shape[1]), ("k", k), ("shift", n.attrs["shift"]),
              ("a_bits", io.bits[io.xs[0]]), ("b_bits", io.bits[io.xs[1]]), ("out_bits", io.bits[io.out]), *io.act]
    return ("qg_matmul_wide_params_t", fields,
            f"qg_matmul_wide(&{io.struct}, {io.raw[0]}, {io.raw[1]}, {io.out_raw});")


def py_transpose(b, n, index: int):
    """MicroPython: _transpose over the C kernel's loops, padded with leading 1s to 6 dims."""
    shape, si, so = transpose_loops(b.g.tensors[n.inputs[0]].shape, n.attrs["perm"])
    pad = 6 - len(shape)
    params = [(f"n{k}", v) for k, v in enumerate([1] * pad + shape)]
    params += [(f"in_stride{k}", v) for k, v in enumerate([0] * pad + si)]
    params += [(f"out_stride{k}", v) for k, v in enumerate([0] * pad + so)]
    return "_transpose", params, ""


def py_slice(b, n, index: int):
    if slice_alias(b.g, n) is not None:
        return None  # aliased: the view of its output is a range of its input's view
    return "_slice", slice_fields(b.g, n), ""


def py_matmul(b, n, index: int):
    bt, m, k = b.g.tensors[n.inputs[0]].shape
    (mul,), (rnd,), (shr,) = b.triples([n.attrs["shift"]])
    params = [("batch", bt), ("m", m), ("n", b.g.tensors[n.inputs[1]].shape[1]), ("k", k), ("mul", mul),
              ("rnd", rnd), ("shr", shr), ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_matmul", params, ""


def _q_keep(g, n, act) -> None:
    from .layout import q_keep

    q_keep(g, n, act)


SPECS = [
    OpSpec(Op.TRANSPOSE, "matmul", Trait.KEEPS_FORMAT, transpose_shape, check_transpose, ref_transpose,
           ref_transpose, _q_keep, _zero_macs, torch_transpose,
           "permute/transpose/view that reorders elements (copied only where an op needs another layout)",
           ("Transpose",),
           ("qg_transpose_s8", "qg_transpose_s16"),
           "physical permutation copy of up to 6 axes (inserted by the front end where a layout must change)",
           kernel=kernel_transpose, emit_py=py_transpose, emit_c=c_transpose, emit_c_wide=c_transpose_wide,
           qat=qat_transpose),
    OpSpec(Op.SLICE, "matmul", Trait.KEEPS_FORMAT, slice_shape, check_slice, ref_slice, ref_slice, _q_keep,
           _zero_macs, torch_slice, "chunk/split/narrow/slice/select/unbind/indexing", ("Slice", "Split"),
           ("qg_slice_s8", "qg_slice_s16"),
           "a block range along one axis (no code where it is one contiguous run of its input, else copied)",
           kernel=kernel_slice, form=form_slice, emit_py=py_slice, emit_c=c_slice, emit_c_wide=c_slice_wide,
           qat=qat_slice),
    OpSpec(Op.MATMUL, "matmul", Trait.CHOOSES_FORMAT, matmul_shape, check_matmul, f_matmul,
           i_matmul, q_matmul, macs_matmul, torch_matmul, "torch.matmul/@/bmm of two activations", ("MatMul",),
           ("qg_matmul_s8", "qg_matmul_wide"),
           "A (batch, M, K) times B (batch, N, K) transposed, int32 sums (int64 with int16 operands), one "
           "requantisation", kernel=kernel_matmul, emit_py=py_matmul, emit_c=c_matmul, emit_c_wide=c_matmul_wide,
           qat=qat_matmul),
]
