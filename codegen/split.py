"""Split a compiled model across devices: one generated model per part, plus the boundary tensors.

The cut is made on the QUANTISED graph, after a node named by the user (the node names of the report
and of `print(graph)`): part k runs the nodes between cut k-1 and cut k, its input is the boundary
tensor of cut k-1 with the Q-format the whole model gave it, its output the boundary tensor of cut
k. Each part is re-planned (plan_memory) and emitted with prefix `<prefix>_part<k>`, so it has its
own arena and its own `<prefix>_part<k>_run`. Running the parts in sequence is bit-exact with the
unsplit model by construction: the nodes, their integer parameters and the formats are the same.

Only single-tensor cuts are allowed: a tensor that is still needed after the cut (a residual branch)
would have to travel too; such a cut is refused naming that tensor.

Boundary byte stream (one message per inference, `<prefix>_split.h/.c` and pack/unpack_boundary):
    byte 0  magic 0x51 ('Q')
    byte 1  format version (1)
    byte 2  boundary index k (the tensor between part k and part k+1)
    byte 3  frac of the tensor's Q-format, as int8 (value = int8 * 2^-frac)
    bytes 4..4+SIZE-1  the int8 tensor, channels-last (H, W, C), exactly as `<prefix>_part<k>_run` wrote it
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import serialize
from .emit.c import check_prefix, layer_macs, model_data, render, template_environment
from .errors import UserError
from .fixed import QFormat
from .ir import Graph, verify
from .ops import Trait, has
from .output import banner_lines, option_text, write_atomic
from .passes import concat_in_place, plan_memory

STREAM_MAGIC = 0x51
STREAM_VERSION = 1
STREAM_HEADER_BYTES = 4
# Flash taken by the kernel library and start-up code on top of the weights: measured for the
# harness firmware of a small CNN at -O2 on Cortex-M3/M4 (~7-9 KB); rounded up to stay conservative.
KERNEL_FLASH_ESTIMATE = 12 * 1024


@dataclass
class Boundary:
    index: int  # between part `index` and part `index + 1`
    tensor: str
    after: str  # the node the cut follows
    shape: tuple[int, ...]
    qformat: QFormat
    nbytes: int

    @property
    def stream_bytes(self) -> int:
        return STREAM_HEADER_BYTES + self.nbytes


@dataclass
class Part:
    index: int
    prefix: str
    graph: Graph  # quantised, planned
    macs: int
    weight_bytes: int

    @property
    def arena_bytes(self) -> int:
        return self.graph.arena_size


@dataclass
class SplitResult:
    prefix: str
    parts: list[Part]
    boundaries: list[Boundary]
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative path -> content
    out_dir: Path | None = None

    def run_int(self, x_i8: np.ndarray) -> list[np.ndarray]:
        """The reference outputs of every part, run in sequence: [(N, boundary0), ..., (N, output)]."""
        from .hostcheck import reference_outputs
        from .reference import run_int

        outs, x = [], np.asarray(x_i8)
        for part in self.parts:
            out = reference_outputs(part.graph, run_int(part.graph, x.reshape((x.shape[0],) + part_input_shape(part))))
            outs.append(out)
            x = out
        return outs


def part_input_shape(part: Part) -> tuple[int, ...]:
    return part.graph.tensors[part.graph.inputs[0]].shape


# ---------------------------------------------------------------------------------- cut points


def crossing_tensors(graph: Graph, step: int) -> list[str]:
    """Activations produced at or before node `step` (or the graph input) that are still needed after it."""
    produced = set(graph.inputs)
    for node in graph.nodes[: step + 1]:
        produced.update(node.outputs)
    later = set(graph.outputs) | {i for n in graph.nodes[step + 1:] for i in n.inputs}
    order = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
    return [t for t in order if t in produced and t in later]


def valid_split_points(graph: Graph) -> list[str]:
    """Names of the nodes after which the graph can be cut (one tensor crosses, not a model output)."""
    names = [n.name for n in graph.nodes]
    valid = []
    for step, node in enumerate(graph.nodes[:-1]):
        if crossing_tensors(graph, step) == [node.outputs[0]] and node.outputs[0] not in graph.outputs \
                and names.count(node.name) == 1:
            valid.append(node.name)
    return valid


def _resolve(graph: Graph, at: str) -> int:
    """The node index of a split point: a node name, or '%tensor' / 'tensor' for its producer."""
    steps = [i for i, n in enumerate(graph.nodes) if n.name == at]
    if not steps:
        tensor = at.removeprefix("%")
        steps = [i for i, n in enumerate(graph.nodes) if tensor in n.outputs]
    valid = valid_split_points(graph)
    if not steps:
        raise UserError(f"split point '{at}' is not a node of the model. Valid split points: "
                        f"{', '.join(valid) or '(none: the model is one block)'}")
    if len(steps) > 1:
        tensors = ", ".join("%" + graph.nodes[i].outputs[0] for i in steps)
        raise UserError(f"split point '{at}' names {len(steps)} nodes; name the tensor instead: {tensors}")
    step = steps[0]
    node = graph.nodes[step]
    if step == len(graph.nodes) - 1 or node.outputs[0] in graph.outputs:
        raise UserError(f"split point '{at}' produces the model output; nothing is left for the next part. "
                        f"Valid split points: {', '.join(valid)}")
    crossing = [t for t in crossing_tensors(graph, step) if t != node.outputs[0]]
    if crossing:
        t = crossing[0]
        producer = graph.producer(t)
        by = f"produced by {producer.where()}" if producer else "the model input"
        users = [n.where() for n in graph.consumers(t) if graph.nodes.index(n) > step]
        raise UserError(f"cannot split after {node.where()}: tensor %{t} ({by}) is also needed after the cut "
                        f"(by {', '.join(users) or 'the model output'}), so two tensors would cross it. qgen "
                        f"splits where a single tensor crosses; cut before or after the residual block. Valid "
                        f"split points: {', '.join(valid)}")
    return step


# ---------------------------------------------------------------------------------- splitting


def split_graph(graph: Graph, at: list[str]) -> tuple[list[Graph], list[Boundary]]:
    """Cut a quantised graph after each node of `at`; each part re-planned. Returns (parts, boundaries)."""
    if not at:
        raise UserError("give at least one split point")
    if graph.tensors[graph.inputs[0]].dtype != "int8":
        raise UserError("cannot split a model with int16 input (--precision input=int16): parts exchange int8 "
                        "tensors through one int8 entry point; recompile with an int8 input")
    steps = sorted({_resolve(graph, a) for a in at})
    if len(steps) != len(at):
        raise UserError(f"split points {at} name the same node twice")
    bounds = [-1] + steps + [len(graph.nodes) - 1]
    parts, boundaries = [], []
    for k in range(len(bounds) - 1):
        nodes = graph.nodes[bounds[k] + 1: bounds[k + 1] + 1]
        inp = graph.inputs[0] if k == 0 else graph.nodes[bounds[k]].outputs[0]
        outs = list(graph.outputs) if k == len(bounds) - 2 else [nodes[-1].outputs[0]]
        parts.append(_subgraph(graph, nodes, inp, outs, k, len(bounds) - 1))
        if k < len(bounds) - 2:
            t = graph.tensors[outs[0]]
            if t.dtype != "int8":
                raise UserError(f"cannot split after {nodes[-1].where()}: its output is {t.dtype} (mixed precision) "
                                "and parts exchange int8 tensors; split after another layer or keep this one int8")
            boundaries.append(Boundary(k, t.name, nodes[-1].name, tuple(t.shape), t.qformat, t.nbytes))
    return parts, boundaries


def _subgraph(graph: Graph, nodes, inp: str, outs: list[str], k: int, n_parts: int) -> Graph:
    names = {inp, *outs} | {t for n in nodes for t in n.inputs + n.outputs}
    tensors = {name: copy.deepcopy(graph.tensors[name]) for name in names}
    layout = {t: graph.io_layout.get(t) or _layout(graph.tensors[t].shape) for t in (inp, *outs)}
    part = Graph(tensors=tensors, nodes=copy.deepcopy(list(nodes)), inputs=[inp], outputs=outs,
                 source=f"{graph.source} (part {k} of {n_parts})", io_layout=layout,
                 ranges={t: r for t, r in graph.ranges.items() if t in names})
    verify(part, quantized=True)
    return plan_memory.run(concat_in_place.run(part))  # a part's own inputs/outputs cannot be written in place


def _layout(shape: tuple[int, ...]) -> str:
    return "nchw" if len(shape) == 3 else "nf"


def split_model(result, at: list[str], out_dir: str | Path | None = None, command: str | None = None) -> SplitResult:
    """Split a CompileResult after the nodes `at`; optionally write the parts.

    Layout of out_dir: part<k>/ for each part (a complete qgen output directory: `<prefix>_part<k>_*.c/.h`,
    kernels/, `<prefix>_split.h/.c`, qgen_graph.json for `qgen verify` / `qgen firmware`), and
    `<prefix>_split.md` describing the parts and boundaries.
    """

    prefix = result.prefix
    if getattr(result, "streams", False):
        raise UserError("--split-at splits a whole-window model; this one was compiled with --stream (one step with "
                        "state between calls). Split it without --stream")
    graphs, boundaries = split_graph(result.graph, at)
    options = option_text(at=list(at))
    parts: list[Part] = []
    files: dict[str, str | bytes] = {}
    split_files = render_split(prefix, boundaries, banner_lines(result.graph.source, options, command))
    verify_inputs = result.saved_inputs() if "qgen_verify_inputs.npy" in result.files else None
    x = verify_inputs
    for k, g in enumerate(graphs):
        part_prefix = check_prefix(f"{prefix}_part{k}")
        rendered = render(g, part_prefix, banner_lines(g.source, options, command))
        cm = model_data(g, part_prefix)
        parts.append(Part(k, part_prefix, g, cm.macs, cm.weight_bytes))
        for name, content in {**rendered, **split_files}.items():
            files[f"part{k}/{name}"] = content
        gj, gz = serialize.dumps(g)
        files[f"part{k}/qgen_graph.json"], files[f"part{k}/qgen_graph.npz"] = gj, gz
        if x is not None:  # the part's own verify samples: the previous parts' outputs on the saved inputs
            from .hostcheck import reference_outputs
            from .reference import run_int

            x = x.reshape((x.shape[0],) + g.tensors[g.inputs[0]].shape)
            files[f"part{k}/qgen_verify_inputs.npy"] = serialize.npy_bytes(x.astype(np.int8))
            x = reference_outputs(g, run_int(g, x))
    kernels = {name.split("/", 1)[1]: content for name, content in files.items()
               if name.split("/", 1)[1].startswith("kernels/")}
    for k in range(len(graphs)):  # each part's kernels/ holds every part's kernels: any one links them all
        files.update({f"part{k}/{rel}": content for rel, content in sorted(kernels.items())})
    split = SplitResult(prefix, parts, boundaries, files)
    files[f"{prefix}_split.md"] = split_markdown(split)
    if out_dir is not None:
        write_atomic(files, Path(out_dir))
        split.out_dir = Path(out_dir)
    return split


# ---------------------------------------------------------------------------------- byte stream



def pack_boundary(boundary: Boundary, x_i8: np.ndarray) -> bytes:
    """One message of the boundary byte stream (format in the module docstring); mirrors the C pack."""
    data = np.ascontiguousarray(x_i8, dtype=np.int8).reshape(-1)
    if data.size != boundary.nbytes:
        raise ValueError(f"boundary {boundary.index} holds {boundary.nbytes} bytes, got {data.size}")
    header = bytes([STREAM_MAGIC, STREAM_VERSION, boundary.index, boundary.qformat.frac & 0xFF])
    return header + data.tobytes()


def unpack_boundary(boundary: Boundary, stream: bytes) -> np.ndarray:
    """The int8 tensor (shape of the boundary) of one message; ValueError if the header does not match."""
    if len(stream) != boundary.stream_bytes:
        raise ValueError(f"boundary {boundary.index}: message of {len(stream)} bytes, expected {boundary.stream_bytes}")
    expect = pack_boundary(boundary, np.zeros(boundary.nbytes, np.int8))[:STREAM_HEADER_BYTES]
    if stream[:STREAM_HEADER_BYTES] != expect:
        raise ValueError(f"boundary {boundary.index}: header {stream[:4].hex()} != {expect.hex()}")
    return np.frombuffer(stream[STREAM_HEADER_BYTES:], dtype=np.int8).reshape(boundary.shape).copy()


def render_split(prefix: str, boundaries: list[Boundary], banner: list[str]) -> dict[str, str]:
    """`<prefix>_split.h/.c`: boundary macros and the pack/unpack helpers of the byte stream."""
    rows = []
    for b in boundaries:
        h, w, c = b.shape if len(b.shape) == 3 else (1, 1, b.shape[0])
        rows.append({"index": b.index, "tensor": b.tensor, "after": b.after, "shape": list(b.shape),
                     "h": h, "w": w, "c": c, "size": b.nbytes, "frac": b.qformat.frac, "qformat": str(b.qformat),
                     "producer": f"{prefix}_part{b.index}", "consumer": f"{prefix}_part{b.index + 1}"})
    m = {"prefix": prefix, "PREFIX": prefix.upper(), "banner": banner, "boundaries": rows,
         "magic": f"0x{STREAM_MAGIC:02X}u", "version": STREAM_VERSION, "header_bytes": STREAM_HEADER_BYTES,
         "max_size": max((b.nbytes for b in boundaries), default=0)}
    env = template_environment()
    return {f"{prefix}_split.h": env.get_template("c/split.h.j2").render(m=m),
            f"{prefix}_split.c": env.get_template("c/split.c.j2").render(m=m)}


# ---------------------------------------------------------------------------------- suggestions


@dataclass
class Fit:
    board: str
    flash_bytes: int  # weights + KERNEL_FLASH_ESTIMATE
    flash_limit: int
    ram_bytes: int  # arena + input/output buffers + the board's stack reserve
    ram_limit: int

    @property
    def fits(self) -> bool:
        return self.flash_bytes <= self.flash_limit and self.ram_bytes <= self.ram_limit


@dataclass
class Candidate:
    after: str  # node name to pass as --split-at
    tensor: str
    boundary_bytes: int
    macs: tuple[int, int]
    flash: tuple[int, int]  # weight bytes per part
    arena: tuple[int, int]
    fits: tuple[Fit, Fit] | None = None

    @property
    def balance(self) -> float:
        """min/max of the parts' MACs: 1.0 = evenly split work."""
        hi = max(self.macs)
        return min(self.macs) / hi if hi else 1.0


def suggest_splits(graph: Graph, boards: list[str] | None = None, top: int | None = None) -> list[Candidate]:
    """All valid single cuts of a quantised graph, best first: fewest boundary bytes, then best MAC balance.

    With a pair of boards (part 0 on boards[0], part 1 on boards[1]) each candidate says whether the parts
    fit; candidates where both fit come first.
    """
    from .target import load_board

    pair = [load_board(b) for b in boards] if boards else None
    if pair is not None and len(pair) != 2:
        raise UserError(f"--boards takes two boards (one per part), got {len(pair)}: {', '.join(boards)}")
    macs = [layer_macs(graph, n) for n in graph.nodes]
    weights = [_weight_bytes(graph, n) for n in graph.nodes]
    out = []
    for name in valid_split_points(graph):
        step = next(i for i, n in enumerate(graph.nodes) if n.name == name)
        parts, (boundary,) = split_graph(graph, [name])
        cand = Candidate(name, boundary.tensor, boundary.nbytes, (sum(macs[: step + 1]), sum(macs[step + 1:])),
                         (sum(weights[: step + 1]), sum(weights[step + 1:])), (parts[0].arena_size, parts[1].arena_size))
        if pair is not None:
            cand.fits = tuple(_fit(b, p, cand.flash[i]) for i, (b, p) in enumerate(zip(pair, parts)))
        out.append(cand)
    out.sort(key=lambda c: (not (c.fits is None or all(f.fits for f in c.fits)), c.boundary_bytes, -c.balance))
    return out[:top] if top else out


def _weight_bytes(graph: Graph, node) -> int:
    return sum(graph.tensors[t].nbytes for t in node.inputs if graph.tensors[t].is_const) + \
        (len(node.attrs.get("shift", [])) if has(node.op, Trait.WEIGHTED) else 0)


def _fit(board, part: Graph, weight_bytes: int) -> Fit:
    io = part.tensors[part.inputs[0]].nbytes + sum(part.tensors[o].nbytes for o in part.outputs)
    return Fit(board.name, weight_bytes + KERNEL_FLASH_ESTIMATE, board.flash_kb * 1024,
               part.arena_size + io + board.stack_kb * 1024, board.ram_kb * 1024)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def suggestions_markdown(candidates: list[Candidate]) -> str:
    """The split-point report: a markdown table, best candidate first."""
    fits = candidates and candidates[0].fits is not None
    head = "| split after | boundary | bytes | MACs part 0 / 1 | balance | weights part 0 / 1 | arena part 0 / 1 |"
    head += " fits |" if fits else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in candidates:
        row = (f"| `{c.after}` | %{c.tensor} | {c.boundary_bytes} | {c.macs[0]:,} / {c.macs[1]:,} | {c.balance:.2f} "
               f"| {_kb(c.flash[0])} / {_kb(c.flash[1])} | {_kb(c.arena[0])} / {_kb(c.arena[1])} |")
        if fits:
            row += " " + " / ".join(f"{f.board}: {'yes' if f.fits else 'NO'} (flash {_kb(f.flash_bytes)}, "
                                     f"RAM {_kb(f.ram_bytes)})" for f in c.fits) + " |"
        lines.append(row)
    if not candidates:
        lines.append("(no valid split point: every cut would cut a residual branch)")
    note = (f"\nFlash = weights + {KERNEL_FLASH_ESTIMATE // 1024} KB estimated for kernels and start-up; RAM = "
            "arena + input/output buffers + the board's stack reserve.\n") if fits else "\n"
    return "\n".join(lines) + note


def split_markdown(split: SplitResult) -> str:
    lines = [f"# {split.prefix}: {len(split.parts)} parts", "",
             "| part | run function | layers | MACs | weights | arena |", "|---|---|---|---|---|---|"]
    for p in split.parts:
        lines.append(f"| {p.index} | `{p.prefix}_run` | {len(p.graph.nodes)} | {p.macs:,} | {p.weight_bytes} B "
                     f"| {p.arena_bytes} B |")
    lines += ["", "| boundary | after | tensor | shape (H, W, C) | Q-format | bytes | stream bytes |",
              "|---|---|---|---|---|---|---|"]
    for b in split.boundaries:
        lines.append(f"| {b.index} | `{b.after}` | %{b.tensor} | {list(b.shape)} | {b.qformat} | {b.nbytes} "
                     f"| {b.stream_bytes} |")
    lines += ["", (f"Stream message: magic 0x{STREAM_MAGIC:02X}, version {STREAM_VERSION}, boundary index, frac (int8), "
                   f"then the int8 tensor ({STREAM_HEADER_BYTES}-byte header). See `{split.prefix}_split.h`."), ""]
    return "\n".join(lines)
