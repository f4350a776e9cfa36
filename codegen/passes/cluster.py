"""Weight sharing: k-means each layer's float weights to 2^bits centroids (float IR).

Each conv2d / depthwise / linear layer's weights are replaced by their nearest centroid (1-D
k-means, Lloyd's algorithm from quantile seeds: deterministic). Exact zeros (a pruned layer) stay
zero: zero is kept as one of the 2^bits codebook values and the other weights share the rest.

`attrs["weight_per_tensor"] = True` makes quantize use one Q-format for the whole tensor, so the
centroids become at most 2^bits distinct int8 values; `attrs["weight_format"] = "cluster"` makes the
emitter store packed bits-wide indices plus an int8 codebook (codegen/emit/weight_formats.py) and run
the decoding kernels. The emitter encodes the int8 weights it is given, so the C is exact even in
the rare case that quantize must give channels different formats (then more codebook bits are used).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Graph
from ..ops import Trait, with_trait
from .prune_magnitude import mark

CLUSTERABLE = with_trait(Trait.WEIGHTED)
MIN_BITS, MAX_BITS = 1, 8


def check_bits(bits: int) -> int:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= int(bits) <= MAX_BITS:
        raise UserError(f"cluster bits {bits!r} is impossible: int8 weights allow {MIN_BITS}..{MAX_BITS} bits "
                        f"per weight (2..256 shared values); 2..6 are the useful settings")
    return int(bits)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 50) -> np.ndarray:
    """Sorted centroids (at most k, distinct) of a 1-D sample; deterministic."""
    v = np.sort(np.asarray(values, np.float64).reshape(-1))
    if v.size == 0:
        return np.zeros(0)
    centroids = np.unique(np.quantile(v, (np.arange(k) + 0.5) / k))
    for _ in range(iters):
        edges = (centroids[1:] + centroids[:-1]) / 2
        label = np.searchsorted(edges, v)
        sums = np.bincount(label, weights=v, minlength=len(centroids))
        counts = np.bincount(label, minlength=len(centroids))
        new = np.unique(np.where(counts > 0, sums / np.maximum(counts, 1), centroids)[counts > 0])
        if new.shape == centroids.shape and np.allclose(new, centroids, rtol=0, atol=1e-12):
            break
        centroids = new
    return centroids


def quantize_to_centroids(w: np.ndarray, bits: int) -> np.ndarray:
    """w with every weight replaced by its nearest of <= 2^bits shared values (zeros stay zero)."""
    k = 1 << bits
    zeros = w == 0
    shared = w[~zeros]
    if zeros.any():
        k -= 1  # zero is one of the codebook values
    if shared.size == 0 or k == 0:
        return np.zeros_like(w)
    centroids = kmeans_1d(shared, k)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out = centroids[np.searchsorted(edges, w.reshape(-1))].reshape(w.shape)
    return np.where(zeros, 0.0, out)


def run(graph: Graph, bits: int, layers: list[str] | None = None) -> Graph:
    bits = check_bits(bits)
    nodes = [n for n in graph.nodes if n.op in CLUSTERABLE and (layers is None or n.name in layers)]
    if layers is not None and len(nodes) != len(set(layers)):
        known = [n.name for n in graph.nodes if n.op in CLUSTERABLE]
        raise UserError(f"cannot cluster {sorted(set(layers) - {n.name for n in nodes})}: not conv2d/depthwise/"
                        f"linear layers; clusterable layers: {known}")
    if not nodes:
        raise UserError("the model has no conv2d, depthwise or linear layer to cluster")
    for n in nodes:
        w_t = graph.tensors[n.inputs[1]]
        w_t.data = quantize_to_centroids(w_t.data, bits)
        n.attrs["weight_per_tensor"] = True
        n.attrs["cluster_bits"] = bits
        mark(n, "cluster")
    return graph
