"""Common subexpressions computed once: a node identical to an earlier one is removed and its readers read the
earlier node's outputs.

Identical means: the same op, the same attributes, the same activation inputs (by name, after earlier merges)
and constants of equal shape, type, format and bytes (weights are compared by value, whatever their names),
and outputs of the same shape, type and Q format. Then both nodes compute the same values for every input,
so the merge changes no value anywhere. An ensemble (codegen/fuse/ensemble_graph.py) runs it on the merged float
graph of its members: members that share their leading layers (fine-tuned from one backbone, frozen features)
compute them once, and the chain stops at the first layer whose weights differ.

Where it runs: on the float graph after folding and fusion (fold_bn, fuse_activation: weights compared as the
kernels will use them) and before calibration. Merged tensors hold identical values, so calibration gives them
the range each copy would have had; quantising after the merge is therefore as sound as before it and the
formats agree by construction. Run after quantisation it is sound too (the output formats are part of the
key: two layers are identical only if their formats are), but finds less (formats chosen per copy may differ).
Ops that keep state between calls (Trait.HOLDS_STATE) are never merged.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..ir import Graph
from ..ops import Trait, has


def _value_key(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return ("ndarray", value.shape, str(value.dtype), digest)
    if isinstance(value, dict):
        return ("dict", tuple((k, _value_key(v)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    if isinstance(value, (np.integer, np.floating)):
        return repr(value.item())
    return repr(value)


def _tensor_key(graph: Graph, name: str, rename: dict[str, str]) -> Any:
    t = graph.tensors[name]
    if not t.is_const:
        return ("act", rename.get(name, name))
    return ("const", t.shape, t.dtype, str(t.qformat), _value_key(np.asarray(t.data)))


def _node_key(graph: Graph, node, rename: dict[str, str]) -> Any:
    outs = tuple((graph.tensors[o].shape, graph.tensors[o].dtype, str(graph.tensors[o].qformat)) for o in node.outputs)
    return (node.op.value, tuple(_tensor_key(graph, t, rename) for t in node.inputs), _value_key(node.attrs), outs)


def run(graph: Graph) -> Graph:
    seen: dict[Any, list[str]] = {}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [rename.get(t, t) for t in node.inputs]
        key = None if has(node.op, Trait.HOLDS_STATE) else _node_key(graph, node, rename)
        if key is not None and key in seen:
            for old, new in zip(node.outputs, seen[key]):
                rename[old] = new
            continue
        if key is not None:
            seen[key] = list(node.outputs)
        kept.append(node)
    if not rename:
        return graph
    graph.nodes = kept
    for old, new in rename.items():
        if old in graph.outputs and new not in graph.io_layout and old in graph.io_layout:
            graph.io_layout[new] = graph.io_layout[old]
    graph.outputs = [rename.get(t, t) for t in graph.outputs]
    used = set(graph.inputs) | set(graph.outputs) | {t for n in graph.nodes for t in n.inputs + n.outputs}
    for name in [t for t in graph.tensors if t not in used]:
        del graph.tensors[name]
        graph.ranges.pop(name, None)
        graph.io_layout.pop(name, None)
    return graph
