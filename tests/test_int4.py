"""Packed int4 weights (qg_conv2d_s4.c, weight_storage int4, --weights int4, --precision LAYER=w4).

The integer reference is unchanged (it reads the unpacked integers in [-8, 7]); the C kernels read the packed
nibbles. One graph holds every case as a model output (so one firmware per core): odd in-features and rows
(a zero high nibble ends them), rows that are / are not a multiple of the DSP's 8-weight word, odd output
channels, a grouped dilated conv, depthwise with an odd weight count and a multiplier, the -8 / 7 extremes
(whole rows of -8), shifts down to -3 (saturation) and the three clamp kinds.
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import (
    GraphBuilder,
    assert_no_writable_static_data,
    assert_outputs_equal,
    edge_inputs,
    finish,
    safe_bias,
)

from codegen.emit.c import render, write_atomic
from codegen.errors import UserError
from codegen.fixed import QFormat
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import Graph, Op, Tensor
from codegen.reference import run_int
from codegen.weight_storage import decode_int4, encode_int4, int4_bytes

SHAPE = (5, 6, 7)
ACTS = ((-128, 127), (0, 127), (-50, 90))


class Builder(GraphBuilder):
    def __init__(self, rng):
        super().__init__(rng, SHAPE)

    def weighted(self, name: str, op: Op, src: str, w_shape: tuple, act_range=(-128, 127), output: bool = True,
                 fine: bool = False, **attrs) -> str:
        """fine: a shift that maps ~3 standard deviations of the sums onto the int8 range and small biases, so that
        the outputs show every product instead of a clamped value."""
        rng, cout = self.rng, w_shape[0]
        w = rng.integers(-8, 8, w_shape)
        w.flat[0], w.flat[-1] = -8, 7
        w[0] = -8  # a whole row at the extreme
        self.g.tensors[f"{name}_w"] = Tensor(f"{name}_w", w.shape, "int8", QFormat(4, (3,) * cout), w.astype(np.int8))
        b = safe_bias(rng, w) if not fine else rng.integers(-64, 64, cout)
        self.g.tensors[f"{name}_b"] = Tensor(f"{name}_b", b.shape, "int32", QFormat(32, (7,) * cout),
                                             b.astype(np.int32))
        shift = rng.integers(-3, 12, cout)
        if fine:
            k = int(np.prod(w_shape[1:]))
            shift[:] = max(int(np.ceil(np.log2(3 * 74 * 4.6 * np.sqrt(k) / 127))), 0)
        attrs.update(shift=[int(s) for s in shift], act_min=act_range[0], act_max=act_range[1])
        return self.node(name, op, [src, f"{name}_w", f"{name}_b"], output, **attrs)


def int4_graph(rng) -> Graph:
    b = Builder(rng)
    pad1 = {"stride": (1, 1), "padding": (1, 1, 1, 1)}
    plain = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
    b.weighted("conv_c7_k3x5_s2", Op.CONV2D, "x", (5, 3, 5, 7), stride=(2, 2), padding=(1, 2, 1, 2))  # K 105
    c8 = b.weighted("conv1x1_c7_to_8", Op.CONV2D, "x", (8, 1, 1, 7), ACTS[1], **plain)  # K 7: tail only
    b.weighted("conv3x3_c8_pad", Op.CONV2D, c8, (3, 3, 3, 8), ACTS[2], **pad1)  # K 72: whole words
    b.weighted("conv2x3_c8_s3x1", Op.CONV2D, c8, (4, 2, 3, 8), stride=(3, 1), padding=(0, 1, 0, 1))
    b.weighted("conv1x1_c8_pad", Op.CONV2D, c8, (9, 1, 1, 8), ACTS[1], stride=(1, 1), padding=(1, 0, 0, 1))
    b.weighted("conv_g2_d2", Op.CONV2D, c8, (6, 3, 3, 4), stride=(1, 1), padding=(2, 1, 2, 1), groups=2,
               dilation=(2, 1))
    b.weighted("dw3x3_c8", Op.DEPTHWISE_CONV2D, c8, (8, 3, 3, 1), ACTS[1], **pad1)
    b.weighted("dw3x3_c7_odd_n", Op.DEPTHWISE_CONV2D, "x", (7, 3, 3, 1), ACTS[2], **pad1)  # 63 weights
    b.weighted("dw3x3_c7_mult2_s2", Op.DEPTHWISE_CONV2D, "x", (14, 3, 3, 1), stride=(2, 2), padding=(1, 1, 1, 1))
    # a chain whose inputs die: the planner may start each output below its input (kernels.ORDERED)
    a = b.weighted("chain_conv", Op.CONV2D, "x", (12, 3, 3, 7), ACTS[1], output=False, **pad1)
    a = b.weighted("chain_dw", Op.DEPTHWISE_CONV2D, a, (12, 3, 3, 1), ACTS[1], output=False, **pad1)
    b.weighted("chain_conv1x1", Op.CONV2D, a, (12, 1, 1, 12), **plain)
    flat = b.node("flat", Op.RESHAPE, ["x"], output=False, shape=(int(np.prod(SHAPE)),))
    b.weighted("fc_210_7", Op.LINEAR, flat, (7, 210))  # K % 8 = 2, odd rows
    for k, rows, a in ((33, 17, ACTS[0]), (33, 8, ACTS[1]), (16, 3, ACTS[2]), (1, 2, ACTS[0]), (9, 5, ACTS[1])):
        vec = b.node(f"v_{k}_{rows}", Op.SLICE, [flat], output=False, axis=0, start=rows, length=k)
        b.weighted(f"fc_{k}_{rows}", Op.LINEAR, vec, (rows, k), a)
        b.weighted(f"fc_fine_{k}_{rows}", Op.LINEAR, vec, (rows, k), fine=True)  # every product shows
    b.weighted("fc_fine_210_7", Op.LINEAR, flat, (7, 210), fine=True)
    return finish(b.g)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(44)
    graph = int4_graph(rng)
    out = tmp_path_factory.mktemp("int4") / "model"
    write_atomic(render(graph, "i4", ["test"]), out)
    x = edge_inputs(rng, SHAPE, n_random=4)
    return graph, out, x, reference_outputs(graph, run_int(graph, x))


# ---------------------------------------------------------------- storage


def test_int4_packing_low_nibble_first_and_row_aligned():
    w = np.array([[1, -2, 7], [-8, 3, 0]])  # two rows of 3: each row starts on a byte
    enc = encode_int4(Op.LINEAR, w)
    assert enc.arrays["weights"].tolist() == [0xE1, 0x07, 0x38, 0x00]
    assert enc.nbytes == int4_bytes(Op.LINEAR, w.shape) == 4
    dw = np.array([1, -2, 7, -8, 3]).reshape(5, 1, 1)  # depthwise: one stream, ceil(n / 2)
    enc = encode_int4(Op.DEPTHWISE_CONV2D, dw)
    assert enc.arrays["weights"].tolist() == [0xE1, 0x87, 0x03] and int4_bytes(Op.DEPTHWISE_CONV2D, dw.shape) == 3


@pytest.mark.parametrize("op,shape", [(Op.CONV2D, (5, 3, 5, 7)), (Op.CONV2D, (3, 3, 3, 8)), (Op.LINEAR, (7, 33)),
                                      (Op.DEPTHWISE_CONV2D, (7, 3, 3, 1)), (Op.LINEAR, (2, 1))])
def test_int4_round_trip_and_size(op, shape):
    w = np.random.default_rng(1).integers(-8, 8, shape)
    enc = encode_int4(op, w)
    assert np.array_equal(decode_int4(enc, op, shape), w)
    assert enc.nbytes == int4_bytes(op, shape)
    assert enc.nbytes <= -(-w.size // 2) + shape[0]  # at most half a byte of padding per row


def test_int4_weight_formats_range_and_accumulator_bound():
    from codegen.fixed import QFormat, frac_for_range, quantize
    from codegen.passes.quantize import INT32_MAX, weight_formats

    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((6, 50)), rng.standard_normal(6) * 0.1
    fw, w_q, _, _ = weight_formats(w, b, 5, 4, bits=4)
    assert w_q.min() >= -8 and w_q.max() <= 7 and (np.abs(w_q).max(axis=1) >= 4).all()  # 4 bits used
    # per channel the frac of least squared error: the no-saturation one or one finer (saturating the largest)
    no_sat = np.array([frac_for_range(float(m), 4) for m in np.abs(w).max(axis=1)])
    assert ((fw == no_sat) | (fw == no_sat + 1)).all()
    for c in range(len(w)):
        err = [np.square(quantize(w[c], QFormat(4, int(f))) * 2.0**-f - w[c]).sum() for f in (no_sat[c], no_sat[c] + 1)]
        assert np.square(w_q[c] * 2.0 ** -fw[c] - w[c]).sum() == min(err)
    # one outlier per row: one frac finer (the outlier saturates at 7) is the better int4 format
    row = np.array([[1.0, 0.31, -0.28, 0.22, -0.17, 0.13, 0.05, -0.09]])
    fw, w_q, _, _ = weight_formats(row, np.zeros(1), 5, 4, bits=4)
    assert fw[0] == frac_for_range(1.0, 4) + 1 and w_q[0, 0] == 7
    # the DSP kernels accumulate 16 * w . x: a fan-in that would overflow that gets coarser weights
    big = np.full((1, 70000), 7.0)
    fw, w_q, _, _ = weight_formats(big, np.zeros(1), 0, 0, bits=4)
    assert 16 * np.abs(w_q).sum() * 128 <= INT32_MAX


# ---------------------------------------------------------------- C == reference


def test_kernels_are_the_s4_ones(model):
    from codegen.kernels import select

    graph = model[0]
    fns = {select(graph, n).fn for n in graph.nodes if len(n.inputs) > 1}
    assert fns == {"qg_conv2d_s4", "qg_depthwise_conv2d_s4", "qg_fully_connected_s4"}
    weights_c = (model[1] / "i4_weights.c").read_text()
    assert "int4 weights" in weights_c and "uint8_t i4_l0_conv2d_weights[" in weights_c


def test_int4_convolutions_may_overlap_a_dying_input(model):
    from codegen.kernels import select

    graph = model[0]
    nodes = {n.name: n for n in graph.nodes}
    for name in ("chain_conv", "chain_dw", "chain_conv1x1"):  # (the MLPerf Tiny models run them in place)
        assert select(graph, nodes[name]).overlap is not None
    assert select(graph, nodes["conv_g2_d2"]).overlap is None  # grouped: the DSP path gathers group by group


def test_host_c_equals_reference_under_sanitizers(model, tmp_path):
    graph, out, x, expect = model
    exe = build_native(out, "i4", tmp_path / "i4_asan", SANITIZE_FLAGS)
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, graph, "host C")


@pytest.mark.qemu
@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4", "cortex-m55"])
def test_firmware_equals_reference_on_core(model, core, tmp_path):
    """M0+: the plain nibble paths; M4: SXTB16/SMLAD; M55: the DSP paths and the Helium int8 depthwise."""
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    graph, out, x, expect = model
    board = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386", "cortex-m55": "mps3-an547"}[core]
    sources = [out / "i4_model.c", out / "i4_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "i4", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False)
    assert_outputs_equal(result.outputs, expect, graph, core)


# ---------------------------------------------------------------- choosing int4


def _small_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                         nn.Flatten(), nn.Linear(6 * 5 * 5, 10)).eval()


def _formats(result) -> dict[str, str]:
    g = result.graph
    return {n.name: str(g.tensors[n.inputs[1]].qformat)[:2] for n in g.nodes if len(n.inputs) > 1}


def test_weights_int4_and_per_layer_w4_through_the_api():
    import codegen

    x = np.random.default_rng(0).standard_normal((8, 3, 5, 5)).astype(np.float32)
    r8 = codegen.compile(_small_model(), (1, 3, 5, 5), x)
    r4 = codegen.compile(_small_model(), (1, 3, 5, 5), x, weights="int4")
    assert set(_formats(r4).values()) == {"s4"} and set(_formats(r8).values()) == {"s8"}
    assert r4.report["flash_bytes"] < 0.6 * r8.report["flash_bytes"]
    assert r4.verify(x).exact
    one = codegen.compile(_small_model(), (1, 3, 5, 5), x, precision={"4": 4})
    assert _formats(one) == {"0": "s8", "2": "s8", "4": "s4"}
    keep = codegen.compile(_small_model(), (1, 3, 5, 5), x, weights="int4", precision={"0": 8, "2": 16})
    assert _formats(keep) == {"0": "s8", "2": "s8", "4": "s8"}  # 4 reads int16: it keeps int8 weights
    with pytest.raises(UserError, match="int4 weights, whose kernels take int8 activations"):
        codegen.compile(_small_model(), (1, 3, 5, 5), x, precision={"2": 16, "4": 4})


def test_cli_weights_int4_and_precision_w4(tmp_path, capsys):
    from codegen.cli import main

    (tmp_path / "m.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(150, 4)).eval()\n")
    base = ["compile", f"{tmp_path / 'm.py'}:make", "--input-shape", "1,3,5,5"]
    assert main([*base, "--out", str(tmp_path / "a"), "--weights", "int4"]) == 0
    assert "qg_conv2d_s4(" in (tmp_path / "a" / "model_model.c").read_text()
    assert main([*base, "--out", str(tmp_path / "b"), "--precision", "3=w4"]) == 0
    c = (tmp_path / "b" / "model_model.c").read_text()
    assert "qg_fully_connected_s4(" in c and "qg_conv2d_s8(" in c
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c"), "--precision", "input=w4"]) == 1
    err = capsys.readouterr().err
    assert "has no weights" in err and "Traceback" not in err


def test_qat_int4_equals_integer_reference():
    import torch

    from codegen import qat
    from codegen.demo import digits_data, make_model

    x_tr, y_tr, x_te, _ = digits_data()
    torch.manual_seed(0)
    qm = qat.prepare(make_model(), torch.from_numpy(x_tr[:1]), x_tr[:200], weights="int4")
    qat.finetune(qm, x_tr[:200], y_tr[:200], epochs=1)
    result = qat.compile(qm, eval_data=x_te[:8])
    assert {str(result.graph.tensors[n.inputs[1]].qformat)[:2] for n in result.graph.nodes if len(n.inputs) > 1} \
        == {"s4"}
    with torch.no_grad():
        y_qat = qm.eval()(torch.from_numpy(x_te[:64])).numpy()
    assert np.array_equal(y_qat, result.predict(x_te[:64]))


@pytest.mark.micropython
def test_micropython_pure_module_unpacks_int4_at_import(model, tmp_path):
    """The pure module stores each int4 layer's weights packed (ceil(n/2) bytes) and unpacks them at import."""
    from test_micropython import check_graph

    from codegen.emit.micropython import render_micropython

    graph, _, x, _ = model
    src = render_micropython(graph, "i4", ["test"])["i4.py"]
    assert "_L0_W = _int4_rows((" in src and "int4 s4." in src
    check_graph(graph, x, tmp_path, prefix="i4")


def test_auto_precision_gives_int4_layers_int8_weights_until_the_bound_holds():
    """--weights int4 --auto-precision: the search's moves include 'this int4 layer gets int8 weights back'."""
    import torch
    from torch import nn

    import codegen

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((300, 8)).astype(np.float32)
    x_eval = rng.standard_normal((600, 8)).astype(np.float32)
    all4 = codegen.compile(model, (1, 8), calib, eval_data=x_eval, weights="int4")
    with torch.no_grad():
        float_pred = model(torch.from_numpy(x_eval)).numpy().argmax(1)
    drop4 = 100 * (1 - np.mean(all4.predict(x_eval).argmax(1) == float_pred))
    assert drop4 > 5.0, "int4 must lose accuracy on this model for the test to mean anything"
    r = codegen.compile(model, (1, 8), calib, eval_data=x_eval, weights="int4", auto_precision=3.0)
    auto = r.report["auto_precision"]
    assert auto["met"] and auto["int8_weight_layers"], auto
    assert set(_formats(r).values()) == {"s4", "s8"} or set(_formats(r).values()) == {"s8"}
    assert {k for k, v in _formats(r).items() if v == "s8"} >= set(auto["int8_weight_layers"])
    drop = 100 * (1 - np.mean(r.predict(x_eval).argmax(1) == float_pred))
    assert drop <= 3.0 and abs(drop - auto["steps"][-1]["drop"]) < 1e-9  # the search measured the compiled model
    assert any("int8 weights" in line for line in r.report["precision_lines"])


def test_natmod_folder_carries_the_int4_kernels_without_writable_data(model, tmp_path):
    """The MicroPython native module (natmod) compiles the same C: the s4 kernels ship, static data stays const."""
    import shutil

    from codegen.emit.mpy_native import render_native

    if shutil.which("gcc") is None or shutil.which("size") is None:
        pytest.skip("gcc/binutils are not installed")
    files = render_native(model[0], "i4", ["test"], "natmod")
    assert "qg_conv2d_s4.c" in files and "i4_l0_conv2d_weights" in "".join(files.values())
    assert_no_writable_static_data(files, tmp_path, "modi4.c", flags=("-Wall", "-Wextra", "-Werror", "-Wconversion"))


def test_flash_limit_counts_int4_weights_at_half_a_byte():
    """A model whose int8 weights exceed --max-flash but whose int4 weights fit is not refused early."""
    import torch
    from torch import nn

    import codegen

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()  # 4,736 weights
    calib = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    with pytest.raises(UserError, match="int8 weights"):
        codegen.compile(model, (1, 64), calib, max_flash=4000)
    r = codegen.compile(model, (1, 64), calib, max_flash=4000, weights="int4")
    assert r.report["flash_bytes"] <= 4000
    with pytest.raises(UserError, match="int8 and packed int4 weights"):
        codegen.compile(model, (1, 64), calib, max_flash=2000, weights="int4")
