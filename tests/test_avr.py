"""qgen's C on an 8-bit AVR with 16-bit `int` (codegen/target/avr.py): generated models built with avr-gcc
(-Wconversion, -Werror) and run under simavr must equal codegen.reference.run_int byte for byte; weights and
layer parameters are in flash (QG_CONST, read with LPM), so SRAM holds the arena, buffers and stack; a model that
does not fit the board's SRAM, or whose flash data passes the 64 KB that LPM reaches, is refused with the numbers.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from qgen_testing import edge_inputs
from test_golden import CASES, _calib, _digits
from test_kernels_fast import image_graph, vector_graph

import codegen
from codegen.cli import main
from codegen.emit.c import render, write_atomic
from codegen.errors import UserError
from codegen.hostcheck import reference_outputs
from codegen.reference import run_int
from codegen.target import list_boards, load_board
from codegen.target.avr import AvrMemory, avr_missing_tools, check_avr_fit, load_avr_board, run_avr

needs_avr = pytest.mark.skipif(bool(avr_missing_tools()), reason=f"missing tools: {avr_missing_tools()}")


def test_avr_boards_are_data_apart_from_the_cortex_m_boards():
    uno, mega = load_avr_board("atmega328p"), load_avr_board("atmega2560")
    assert (uno.flash_kb, uno.ram_kb, uno.clock_mhz, uno.simavr.mcu) == (32, 2, 16, "atmega328p")
    assert (mega.flash_kb, mega.ram_kb, mega.clock_mhz, mega.simavr.mcu) == (256, 8, 16, "atmega2560")
    assert list_boards("avr") == ["atmega2560", "atmega328p"]
    assert not set(list_boards("avr")) & set(list_boards())  # QEMU-only callers never see an AVR board
    with pytest.raises(UserError, match="'atmega328p' is an 8-bit AVR board: it runs under simavr"):
        load_board("atmega328p")
    with pytest.raises(UserError, match="not an AVR board; AVR boards: atmega2560, atmega328p"):
        load_avr_board("rp2040")


def test_fit_refusal_names_the_numbers_and_the_board_that_fits():
    board = load_avr_board("atmega328p")
    check_avr_fit(board, AvrMemory(flash_bytes=9000, static_ram_bytes=2048 - 256))  # exactly full: fits
    with pytest.raises(UserError) as err:
        check_avr_fit(board, AvrMemory(flash_bytes=9000, static_ram_bytes=2048 - 255))
    assert str(err.value) == (
        "model does not fit the atmega328p: needs 1793 B of static RAM (the arena, the input and output buffers and "
        "a layer's parameters; the weights are in flash) + 256 B of stack = 2049 B, the atmega328p has 2048 B; "
        "it fits the atmega2560: use that board")
    with pytest.raises(UserError, match="has 8192 B; no AVR board fits it"):
        check_avr_fit(load_avr_board("atmega2560"), AvrMemory(flash_bytes=9000, static_ram_bytes=9000))


@needs_avr
@pytest.mark.parametrize("make", [image_graph, vector_graph], ids=["image", "vector"])
def test_kernels_bit_exact_on_atmega2560(make, tmp_path):
    """Convolutions (3x5, stride 2, asymmetric padding, per-channel shifts -3..14), depthwise (multiplier 2),
    max pooling and fully connected layers with every clamp kind, on edge and random inputs."""
    rng = np.random.default_rng(31)
    graph = make(rng)
    write_atomic(render(graph, "kf", ["test"]), tmp_path / "model")
    x = edge_inputs(rng, graph.tensors[graph.inputs[0]].shape, n_random=2)
    expect = reference_outputs(graph, run_int(graph, x))
    run = run_avr("atmega2560", tmp_path / "model", "kf", x, tmp_path / "avr", expect.shape[1])
    assert run.outputs.shape == expect.shape
    assert np.array_equal(run.outputs, expect), np.argwhere(run.outputs != expect)[:5]
    assert len(run.cycles) == len(x) and min(run.cycles) > 1000
    assert 0 < run.stack_peak_bytes < 1024


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    model, shape, _ = _digits()
    calib = _calib(shape)
    out = tmp_path_factory.mktemp("digits") / "model"
    result = codegen.compile(model, torch.zeros(1, *shape), calib, prefix="digits_cnn", out_dir=out)
    x = result.quantize_input(calib[:3])
    return out, x, result.reference(x)


@needs_avr
def test_digits_cnn_bit_exact_on_atmega2560_and_atmega328p(digits, tmp_path):
    out, x, expect = digits
    run = run_avr("atmega2560", out, "digits_cnn", x, tmp_path / "mega", expect.shape[1], per_layer=True)
    assert np.array_equal(run.outputs, expect)
    # 18,912 MACs at ~125 cycles each: 32-bit accumulation on an 8-bit core, weights read with LPM
    assert 1_000_000 < max(run.cycles) < 5_000_000
    # per layer (conv, pool, conv, pool, reshape, linear): the layers add up to the inference
    assert len(run.cycles_per_layer) == 6 and run.cycles_per_layer[4] < 200
    assert 0 <= run.cycles[0] - sum(run.cycles_per_layer) < 250
    assert run.ram_peak_bytes <= 8192 - 4096
    # weights and parameter structs in flash: SRAM is the arena, the harness's buffers, one struct and the stack
    # (with the weights in SRAM it took 2,600 B static and was refused on the atmega328p)
    uno = run_avr("atmega328p", out, "digits_cnn", x, tmp_path / "uno", expect.shape[1])
    assert np.array_equal(uno.outputs, expect)
    arena = int(re.search(r"DIGITS_CNN_ARENA_SIZE (\d+)", (out / "digits_cnn_model.h").read_text()).group(1))
    assert uno.memory.static_ram_bytes < arena + 200 and uno.ram_peak_bytes <= 2048


def test_a_compressed_layer_falling_back_to_dense_copies_its_parameters_once(digits):
    """A layer asked for sparse storage whose encoding would not be smaller is emitted by the dense path (a nested
    layer()); its call must read the struct through <PREFIX>_PARAMS once: twice would memcpy_P the RAM copy as if it
    were flash on AVR."""
    from codegen.api import load_compiled

    graph = load_compiled(digits[0]).graph
    conv = next(n for n in graph.nodes if n.op.value == "conv2d")
    w = graph.tensors[conv.inputs[1]]
    w.data = np.where(w.data == 0, 1, w.data).astype(w.data.dtype)  # no zeros: sparse is not smaller
    conv.attrs["weight_format"] = "sparse"
    calls = [line for line in render(graph, "fb", ["test"])["fb_model.c"].splitlines() if "FB_PARAMS(&" in line]
    assert calls[0].strip().startswith("qg_conv2d_s8(FB_PARAMS(&fb_l0_conv2d), ")
    assert not [line for line in calls if "FB_PARAMS(FB_PARAMS(" in line]


@needs_avr
def test_the_digits_demo_model_runs_on_the_atmega328p(tmp_path):
    """The issue's target: `qgen demo`'s digits CNN (80,896 MACs, 1,680 B arena) on an Uno's 2 KB of SRAM. Its
    RAM use depends on the architecture only, so an untrained copy (same shapes, same kernels) is used."""
    from codegen import demo

    torch.manual_seed(0)
    x_tr = demo.digits_data()[0][:64]
    result = codegen.compile(demo.make_model().eval(), torch.from_numpy(x_tr[:1]), x_tr, prefix="digits",
                             out_dir=tmp_path / "model")
    x = result.quantize_input(x_tr[:2])
    expect = result.reference(x)
    run = run_avr("atmega328p", tmp_path / "model", "digits", x, tmp_path / "uno", expect.shape[1])
    assert np.array_equal(run.outputs, expect)
    assert result.report["arena_bytes"] == 1680
    assert run.ram_peak_bytes <= 2048 and run.memory.static_ram_bytes + load_avr_board("atmega328p").stack_bytes <= 2048
    assert run.memory.flash_bytes > result.report["flash_bytes"]  # the 3,954 B of weights are in flash


@needs_avr
def test_flash_data_beyond_64_kb_and_arrays_over_32_kb_are_refused_with_the_limit(tmp_path):
    """pgm_read_* (LPM) reaches the first 64 KB of flash: three 24 KB weight matrices on the atmega2560 (256 KB)
    are refused before any run, naming the limit; one array over 32,767 B cannot exist on AVR (16-bit size_t)."""
    model = torch.nn.Sequential(torch.nn.Linear(96, 256), torch.nn.Linear(256, 96), torch.nn.Linear(96, 256))
    calib = np.random.default_rng(0).standard_normal((8, 96)).astype(np.float32)
    result = codegen.compile(model, torch.zeros(1, 96), calib, prefix="big", out_dir=tmp_path / "model")
    x = result.quantize_input(calib[:1])
    with pytest.raises(UserError, match=r"does not fit the atmega2560: its constant data in flash ends at byte "
                                        r"7\d,\d{3}, .*reaches the first 65,536 B only"):
        run_avr("atmega2560", tmp_path / "model", "big", x, tmp_path / "avr", 256)
    model = torch.nn.Linear(280, 128)  # 35,840 B
    calib = calib[:, :1].repeat(280, 1)
    result = codegen.compile(model, torch.zeros(1, 280), calib, prefix="huge", out_dir=tmp_path / "huge")
    with pytest.raises(UserError, match=r"its constant array huge_l0_linear_weights is larger than an AVR object"):
        run_avr("atmega2560", tmp_path / "huge", "huge", result.quantize_input(calib[:1]), tmp_path / "avr2", 128)


@needs_avr
def test_qgen_run_on_an_avr_board_goes_to_simavr(digits, capsys):
    out, _, _ = digits
    assert main(["run", str(out), "--board", "atmega2560", "-n", "2", "--per-layer"]) == 0
    printed = capsys.readouterr().out
    assert "board atmega2560 (avr6, 16 MHz) under simavr" in printed and "bit-exact: 2/2 samples" in printed
    assert re.search(r"^\| linear '8' \| 480 \| [\d,]+ \| [\d.]+ \|$", printed, re.M), printed
    assert re.search(r"cycles per inference: [\d,]+ \([\d.]+ ms at 16 MHz\), [\d.]+ cycles/MAC", printed)
    assert main(["run", str(out), "--board", "atmega328p", "-n", "1"]) == 0
    assert "bit-exact: 1/1 samples" in capsys.readouterr().out


@needs_avr
def test_qgen_run_refuses_a_model_too_big_for_the_atmega328p(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 16 * 16, 4))  # 4 KB arena
    calib = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    codegen.compile(model, torch.zeros(1, 1, 16, 16), calib, prefix="wide", out_dir=tmp_path / "model")
    assert main(["run", str(tmp_path / "model"), "--board", "atmega328p", "-n", "1"]) == 1
    assert "it fits the atmega2560: use that board" in capsys.readouterr().err


@needs_avr
def test_int16_activations_bit_exact_on_atmega2560(tmp_path):
    """The golden int16 model (conv s8->s16, depthwise s16, conv s16->s8, avg pool): the int16 dot product of
    qg_wide.c multiplied int16 by int8 in `int`, which overflows a 16-bit int (every output differed)."""
    model, shape, kwargs = CASES["depthwise_int16"]()
    kwargs.pop("micropython")
    calib = _calib(shape)
    result = codegen.compile(model, torch.zeros(1, *shape), calib, prefix="dw16", out_dir=tmp_path / "model",
                             **kwargs)
    x = result.quantize_input(np.concatenate([calib[:2], calib[2:4] * 8]))
    expect = result.reference(x)
    run = run_avr("atmega2560", tmp_path / "model", "dw16", x, tmp_path / "avr", expect.shape[1])
    assert np.array_equal(run.outputs, expect)


@needs_avr
@pytest.mark.parametrize("case", ["sparse", "clustered"])
def test_compressed_weights_read_from_flash_bit_exact_on_atmega328p(case, tmp_path):
    """The sparse (bitmap/index) and clustered kernels walk their packed weights with qg_w8/qg_wu8 (LPM): the golden
    models bit-exact on the Uno's chip, their arrays in flash (the sparse one took 2,304 B of SRAM before)."""
    model, shape, kwargs = CASES[case]()
    kwargs.pop("micropython", None)
    calib = _calib(shape)
    result = codegen.compile(model, torch.zeros(1, *shape), calib, prefix=case, out_dir=tmp_path / "model", **kwargs)
    x = result.quantize_input(calib[:3])
    expect = result.reference(x)
    run = run_avr("atmega328p", tmp_path / "model", case, x, tmp_path / "avr", expect.shape[1])
    assert np.array_equal(run.outputs, expect)
    assert run.memory.static_ram_bytes < result.report["arena_bytes"] + 200


@needs_avr
def test_lstm_reads_weights_initial_state_and_tanh_table_from_flash_on_atmega328p(tmp_path):
    """A bidirectional LSTM with biases and a constant initial state (h0, c0): its weights, biases, shifts, h0/c0 and
    the kernel's 513-entry tanh table are QG_CONST, read with qg_w* (the table alone took 1 KB of the Uno's SRAM)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
    from fuzzgen import build_model, calib_data, int8_inputs

    spec = {"input": [6, 5], "layers": [{"op": "rnn", "kind": "lstm", "hidden": 7, "layers": 1, "bi": True,
                                         "bias": True, "h0": True, "wexp": 0, "read": "out"}],
            "taps": [], "seed": 3, "calib": {"n": 8, "seed": 3, "kind": "normal", "exp": 0}}
    calib = calib_data(spec)
    result = codegen.compile(build_model(spec), torch.from_numpy(calib[:1]), calib, prefix="lstm",
                             out_dir=tmp_path / "model")
    g = result.graph
    x = int8_inputs(spec, g.tensors[g.inputs[0]].shape, result.quantize_input(calib), n_random=2)
    expect = result.reference(x)
    run = run_avr("atmega328p", tmp_path / "model", "lstm", x, tmp_path / "avr", expect.shape[1])
    assert np.array_equal(run.outputs, expect)
    assert run.memory.static_ram_bytes < result.report["arena_bytes"] + 400


@needs_avr
def test_int4_weights_read_from_flash_bit_exact_on_atmega2560(tmp_path):
    """test_int4's graph (packed int4 conv: strided, padded, grouped, dilated; depthwise: odd count, multiplier 2; FC
    rows of every tail): nibbles, biases and shifts read with qg_w8/qg_w32; the depthwise takes its own flash path
    on AVR (qg_depthwise_conv2d_s8, which the other cores unpack into, reads weights from flash)."""
    from test_int4 import SHAPE, int4_graph

    rng = np.random.default_rng(44)
    graph = int4_graph(rng)
    write_atomic(render(graph, "i4", ["test"]), tmp_path / "model")
    x = edge_inputs(rng, SHAPE, n_random=1)[-2:]
    expect = reference_outputs(graph, run_int(graph, x))
    run = run_avr("atmega2560", tmp_path / "model", "i4", x, tmp_path / "avr", expect.shape[1])
    assert np.array_equal(run.outputs, expect), np.argwhere(run.outputs != expect)[:5]
    assert re.search(r"uint8_t i4_l0_conv2d_weights\[\d+\] QG_ALIGN\(4\) QG_CONST = ",
                     (tmp_path / "model" / "i4_weights.c").read_text())


@needs_avr
def test_gru_with_an_odd_gate_row_count_bit_exact_on_atmega2560(tmp_path):
    """hidden 1: 3 gate rows, the last one alone, whose int16 h x int8 weight product was made in `int`
    (overflowed on AVR: found by tests/fuzz/test_fuzz_avr.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))
    from fuzzgen import build_model, calib_data, int8_inputs

    spec = {"input": [2, 1], "layers": [{"op": "rnn", "kind": "gru", "hidden": 1, "layers": 1, "bi": True,
                                         "bias": False, "h0": False, "wexp": 0, "read": "out"}],
            "taps": [], "seed": 0, "calib": {"n": 1, "seed": 0, "kind": "normal", "exp": 0}}
    calib = calib_data(spec)
    result = codegen.compile(build_model(spec), torch.from_numpy(calib[:1]), calib, prefix="gru1",
                             out_dir=tmp_path / "model")
    g = result.graph
    x = int8_inputs(spec, g.tensors[g.inputs[0]].shape, result.quantize_input(calib), n_random=2)
    expect = result.reference(x)
    run = run_avr("atmega2560", tmp_path / "model", "gru1", x, tmp_path / "avr", expect.shape[1])
    assert np.array_equal(run.outputs, expect)
