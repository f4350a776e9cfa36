"""Fuse ReLU / ReLU6 / clamp into the op that produces its input (conv, depthwise, linear, add).

The fused op clamps during requantisation (act = (lo, hi) in float; quantize turns it into integer
bounds), which costs nothing in the kernel. Fused only when the producer has this single consumer.
"""
from __future__ import annotations

from ..ir import Graph, Op
from ..ops import Trait, with_trait

FUSABLE = with_trait(Trait.FUSES_ACT)


def run(graph: Graph) -> Graph:
    for relu in [n for n in graph.nodes if n.op is Op.RELU]:
        src = relu.inputs[0]
        producer = graph.producer(src)
        if producer is None or producer.op not in FUSABLE or len(graph.consumers(src)) != 1 or src in graph.outputs:
            continue
        lo, hi = producer.attrs.get("act", (None, None))
        new_lo = relu.attrs["lo"] if lo is None else max(lo, relu.attrs["lo"]) if relu.attrs["lo"] is not None else lo
        new_hi = relu.attrs["hi"] if hi is None else min(hi, relu.attrs["hi"]) if relu.attrs["hi"] is not None else hi
        producer.attrs["act"] = (new_lo, new_hi)
        producer.outputs[0] = relu.outputs[0]
        graph.nodes.remove(relu)
        del graph.tensors[src]
    return graph
