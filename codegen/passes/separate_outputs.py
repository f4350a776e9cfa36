"""Give every graph output its own storage.

`return y, y` or `return y, y.flatten(1)` name one buffer twice, but the C API writes the outputs
side by side into the caller's `out`. A copy (a clamp over the full int8 range) is inserted for each
output that repeats an earlier one or aliases it through reshapes.
"""
from __future__ import annotations

from ..ir import Graph, Node, Op, Tensor


def _root(graph: Graph, name: str) -> str:
    """Follow reshapes back to the tensor that owns the storage."""
    producer = graph.producer(name)
    while producer is not None and producer.op is Op.RESHAPE:
        name = producer.inputs[0]
        producer = graph.producer(name)
    return name


def run(graph: Graph) -> Graph:
    seen: set[str] = set()
    outputs = []
    for name in graph.outputs:
        root = _root(graph, name)
        if root in seen or name in graph.inputs:
            copy = graph.fresh_name(f"{name}_copy")
            src = graph.tensors[name]
            graph.tensors[copy] = Tensor(copy, src.shape, src.dtype, src.qformat)
            graph.nodes.append(Node(f"{name}.copy", Op.RELU, [name], [copy], {"lo": None, "hi": None}))
            if name in graph.io_layout:
                graph.io_layout[copy] = graph.io_layout[name]
            name, root = copy, copy
        seen.add(root)
        outputs.append(name)
    graph.outputs = outputs
    return graph
