"""Low-rank factorisation (SVD) of conv2d and linear layers (float IR).

A layer's weight as a matrix W (Cout x K), K = KH*KW*Cin (conv) or In (linear), is approximated by
its rank-r truncated SVD  W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)  and the layer becomes two:
  conv:   conv (r filters, KH x KW, same stride/padding, no bias)  ->  1x1 conv (Cout, with the bias
          and the fused activation)
  linear: linear (In -> r, no bias)  ->  linear (r -> Out, bias, activation)
Both cost r * (K + Cout) weights and MACs per output pixel instead of Cout * K, so a layer is only
replaced when that is smaller. The square root of S goes to each factor, keeping their ranges (and
int8 formats) balanced.

Dilated convs factorise as well (the first conv keeps the dilation). Grouped convs (groups > 1) are
skipped: their weight is block-diagonal over groups, which one SVD would break; naming one is an error.

Rank: explicit (`rank=r`, capped at min(Cout, K)), or the smallest r whose singular values keep
`energy` of sum(S^2) (e.g. 0.95).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Graph, Node, Op, Tensor
from ..ops import Trait, with_trait

FACTORABLE = with_trait(Trait.MATMUL)


def check(energy: float | None, rank: int | None) -> None:
    if (energy is None) == (rank is None):
        raise UserError("low-rank factorisation needs exactly one of: an energy threshold (0 < energy <= 1, "
                        "e.g. 0.95) or an explicit rank (>= 1)")
    if rank is not None and (not isinstance(rank, (int, np.integer)) or rank < 1):
        raise UserError(f"rank {rank!r} is impossible: a factorised layer needs rank >= 1")
    if energy is not None and not (isinstance(energy, (int, float)) and 0.0 < energy <= 1.0):
        raise UserError(f"energy {energy!r} is impossible: give the fraction of sum(S^2) to keep, 0 < energy <= 1")


def choose_rank(s: np.ndarray, energy: float | None, rank: int | None) -> int:
    if rank is not None:
        return int(min(rank, len(s)))
    total = float(np.sum(s**2))
    if total == 0.0:
        return 1
    kept = np.cumsum(s**2) / total
    return int(min(len(s), np.searchsorted(kept, energy - 1e-12) + 1))


def factor_cost(cout: int, k: int, r: int) -> tuple[int, int]:
    """(weights of the original layer, weights of the factorised pair); MACs scale the same way."""
    return cout * k, r * (k + cout)


def run(graph: Graph, energy: float | None = None, rank: int | None = None, layers: list[str] | None = None) -> Graph:
    check(energy, rank)
    nodes = [n for n in graph.nodes if n.op in FACTORABLE and (layers is None or n.name in layers)]
    if layers is not None and len(nodes) != len(set(layers)):
        known = [n.name for n in graph.nodes if n.op in FACTORABLE]
        raise UserError(f"cannot factorise {sorted(set(layers) - {n.name for n in nodes})}: not conv2d/linear "
                        f"layers; candidates: {known}")
    grouped = [n.name for n in nodes if n.attrs.get("groups", 1) != 1]
    if layers is not None and grouped:
        raise UserError(f"cannot factorise {grouped}: grouped convolutions (groups > 1) are block-diagonal "
                        "matrices, which one SVD does not respect; leave them out of the layer list")
    for n in nodes:
        if n.attrs.get("groups", 1) == 1:  # grouped convs are skipped (see above)
            _factorise(graph, n, energy, rank)
    return graph


def _factorise(graph: Graph, n: Node, energy: float | None, rank: int | None) -> None:
    w = graph.tensors[n.inputs[1]].data
    cout = w.shape[0]
    matrix = w.reshape(cout, -1)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    r = choose_rank(s, energy, rank)
    before, after = factor_cost(cout, matrix.shape[1], r)
    if after >= before:
        return  # no saving at this rank: keep the layer as it is
    root = np.sqrt(s[:r])
    first_w = (root[:, None] * vt[:r]).reshape((r,) + w.shape[1:])
    second_w = u[:, :r] * root[None, :]
    mid_name = graph.fresh_name(f"{n.outputs[0]}_rank{r}")
    out_shape = graph.tensors[n.outputs[0]].shape
    graph.tensors[mid_name] = Tensor(mid_name, tuple(out_shape[:-1]) + (r,))
    w1, b1, w2 = (graph.fresh_name(f"{n.inputs[1]}_{tag}") for tag in ("lr_a", "lr_a_bias", "lr_b"))
    if n.op is Op.CONV2D:
        second_w = second_w.reshape(cout, 1, 1, r)
    graph.tensors[w1] = Tensor(w1, first_w.shape, data=first_w)
    graph.tensors[b1] = Tensor(b1, (r,), data=np.zeros(r))
    first_attrs = {k: v for k, v in n.attrs.items() if k in ("stride", "padding", "dilation")}
    first = Node(f"{n.name}.rank{r}_a", n.op, [n.inputs[0], w1, b1], [mid_name], first_attrs, n.source)
    second_attrs = {k: v for k, v in n.attrs.items() if k not in ("padding", "stride", "dilation")}
    if n.op is Op.CONV2D:
        second_attrs.update(stride=(1, 1), padding=(0, 0, 0, 0))
    old_w = n.inputs[1]
    graph.tensors[w2] = Tensor(w2, second_w.shape, data=second_w)
    second = Node(f"{n.name}.rank{r}_b", n.op, [mid_name, w2, n.inputs[2]], list(n.outputs), second_attrs, n.source)
    at = graph.nodes.index(n)
    graph.nodes[at:at + 1] = [first, second]
    if not any(old_w in m.inputs for m in graph.nodes):
        del graph.tensors[old_w]
