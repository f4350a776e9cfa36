"""Unstructured pruning: zero the least important weights of conv2d / linear layers (float IR).

Importance is |w| (magnitude), or any per-weight score the caller gives (compress.gradient_importance
computes |w * dL/dw| on training data). `scope="layer"` prunes each layer to the target sparsity;
`scope="global"` ranks all weights of all pruned layers together (layers with many small weights
lose more). Exactly floor(sparsity * n) weights are zeroed (ties broken by position), and a weight
that is already zero counts as pruned. Without an explicit `layers` list, a layer is only pruned when
its sparse storage at this sparsity is smaller than dense (a conv with one input channel, say, would
need a bitmap byte per tap and gain nothing): each pruned weight must pay off in flash.

The pruned layers are marked `attrs["weight_format"] = "sparse"`: the C emitter then stores them in
the smallest of dense / bitmap / index formats (codegen/emit/weight_formats.py), so the zeros shrink
flash and are skipped by the kernels. Depthwise layers are left alone (few weights, each one matters).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Graph, Node
from ..ops import Trait, with_trait

PRUNABLE = with_trait(Trait.MATMUL)


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise UserError(f"sparsity {sparsity!r} is impossible: give the fraction of weights to remove, "
                        "0 <= sparsity < 1 (e.g. 0.8 keeps one weight in five)")
    return float(sparsity)


def pays_off(graph: Graph, node: Node, sparsity: float) -> bool:
    from ..weight_storage import sparse_bytes

    w = graph.tensors[node.inputs[1]]
    return sparse_bytes(node.op, w.shape, w.size - int(np.floor(sparsity * w.size))) < w.size


def prunable_nodes(graph: Graph, layers: list[str] | None = None, sparsity: float | None = None) -> list[Node]:
    nodes = [n for n in graph.nodes if n.op in PRUNABLE]
    if layers is not None:
        unknown = sorted(set(layers) - {n.name for n in nodes})
        if unknown:
            raise UserError(f"cannot prune {unknown}: not conv2d/linear layers of the model; "
                            f"prunable layers: {[n.name for n in nodes]}")
        nodes = [n for n in nodes if n.name in layers]
    elif sparsity is not None:
        nodes = [n for n in nodes if pays_off(graph, n, sparsity)]
    if not nodes:
        raise UserError("the model has no conv2d or linear layer whose storage would shrink by pruning "
                        f"{sparsity if sparsity is not None else ''}; name the layers to prune explicitly")
    return nodes


def mark(node: Node, fmt: str) -> None:
    """Request a compressed format; a layer asked for two (sparse and cluster) gets the smaller."""
    current = node.attrs.get("weight_format", "dense")
    node.attrs["weight_format"] = fmt if current in ("dense", fmt) else "auto"


def _prune_lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Boolean keep-mask with the `count` lowest scores removed (stable: earlier positions go first)."""
    keep = np.ones(scores.size, bool)
    keep[np.argsort(scores.reshape(-1), kind="stable")[:count]] = False
    return keep.reshape(scores.shape)


def run(graph: Graph, sparsity: float, scope: str = "layer", importance: dict[str, np.ndarray] | None = None,
        layers: list[str] | None = None) -> Graph:
    sparsity = check_sparsity(sparsity)
    if scope not in ("layer", "global"):
        raise UserError(f"pruning scope '{scope}' is unknown; use 'layer' or 'global'")
    if sparsity == 0.0:
        return graph
    nodes = prunable_nodes(graph, layers, sparsity)
    scores = {}
    for n in nodes:
        w = graph.tensors[n.inputs[1]].data
        s = np.abs(w) if importance is None or n.name not in importance else np.abs(importance[n.name])
        if s.shape != w.shape:
            raise UserError(f"{n.where()}: importance has shape {s.shape}, weights {w.shape}")
        scores[n.name] = np.where(w == 0, -1.0, s)  # zeros are pruned first: they cost nothing to remove
    if scope == "global":
        flat = np.concatenate([scores[n.name].reshape(-1) for n in nodes])
        keep = _prune_lowest(flat, int(np.floor(sparsity * flat.size)))
        start = 0
        for n in nodes:
            w_t = graph.tensors[n.inputs[1]]
            w_t.data = np.where(keep[start:start + w_t.size].reshape(w_t.shape), w_t.data, 0.0)
            start += w_t.size
    else:
        for n in nodes:
            w_t = graph.tensors[n.inputs[1]]
            w_t.data = np.where(_prune_lowest(scores[n.name], int(np.floor(sparsity * w_t.size))), w_t.data, 0.0)
    for n in nodes:
        mark(n, "sparse")
    return graph
