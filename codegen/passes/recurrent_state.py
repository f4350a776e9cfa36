"""Stamp the hidden-state width on every recurrent layer before quantisation (QuantOptions.recurrent_state).

16 (the default, what a node without the attribute gets): an int16 Q15 state; 8: the state is the layer's own
int8 output (codegen/ops/recurrent.py, q_rnn reads attrs["state_bits"])."""
from __future__ import annotations

from ..errors import UserError
from ..ir import Graph
from ..ops import SPEC

STATE_BITS = (8, 16)


def run(graph: Graph, bits: int) -> Graph:
    if bits not in STATE_BITS:
        raise UserError(f"recurrent_state={bits!r}; qgen keeps a recurrent layer's state in 8 or 16 bits")
    for node in graph.nodes:
        if SPEC[node.op].family == "recurrent":
            node.attrs["state_bits"] = int(bits)
    return graph
