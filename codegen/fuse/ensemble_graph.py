"""An ensemble of models as ONE graph: `codegen.fuse.ensemble(models, example_input, combine=...)`.

    result = codegen.fuse.ensemble([m1, m2, m3], torch.zeros(1, 1, 8, 8), combine="mean", calib_data=x)
    result.verify(x); result.predict(x)          # the same CompileResult as codegen.compile

The members' front-end graphs are merged into one float IR graph that reads one shared input and runs the
members one after another (member 0's layers, then member 1's ...), so that at any step only one member's
activations are alive besides the outputs of the members already run: the arena stays within the largest
member's arena plus the members' outputs (tests/test_fuse_ensemble.py checks it). Then the normal compile
pipeline runs on it with one more float pass, `share_prefix` (codegen/passes/cse.py): layers identical in op,
attributes, weights and input are computed once (members fine-tuned from one backbone with frozen leading
layers share them; flash and work drop). The members' outputs are combined in the integer domain:

- mean: Op.MEAN (codegen/ops/combine.py): the member outputs aligned to one format and averaged, one rounding;
- concat: Op.CONCAT on the last IR axis (PyTorch's dim 1): every member's outputs side by side;
- vote: Op.VOTE: each member's argmax is one vote; out = 2 * votes + 1 on the decided class (ties between
  classes: the largest mean logit, then the lowest index), format s8.f1 (dequantised: votes, +0.5 on the winner).

Every member is taken as codegen.compile takes a model (nn.Module, ExportedProgram, 'model.pt2',
'file.py:factory', '.onnx'), all with the same example input. The keyword options are codegen.compile's.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

import numpy as np

from ..errors import UserError
from ..ir import Graph, Node, Op, Tensor

COMBINES = ("mean", "concat", "vote")


def _member_name(model: Any, i: int) -> str:
    if isinstance(model, str):
        return f"'{model}'"
    return f"{type(model).__name__}"


def _where(models: list, i: int) -> str:
    return f"member {i} ({_member_name(models[i], i)})"


def member_graphs(models: list, example_input: Any) -> list[Graph]:
    """Each member's float IR from its front end (UserErrors name the member)."""
    from ..api import _frontend

    graphs = []
    for i, model in enumerate(models):
        try:
            graphs.append(_frontend(model, example_input))
        except UserError as exc:
            raise UserError(f"{_where(models, i)}: {exc}") from None
    return graphs


def _check_members(models: list, graphs: list[Graph], combine: str) -> None:
    g0 = graphs[0]
    x0 = g0.tensors[g0.inputs[0]]
    out0 = g0.tensors[g0.outputs[0]] if len(g0.outputs) == 1 else None
    for i, g in enumerate(graphs):
        if len(g.inputs) != 1:
            raise UserError(f"{_where(models, i)} has {len(g.inputs)} inputs; an ensemble shares one input: give "
                            "models of one input")
        if len(g.outputs) != 1:
            raise UserError(f"{_where(models, i)} has {len(g.outputs)} outputs; an ensemble combines one output per "
                            "member: return one tensor (e.g. torch.cat the outputs in the model)")
        x = g.tensors[g.inputs[0]]
        layout, layout0 = g.io_layout.get(g.inputs[0]), g0.io_layout.get(g0.inputs[0])
        if x.shape != x0.shape or layout != layout0:
            raise UserError(f"{_where(models, i)} takes input {list(x.shape)} ({layout}) but member 0 takes "
                            f"{list(x0.shape)} ({layout0}); the members of an ensemble share one input: give models "
                            "of one input shape")
        out = g.tensors[g.outputs[0]]
        if combine in ("mean", "vote") and out.shape != out0.shape:
            raise UserError(f"{_where(models, i)} outputs {list(out.shape)} but member 0 outputs {list(out0.shape)}; "
                            f"--combine {combine} needs one output shape (the same classes): use --combine concat, "
                            "or give members with the same outputs")
        if combine == "concat" and (len(out.shape) != len(out0.shape) or out.shape[:-1] != out0.shape[:-1]):
            raise UserError(f"{_where(models, i)} outputs {list(out.shape)} and member 0 {list(out0.shape)}; "
                            "--combine concat joins the outputs along their last dimension, so the others must agree")
    if combine == "vote":
        from ..ops.combine import MAX_VOTERS

        if len(graphs) > MAX_VOTERS:
            raise UserError(f"--combine vote of {len(graphs)} members; at most {MAX_VOTERS} (the counts are int8). "
                            "Use --combine mean")
        if out0.size < 2 or sorted(out0.shape)[:-1] != [1] * (len(out0.shape) - 1):
            raise UserError(f"--combine vote needs one vector of class scores (at least 2) per member; member 0 "
                            f"outputs {list(out0.shape)}. Flatten it to the classes in the model, or use --combine "
                            "mean")
    if combine == "mean":
        from ..ops.combine import MAX_MEMBERS

        if len(graphs) > MAX_MEMBERS:
            raise UserError(f"--combine mean of {len(graphs)} members; at most {MAX_MEMBERS}")


def member_orders(sizes: list[int]) -> list[tuple[int, ...]]:
    """The member orders `reschedule` compares, given each member's own planned arena: every order for up to 3
    members; beyond, the given order, largest first, largest last, and each member first with the others largest
    first (n + 3 plans instead of n!)."""
    n = len(sizes)
    if n <= 3:
        return list(itertools.permutations(range(n)))
    desc = tuple(sorted(range(n), key=lambda i: -sizes[i]))
    orders = [tuple(range(n)), desc, tuple(reversed(desc))]
    orders += [(i, *(j for j in desc if j != i)) for i in range(n)]
    return list(dict.fromkeys(orders))


def _ancestors(g: Graph, tensor: str, producer: dict[str, Node]) -> set[int]:
    """ids of the nodes the value `tensor` needs."""
    todo, seen = [tensor], set()
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            todo.extend(node.inputs)
    return seen


def _in_order(g: Graph, members: list[set[int]], order: tuple[int, ...]) -> list[Node]:
    """The nodes with the members run one after another in `order` (each in its own topological order; a layer
    shared with an earlier member is not run again), then the combine."""
    out, done = [], set()
    for i in order:
        for node in g.nodes[:-1]:
            if id(node) in members[i] and id(node) not in done:
                out.append(node)
                done.add(id(node))
    return out + [g.nodes[-1]]


def _member_graph(g: Graph, member: set[int], output: str) -> Graph:
    """One member of the merged graph on its own (its nodes, its output as the graph output)."""
    return dataclasses.replace(g, nodes=[n for n in g.nodes if id(n) in member], outputs=[output])


def planned_arena(g: Graph) -> int:
    """The arena plan_memory gives a float graph's activations as int8 (before calibration: sizes, kernels,
    scratch and in-place overlaps are known from the shapes; int8 everywhere, as without --precision)."""
    from ..passes import plan_memory

    trial = copy.copy(g)
    trial.tensors = {name: t if t.is_const else dataclasses.replace(t, dtype="int8") for name, t in g.tensors.items()}
    trial.nodes = [dataclasses.replace(n, attrs=dict(n.attrs)) for n in g.nodes]
    return plan_memory.run(trial).arena_size


def reschedule(g: Graph) -> Graph:
    """Run the members in the order whose planned arena is the smallest (ties: the given order).

    While a member runs, the outputs of the members run before it wait for the combine, and a layer shared by
    several members (passes/cse.py) stays alive until the last of them has read it: the order decides the peak.
    Without shared layers the largest member runs first and the arena is its own plus, at most, the other
    members' outputs; with a shared prefix the members reading it run together. Orders: `member_orders`."""
    combine = g.nodes[-1]
    if combine.outputs != g.outputs:  # not a graph merge_graphs made (the combine last, the only output)
        return g
    producer = {t: n for n in g.nodes for t in n.outputs}
    members = [_ancestors(g, t, producer) for t in combine.inputs]
    best, best_arena = g.nodes, None
    try:
        sizes = [planned_arena(_member_graph(g, m, t)) for m, t in zip(members, combine.inputs)] \
            if len(members) > 3 else [0] * len(members)
        for order in member_orders(sizes):
            nodes = _in_order(g, members, order)
            arena = planned_arena(dataclasses.replace(g, nodes=nodes))
            if best_arena is None or arena < best_arena:
                best, best_arena = nodes, arena
    except Exception:  # noqa: BLE001 - only an estimate for the order; the compile plans the real graph
        return g
    g.nodes = best
    return g


def merge_graphs(graphs: list[Graph], combine: str) -> Graph:
    """One float graph: a shared input, every member's nodes in turn (names prefixed 'm<i>.', run in `schedule`
    order), the combine node reading the members' outputs in the given order."""
    g0 = graphs[0]
    inp = "input"
    x0 = g0.tensors[g0.inputs[0]]
    tensors = {inp: Tensor(inp, x0.shape, x0.dtype)}
    nodes: list[Node] = []
    outs = [f"m{i}.{g.outputs[0]}" if g.outputs[0] != g.inputs[0] else inp for i, g in enumerate(graphs)]
    for i, g in enumerate(graphs):
        name = {g.inputs[0]: inp}
        for t in g.tensors:
            name.setdefault(t, f"m{i}.{t}")
        for t, tensor in g.tensors.items():
            if t != g.inputs[0]:
                tensors[name[t]] = Tensor(name[t], tensor.shape, tensor.dtype, tensor.qformat, tensor.data)
        for n in g.nodes:
            nodes.append(Node(f"m{i}.{n.name}", n.op, [name[t] for t in n.inputs], [name[t] for t in n.outputs],
                              dict(n.attrs), n.source))
    out_shapes = [tensors[o].shape for o in outs]
    if combine == "concat":
        axis = len(out_shapes[0]) - 1
        shape = (*out_shapes[0][:-1], sum(s[-1] for s in out_shapes))
        attrs: dict = {"axis": axis}
    else:
        shape, attrs = out_shapes[0], {}
    op = {"mean": Op.MEAN, "vote": Op.VOTE, "concat": Op.CONCAT}[combine]
    out = f"ensemble.{combine}"
    tensors[out] = Tensor(out, tuple(shape))
    nodes.append(Node(out, op, outs, [out], attrs))
    layout = {inp: g0.io_layout[g0.inputs[0]]} if g0.inputs[0] in g0.io_layout else {}
    if g0.outputs[0] in g0.io_layout:
        layout[out] = g0.io_layout[g0.outputs[0]]
    source = f"ensemble ({combine}) of " + ", ".join(g.source or "model" for g in graphs)
    return Graph(tensors, nodes, [inp], [out], source=source, io_layout=layout)


def ensemble(models: list, example_input: Any = None, combine: str = "mean", calib_data: np.ndarray | None = None,
             *, share_prefix: bool = True, **options: Any):
    """Compile an ensemble of models as one graph -> codegen.api.CompileResult (predict, verify, report, files).

    models: two or more models codegen.compile takes, sharing one input shape (example_input: a tensor or a
        shape tuple, as codegen.compile's).
    combine: "mean" (outputs averaged in the integer domain, one rounding), "concat" (side by side along the
        last dimension) or "vote" (per-class vote counts, s8.f1: 2 * votes + 1 on the decided class).
    calib_data: float samples in PyTorch layout for every member's activation ranges (as codegen.compile).
    share_prefix: compute layers identical in weights and input once (codegen/passes/cse.py).
    options: codegen.compile's keyword options (prefix, out_dir, calibration, precision, max_flash, ...).
    The result's report carries "ensemble": members, combine, layers and weight bytes before and after sharing.
    """
    from ..api import compile as qcompile
    from ..passes import cse

    models = list(models) if not isinstance(models, (str, bytes)) else [models]
    if len(models) < 2:
        raise UserError(f"an ensemble needs at least 2 models, got {len(models)}; compile one model with "
                        "qgen compile")
    if combine not in COMBINES:
        raise UserError(f"combine '{combine}' is not one of {', '.join(COMBINES)}")
    if options.get("stream"):
        raise UserError("an ensemble runs whole inputs (<prefix>_run); compile it without stream")
    graphs = member_graphs(models, example_input)
    _check_members(models, graphs, combine)
    graph = merge_graphs(graphs, combine)
    stats: dict[str, Any] = {}

    def share(g: Graph) -> Graph:
        before = _size(g)
        g = reschedule(cse.run(g) if share_prefix else g)
        after = _size(g)
        stats.update(layers_before=before[0], layers=after[0], weight_values_before=before[1],
                     weight_values=after[1])
        return g

    extra = [("share_prefix", share), *(options.pop("extra_passes", None) or [])]
    result = qcompile(graph, None, calib_data, extra_passes=extra, **options)
    result.report["ensemble"] = {"members": len(models), "combine": combine, **stats}
    return result


def _size(g: Graph) -> tuple[int, int]:
    """(layers with code, constant values) of a float graph."""
    consts = {t for n in g.nodes for t in n.inputs if g.tensors[t].is_const}
    return (sum(1 for n in g.nodes if n.op is not Op.RESHAPE), sum(g.tensors[t].size for t in consts))


def compare_with_bundle(models: list, example_input: Any = None, combine: str = "mean",
                        calib_data: np.ndarray | None = None, **options: Any) -> dict[str, Any]:
    """Arena and flash (constant data) of the ensemble graph vs the same members compiled one by one and put in
    a `qgen bundle` (one shared arena of the largest member's size, every member's weights)."""
    from ..api import compile as qcompile
    from ..bundle import bundle

    fused = ensemble(models, example_input, combine, calib_data, **options)
    members = [qcompile(m, example_input, calib_data, prefix=f"m{i}") for i, m in enumerate(models)]
    bundled = bundle(members)
    out_bytes = sum(m.graph.tensors[o].nbytes for m in members for o in m.graph.outputs)
    return {"combine": combine, "members": len(models),
            "member_arena": [m.report["arena_bytes"] for m in members],
            "member_flash": [m.report["flash_bytes"] for m in members],
            "member_outputs": out_bytes,
            "bundle_arena": bundled.arena_size, "bundle_flash": sum(m.report["flash_bytes"] for m in members),
            "ensemble_arena": fused.report["arena_bytes"], "ensemble_flash": fused.report["flash_bytes"],
            "ensemble_layers": fused.report["ensemble"]["layers"] - 1,
            "member_layers": fused.report["ensemble"]["layers_before"] - 1}


def bundle_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: one row per (case name, compare_with_bundle result)."""
    lines = ["| case | members | bundle arena B | ensemble arena B | bound (largest + outputs) B | bundle flash B | "
             "ensemble flash B | layers (members -> ensemble, without the combine) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        bound = max(r["member_arena"]) + r["member_outputs"]
        lines.append(f"| {name} ({r['combine']}) | {r['members']} | {r['bundle_arena']:,} | {r['ensemble_arena']:,} | "
                     f"{bound:,} | {r['bundle_flash']:,} | {r['ensemble_flash']:,} | "
                     f"{r['member_layers']} -> {r['ensemble_layers']} |")
    return "\n".join(lines) + "\n"

