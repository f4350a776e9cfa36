"""The pure MicroPython kernel of the recurrent layers (templates/micropython/_kernels.py _recurrent): the generated
module under CPython and real MicroPython (tests/mpy_runner.mjs) equals codegen.reference.run_int byte for byte.
One-node graphs built in the IR (tests/test_recurrent_ref.py), quantised by the compiler's passes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_micropython import check_graph, check_model, load_cpython
from test_recurrent_ref import recurrent_graph

from codegen.emit.micropython import render_micropython
from codegen.ir import verify
from codegen.ops import recurrent as R
from codegen.passes import calibrate, quantize

pytestmark = pytest.mark.micropython

# (kind, state_bits, last, reverse, h0): every kind and both state widths; a final-state and a reversed layer
CASES = [("gru", 16, False, False, False), ("gru", 8, True, False, True), ("lstm", 16, False, True, True),
         ("lstm", 8, False, False, False), ("rnn_tanh", 16, True, True, False), ("rnn_relu", 16, False, False, True),
         ("rnn_relu", 8, False, False, False)]


def _graph(kind, state_bits, last, reverse, h0, steps=7, inputs=4, hidden=5):
    g, _, _ = recurrent_graph(kind, inputs, hidden, steps, seed=3, last=last, reverse=reverse, h0=h0,
                              state_bits=state_bits)
    g.io_layout["x"] = "ncl"
    calibrate.run(g, (np.random.default_rng(4).normal(size=(32, inputs, steps)) * 1.5).astype(np.float32))
    quantize.run(g)
    verify(g, quantized=True)
    return g


def _inputs(g, n=6):
    x = np.random.default_rng(9).integers(-128, 128, (n, *g.tensors[g.inputs[0]].shape))
    x[0], x[1] = 127, -128  # every gate saturated
    return x.astype(np.int8)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_cpython_equals_reference(case, tmp_path):
    g = _graph(*case)
    check_graph(g, _inputs(g, 16), tmp_path, mpy=False)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("gru", "lstm")], ids=lambda c: "-".join(map(str, c)))
def test_micropython_equals_reference(case, tmp_path):
    g = _graph(*case)
    check_graph(g, _inputs(g), tmp_path)


def test_tanh_table_is_emitted_once_as_the_generators_integers(tmp_path):
    """One constant table, equal to TANH_TABLE (the module imports no math: no float tanh); the kernel's table
    functions equal the spec's on the whole int16 range."""
    g = _graph("gru", 16, False, False, False)
    src = render_micropython(g, "model", ["test"])["model.py"]
    assert src.count("_TANH_Q15 = array('h', (") == 1 and "math" not in src
    mod = load_cpython({"model.py": src}, "model", tmp_path)
    assert list(mod._TANH_Q15) == [int(v) for v in R.TANH_TABLE]
    u = np.arange(-32768, 32768, 7)
    assert [mod._tanh_q12(int(v), mod._TANH_Q15) for v in u] == list(R.tanh_q12(u))
    assert [mod._sigmoid_q11(int(v), mod._TANH_Q15) for v in u] == list(R.sigmoid_q11(u))
    assert [mod._tanh_q11(int(v), mod._TANH_Q15) for v in u] == list(R.tanh_q11(u))


class _LSTMHead(torch.nn.Module):
    """Two stacked LSTM layers, the output sequence's last step into a linear layer (out[:, -1] read)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 6, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):  # (N, C, L)
        y, _ = self.lstm(x.transpose(1, 2))
        return self.fc(y[:, -1])


@pytest.mark.parametrize("name", ["gru_classifier", "lstm_2_layers"])
def test_whole_model_from_pytorch_bit_exact(name, tmp_path, rng):
    """A model with recurrent layers compiled from PyTorch (examples/sequence's GRU classifier, a 2-layer LSTM):
    predict and predict_float under CPython and MicroPython == the integer reference."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from examples.sequence.models import GRUClassifier

    torch.manual_seed(0)
    model, shape = (GRUClassifier(hidden=8), (1, 12)) if name == "gru_classifier" else (_LSTMHead(), (3, 9))
    result = check_model(model, shape, tmp_path, rng, n_random=6, prefix=name)
    assert any(n.op in R.GATES for n in result.graph.nodes)
