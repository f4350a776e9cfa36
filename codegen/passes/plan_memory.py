"""Plan one static arena: every intermediate activation gets an offset; buffers whose lifetimes do
not overlap share memory.

Algorithm (greedy by size, as TFLite Micro's greedy planner): reshape outputs alias their input
(one storage group). Each group lives from the step that produces it to the last step that reads it.
Groups are placed largest first, each at the lowest 4-byte-aligned offset that does not intersect any
already-placed group alive at the same time. The model input is read from the caller's `in` buffer
and outputs are written straight into the caller's `out` buffer (concatenated), so neither needs arena.
A kernel's scratch memory (kernel_abi.scratch_bytes) is one more buffer, alive during its own step
only, recorded as `graph.memory[scratch_key(step)]`.
`check_overlap` proves the result and runs after every plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..ir import Graph, Op
from ..kernel_abi import scratch_bytes

ALIGN = 4


@dataclass
class Buffer:
    tensors: list[str]
    size: int
    first: int  # step that writes it (-1: before the first node)
    last: int  # last step that reads it
    offset: int = -1


# Element-wise kernels that may write over one of their inputs (each output element depends only on
# the same element of the inputs, read before it is written; their C kernels take no `restrict`).
IN_PLACE_OPS = (Op.RELU, Op.LUT, Op.ADD, Op.SOFTMAX)


def storage_groups(graph: Graph) -> dict[str, str]:
    """tensor -> the tensor that owns its storage.

    Reshape outputs share their input's storage. An element-wise op also writes in place into an
    input that dies at that step (lives in the arena, same size, read by no later node).
    """
    owner = {name: name for name in graph.tensors if not graph.tensors[name].is_const}
    for node in graph.nodes:
        if node.op is Op.RESHAPE:
            owner[node.outputs[0]] = owner[node.inputs[0]]
    last_use: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in owner:
                last_use[owner[name]] = step
    pinned = {owner[t] for t in graph.inputs + graph.outputs}
    for step, node in enumerate(graph.nodes):
        out = node.outputs[0]
        if node.op not in IN_PLACE_OPS or owner[out] in pinned:
            continue
        for name in node.inputs:
            root = owner.get(name)
            if (root is not None and root not in pinned and last_use.get(root) == step
                    and graph.tensors[name].nbytes == graph.tensors[out].nbytes):
                old = owner[out]
                for t, r in owner.items():
                    if r == old:
                        owner[t] = root
                last_use[root] = last_use.get(old, step)
                break
    return owner


def scratch_key(step: int) -> str:
    return f"scratch:{step}"


def lifetimes(graph: Graph) -> list[Buffer]:
    owner = storage_groups(graph)
    groups: dict[str, Buffer] = {}
    for name in graph.inputs:
        groups[owner[name]] = Buffer([name], graph.tensors[name].nbytes, -1, -1)
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in owner:
                groups[owner[name]].last = max(groups[owner[name]].last, step)
                if name not in groups[owner[name]].tensors:
                    groups[owner[name]].tensors.append(name)
        for name in node.outputs:
            root = owner[name]
            if root not in groups:
                groups[root] = Buffer([], graph.tensors[name].nbytes, step, step)
            if name not in groups[root].tensors:
                groups[root].tensors.append(name)
        size = scratch_bytes(graph, node)
        if size:
            groups[scratch_key(step)] = Buffer([scratch_key(step)], size, step, step)
    return list(groups.values())


def run(graph: Graph) -> Graph:
    buffers = lifetimes(graph)
    memory: dict[str, tuple[str, int]] = {}
    out_offset = {}
    offset = 0
    for name in graph.outputs:
        out_offset[name] = offset
        offset += graph.tensors[name].nbytes
    arena: list[Buffer] = []
    for buf in buffers:
        is_in = any(t in graph.inputs for t in buf.tensors)
        outs = [t for t in buf.tensors if t in graph.outputs]
        if is_in and outs:
            raise UserError("the model output is its input (no computation); nothing to compile")
        if is_in:
            for t in buf.tensors:
                memory[t] = ("input", 0)
        elif outs:
            for t in buf.tensors:
                memory[t] = ("output", out_offset[outs[0]])
        else:
            arena.append(buf)
    placed: list[Buffer] = []
    for buf in sorted(arena, key=lambda b: (-b.size, b.first)):
        buf.offset = _lowest_free_offset(buf, placed)
        placed.append(buf)
        for t in buf.tensors:
            memory[t] = ("arena", buf.offset)
    check_overlap(placed)
    graph.memory = memory
    graph.arena_size = max((b.offset + b.size for b in placed), default=0)
    return graph


def _alive_together(a: Buffer, b: Buffer) -> bool:
    return a.first <= b.last and b.first <= a.last


def _lowest_free_offset(buf: Buffer, placed: list[Buffer]) -> int:
    busy = sorted((p.offset, p.offset + p.size) for p in placed if _alive_together(p, buf))
    offset = 0
    for start, end in busy:
        if offset + buf.size <= start:
            break
        offset = max(offset, _align(end))
    return offset


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def check_overlap(buffers: list[Buffer]) -> None:
    """Raise if two buffers alive at the same step share a byte (the planner's proof obligation)."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if _alive_together(a, b) and a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                raise AssertionError(f"arena overlap: {a.tensors} [{a.offset}, {a.offset + a.size}) and "
                                     f"{b.tensors} [{b.offset}, {b.offset + b.size}) are alive together")
