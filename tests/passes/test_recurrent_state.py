"""passes/recurrent_state.py: the option reaches every recurrent node and nothing else; bad widths are refused."""
from __future__ import annotations

import pytest

from codegen.errors import UserError
from codegen.ir import Graph, Node, Op, Tensor
from codegen.passes import recurrent_state

pytestmark = pytest.mark.pure


def _graph() -> Graph:
    t = {n: Tensor(n, (1, 4, 3)) for n in ("x", "y", "z")}
    nodes = [Node("rnn", Op.GRU, ["x"], ["y"], {"hidden": 3}), Node("act", Op.RELU, ["y"], ["z"], {})]
    return Graph(t, nodes, ["x"], ["z"])


def test_stamps_recurrent_nodes_only():
    g = recurrent_state.run(_graph(), 8)
    assert g.nodes[0].attrs["state_bits"] == 8
    assert "state_bits" not in g.nodes[1].attrs


def test_refuses_other_widths():
    with pytest.raises(UserError, match="8 or 16"):
        recurrent_state.run(_graph(), 12)
