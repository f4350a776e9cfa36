"""ONNX has no recurrent cell op: torch.onnx writes nn.LSTMCell / nn.GRUCell / nn.RNNCell called in a Python loop as
each step's own Gather (x[:, t]), Gemm, Split, Sigmoid, Tanh, Mul and Add, for either exporter. qgen imports
recurrent layers as ONNX LSTM / GRU / RNN nodes (onnx_recurrent.py); such a graph is refused at its first Gather
with what it is and what to do (the PyTorch front end maps the unrolled cell onto one layer: torch_cells.py)."""
from __future__ import annotations

import numpy as np

GATE_OPS = {"Sigmoid", "Tanh"}
PRODUCTS = {"Gemm", "MatMul"}


def unrolled_cell_hint(imp, node) -> str | None:
    """The refusal of a time-step Gather of an unrolled cell, or None if `node` is no such Gather: it takes one
    scalar index of an activation that other Gathers read too, in a graph with matrix products
    and sigmoid / tanh gates."""
    if node.op_type != "Gather" or len(node.input) < 2:
        return None

    def scalar_index(n) -> int | None:
        value = imp.values.get(n.input[1])
        if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
            return int(value)
        return None

    if scalar_index(node) is None:
        return None
    nodes = list(imp.model.graph.node)
    steps = [n for n in nodes if n.op_type == "Gather" and n.input[0] == node.input[0]]  # later indices: not yet read
    kinds = {n.op_type for n in nodes}
    if len(steps) < 2 or not (kinds & PRODUCTS) or not (kinds & GATE_OPS):
        return None
    return (f"{imp.where(node)} takes step {scalar_index(node)} of '{node.input[0]}' ({len(steps)} steps are taken one "
            "by one, with matrix products and Sigmoid/Tanh gates): an nn.LSTMCell / nn.GRUCell / nn.RNNCell called in "
            "a Python loop, which ONNX has no op for (the exporter unrolls every step). qgen imports recurrent layers "
            "as ONNX LSTM / GRU / RNN nodes. Compile the PyTorch model itself (qgen maps an unrolled cell onto one "
            "recurrent layer), or use nn.LSTM / nn.GRU / nn.RNN in the model before exporting to ONNX.")
