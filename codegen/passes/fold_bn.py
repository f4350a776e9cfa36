"""Fold BatchNorm into the conv/linear that produces its input (when that is its only consumer).

y = (W x + b) * s + t  ==  (W * s) x + (b * s + t). A BatchNorm with no foldable producer (after a pool,
an add, a ReLU, or first layer) is lowered instead: on an image or a sequence to a depthwise 1x1
convolution (the same arithmetic, trained as a weighted layer by QAT), on a vector to a `channel_affine`
(x * scale[c] + offset[c], codegen/ops/norm.py).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op, Tensor
from ..ops import Trait, with_trait

FOLDABLE = with_trait(Trait.WEIGHTED)


def run(graph: Graph) -> Graph:
    for bn in [n for n in graph.nodes if n.op is Op.BATCH_NORM]:
        scale = graph.tensors[bn.inputs[1]].data
        shift = graph.tensors[bn.inputs[2]].data
        producer = graph.producer(bn.inputs[0])
        if producer is not None and producer.op in FOLDABLE and len(graph.consumers(bn.inputs[0])) == 1 \
                and bn.inputs[0] not in graph.outputs:
            w, b = graph.tensors[producer.inputs[1]], graph.tensors[producer.inputs[2]]
            w.data = w.data * scale.reshape((-1,) + (1,) * (w.data.ndim - 1))
            b.data = b.data * scale + shift
            _bypass(graph, bn, producer)
        elif len(graph.tensors[bn.inputs[0]].shape) == 3:
            _to_depthwise(graph, bn, scale, shift)
        else:
            bn.op = Op.CHANNEL_AFFINE  # same inputs (x, scale, shift): quantize.py gives it integer formats
        for name in bn.inputs[1:]:
            if not any(name in n.inputs for n in graph.nodes):
                del graph.tensors[name]
    return graph


def _bypass(graph: Graph, bn: Node, producer: Node) -> None:
    """Make the producer write the BN's output tensor; drop the BN node and the old tensor."""
    old = producer.outputs[0]
    producer.outputs[0] = bn.outputs[0]
    graph.nodes.remove(bn)
    del graph.tensors[old]


def _to_depthwise(graph: Graph, bn: Node, scale: np.ndarray, shift: np.ndarray) -> None:
    c = scale.shape[0]
    w = graph.fresh_name(f"{bn.outputs[0]}_w")
    graph.tensors[w] = Tensor(w, (c, 1, 1, 1), data=scale.reshape(c, 1, 1, 1).astype(np.float64))
    b = graph.fresh_name(f"{bn.outputs[0]}_b")
    graph.tensors[b] = Tensor(b, (c,), data=shift.astype(np.float64))
    bn.op = Op.DEPTHWISE_CONV2D
    bn.inputs = [bn.inputs[0], w, b]
    bn.attrs = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
