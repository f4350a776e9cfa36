"""nn.GRU / nn.LSTM / nn.RNN through the PyTorch front end (codegen/frontend/torch_recurrent.py): each variant
lowers to the right nodes (one per layer and direction, last=True where only the final state is read, no layout
copy of a batch_first input) and run_float equals the torch model in float64; the whole compile reaches the
integer reference (and the host C where the kernel exists); refusals name the user's layer."""
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
from codegen.options import CompileOptions, QuantOptions
from codegen.reference import run_float, run_int, to_qgen_layout, to_torch_layout

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's RNN export warns about _flat_weights

CLASSES = {"gru": (nn.GRU, {}), "lstm": (nn.LSTM, {}), "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
           "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}
OPS = {"gru": Op.GRU, "lstm": Op.LSTM, "rnn_tanh": Op.RNN, "rnn_relu": Op.RNN}


class Net(nn.Module):
    """A recurrent layer read in one of the ways users read it (`read`), batch-first input (1, T, F)."""

    def __init__(self, kind: str, read: str, layers: int = 1, bidirectional: bool = False, batch_first: bool = True,
                 bias: bool = True, h0: str = "implicit", inputs: int = 4, hidden: int = 6):
        super().__init__()
        cls, extra = CLASSES[kind]
        self.rnn = cls(inputs, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, **extra)
        self.read, self.h0, self.lstm = read, h0, kind == "lstm"
        self.shape = (layers * (2 if bidirectional else 1), 1, hidden)
        self.register_buffer("state", torch.randn(self.shape) * 0.5)
        self.register_buffer("cell", torch.randn(self.shape) * 0.5)

    def forward(self, x):
        bf = self.rnn.batch_first
        if not bf:
            x = x.transpose(0, 1)  # (T, 1, F): seq-first
        if self.h0 == "implicit":
            y, h = self.rnn(x)
        else:
            if self.h0 == "buffer":
                state, cell = self.state, self.cell
            else:
                state, cell = torch.zeros(self.shape, dtype=x.dtype), torch.zeros(self.shape, dtype=x.dtype)
            y, h = self.rnn(x, (state, cell) if self.lstm else state)
        h = h[0] if self.lstm else h
        if self.read == "out":
            return y if bf else y.transpose(0, 1)
        if self.read == "last":
            return y[:, -1] if bf else y[-1]
        if self.read == "h_n[-1]":
            return h[-1]
        if self.read == "h_n":
            return h.transpose(0, 1).flatten(1)
        if self.read == "h_n[0]+last":
            return torch.cat([h[0], y[:, -1] if bf else y[-1]], 1)
        raise ValueError(self.read)


def _lower(model: nn.Module, steps: int = 7, features: int = 4):
    torch.manual_seed(1)
    x = torch.randn(1, steps, features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = from_module(model.eval(), x)
    return g, x


def _float_matches(model: nn.Module, g, batch: int = 3, steps: int = 7, features: int = 4) -> None:
    x = np.random.default_rng(2).normal(size=(batch, steps, features))
    got = run_float(g, to_qgen_layout(g, x))[g.outputs[0]]
    got = to_torch_layout(got, g.io_layout.get(g.outputs[0]))
    with torch.no_grad():
        want = torch.cat([model.double()(torch.from_numpy(x[i:i + 1])) for i in range(batch)]).numpy()
    model.float()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-9)


def _recurrent_nodes(g):
    return [n for n in g.nodes if n.op in (Op.GRU, Op.LSTM, Op.RNN)]


VARIANTS = [  # (read, layers, bidirectional, batch_first, bias, h0, expected [(last, reverse)] per node)
    ("out", 1, False, True, True, "implicit", [(False, False)]),
    ("last", 1, False, True, True, "implicit", [(True, False)]),
    ("h_n[-1]", 2, False, True, False, "zeros", [(False, False), (True, False)]),
    ("out", 2, True, True, True, "buffer", [(False, False), (False, True)] * 2),
    ("h_n[-1]", 1, True, False, True, "implicit", [(True, True)]),
    ("h_n", 1, True, True, True, "buffer", [(True, False), (True, True)]),
    ("last", 2, True, False, False, "implicit", [(False, False), (False, True), (True, False), (False, True)]),
    ("h_n[0]+last", 2, False, False, True, "buffer", [(False, False), (True, False)]),
]


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-L{v[1]}-{'bi' if v[2] else 'uni'}-"
                         f"{'bf' if v[3] else 'sf'}-{'bias' if v[4] else 'nobias'}-{v[5]}")
def test_variant_lowers_to_its_nodes_and_matches_torch(kind, variant):
    read, layers, bidirectional, batch_first, bias, h0, expected = variant
    model = Net(kind, read, layers, bidirectional, batch_first, bias, h0)
    g, _ = _lower(model)
    nodes = _recurrent_nodes(g)
    assert [(n.attrs["last"], n.attrs["reverse"]) for n in nodes] == expected, g
    assert {n.op for n in nodes} == {OPS[kind]}
    if kind.startswith("rnn"):
        assert {n.attrs["nonlinearity"] for n in nodes} == {kind[4:]}
    assert g.io_layout[g.inputs[0]] == "nlc" and g.tensors[g.inputs[0]].shape == (1, 7, 4)
    assert not any(n.op is Op.TRANSPOSE for n in g.nodes), f"a layout copy:\n{g}"  # input read as it lies
    _float_matches(model, g)


def test_bidirectional_layer_is_forward_reverse_concat_and_layer_two_reads_layer_one():
    g, _ = _lower(Net("gru", "out", layers=2, bidirectional=True))
    nodes = {n.name: n for n in g.nodes}
    assert list(nodes) == ["rnn.l0", "rnn.l0_reverse", "rnn.l0_cat", "rnn.l1", "rnn.l1_reverse", "rnn.l1_cat"], g
    assert nodes["rnn.l0_cat"].attrs["axis"] == 2
    assert nodes["rnn.l1"].inputs[0] == nodes["rnn.l0_cat"].outputs[0]
    assert g.tensors[nodes["rnn.l1"].inputs[1]].shape == (18, 12)  # w_ih of layer 2 reads both directions
    out = g.outputs[0]
    assert g.io_layout[out] == "nlc" and g.tensors[out].shape == (1, 7, 12)  # returned as it lies


def test_final_state_only_keeps_no_sequence():
    """h_n[-1] of one unidirectional layer: one node with last=True, its output (1, 1, H)."""
    g, _ = _lower(Net("lstm", "h_n[-1]"))
    (node,) = _recurrent_nodes(g)
    assert node.attrs["last"] and g.tensors[node.outputs[0]].shape == (1, 1, 6)


def test_explicit_zeros_and_buffer_state_are_the_nodes_constants():
    model = Net("gru", "out", h0="buffer")
    g, _ = _lower(model)
    (node,) = _recurrent_nodes(g)
    np.testing.assert_allclose(g.tensors[node.inputs[5]].data, model.state[0, 0].double().numpy())
    g, _ = _lower(Net("lstm", "out", h0="zeros"))
    (node,) = _recurrent_nodes(g)
    assert len(node.inputs) == 7 and not g.tensors[node.inputs[6]].data.any()


def test_input_not_read_by_a_recurrent_layer_keeps_ncl():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(5, 3, 3)

        def forward(self, x):
            return self.conv(x)

    g, _ = _lower(Conv(), steps=5, features=9)
    assert g.io_layout[g.inputs[0]] == "ncl" and g.tensors[g.inputs[0]].shape == (1, 9, 5)


def test_time_major_input_through_transpose_to_conv1d_has_no_copy():
    """(1, T, F) -> x.transpose(1, 2) -> Conv1d -> GRU: the input is 'nlc', no TRANSPOSE anywhere."""
    class ConvGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 3, padding=1)
            self.gru = nn.GRU(8, 6, batch_first=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
            _, h = self.gru(y)
            return self.fc(h[-1])

    model = ConvGRU()
    g, _ = _lower(model)
    assert g.io_layout[g.inputs[0]] == "nlc"
    assert not any(n.op is Op.TRANSPOSE for n in g.nodes), g
    _float_matches(model, g)


# ---------------------------------------------------------------- refusals name the layer


def _line_of(cls, text: str) -> int:
    lines, first = inspect.getsourcelines(cls.forward)
    return first + next(i for i, line in enumerate(lines) if text in line)


class ComputedState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.init = nn.Linear(4, 6)

    def forward(self, x):
        y, _ = self.rnn(x, self.init(x[:, 0]).unsqueeze(0))
        return y[:, -1]


class CellState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True)

    def forward(self, x):
        _, (h, c) = self.rnn(x)
        return c[-1]


class Projected(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True, proj_size=3)

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


@pytest.mark.parametrize("cls,text", [(ComputedState, "computed from the input"), (CellState, "c_n"),
                                      (Projected, "proj_size")])
def test_refusals_name_the_layer(cls, text):
    with pytest.raises(UserError) as err:
        _lower(cls())
    msg = str(err.value)
    layer = "GRU" if cls is ComputedState else "LSTM"
    assert msg.startswith(f"nn.{layer} 'rnn' ({layer}(4, 6"), msg
    assert f"test_recurrent_frontend.py:{_line_of(cls, 'self.rnn(x')}" in msg, msg
    assert text in msg, msg


# ---------------------------------------------------------------- the whole compile


class Classifier(nn.Module):
    def __init__(self, kind: str, bidirectional: bool = False):
        super().__init__()
        cls, extra = CLASSES[kind]
        self.rnn = cls(4, 8, batch_first=True, bidirectional=bidirectional, **extra)
        self.fc = nn.Linear(16 if bidirectional else 8, 3)

    def forward(self, x):
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.fc(torch.cat([h[0], h[-1]], 1) if self.rnn.bidirectional else h[-1])


def _has_kernel() -> bool:
    from codegen.kernels import kernel_sources

    return "qg_recurrent_s8" in kernel_sources()


@pytest.mark.parametrize("kind,bidirectional,state", [("gru", False, 16), ("lstm", True, 16), ("rnn_tanh", False, 8),
                                                      ("rnn_relu", False, 16)])
def test_compile_reaches_the_integer_reference(kind, bidirectional, state):
    torch.manual_seed(0)
    model = Classifier(kind, bidirectional).eval()
    calib = np.random.default_rng(0).normal(size=(96, 12, 4)).astype(np.float32)
    opts = CompileOptions(quant=QuantOptions(recurrent_state=state))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = codegen.compile(model, torch.zeros(1, 12, 4), calib, options=opts, prefix="rnn")
    g = result.graph
    assert {n.attrs["state_bits"] for n in _recurrent_nodes(g)} == {state}
    x = calib[:16]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = result.predict(x)
    assert np.abs(got - want).max() < 0.1 * max(1.0, np.abs(want).max()), (got[:2], want[:2])
    xq = result.quantize_input(x)
    assert xq.shape == (16, 1, 12, 4)  # 'nlc': PyTorch (N, T, F) is the IR's (N, 1, T, F)
    np.testing.assert_array_equal(result.reference(xq), run_int(g, xq)[g.outputs[0]].reshape(16, -1))
    if _has_kernel():  # host C (qg_recurrent_s8) == the integer reference, bit for bit
        check = result.verify(x)
        assert check.exact, str(check)
        # the C boundary helper reads PyTorch's (T, F) floats as they lie ('nlc': no transpose)
        np.testing.assert_array_equal(result.host().quantize_input(x[3]), xq[3].reshape(-1))


def test_calibration_data_of_a_time_major_input_is_n_t_f():
    model = Classifier("gru").eval()
    with pytest.raises(UserError, match=r"\[N, 12, 4\]"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codegen.compile(model, torch.zeros(1, 12, 4), np.zeros((8, 4, 12), np.float32))


def test_cli_recurrent_state_flag():
    from codegen import cli

    args = cli.build_parser().parse_args(["compile", "m.py:make", "--recurrent-state", "int8"])
    assert cli.compile_options(args).quant.recurrent_state == 8
    assert cli.compile_options(cli.build_parser().parse_args(["compile", "m.py:make"])).quant.recurrent_state == 16
    assert "recurrent_state" in codegen.pipeline(CompileOptions(quant=QuantOptions(recurrent_state=8))).names


def test_no_torch_export_warning_about_flat_weights():
    """torch.export warns that nn.GRU's `_flat_weights` were 'assigned during export'; qgen's users never see it."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        from_module(Net("gru", "out").eval(), torch.randn(1, 7, 4))
    assert not [w for w in seen if "_flat_weights" in str(w.message)]


FINAL_STATE = {  # ways to read a one-layer GRU's final state: all one GRU node with last=True, then the Linear
    "h_n[-1]": lambda y, h: h[-1],
    "h_n.squeeze(0)": lambda y, h: h.squeeze(0),
    "h_n.transpose(0, 1).flatten(1)": lambda y, h: h.transpose(0, 1).flatten(1),
    "out[:, -1]": lambda y, h: y[:, -1],
    "out[:, 6]": lambda y, h: y[:, 6],
    "out[:, -1:].flatten(1)": lambda y, h: y[:, -1:].flatten(1),
}


class ReadFinal(nn.Module):
    def __init__(self, read):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.fc, self.read = nn.GRU(4, 6, batch_first=True), nn.Linear(6, 3), read

    def forward(self, x):
        y, h = self.rnn(x)
        return self.fc(self.read(y, h))


def test_spellings_of_the_final_state_lower_alike():
    shapes = {}
    for spelling, read in FINAL_STATE.items():
        model = ReadFinal(read).eval()
        g, _ = _lower(model)
        shapes[spelling] = [(n.op, n.attrs.get("last"), g.tensors[n.outputs[0]].shape) for n in g.nodes
                            if n.op is not Op.RESHAPE]
        _float_matches(model, g)
    first = next(iter(shapes.values()))
    assert first == [(Op.GRU, True, (1, 1, 6)), (Op.LINEAR, None, (3,))], first
    for spelling, got in shapes.items():
        assert got == first, f"{spelling}: {got}"


def test_a_sequence_first_model_input_is_refused_with_the_fix():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 6)

        def forward(self, x):
            return self.rnn(x)[1][-1]

    with pytest.raises(UserError, match=r"sequence first; .* x.transpose\(0, 1\) inside forward"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_module(SeqFirst().eval(), torch.randn(7, 1, 4))


def test_unbatched_layer_whose_unused_cell_state_torch_squeezes():
    """nn.LSTM on an unbatched (T, F) tensor: torch squeezes h_n and c_n even when nothing reads them; c_n is not
    'read' (no refusal) and the dead squeezes are not lowered."""
    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.LSTM(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            y, _ = self.rnn(x[0])
            return self.fc(y[-1:])

    model = Unbatched()
    g, _ = _lower(model)
    assert [n.op for n in g.nodes].count(Op.LSTM) == 1
    _float_matches(model, g)
