"""Concatenation without copies: producers write straight into their slice of the concat output.

A `torch.cat` of branches (SqueezeNet's fire modules, U-Net's up-convolution beside its skip, Inception
blocks) costs, with a copying concat, the branch outputs plus the concatenated tensor at the concat step —
about twice the output. Here an input whose producer can write its output pixels at a wider stride (the
dense int8 convolution and transposed convolution, the resize, a copying concat: `out_stride` in their parameter
struct, the concat's out_block), which no other node reads and which is in the output's Q format, is computed in
place: the planner gives it the bytes of its slice inside the concat buffer (channels-last: channel offset c0 of
every pixel, pixel stride = the output's channel count), the producer writes there, and the concat copies only
the other inputs (early copies below; a constant or int16 input: their pointer is NULL in its call; with none
left, no call at all).

Two passes around quantize:
- `share_formats` (before quantize): the eligible inputs get the concat output's calibrated range, so the
  quantiser gives them its format (requantisation shift 0), as TFLite's int8 spec makes a concatenation's
  inputs share its scale. Only structurally eligible inputs (producer kind, single reader) are touched; through
  an op that keeps its input's format (a resize) the range goes to the op that chooses it.
- `run` (after quantize, before plan_memory): marks the concat `attrs["in_place"]` (one flag per input) and
  each such producer `attrs["out_stride"]` (elements between output pixels) once the formats are known to
  agree. plan_memory then places the inputs inside the output's buffer (`in_place_offsets`).

Early copies: a concat with some inputs written in place and others copied would copy the others at its own
step, after the in-place producers have written their parts — so a copied input (a U-Net skip connection)
had to live beside the whole output until then, and could not lie inside it. `run` instead turns each copied
input into a copy node of its own (a one-input concat written in place like any producer, requantising by its
shift; strided for channels) placed just before the first in-place producer: the copied input dies there and
may lie inside the output's upper part (kernels.concat_overlap), and the concat itself has no code left.
plan_memory tries each concat as a fully copying one too (`as_copying`) and keeps the smaller arena.

A graph output may be a concat written in place (an ensemble's `--combine concat`): its producers write
straight into the caller's output buffer.

The integer reference ignores both attributes (the values are the same; only where the bytes live changes).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op, Tensor
from ..kernels import select
from ..ops import Trait, has

# they honour `out_stride` (qg_concat_s8: its out_block; a copying concat, or an early copy, written strided)
STRIDED_OUT_KERNELS = frozenset({"qg_conv2d_s8", "qg_conv_transpose2d_s8", "qg_conv_transpose2d_pointwise_s8",
                                 "qg_resize_s8", "qg_concat_s8"})
EARLY_COPY = "early_copy"  # attribute of a copy node made by `run` (its concat's input index)


def _geometry(graph: Graph, concat: Node) -> tuple[bool, list[int]] | None:
    """(strided, [element offset of each input in the first outer block]) or None.

    One outer block (a vector, or a concat along the outermost axis): every input is one contiguous
    range of the output, which any kernel can write. The last axis of a channels-last image: each input
    is a strided slice (its channels of every pixel), which only a kernel with `out_stride` can write."""
    out = graph.tensors[concat.outputs[0]]
    axis = concat.attrs["axis"]
    inner = int(np.prod(out.shape[axis + 1:], dtype=np.int64))
    outer = int(np.prod(out.shape[:axis], dtype=np.int64))
    strided = outer > 1
    if strided and (axis != len(out.shape) - 1 or len(out.shape) != 3):
        return None
    offsets = [0]
    for t in concat.inputs[:-1]:
        offsets.append(offsets[-1] + graph.tensors[t].shape[axis] * inner)
    return strided, offsets


def _candidates(graph: Graph, concat: Node, pinned: set[str]) -> list[bool]:
    """Per input: could its producer write in place (structure only; formats and kernels are checked after
    quantize). A tensor the concat reads twice, a graph input/output, one another node reads, or the output
    of a node without code (reshape aliases its input's bytes) stays a copy."""
    strided = _geometry(graph, concat)[0]
    flags, seen = [], set()
    for t in concat.inputs:
        producer = graph.producer(t)
        ok = (producer is not None and t not in pinned and t not in seen and len(graph.consumers(t)) == 1
              and producer.op is not Op.RESHAPE and not _aliases(graph, producer)
              and (has(producer.op, Trait.STRIDED_OUT) or not strided)
              and not (strided and producer.op is Op.CONCAT and any(producer.attrs.get("in_place") or [])))
        # (a concat written at a pixel stride copies all its parts: its own in-place producers would need that
        # stride too)
        seen.add(t)
        flags.append(ok)
    return flags


def _aliases(graph: Graph, node: Node) -> bool:
    """A node without code whose output lies inside its input's bytes (a slice that is a contiguous run)."""
    from ..ops.matmul import slice_alias

    return node.op is Op.SLICE and slice_alias(graph, node) is not None


def _pinned(graph: Graph) -> set[str]:
    return set(graph.inputs) | set(graph.outputs)


def _range_chain(graph: Graph, t: str, pinned: set[str]) -> list[str] | None:
    """The tensors whose calibrated range sets `t`'s format: t itself, or back through ops that keep their
    input's format (a resize) to the one that chooses it — each read only by the next — or None."""
    from .calibrate import format_source

    src = format_source(graph, t)
    chain = [t]
    while chain[-1] != src:
        if src is None or chain[-1] in pinned:
            return None
        chain.append(graph.producer(chain[-1]).inputs[0])
        if len(graph.consumers(chain[-1])) != 1:
            return None
    return None if src in pinned or any(name not in graph.ranges for name in chain) else chain


def share_formats(graph: Graph) -> Graph:
    """Before quantize: eligible inputs take the concat output's calibrated range (hence its format); an input
    that keeps its own input's format (a resize) passes the range on to the op that chooses it."""
    from .assign_precision import tensor_bits

    pinned = _pinned(graph)
    bits = tensor_bits(graph)
    for node in graph.nodes:
        if node.op is not Op.CONCAT or node.outputs[0] in graph.inputs or _geometry(graph, node) is None:
            continue
        out = node.outputs[0]
        if out not in graph.ranges or bits[out] != 8:
            continue
        for t, ok in zip(node.inputs, _candidates(graph, node, pinned)):
            chain = _range_chain(graph, t, pinned) if ok else None
            if chain and all(bits[name] == 8 for name in chain):
                top = max([graph.ranges[out]] + [graph.ranges[name] for name in chain])
                for name in [out] + chain:
                    graph.ranges[name] = top
    return graph


def run(graph: Graph) -> Graph:
    """After quantize: mark the concats whose inputs are written in place, and their producers' strides; the
    inputs left to copy get early copy nodes (module docstring)."""
    pinned = _pinned(graph)
    for node in graph.nodes:
        node.attrs.pop("out_stride", None)
    for node in list(graph.nodes):
        if node.op is not Op.CONCAT:
            continue
        node.attrs.pop("in_place", None)
        geometry = _geometry(graph, node)
        out = graph.tensors[node.outputs[0]]
        if geometry is None or node.outputs[0] in graph.inputs or out.dtype != "int8":
            continue
        strided = geometry[0]
        flags = []
        for t, ok, shift in zip(node.inputs, _candidates(graph, node, pinned), node.attrs["shifts"]):
            producer = graph.producer(t)
            ok = ok and shift == 0 and graph.tensors[t].dtype == "int8"
            if ok and strided:
                ok = select(graph, producer).fn in STRIDED_OUT_KERNELS
                if ok:  # the pixel stride of a channels-last concat: its output's channel count
                    producer.attrs["out_stride"] = int(out.shape[-1])
            flags.append(bool(ok))
        if any(flags):
            node.attrs["in_place"] = flags
            if not all(flags):
                _early_copies(graph, node)
    return graph


def _early_copies(graph: Graph, concat: Node) -> None:
    """Each input the concat would copy gets its own copy node (a one-input concat, written in place), placed
    just before the concat's first in-place producer (or right after the input's producer, if later)."""
    flags = concat.attrs["in_place"]
    copied = [i for i, flag in enumerate(flags) if not flag]
    if any(graph.tensors[concat.inputs[i]].is_const or graph.tensors[concat.inputs[i]].dtype != "int8"
           for i in copied):
        return  # the concat copies them at its step (NULL parts for the others)
    out = graph.tensors[concat.outputs[0]]
    strided = _geometry(graph, concat)[0]
    index = {id(n): k for k, n in enumerate(graph.nodes)}
    first = min(index[id(graph.producer(t))] for t, flag in zip(concat.inputs, flags) if flag)
    for i in copied:
        t = concat.inputs[i]
        producer = graph.producer(t)
        at = first if producer is None else max(first, graph.nodes.index(producer) + 1)
        name = graph.fresh_name(f"{concat.outputs[0]}_part{i}")
        graph.tensors[name] = Tensor(name, graph.tensors[t].shape, "int8", out.qformat)
        if concat.outputs[0] in graph.ranges:
            graph.ranges[name] = graph.ranges[concat.outputs[0]]
        attrs = {"axis": concat.attrs["axis"], "shifts": [concat.attrs["shifts"][i]], EARLY_COPY: i}
        if strided:
            attrs["out_stride"] = int(out.shape[-1])
        graph.nodes.insert(at, Node(concat.name, Op.CONCAT, [t], [name], attrs, concat.source))
        concat.inputs[i] = name
        concat.attrs["shifts"][i] = 0
        flags[i] = True


def as_copying(graph: Graph, concat: Node):
    """Turn a concat written in place back into one that copies every input (its early copy nodes removed);
    returns a function that puts it back."""
    nodes, inputs, attrs = list(graph.nodes), list(concat.inputs), dict(concat.attrs)
    attrs["shifts"] = list(attrs["shifts"])
    strides, tensors = {}, {}
    for k, t in enumerate(concat.inputs):
        producer = graph.producer(t)
        if attrs["in_place"][k] and "out_stride" in producer.attrs:
            strides[id(producer)] = (producer, producer.attrs.pop("out_stride"))
        if producer is not None and EARLY_COPY in producer.attrs:
            graph.nodes.remove(producer)
            tensors[t] = graph.tensors.pop(t)
            concat.inputs[k] = producer.inputs[0]
            concat.attrs["shifts"][k] = producer.attrs["shifts"][0]
    concat.attrs["shifts"] = list(concat.attrs["shifts"])
    concat.attrs.pop("in_place")

    def restore() -> None:
        graph.nodes[:] = nodes
        concat.inputs[:] = inputs
        concat.attrs.clear()
        concat.attrs.update(attrs)
        graph.tensors.update(tensors)
        for producer, stride in strides.values():
            producer.attrs["out_stride"] = stride

    return restore


def in_place_offsets(graph: Graph) -> dict[str, tuple[str, int]]:
    """{input tensor: (concat output tensor, byte offset inside it)} for the inputs written in place."""
    where = {}
    for node in graph.nodes:
        flags = node.attrs.get("in_place")
        if node.op is not Op.CONCAT or not flags:
            continue
        for t, flag, offset in zip(node.inputs, flags, _geometry(graph, node)[1]):
            if flag:
                where[t] = (node.outputs[0], offset)  # int8: one byte per element
    return where
