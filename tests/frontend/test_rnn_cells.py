"""nn.LSTMCell / nn.GRUCell / nn.RNNCell unrolled in a Python loop (codegen/frontend/torch_cells.py): the steps of one
cell become one LSTM / GRU / RNN node over the sequence they read (the same node nn.LSTM gives), float == torch,
the integer model == the nn.LSTM one and C == the reference; what cannot be one layer is refused naming the module,
the line and the fix; the ONNX export of such a loop (ONNX has no cell op) is refused saying so."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import codegen
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op
from codegen.reference import run_float, run_int, to_qgen_layout, to_torch_layout

F, H, T = 5, 6, 7
CELLS = {"lstm": (nn.LSTMCell, {}), "gru": (nn.GRUCell, {}), "rnn_tanh": (nn.RNNCell, {}),
         "rnn_relu": (nn.RNNCell, {"nonlinearity": "relu"})}
OPS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}
RECURRENT = (Op.LSTM, Op.GRU, Op.RNN)


class Loop(nn.Module):
    """One cell over the time steps of a (1, T, F) input, written the ways users write it.
    init: none (state None) | zeros | to (torch.zeros(...).to(x.device)) | buffer (a non-zero constant);
    how: bf (x[:, t]) | tm (x.transpose(0, 1), x[t]) | unbind (x.unbind(1)) | rev (x[:, t], t = T-1 .. 0);
    read: last (fc(h)) | stack (torch.stack(outs, 1)) | stack0 (torch.stack(outs, 0)) | cat (cat of unsqueeze) |
    mid (an early step's h and the last)."""

    def __init__(self, kind: str, read: str = "last", init: str = "none", how: str = "bf"):
        super().__init__()
        cls, kw = CELLS[kind]
        self.cell = cls(F, H, **kw)
        self.lstm, self.read, self.init, self.how = kind == "lstm", read, init, how
        self.register_buffer("h0", torch.randn(1, H) * 0.5)
        self.fc = nn.Linear(H, 3)

    def forward(self, x):
        state = {"none": None, "zeros": torch.zeros(1, H), "to": torch.zeros(x.size(0), H).to(x.device),
                 "buffer": self.h0}[self.init]
        if state is not None and self.lstm:
            state = (state, state)
        if self.how == "tm":
            x = x.transpose(0, 1)
            steps = [x[t] for t in range(x.size(0))]
        elif self.how == "unbind":
            steps = list(x.unbind(1))
        else:
            steps = [x[:, t] for t in range(x.size(1))]
        if self.how == "rev":
            steps = steps[::-1]
        outs = []
        for xt in steps:
            state = self.cell(xt, state)
            h = state[0] if self.lstm else state
            outs.append(h)
        if self.read == "last":
            return self.fc(h)
        if self.read == "stack":
            return torch.stack(outs[::-1] if self.how == "rev" else outs, 1)
        if self.read == "stack0":
            return torch.stack(outs, 0).transpose(0, 1)
        if self.read == "cat":
            return torch.cat([o.unsqueeze(1) for o in outs], 1)
        return torch.cat([outs[2], h], 1)


def _lower(model: nn.Module, shape=(1, T, F)):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_module(model.eval(), torch.randn(*shape))


def _float_matches(model: nn.Module, g, shape=(1, T, F)) -> None:
    x = np.random.default_rng(2).normal(size=(3,) + shape[1:]).astype(np.float32)
    got = run_float(g, to_qgen_layout(g, x.astype(np.float64)))[g.outputs[0]]
    got = to_torch_layout(got, g.io_layout.get(g.outputs[0]))
    with torch.no_grad():
        want = torch.cat([model(torch.from_numpy(x[i:i + 1])) for i in range(3)]).numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=2e-6)


def _summary(g) -> tuple[list, list]:
    rec = [(n.op.value, n.attrs["last"], n.attrs["reverse"]) for n in g.nodes if n.op in RECURRENT]
    return rec, [n.op.value for n in g.nodes if n.op not in RECURRENT]


SPELLINGS = [  # (kind, read, init, how, last, reverse, other nodes)
    ("lstm", "last", "none", "bf", True, False, ["reshape", "linear"]),
    ("lstm", "stack", "to", "unbind", False, False, []),
    ("lstm", "cat", "zeros", "tm", False, False, []),
    ("lstm", "mid", "buffer", "rev", False, True, ["slice", "slice", "reshape", "reshape", "concat"]),
    ("gru", "last", "zeros", "tm", True, False, ["reshape", "linear"]),
    ("gru", "stack0", "none", "bf", False, False, []),
    ("gru", "stack", "buffer", "rev", False, True, []),
    ("rnn_tanh", "last", "to", "unbind", True, False, ["reshape", "linear"]),
    ("rnn_tanh", "stack", "none", "bf", False, False, []),
    ("rnn_relu", "last", "buffer", "rev", True, True, ["reshape", "linear"]),
    ("rnn_relu", "cat", "to", "bf", False, False, []),
]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=lambda s: "-".join(s[:4]))
def test_spelling_is_one_recurrent_node_and_matches_torch(spelling):
    kind, read, init, how, last, reverse, other = spelling
    torch.manual_seed(0)
    model = Loop(kind, read, init, how)
    g = _lower(model)
    assert _summary(g) == ([(OPS[kind], last, reverse)], other), g
    node = next(n for n in g.nodes if n.op in RECURRENT)
    if kind.startswith("rnn"):
        assert node.attrs["nonlinearity"] == kind[4:]
    h0 = g.tensors[node.inputs[5]].data
    np.testing.assert_array_equal(h0, model.h0.numpy()[0] if init == "buffer" else np.zeros(H))
    assert g.io_layout[g.inputs[0]] == "nlc" and g.tensors[g.inputs[0]].shape == (1, T, F)  # read as it lies
    _float_matches(model, g)


class Stacked(nn.Module):
    """Two cells, cell2 reading cell1's h at every step."""

    def __init__(self):
        super().__init__()
        self.cell1, self.cell2 = nn.LSTMCell(F, H), nn.GRUCell(H, 4)

    def forward(self, x):
        s1, h2, outs = None, None, []
        for t in range(x.size(1)):
            s1 = self.cell1(x[:, t], s1)
            h2 = self.cell2(s1[0], h2)
            outs.append(h2)
        return torch.stack(outs, 1)


class ConvFront(nn.Module):
    """A Conv1d front end read step by step: y[:, :, t] (time last) or y.permute(2, 0, 1)[t]."""

    def __init__(self, permute: bool):
        super().__init__()
        self.conv, self.cell, self.fc = nn.Conv1d(F, 8, 3, padding=1), nn.GRUCell(8, H), nn.Linear(H, 3)
        self.permute = permute

    def forward(self, x):  # (1, F, L)
        y = torch.relu(self.conv(x))
        h = torch.zeros(1, H)
        if self.permute:
            y = y.permute(2, 0, 1)
            for t in range(y.size(0)):
                h = self.cell(y[t], h)
        else:
            for t in range(y.size(2)):
                h = self.cell(y[:, :, t], h)
        return self.fc(h)


class OneStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.fc = nn.LSTMCell(F, H), nn.Linear(H, 3)

    def forward(self, x):  # (1, F): one step, state None
        h, _ = self.cell(x)
        return self.fc(h)


class Part(nn.Module):
    """The loop covers steps 2 .. T-1 only."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F, H)

    def forward(self, x):
        h = None
        for t in range(2, x.size(1)):
            h = self.cell(x[:, t], h)
        return h


class Unbatched(nn.Module):
    """Cells on unbatched (F,) steps: torch wraps each step in unsqueeze(0) / squeeze(0)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(F, H)

    def forward(self, x):
        x, state, outs = x.squeeze(0), None, []
        for t in range(x.size(0)):
            state = self.cell(x[t], state)
            outs.append(state[0])
        return torch.stack(outs).unsqueeze(0)


def test_unbatched_steps_are_one_layer():
    torch.manual_seed(0)
    model = Unbatched()
    g = _lower(model)
    rec, other = _summary(g)
    assert rec == [("lstm", False, False)] and "slice" not in other, g
    _float_matches(model, g)


def test_stacked_cells_are_two_layers_each_reading_the_other_as_it_lies():
    torch.manual_seed(0)
    model = Stacked()
    g = _lower(model)
    assert _summary(g) == ([("lstm", False, False), ("gru", False, False)], []), g
    lstm, gru = (n for n in g.nodes if n.op in RECURRENT)
    assert gru.inputs[0] == lstm.outputs[0]
    _float_matches(model, g)


@pytest.mark.parametrize("permute", [False, True])
def test_conv_front_end_read_step_by_step_needs_no_copy(permute):
    torch.manual_seed(0)
    model = ConvFront(permute)
    g = _lower(model, (1, F, 10))
    assert _summary(g) == ([("gru", True, False)], ["conv2d", "relu", "reshape", "linear"]), g
    _float_matches(model, g, (1, F, 10))


def test_one_step_and_a_part_of_the_sequence():
    torch.manual_seed(0)
    model = OneStep()
    g = _lower(model, (1, F))
    assert _summary(g)[0] == [("lstm", True, False)]
    _float_matches(model, g, (1, F))
    model = Part()
    g = _lower(model)
    assert _summary(g) == ([("gru", True, False)], ["slice", "reshape"]), g  # x[:, 2:] then the layer
    _float_matches(model, g)


# ---------------------------------------------------------------- refusals


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(F, H)

    def forward(self, x):
        s = None
        for t in range(0, x.size(1), 2):
            s = self.cell(x[:, t], s)
        return s[0]


class ChangedH(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(F, H)

    def forward(self, x):
        h = None
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
            h = h * 0.5
        return h


class ChangedC(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(F, H)

    def forward(self, x):
        h = c = torch.zeros(1, H)
        for t in range(x.size(1)):
            h, c = self.cell(x[:, t], (h, c))
            c = torch.clamp(c, -1, 1)
        return h


class ComputedState(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.init = nn.GRUCell(F, H), nn.Linear(F, H)

    def forward(self, x):
        h = self.init(x[:, 0])
        for t in range(x.size(1)):
            h = self.cell(x[:, t], h)
        return h


class InputInLoop(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.emb = nn.GRUCell(H, H), nn.Linear(F, H)

    def forward(self, x):
        h = None
        for t in range(x.size(1)):
            h = self.cell(torch.relu(self.emb(x[:, t])), h)
        return h


class ReadsC(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(F, H)

    def forward(self, x):
        s = None
        for t in range(x.size(1)):
            s = self.cell(x[:, t], s)
        return s[1]


def _line_of(cls, text: str) -> int:
    lines, start = inspect.getsourcelines(cls)
    return start + next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize("cls,line,text", [
    (Skip, "self.cell(x[:, t], s)",
     "nn.LSTMCell 'cell' (LSTMCell(5, 6)) at test_rnn_cells.py:{}: its 4 steps read time steps 0, 2, 4, 6 of their "
     "input; qgen maps a cell unrolled over consecutive steps"),
    (ChangedH, "h = self.cell(x[:, t], h)",
     "nn.GRUCell 'cell' (GRUCell(5, 6)) at test_rnn_cells.py:{}: the state h given to this step is the previous step's "
     "state changed in forward"),
    (ChangedC, "h, c = self.cell",
     "nn.LSTMCell 'cell' (LSTMCell(5, 6)) at test_rnn_cells.py:{}: the cell state c of step 0 is changed in forward "
     "before the next step"),
    (ComputedState, "h = self.cell(x[:, t], h)", "its initial state h is computed from the input"),
    (InputInLoop, "h = self.cell(", "the input of its 7 steps is not the time steps of one sequence"),
    (ReadsC, "s = self.cell(x[:, t], s)", "reads the cell state c of step 6; qgen keeps an LSTM's cell state inside"),
])
def test_what_cannot_be_one_layer_is_refused_naming_the_module_and_line(cls, line, text):
    with pytest.raises(UserError) as info:
        _lower(cls())
    msg = str(info.value)
    assert text.format(_line_of(cls, line)) in msg, msg
    assert "nn.LSTM" in msg or "nn.GRU" in msg or "a constant" in msg or "Use h" in msg


class StateAsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(F, H)

    def forward(self, x, h, c):
        return self.cell(x, (h, c))[0]


def test_state_as_a_model_input_points_to_stream():
    from codegen.frontend.torch_export import from_exported_program

    program = torch.export.export(StateAsInput().eval(), (torch.zeros(1, F), torch.zeros(1, H), torch.zeros(1, H)))
    with pytest.raises(UserError, match=r"more than one input .* 'h' is the state of nn.LSTMCell 'cell'.*stream=True"):
        from_exported_program(program)


def test_onnx_export_of_a_cell_loop_is_refused_saying_what_it_is(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "cells.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Loop("gru").eval(), (torch.randn(1, T, F),), str(path), dynamo=False)
    with pytest.raises(UserError, match=r"Gather.*takes step 0 of .*7 steps .*nn.LSTMCell / nn.GRUCell / nn.RNNCell "
                                        r"called in a Python loop.*Compile the PyTorch model itself"):
        codegen.compile(str(path), None, np.zeros((4, T, F), np.float32))


# ---------------------------------------------------------------- the whole compile


class Probe(nn.Module):
    """probeseq7's LSTMCellLoop (tutorial spelling: explicit zeros, x[:, t, :], fc of the last h)."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = nn.LSTMCell(9, 16), nn.Linear(16, 6)

    def forward(self, x):
        h = torch.zeros(x.size(0), 16)
        c = torch.zeros(x.size(0), 16)
        for t in range(x.size(1)):
            h, c = self.cell(x[:, t, :], (h, c))
        return self.fc(h)


class Layer(nn.Module):
    """The same model with nn.LSTM holding the cell's weights."""

    def __init__(self, probe: Probe):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(9, 16, batch_first=True), probe.fc
        for a, b in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh"), ("bias_ih_l0", "bias_ih"),
                     ("bias_hh_l0", "bias_hh")):
            getattr(self.lstm, a).data = getattr(probe.cell, b).data.clone()

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.fc(h[-1])


def _compile(model, calib, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return codegen.compile(model.eval(), torch.zeros((1,) + calib.shape[1:]), calib, **kw)


def test_cell_loop_is_the_integer_model_of_nn_lstm_and_c_is_exact():
    torch.manual_seed(0)
    probe = Probe()
    calib = np.random.default_rng(0).standard_normal((32, 20, 9)).astype(np.float32)
    cells, layer = _compile(probe, calib, prefix="cells"), _compile(Layer(probe), calib, prefix="cells")
    x = calib[:8]
    xq = cells.quantize_input(x)
    np.testing.assert_array_equal(cells.reference(xq), layer.reference(xq))
    a, b = (next(n for n in r.graph.nodes if n.op is Op.LSTM) for r in (cells, layer))
    assert a.attrs == b.attrs
    for s, t in zip(a.inputs[1:], b.inputs[1:]):  # the same integer weights, biases, initial state
        np.testing.assert_array_equal(cells.graph.tensors[s].data, layer.graph.tensors[t].data)
    with torch.no_grad():
        want = probe(torch.from_numpy(x)).numpy()
    assert np.abs(cells.predict(x) - want).max() < 0.02, np.abs(cells.predict(x) - want).max()
    check = cells.verify(x)
    assert check.exact, str(check)


class Mixed(nn.Module):
    """Every cell kind in one model: an LSTMCell feeding a GRUCell each step (the GRU's sequence out), an RNNCell
    relu running backwards (its last state out), an RNNCell tanh on the last LSTM state (one step)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.gru = nn.LSTMCell(F, 8), nn.GRUCell(8, 6)
        self.back, self.tail = nn.RNNCell(F, 5, nonlinearity="relu"), nn.RNNCell(8, 4)

    def forward(self, x):
        s, g, r, outs = None, None, None, []
        for t in range(x.size(1)):
            s = self.lstm(x[:, t], s)
            g = self.gru(s[0], g)
            outs.append(g)
        for t in reversed(range(x.size(1))):
            r = self.back(x[:, t], r)
        return torch.stack(outs, 1), torch.cat([r, self.tail(s[0])], 1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    torch.manual_seed(3)
    calib = np.random.default_rng(1).standard_normal((48, T, F)).astype(np.float32)
    out = tmp_path_factory.mktemp("cells") / "mixed"
    return _compile(Mixed(), calib, prefix="mixed", out_dir=out), calib


def test_every_cell_kind_compiles_and_c_is_exact_on_the_host(mixed):
    result, calib = mixed
    rec = [(n.op.value, n.attrs["last"], n.attrs["reverse"]) for n in result.graph.nodes if n.op in RECURRENT]
    assert sorted(rec) == sorted([("lstm", False, False), ("gru", False, False), ("rnn", True, True),
                                  ("rnn", True, False)]), result.graph
    check = result.verify(calib[:6])
    assert check.exact, str(check)


@pytest.mark.qemu
def test_every_cell_kind_is_exact_under_qemu_on_cortex_m4(mixed, tmp_path):
    from qgen_testing import assert_outputs_equal

    from codegen.hostcheck import reference_outputs
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    result, calib = mixed
    g, out = result.graph, result.out_dir
    xq = result.quantize_input(calib[:6])
    expect = reference_outputs(g, run_int(g, xq))
    sources = [out / "mixed_model.c", out / "mixed_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf("mps2-an386", sources, [out, out / "kernels"], "mixed", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    got = run_qemu("mps2-an386", elf, xq.reshape(len(xq), -1), expect.shape[1], count_instructions=False)
    assert_outputs_equal(got.outputs, expect, g, "cortex-m4")


def test_a_cell_loop_streams_one_step_per_call():
    """compile(stream=True): <prefix>_step runs one step and keeps h and c (the streaming form of a cell)."""
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((16, 20, 9)).astype(np.float32)
    result = _compile(Probe(), calib, stream=True)
    node = next(n for n in result.graph.nodes if n.op is Op.LSTM)
    assert result.streams and node.attrs.get("stream") and result.graph.tensors[node.inputs[0]].shape == (1, 1, 9)
    check = result.verify(calib[:3])
    assert check.exact, str(check)
