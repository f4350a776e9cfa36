"""passes/cse.py: a node identical to an earlier one (op, attrs, inputs, constants by value, output formats) is
removed and its readers read the earlier one; nothing else is merged."""
from __future__ import annotations

import copy

import numpy as np

from codegen.fixed import QFormat
from codegen.ir import Graph, Node, Op, Tensor, verify
from codegen.passes import cse


def _linear_graph(weights: dict[str, tuple[str, np.ndarray]]) -> Graph:
    """A float graph: x (4,) -> linear layers {name: (input, weight)}, every layer a graph output."""
    g = Graph({"x": Tensor("x", (4,))}, [], ["x"], [])
    for name, (src, w) in weights.items():
        g.tensors[f"{name}_w"] = Tensor(f"{name}_w", w.shape, data=w.astype(np.float32))
        g.tensors[f"{name}_b"] = Tensor(f"{name}_b", (w.shape[0],), data=np.zeros(w.shape[0], np.float32))
        g.tensors[name] = Tensor(name, (w.shape[0],))
        g.nodes.append(Node(name, Op.LINEAR, [src, f"{name}_w", f"{name}_b"], [name]))
        g.outputs.append(name)
    return g


def test_cse_merges_equal_weights_and_inputs_only():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    w1_changed = w1.copy()
    w1_changed[2, 3] += 1e-3
    g = _linear_graph({"a": ("x", w1), "b": ("x", w1.copy()), "c": ("x", w1_changed),  # b == a; c differs
                       "a2": ("a", w2), "b2": ("b", w2.copy()),  # equal once a and b are one
                       "c2": ("c", w2.copy())})  # reads c: not equal to a2
    out = cse.run(copy.deepcopy(g))
    verify(out)
    assert [n.name for n in out.nodes] == ["a", "c", "a2", "c2"]
    assert out.outputs == ["a", "a", "c", "a2", "a2", "c2"]
    assert "b_w" not in out.tensors and "b2" not in out.tensors


def test_cse_keeps_layers_whose_formats_differ():
    """After quantisation two layers are identical only if their formats are too."""
    g = _linear_graph({"a": ("x", np.eye(4)), "b": ("x", np.eye(4))})
    for t in g.tensors.values():
        t.qformat = QFormat(8, 4)
    g.tensors["b"].qformat = QFormat(8, 5)
    assert len(cse.run(copy.deepcopy(g)).nodes) == 2
    g.tensors["b"].qformat = QFormat(8, 4)
    assert len(cse.run(copy.deepcopy(g)).nodes) == 1
