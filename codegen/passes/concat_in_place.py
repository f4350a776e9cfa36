"""Concatenation without copies: producers write straight into their slice of the concat output.

A `torch.cat` of branches (SqueezeNet's fire modules, U-Net's up-convolution beside its skip, Inception
blocks) costs, with a copying concat, the branch outputs plus the concatenated tensor at the concat step —
about twice the output. Here an input whose producer can write its output pixels at a wider stride (the
dense int8 convolution and transposed convolution: `out_stride` in their parameter struct), which no other node
reads and which is in the output's Q format, is computed in place: the planner gives it the bytes of its
slice inside the concat buffer (channels-last: channel offset c0 of every pixel, pixel stride = the output's
channel count), the producer writes there, and the concat copies only the other inputs (their pointer is
NULL in its call; with none left, no call at all).

Two passes around quantize:
- `share_formats` (before quantize): the eligible inputs get the concat output's calibrated range, so the
  quantiser gives them its format (requantisation shift 0), as TFLite's int8 spec makes a concatenation's
  inputs share its scale. Only structurally eligible inputs (producer kind, single reader) are touched.
- `run` (after quantize, before plan_memory): marks the concat `attrs["in_place"]` (one flag per input) and
  each such producer `attrs["out_stride"]` (elements between output pixels) once the formats are known to
  agree. plan_memory then places the inputs inside the output's buffer (`in_place_offsets`).

The integer reference ignores both attributes (the values are the same; only where the bytes live changes).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op
from ..kernels import select
from ..ops import Trait, has

STRIDED_OUT_KERNELS = frozenset({"qg_conv2d_s8", "qg_conv_transpose2d_s8"})  # they honour `out_stride`


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
              and (has(producer.op, Trait.STRIDED_OUT) or not strided))
        seen.add(t)
        flags.append(ok)
    return flags


def _aliases(graph: Graph, node: Node) -> bool:
    """A node without code whose output lies inside its input's bytes (a slice that is a contiguous run)."""
    from ..ops.matmul import slice_alias

    return node.op is Op.SLICE and slice_alias(graph, node) is not None


def _pinned(graph: Graph) -> set[str]:
    return set(graph.inputs) | set(graph.outputs)


def share_formats(graph: Graph) -> Graph:
    """Before quantize: eligible inputs take the concat output's calibrated range (hence its format)."""
    from .assign_precision import tensor_bits

    pinned = _pinned(graph)
    bits = tensor_bits(graph)
    for node in graph.nodes:
        if node.op is not Op.CONCAT or node.outputs[0] in pinned or _geometry(graph, node) is None:
            continue
        out = node.outputs[0]
        if out not in graph.ranges or bits[out] != 8:
            continue
        for t, ok in zip(node.inputs, _candidates(graph, node, pinned)):
            if ok and t in graph.ranges and bits[t] == 8:
                graph.ranges[t] = max(graph.ranges[t], graph.ranges[out])
                graph.ranges[out] = graph.ranges[t]
    return graph


def run(graph: Graph) -> Graph:
    """After quantize: mark the concats whose inputs are written in place, and their producers' strides."""
    pinned = _pinned(graph)
    for node in graph.nodes:
        node.attrs.pop("out_stride", None)
    for node in graph.nodes:
        if node.op is not Op.CONCAT:
            continue
        node.attrs.pop("in_place", None)
        geometry = _geometry(graph, node)
        out = graph.tensors[node.outputs[0]]
        if geometry is None or node.outputs[0] in pinned or out.dtype != "int8":
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
    return graph


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
