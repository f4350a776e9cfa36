"""qg_recurrent_s8 (firmware/kernels/qg_recurrent_s8.c) == the integer spec (codegen/ops/recurrent.py int_run),
byte for byte: on the host under ASan/UBSan, and under QEMU on Cortex-M0+ (plain C) and Cortex-M4 (SMLAD).

One graph holds every case (each node's output is a model output), so each target is one build: GRU, LSTM,
RNN tanh and relu; state_bits 16 and 8; last; reverse; nonzero h0 / c0; inputs and hidden sizes 1, 3, 7, 16, 17
(every tail of the two-row, 8/4-column DSP blocks); large weights (saturated gates, left-shift alignment); a cell
that grows past 8 (tanh(c) through a left shift); inputs at -128 / 127.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from qgen_testing import assert_outputs_equal, edge_inputs, finish
from test_recurrent_ref import recurrent_graph

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import Graph, verify
from codegen.ops import recurrent as R
from codegen.passes import calibrate, quantize
from codegen.reference import run_int
from codegen.resources import kernel_dir

STEPS, INPUTS = 9, 7
# (name, kind, input, hidden, options): a chain (x -> a -> b -> c -> d: inputs 7, 3, 17, 1) and branches on x
CASES = [
    ("a_gru", "gru", "x", 3, {}),
    ("b_lstm_h0", "lstm", "a_gru", 17, {"h0": True}),
    ("c_rnn_tanh", "rnn_tanh", "b_lstm_h0", 1, {}),
    ("d_rnn_relu", "rnn_relu", "c_rnn_tanh", 7, {"h0": True}),
    ("lstm_s8_reverse", "lstm", "x", 16, {"state_bits": 8, "reverse": True, "h0": True}),
    ("gru_s8_last_h0", "gru", "x", 17, {"state_bits": 8, "last": True, "h0": True}),
    ("gru_reverse", "gru", "x", 16, {"reverse": True}),
    ("lstm_last_reverse", "lstm", "x", 7, {"last": True, "reverse": True}),
    ("rnn_relu_s8", "rnn_relu", "x", 3, {"state_bits": 8}),
    ("rnn_tanh_s8_h0", "rnn_tanh", "x", 5, {"state_bits": 8, "h0": True, "reverse": True}),
    ("lstm_large_w", "lstm", "x", 5, {"scale": 12.0}),
    ("gru_large_w", "gru", "x", 9, {"scale": 12.0, "h0": True}),
    ("lstm_growing_cell", "lstm", "x", 4, {"gate_bias": 6.0}),  # i, f, g ~ 1: |c| ~ t, cell frac < 12
]


def _add_case(g: Graph, seed: int, name: str, kind: str, src: str, hidden: int, opts: dict) -> None:
    """Node `name` (one nn.GRU / nn.LSTM / nn.RNN layer, test_recurrent_ref's builder) reading tensor `src`."""
    opts = dict(opts)
    scale, gate_bias = opts.pop("scale", 1.0), opts.pop("gate_bias", 0.0)
    inputs = g.tensors[src].shape[2]
    one, _, _ = recurrent_graph(kind, inputs, hidden, STEPS, seed=seed, **opts)
    node = one.nodes[0]
    rename = {t: f"{name}_{t}" for t in node.inputs[1:]}
    for old, new in rename.items():
        t = one.tensors[old]
        t.name = new
        if old.startswith("w_"):
            t.data = t.data * scale
        if old == "b_ih":
            t.data[:3 * hidden] += gate_bias
        g.tensors[new] = t
    out = one.tensors[node.outputs[0]]
    out.name = name
    g.tensors[name] = out
    node.name, node.inputs, node.outputs = name, [src] + [rename[t] for t in node.inputs[1:]], [name]
    g.nodes.append(node)
    g.outputs.append(name)


def cases_graph() -> tuple[Graph, np.ndarray]:
    """The quantised graph of every case and its int8 test inputs (edge values, then random)."""
    from codegen.ir import Tensor

    g = Graph({"x": Tensor("x", (1, STEPS, INPUTS))}, [], ["x"], [], source="test")
    for seed, case in enumerate(CASES):
        _add_case(g, seed, *case)
    verify(g)
    rng = np.random.default_rng(5)
    g.io_layout["x"] = "ncl"
    calibrate.run(g, (rng.normal(size=(48, 1, STEPS, INPUTS)) * 1.5)[:, 0].transpose(0, 2, 1))
    quantize.run(g)
    g = finish(g)
    return g, edge_inputs(rng, (1, STEPS, INPUTS), n_random=6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    g, x = cases_graph()
    out = tmp_path_factory.mktemp("rnn") / "model"
    write_atomic(render(g, "rk", ["test"]), out)
    return g, out, x, reference_outputs(g, run_int(g, x))


def _step_and_unit(g: Graph):
    """What an output element of a recurrent case is: the case's attributes, its time step and unit."""
    def describe(name: str, index: int) -> str:
        t, j = divmod(index, g.tensors[name].shape[2])
        return f"{g.nodes[[n.name for n in g.nodes].index(name)].attrs}, step {t}, unit {j}"
    return describe


def test_table_in_c_is_the_spec():
    """qg_tanh_table in the kernel source is recurrent.TANH_TABLE (they cannot drift apart)."""
    text = (kernel_dir() / "qg_recurrent_s8.c").read_text()
    body = re.search(r"qg_tanh_table\[513\] QG_CONST = \{(.*?)\};", text, re.S).group(1)  # QG_CONST: flash on AVR
    np.testing.assert_array_equal(np.array([int(v) for v in body.replace(",", " ").split()]), R.TANH_TABLE)


@pytest.mark.hostc
def test_c_equals_reference_on_host_under_sanitizers(model, tmp_path):
    g, out, x, expect = model
    exe = build_native(out, "rk", tmp_path / "rk_asan", SANITIZE_FLAGS)
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, "host C", _step_and_unit(g))


def test_cases_cover_the_edges(model):
    """The paths the cases are there for: left-shift alignment (large weights), both state widths, every cell,
    outputs over the whole int8 range."""
    g, _, x, expect = model
    nodes = {n.name: n for n in g.nodes}
    assert all(min(nodes[k].attrs["x_shift"]) < 0 for k in ("lstm_large_w", "gru_large_w"))
    assert nodes["lstm_growing_cell"].attrs["cell_frac"] < 12  # tanh(c) reads c through a left shift
    assert {n.attrs["state_bits"] for n in g.nodes} == {8, 16}
    assert {R.c_cell(n) for n in g.nodes} == {"QG_CELL_GRU", "QG_CELL_LSTM", "QG_CELL_RNN_TANH", "QG_CELL_RNN_RELU"}
    assert expect.min() == -128 and expect.max() == 127 and x.min() == -128 and x.max() == 127


@pytest.mark.qemu
@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4"])
def test_c_equals_reference_on_core(model, core, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = model
    board = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}[core]
    sources = [out / "rk_model.c", out / "rk_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "rk", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False)
    assert_outputs_equal(result.outputs, expect, g, core, _step_and_unit(g))


def test_scratch_matches_the_c_buffer_size(model):
    """recurrent.buffer_size mirrors qg_recurrent_s8_buffer_size (the planner sizes the arena with it)."""
    text = (kernel_dir() / "qg_recurrent_s8.c").read_text()
    assert "4 * (slots + (p->inputs + 1) / 2 + (h + 1) / 2)" in text
    g = model[0]
    n = g.nodes[0]
    assert R.buffer_size(g, n) == 4 * ((3 + 1) * 3 + (INPUTS + 1) // 2 + (3 + 1) // 2)


@pytest.mark.qemu
@pytest.mark.parametrize("cpu", ["cortex-m0plus", "cortex-m4"])
def test_kernel_builds_at_every_optimisation_level(cpu, tmp_path):
    """The asm blocks leave the compiler enough registers in every build a user may pick: -O0 and -Os (the
    four-row DSP step and the Thumb-1 loops step aside there), with and without a frame pointer."""
    import shutil
    import subprocess

    from codegen.target import CROSS_CC

    if shutil.which(CROSS_CC) is None:
        pytest.skip(f"{CROSS_CC} is not installed")
    fpu = ["-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"] if cpu == "cortex-m4" else []
    for opt in ("-O0", "-Os", "-O2 -fno-omit-frame-pointer"):
        cmd = [CROSS_CC, f"-mcpu={cpu}", "-mthumb", *fpu, *opt.split(), "-std=c99", "-Wall", "-Wextra", "-Wconversion",
               "-Werror", "-I", str(kernel_dir()), "-c", str(kernel_dir() / "qg_recurrent_s8.c"), "-o",
               str(tmp_path / "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cpu} {opt}:\n{proc.stderr[-2000:]}"

