"""Plan one static arena: every intermediate activation gets an offset; buffers whose lifetimes do
not overlap share memory.

Algorithm (greedy by size, as TFLite Micro's greedy planner): reshape outputs alias their input
(one storage group). Each group lives from the step that produces it to the last step that reads it.
Groups are placed largest first, each at the lowest 4-byte-aligned offset that does not intersect any
already-placed group alive at the same time. The model input is read from the caller's `in` buffer
and outputs are written straight into the caller's `out` buffer (concatenated), so neither needs arena.
A kernel's scratch memory (kernel_abi.scratch_bytes) is one more buffer, alive during its own step
only, recorded as `graph.memory[scratch_key(step)]`.

Overlapping in-place: a sliding-window kernel (convolution, depthwise, pooling) computes its output
pixels in order and never reads an input pixel's bytes again once the output has passed them, so its
output may start `kernel_abi.overlap_distance` bytes below an input that dies at that step, covering
the input's start (for a 3x3 depthwise layer: one image row plus two pixels below). Only that pair may
share bytes, and only when the input is no graph input/output and none of its aliases is read later.
Chains (depthwise -> pointwise -> depthwise ...) step a little further down at each layer, which the
lowest-offset greedy only finds when it places a chain's later buffers first; the planner runs the
greedy in a few orders (STRATEGIES: chain-aware ties, scratch last) and keeps the smallest arena.
`check_overlap` proves the result (deliberate overlaps included) and runs after every plan.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..ir import Graph, Op
from ..kernel_abi import overlap_distance, scratch_bytes
from ..ops import Trait, with_trait
from .concat_in_place import as_copying, in_place_offsets

ALIGN = 4


@dataclass
class Buffer:
    tensors: list[str]
    size: int
    first: int  # step that writes it (-1: before the first node)
    last: int  # last step that reads it
    offset: int = -1
    # overlapping in-place: this buffer is written at step `first` from the buffer whose first tensor
    # is `over`, which dies at that step; it may start up to `distance` bytes below it (never closer)
    over: str | None = None
    distance: int = 0


# Element-wise kernels that may write over one of their inputs (each output element depends only on
# the same element of the inputs, read before it is written; their C kernels take no `restrict`).
IN_PLACE_OPS = with_trait(Trait.IN_PLACE)


def storage_groups(graph: Graph) -> dict[str, str]:
    """tensor -> the tensor that owns its storage.

    Reshape outputs share their input's storage. An element-wise op also writes in place into an
    input that dies at that step (lives in the arena, same size, read by no later node). A concat input
    written in place (concat_in_place) lives inside the concat output's storage (`sub_offsets`).
    """
    owner = {name: name for name in graph.tensors if not graph.tensors[name].is_const}
    inside = in_place_offsets(graph)
    sliced = slice_offsets(graph)
    for node in graph.nodes:
        if node.op is Op.RESHAPE or node.outputs[0] in sliced:
            owner[node.outputs[0]] = owner[node.inputs[0]]
        elif node.op is Op.CONCAT:
            for t in node.inputs:
                if t in inside:  # its whole group moves (nested: a concat written in place into another)
                    old, new = owner[t], owner[node.outputs[0]]
                    for name, root in owner.items():
                        if root == old:
                            owner[name] = new
    last_use: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name in owner:
                last_use[owner[name]] = step
    pinned = {owner[t] for t in graph.inputs + graph.outputs}
    for step, node in enumerate(graph.nodes):
        out = node.outputs[0]
        if node.op not in IN_PLACE_OPS or owner[out] in pinned or out in inside:
            continue
        for name in node.inputs:
            root = owner.get(name)
            if root is not None and graph.tensors[name].nbytes != graph.tensors[root].nbytes:
                continue  # a slice lying inside its input's bytes (slice_offsets): only a whole group is written over
            if (root is not None and root not in pinned and last_use.get(root) == step
                    and graph.tensors[name].nbytes == graph.tensors[out].nbytes):
                old = owner[out]
                for t, r in owner.items():
                    if r == old:
                        owner[t] = root
                last_use[root] = last_use.get(old, step)
                break
    return owner


def sub_offsets(graph: Graph) -> dict[str, int]:
    """Byte offset of each tensor inside its storage group (0 but for concat inputs written in place, also
    nested: an in-place input of a concat that is itself an in-place input of another)."""
    inside = {**in_place_offsets(graph), **slice_offsets(graph)}
    for node in graph.nodes:
        if node.op is Op.RESHAPE:  # a reshape of a tensor that lies inside another lies where it does
            inside[node.outputs[0]] = (node.inputs[0], 0)
    offsets: dict[str, int] = {}

    def offset(t: str) -> int:
        if t not in offsets:
            parent, at = inside.get(t, (None, 0))
            offsets[t] = 0 if parent is None else at + offset(parent)
        return offsets[t]

    for t in graph.tensors:
        if not graph.tensors[t].is_const:
            offset(t)
    return offsets


def slice_offsets(graph: Graph) -> dict[str, tuple[str, int]]:
    """{slice output: (its input, byte offset)} for the slices that alias their input (ops.matmul.slice_alias:
    a contiguous run of it, no copy)."""
    from ..ops.matmul import slice_alias

    where = {}
    for node in graph.nodes:
        if node.op is Op.SLICE:
            at = slice_alias(graph, node)
            if at is not None:
                where[node.outputs[0]] = (node.inputs[0], at)
    return where


SCRATCH = "scratch:"


def scratch_key(step: int) -> str:
    return f"{SCRATCH}{step}"


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
                groups[root] = Buffer([], graph.tensors[root].nbytes, step, step)
            if name not in groups[root].tensors:
                groups[root].tensors.append(name)
        size = scratch_bytes(graph, node)
        if size:
            groups[scratch_key(step)] = Buffer([scratch_key(step)], size, step, step)
    pinned = {owner[t] for t in graph.inputs + graph.outputs}
    inside = in_place_offsets(graph)
    sub = sub_offsets(graph) if inside else {}
    for step, node in enumerate(graph.nodes):
        distance = overlap_distance(graph, node)
        if distance is None:
            continue
        src, dst = owner[node.inputs[0]], owner[node.outputs[0]]
        if node.outputs[0] in inside:  # written into a concat's slice: no overlap with its input, but for a
            if node.op is not Op.CONCAT:  # copy (concat_overlap: distance from its output's start, which lies
                continue                  # sub bytes above its storage group's)
            distance += sub[node.outputs[0]]
        if any(owner.get(t) == src for t in node.inputs[1:]):  # another input lies in the same bytes (cat([x, x]))
            continue
        if src not in pinned and dst not in pinned and groups[src].last == step and groups[dst].first == step:
            groups[dst].over, groups[dst].distance = groups[src].tensors[0], distance
    return list(groups.values())


def _plan(graph: Graph) -> tuple[dict[str, tuple[str, int]], list[Buffer]]:
    from .stream import plan_state

    buffers = lifetimes(graph)
    memory: dict[str, tuple[str, int]] = plan_state(graph)  # a streaming step's state: its own region, kept
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
        if buf.tensors[0] in memory:  # state (a history window): never in the arena
            continue
        if is_in:
            for t in buf.tensors:
                memory[t] = ("input", 0)
        elif outs:
            for t in buf.tensors:
                memory[t] = ("output", out_offset[outs[0]])
        else:
            arena.append(buf)
    placed = min((_place(arena, **strategy) for strategy in STRATEGIES), key=_arena_end)
    for buf in placed:
        for t in buf.tensors:
            memory[t] = ("arena", buf.offset)
    for t, at in sub_offsets(graph).items():
        if at and t in memory:
            memory[t] = (memory[t][0], memory[t][1] + at)
    return memory, placed


def run(graph: Graph) -> Graph:
    """Plan the arena. A concat written in place (concat_in_place) keeps its output alive from its first
    producer's step, which can raise the peak (a producer with a large input); each such concat is tried
    with copies too (its early copy nodes removed), and the copy is kept where the arena is smaller."""
    memory, placed = _plan(graph)
    for node in [n for n in graph.nodes if n.attrs.get("in_place")]:
        restore = as_copying(graph, node)
        trial = _plan(graph)
        if _arena_end(trial[1]) < _arena_end(placed):
            memory, placed = trial
        else:
            restore()
    check_overlap(placed)
    graph.memory = memory
    graph.arena_size = _arena_end(placed)
    return graph


# Orders the greedy tries (the smallest arena wins). chains_first: ties among equal sizes go by first
# step, except that a run of equal-size buffers linked by overlaps is placed as one, its last buffer
# first: an output placed before its input puts the input just above it, overlapping; the other way
# round, the output would have to fit below its input. scratch_last: kernel scratch (alive one step)
# after all activations, so that it does not block an overlap; it then fills what is left at its step.
# outputs_first: an output that may overlap its (larger) input is placed just before that input, as if it
# were as large: the input then lands `distance` above it, overlapping (a stride-2 pool after a big first
# convolution: SqueezeNet's arena is the convolution's output plus 32 bytes instead of both buffers).
# grid: offsets rounded up to 32 or 64 bytes instead of 4, so that two overlap chains whose distances differ by a
# few bytes line up (U-Net: a skip connection lies inside the concat output 528 B above the next conv's output,
# the previous concat 544 B above its conv's; on the 4-byte grid the 16 B difference pushed a 32 KB buffer above
# the peak). small_last: activations under 64 B (a classifier's logits, an ensemble member's output waiting for
# the combine) after everything else, scratch included: when they live long they would otherwise sit under each
# later peak and push it up.
STRATEGIES = [{"chains_first": c, "scratch_last": s, "outputs_first": o}
              for o in (False, True) for s in (False, True) for c in (False, True)]
STRATEGIES += [{"chains_first": True, "scratch_last": True, "outputs_first": True, "grid": grid}
               for grid in (32, 64)]
STRATEGIES += [{"chains_first": True, "scratch_last": True, "outputs_first": o, "small_last": 64}
               for o in (False, True)]


def _place(buffers: list[Buffer], chains_first: bool, scratch_last: bool, outputs_first: bool = False,
           grid: int = ALIGN, small_last: int = 0) -> list[Buffer]:
    """Greedy: largest first (see STRATEGIES), each at its lowest free offset."""
    rank, size = {}, {}
    for buf in sorted(buffers, key=lambda b: b.first):
        src = next((b for b in buffers if _overlap_allowed(buf, b) is not None), None)
        start = rank[src.tensors[0]][0] if chains_first and src is not None and src.size == buf.size else buf.first
        rank[buf.tensors[0]] = (start, -buf.first if chains_first else buf.first)
        grow = outputs_first and src is not None and src.size > buf.size
        size[buf.tensors[0]] = (src.size, 0) if grow else (buf.size, 1)
    placed: list[Buffer] = []
    scratch = {b.tensors[0]: b.tensors[0].startswith(SCRATCH) for b in buffers}
    tier = {name: 2 if not is_scratch and b.size < small_last else int(scratch_last and is_scratch)
            for b in buffers for name, is_scratch in [(b.tensors[0], scratch[b.tensors[0]])]}
    for buf in sorted(buffers, key=lambda b: (tier[b.tensors[0]], -size[b.tensors[0]][0],
                                              size[b.tensors[0]][1], rank[b.tensors[0]])):
        placed.append(Buffer(buf.tensors, buf.size, buf.first, buf.last, _lowest_free_offset(buf, placed, grid),
                             buf.over, buf.distance))
    return placed


def _arena_end(buffers: list[Buffer]) -> int:
    return max((b.offset + b.size for b in buffers), default=0)


def _alive_together(a: Buffer, b: Buffer) -> bool:
    return a.first <= b.last and b.first <= a.last


def _overlap_allowed(out: Buffer, src: Buffer) -> int | None:
    """The distance by which `out` may overlap `src` (its producer's dying input), None if it may not."""
    if out.over is not None and out.over in src.tensors and out.first == src.last:
        return out.distance
    return None


def _forbidden(buf: Buffer, p: Buffer) -> tuple[int, int]:
    """Offsets x with lo < x < hi where `buf` would collide with the placed, simultaneously alive `p`."""
    d = _overlap_allowed(buf, p)
    if d is not None:  # buf is the output: x <= p.offset - d, or above p
        return p.offset - d, p.offset + p.size
    d = _overlap_allowed(p, buf)
    if d is not None:  # buf is the input: x >= p.offset + d, or below p
        return p.offset - buf.size, p.offset + d
    return p.offset - buf.size, p.offset + p.size


def _lowest_free_offset(buf: Buffer, placed: list[Buffer], grid: int = ALIGN) -> int:
    intervals = [_forbidden(buf, p) for p in placed if _alive_together(p, buf)]
    offset, moved = 0, True
    while moved:
        moved = False
        for lo, hi in intervals:
            if lo < offset < hi:
                offset, moved = _align(hi, grid), True
    return offset


def _align(n: int, grid: int = ALIGN) -> int:
    return (n + grid - 1) // grid * grid


def check_overlap(buffers: list[Buffer]) -> None:
    """Raise if two buffers alive at the same step share a byte (the planner's proof obligation).

    The one exception is proven, not trusted: an output may share bytes with the input its producer
    reads for the last time, if its kernel allows that (Buffer.over, set from kernel_abi) and it starts
    at least the kernel's distance below the input.
    """
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if not (_alive_together(a, b) and a.offset < b.offset + b.size and b.offset < a.offset + a.size):
                continue
            for out, src in ((a, b), (b, a)):
                d = _overlap_allowed(out, src)
                if d is not None and out.offset <= src.offset - d:
                    break
                if d is not None:
                    raise AssertionError(f"arena overlap: {out.tensors} at {out.offset} must start at least {d} B "
                                         f"below its producer's input {src.tensors} at {src.offset}")
            else:
                raise AssertionError(f"arena overlap: {a.tensors} [{a.offset}, {a.offset + a.size}) and "
                                     f"{b.tensors} [{b.offset}, {b.offset + b.size}) are alive together")
