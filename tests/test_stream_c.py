"""--stream in C: `<prefix>_step` / `<prefix>_reset` equal the streaming spec (codegen/stream.py) byte for byte on
the host (cffi; ASan/UBSan with strict warnings) and on Cortex-M0+ and M4 under QEMU, and the spec equals the
whole-window model (tests/passes/test_stream.py proves that part on more models).

Two models: a TCN (dense and depthwise causal dilated Conv1d, residual adds, the last time step) and a
keyword-spotting shaped one (causal Conv1d front end, a depthwise dilated block, a GRU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stream_models import KWS, TCN, ValidPool

import codegen
from codegen.errors import UserError
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native
from codegen.stream import window_reference

FRAMES = 40
MODELS = {  # name: (model, features, window frames, window the stream equals: frames or None = from frame 0)
    "tcn": (lambda: TCN(dilations=(1, 2, 4), depthwise=(False, True, False)), 10, 32, 32),  # receptive field 25
    "kws": (lambda: KWS(f=10, c=16, h=16, classes=6), 10, 24, None),
}


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request, tmp_path_factory):
    """The model compiled with stream=True; frames and the spec's outputs (FRAMES, OUTPUT_SIZE)."""
    name = request.param
    make, features, length, window = MODELS[name]
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("stream") / name
    result = codegen.compile(make().eval(), torch.randn(1, features, length), torch.randn(64, features, length),
                             prefix=name, stream=True, out_dir=out)
    rng = np.random.default_rng(5)
    frames = rng.integers(-128, 128, (1, 1, FRAMES, features)).astype(np.int8)
    frames[0, 0, 3:6] = 127  # saturated frames pass through every history and state
    frames[0, 0, 9] = -128
    expect = result.stream().run(frames)[0]
    return name, result, out, frames, expect, window


def test_header_and_report_describe_the_stream(compiled):
    name, result, out, _, _, window = compiled
    header = (out / f"{name}_model.h").read_text()
    assert f"int {name}_step(const {name}_input_t *in, int8_t *out);" in header
    assert f"void {name}_reset(void);" in header and f"int {name}_run(" not in header
    rep = result.report["stream"]
    assert f"#define {name.upper()}_STATE_SIZE {rep['state_bytes']}" in header
    assert rep["receptive_field"] == (25 if window else None)
    assert rep["state_bytes"] + rep["step_arena_bytes"] <= rep["window_arena_bytes"]
    assert str(codegen.pipeline(result.options)).endswith("plan_memory -> stream -> plan_memory")


def test_spec_equals_whole_window(compiled):
    _, result, _, frames, expect, window = compiled
    for t in range(window - 1 if window else 0, FRAMES):
        np.testing.assert_array_equal(expect[t], window_reference(result.window_graph, frames, t, window)[0])


def test_host_c_steps_and_resets_like_the_spec(compiled):
    _, result, _, frames, expect, _ = compiled
    host = result.host()
    host.reset()
    host.run(frames[0, 0, :7])  # a stream interrupted: reset forgets it
    host.reset()
    np.testing.assert_array_equal(host.run(frames[0, 0]), expect)


def test_float_sequences_of_any_length_quantise_and_verify(compiled):
    name, result, _, _, _, _ = compiled
    features = MODELS[name][1]
    x = np.random.default_rng(2).standard_normal((2, features, 7)).astype(np.float32)
    assert result.quantize_input(x).shape == (2, 1, 7, features)  # the stream's frames in order
    assert result.verify(x).exact
    with pytest.raises(UserError, match="sequences"):
        result.quantize_input(x[0, 0])
    steps = result.reference(result.quantize_input(x))  # (N, L, OUTPUT_SIZE): every step of each stream
    np.testing.assert_array_equal(steps, result.stream().run(result.quantize_input(x)))
    out = result.graph.tensors[result.graph.outputs[0]]
    np.testing.assert_array_equal(result.predict(x).reshape(2, -1),
                                  steps[:, -1, :out.size] * 2.0 ** -out.qformat.frac)


def test_host_c_under_sanitizers(compiled, tmp_path):
    name, _, out, frames, expect, _ = compiled
    exe = build_native(out, name, tmp_path / f"{name}_asan", SANITIZE_FLAGS)
    np.testing.assert_array_equal(run_native(exe, frames[0, 0], expect.shape[1]), expect)


@pytest.mark.parametrize("core, board", [("cortex-m0plus", "rp2040"), ("cortex-m4", "mps2-an386")])
def test_bit_exact_on_core(core, board, compiled, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    name, _, out, frames, expect, _ = compiled
    sources = [out / f"{name}_model.c", out / f"{name}_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], name, tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    got = run_qemu(board, elf, frames[0, 0], expect.shape[1]).outputs
    np.testing.assert_array_equal(got, expect, err_msg=core)


def test_qgen_run_streams_the_saved_sequences_on_qemu(compiled):
    """`qgen run` of a stream: the saved sequences' frames are one stream on the board, each step == the spec."""
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    name, result, out, _, _, _ = compiled
    if name != "tcn":
        pytest.skip("one firmware is enough")
    run = deploy.run(out, "mps2-an386", n=2)
    length = result.window_graph.tensors[result.window_graph.inputs[0]].shape[1]
    assert run.exact and run.samples == 2 * length


def test_qgen_verify_steps_the_saved_sequences(compiled, capsys):
    from codegen import cli

    name, _, out, _, _, _ = compiled
    assert cli.main(["verify", str(out)]) == 0
    assert "bit-exact: yes" in capsys.readouterr().out


def test_int16_layers_and_input_stream_bit_exact():
    """Mixed precision: an int16 model input (its first conv stays a conv: see passes/stream._as_linear) and an int16
    layer whose history holds int16 frames (qg_history_s8 is byte-wise)."""
    torch.manual_seed(3)
    model = TCN(c=8, dilations=(1, 2), depthwise=(False, True)).eval()
    result = codegen.compile(model, torch.randn(1, 10, 16), torch.randn(32, 10, 16), prefix="wide", stream=True,
                             precision={"input": 16, "blocks.0.conv1": 16})
    assert {result.graph.tensors[n.outputs[0]].dtype for n in result.graph.nodes if n.op.value == "history"} == \
        {"int16", "int8"}
    frames = np.random.default_rng(0).integers(-32768, 32768, (1, 1, 30, 10)).astype(np.int16)
    host = result.host()
    host.reset()
    np.testing.assert_array_equal(host.run(frames[0, 0]), result.stream().run(frames)[0])


def test_pooling_over_the_window_bit_exact():
    """Mean and max over the whole window (after valid convs) on their window histories: host C == spec."""
    torch.manual_seed(0)
    result = codegen.compile(ValidPool().eval(), torch.randn(1, 4, 12), torch.randn(32, 4, 12), prefix="vp",
                             stream=True)
    frames = np.random.default_rng(0).integers(-128, 128, (1, 1, 30, 4)).astype(np.int8)
    host = result.host()
    host.reset()
    np.testing.assert_array_equal(host.run(frames[0, 0]), result.stream().run(frames)[0])


def test_bundle_and_split_refuse_a_stream(compiled):
    from codegen.bundle import bundle
    from codegen.split import split_model

    name, result, out, _, _, _ = compiled
    with pytest.raises(UserError, match="--stream"):
        bundle([out])
    with pytest.raises(UserError, match="--stream"):
        split_model(result, [result.graph.nodes[1].name])


def test_stream_refuses_the_caller_arena():
    torch.manual_seed(0)
    with pytest.raises(UserError, match="arena-argument"):
        codegen.compile(TCN(), torch.randn(1, 10, 8), stream=True, arena_argument=True)
