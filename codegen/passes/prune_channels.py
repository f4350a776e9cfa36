"""Structured pruning: remove whole output channels of conv2d / linear layers, and the matching input
channels of everything downstream, so the model physically shrinks (float IR, after fold_bn and
fuse_activation: BatchNorm is already folded into its conv, ReLU into attrs["act"]).

Channel spaces. Channels flow from a producer (conv2d / linear output) through channel-wise ops
(fused or standalone ReLU, pooling, depthwise with multiplier 1, zero padding, LUT) to consumers
(conv2d input channels, linear input features; through a flatten (H, W, C) -> (H*W*C,) a linear's
columns are in HWC order, so channel c is every column s*C + c). A residual add joins the spaces of
its two inputs and its output into one: those channels are coupled and pruned together, with the
importance summed over all producers of the space. A space is frozen (left whole) when it reaches the
graph input or output, a depthwise with multiplier > 1, a grouped conv (groups > 1: removing a channel
would break the equal group sizes; both its input and its output space stay whole), or an op this pass
does not model. Dilation changes nothing here.

Importance of channel c: the L1 or L2 norm of every producer's filter c (each producer normalised by
its mean, so coupled layers count alike), or given scores (e.g. BatchNorm |gamma| from
compress.bn_importance). Each prunable space keeps max(1, round(C * (1 - ratio))) channels, in order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..ir import Graph, Op
from ..ops import Trait, with_trait

PRODUCERS = with_trait(Trait.MATMUL)
PASSTHROUGH = with_trait(Trait.CHANNELWISE)
CRITERIA = ("l1", "l2", "scores")


@dataclass
class Space:
    tensors: list[str] = field(default_factory=list)  # activations carrying these channels (last axis)
    producers: list = field(default_factory=list)  # conv2d / linear nodes: weight rows, bias
    depthwise: list = field(default_factory=list)  # multiplier-1 depthwise nodes: rows and bias follow
    consumers: list = field(default_factory=list)  # conv2d / linear nodes: weight input axis
    flattens: list = field(default_factory=list)  # (reshape node, spatial size S): linear columns s*C + c
    frozen: bool = False


class _Spaces:
    """Union-find over activation tensors: one root per channel space."""

    def __init__(self, graph: Graph):
        self.parent = {t: t for t, v in graph.tensors.items() if not v.is_const}
        self.frozen: set[str] = set()

    def find(self, t: str) -> str:
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.frozen:
                self.frozen.add(ra)

    def freeze(self, t: str) -> None:
        self.frozen.add(self.find(t))

    def is_frozen(self, t: str) -> bool:
        return self.find(t) in self.frozen


def channel_spaces(graph: Graph) -> list[Space]:
    """The prunable channel spaces of the graph (frozen ones omitted), in graph order."""
    uf = _Spaces(graph)
    flat_source: dict[str, tuple[str, object, int]] = {}  # flattened tensor -> (source, reshape node, S)
    t = graph.tensors
    for name in graph.inputs + graph.outputs:
        uf.freeze(name)
    for n in graph.nodes:
        acts = [i for i in n.inputs if not t[i].is_const]
        out = n.outputs[0]
        if n.op in PRODUCERS and n.attrs.get("groups", 1) != 1:
            for name in acts + list(n.outputs):  # grouped conv: its channel groups must stay equal
                uf.freeze(name)
            continue
        if n.op in PRODUCERS:
            continue
        if n.op in PASSTHROUGH or (n.op is Op.ADD and t[acts[0]].shape[-1] == t[acts[1]].shape[-1]):
            # (an add broadcasting over the channels, (H, W, 1) + (H, W, C), has no channel space: frozen below)
            for a in acts:
                uf.union(a, out)
        elif n.op is Op.DEPTHWISE_CONV2D and t[n.inputs[1]].shape[0] == t[acts[0]].shape[-1] or n.op is Op.RESHAPE and len(t[acts[0]].shape) == 1 and len(t[out].shape) == 1:
            uf.union(acts[0], out)
        elif n.op is Op.RESHAPE and len(t[acts[0]].shape) == 3 and len(t[out].shape) == 1:
            h, w, _ = t[acts[0]].shape
            flat_source[out] = (acts[0], n, h * w)
        else:
            for name in acts + list(n.outputs):
                uf.freeze(name)
    # a flattened tensor may only feed linears (columns) and must not be a graph output
    for flat, (src, _, _) in flat_source.items():
        users = graph.consumers(flat)
        if flat in graph.outputs or any(u.op is not Op.LINEAR for u in users):
            uf.freeze(src)
        uf.freeze(flat)  # the flat tensor is not a space of its own
    spaces: dict[str, Space] = {}

    def space_of(name: str) -> Space:
        return spaces.setdefault(uf.find(name), Space())

    for name, tensor in t.items():
        if not tensor.is_const and name not in flat_source:
            space_of(name).tensors.append(name)
    for n in graph.nodes:
        acts = [i for i in n.inputs if not t[i].is_const]
        if n.op in PRODUCERS:
            space_of(n.outputs[0]).producers.append(n)
        if n.op is Op.DEPTHWISE_CONV2D and not uf.is_frozen(acts[0]):
            space_of(acts[0]).depthwise.append(n)
        if n.op in PRODUCERS:
            if acts[0] in flat_source:
                src, reshape, spatial = flat_source[acts[0]]
                space_of(src).consumers.append(n)
                if (reshape, spatial) not in space_of(src).flattens:
                    space_of(src).flattens.append((reshape, spatial))
            else:
                space_of(acts[0]).consumers.append(n)
    for root, space in spaces.items():
        space.frozen = root in uf.frozen or not space.producers
    return [s for s in spaces.values() if not s.frozen]


def _filter_norms(graph: Graph, node, criterion: str) -> np.ndarray:
    w = graph.tensors[node.inputs[1]].data.reshape(graph.tensors[node.inputs[1]].shape[0], -1)
    return np.abs(w).sum(axis=1) if criterion == "l1" else np.sqrt(np.square(w).sum(axis=1))


def importance(graph: Graph, space: Space, criterion: str, scores: dict[str, np.ndarray] | None) -> np.ndarray:
    total = 0.0
    for p in space.producers:
        if criterion == "scores" and scores is not None and p.name in scores:
            s = np.abs(np.asarray(scores[p.name], np.float64))
        else:
            s = _filter_norms(graph, p, "l1" if criterion == "scores" else criterion)
        total = total + s / max(float(np.mean(s)), 1e-30)
    return total


def run(graph: Graph, ratio: float, criterion: str = "l1", scores: dict[str, np.ndarray] | None = None) -> Graph:
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise UserError(f"channel pruning ratio {ratio!r} is impossible: give the fraction of channels to remove, "
                        "0 <= ratio < 1 (e.g. 0.5 halves every prunable layer)")
    if criterion not in CRITERIA:
        raise UserError(f"channel importance '{criterion}' is unknown; use one of {', '.join(CRITERIA)}")
    if criterion == "scores" and not scores:
        raise UserError("channel importance 'scores' needs per-layer scores (e.g. compress.bn_importance(model))")
    spaces = channel_spaces(graph)
    if not spaces:
        raise UserError("no output channels can be pruned in this model: every conv2d/linear output reaches "
                        "the model output or an op whose channels cannot change (grouped convs keep theirs)")
    for space in spaces:
        channels = graph.tensors[space.producers[0].outputs[0]].shape[-1]
        keep_n = max(1, round(channels * (1.0 - ratio)))
        if keep_n == channels:
            continue
        score = importance(graph, space, criterion, scores)
        keep = np.sort(np.argsort(-score, kind="stable")[:keep_n])
        _apply(graph, space, keep, channels)
    return graph


def _take(graph: Graph, name: str, index: np.ndarray, axis: int) -> None:
    tensor = graph.tensors[name]
    tensor.data = np.take(tensor.data, index, axis=axis)
    tensor.shape = tuple(tensor.data.shape)


def _apply(graph: Graph, space: Space, keep: np.ndarray, channels: int) -> None:
    t = graph.tensors
    for name in space.tensors:
        t[name].shape = tuple(t[name].shape[:-1]) + (len(keep),)
    for n in space.producers + space.depthwise:
        _take(graph, n.inputs[1], keep, 0)
        _take(graph, n.inputs[2], keep, 0)
    columns = {}
    for reshape, spatial in space.flattens:
        cols = (np.arange(spatial)[:, None] * channels + keep[None, :]).reshape(-1)
        columns[reshape.outputs[0]] = cols
        reshape.attrs["shape"] = (spatial * len(keep),)
        t[reshape.outputs[0]].shape = (spatial * len(keep),)
    for n in space.consumers:
        x = n.inputs[0]
        if x in columns:
            _take(graph, n.inputs[1], columns[x], 1)
        else:
            _take(graph, n.inputs[1], keep, 3 if n.op is Op.CONV2D else 1)
