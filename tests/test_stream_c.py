"""--stream in C: `<prefix>_step` / `<prefix>_reset` equal the streaming spec (codegen/stream.py) byte for byte on
the host (cffi; ASan/UBSan with strict warnings) and on Cortex-M0+ and M4 under QEMU (one firmware per core), and
the spec equals the whole-window model on every window (tests/passes/test_stream.py proves that part)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stream_models import TCN

import codegen
from codegen.errors import UserError
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native
from codegen.stream import window_reference

WINDOW = 32  # >= the receptive field (25)
FRAMES = 40


@pytest.fixture(scope="module")
def tcn(tmp_path_factory):
    """A TCN with a dense and a depthwise causal block, compiled with stream=True; frames and the spec's outputs."""
    torch.manual_seed(3)
    model = TCN(dilations=(1, 2, 4), depthwise=(False, True, False)).eval()
    out = tmp_path_factory.mktemp("stream") / "tcn"
    result = codegen.compile(model, torch.randn(1, 10, WINDOW), torch.randn(64, 10, WINDOW), prefix="tcn",
                             stream=True, out_dir=out)
    rng = np.random.default_rng(5)
    frames = rng.integers(-128, 128, (1, 1, FRAMES, 10)).astype(np.int8)
    frames[0, 0, 3:6] = 127  # saturated frames pass through every history
    frames[0, 0, 9] = -128
    expect = result.stream().run(frames)[0]  # (FRAMES, OUTPUT_SIZE)
    return result, out, frames, expect


def test_header_and_report_describe_the_stream(tcn):
    result, out, _, _ = tcn
    header = (out / "tcn_model.h").read_text()
    assert "int tcn_step(const tcn_input_t *in, int8_t *out);" in header and "void tcn_reset(void);" in header
    assert "int tcn_run(" not in header
    rep = result.report["stream"]
    assert f"#define TCN_STATE_SIZE {rep['state_bytes']}" in header
    assert rep["receptive_field"] == 25 and rep["window_frames"] == WINDOW
    assert rep["state_bytes"] + rep["step_arena_bytes"] <= rep["window_arena_bytes"]
    assert str(codegen.pipeline(result.options)).endswith("plan_memory -> stream -> plan_memory")


def test_spec_equals_whole_window(tcn):
    result, _, frames, expect = tcn
    for t in range(WINDOW - 1, FRAMES):
        np.testing.assert_array_equal(expect[t], window_reference(result.window_graph, frames, t, WINDOW)[0])


def test_host_c_steps_and_resets_like_the_spec(tcn):
    result, _, frames, expect = tcn
    host = result.host()
    host.reset()
    host.run(frames[0, 0, :7])  # a stream interrupted: reset forgets it
    host.reset()
    np.testing.assert_array_equal(host.run(frames[0, 0]), expect)


def test_host_c_under_sanitizers(tcn, tmp_path):
    _, out, frames, expect = tcn
    exe = build_native(out, "tcn", tmp_path / "tcn_asan", SANITIZE_FLAGS)
    np.testing.assert_array_equal(run_native(exe, frames[0, 0], expect.shape[1]), expect)


@pytest.mark.parametrize("core, board", [("cortex-m0plus", "rp2040"), ("cortex-m4", "mps2-an386")])
def test_bit_exact_on_core(core, board, tcn, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    _, out, frames, expect = tcn
    sources = [out / "tcn_model.c", out / "tcn_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "tcn", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    got = run_qemu(board, elf, frames[0, 0], expect.shape[1]).outputs
    np.testing.assert_array_equal(got, expect, err_msg=core)


def test_stream_refuses_the_caller_arena():
    torch.manual_seed(0)
    with pytest.raises(UserError, match="arena-argument"):
        codegen.compile(TCN(), torch.randn(1, 10, 8), stream=True, arena_argument=True)
