"""Firmware under QEMU: a small fake model, built for every Cortex-M core, must give exactly the
outputs NumPy computes, with instruction counts that are positive, repeatable and linear in the work.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codegen.errors import UserError
from codegen.target import (
    CORES,
    TargetError,
    build_elf,
    build_plugin,
    list_boards,
    load_board,
    missing_tools,
    run_qemu,
    write_project,
)

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")

# One board per core; each runs on a different QEMU machine (M0+ code runs on the M3 machine).
BOARD_FOR_CORE = {
    "cortex-m0plus": "rp2040",
    "cortex-m3": "mps2-an385",
    "cortex-m4": "stm32f446",
    "cortex-m7": "stm32h743",
    "cortex-m33": "mps2-an505",
    "cortex-m55": "mps3-an547",
    "cortex-m85": "ra8m1",  # runs on QEMU's mps3-an547 (M55): QEMU has no M85
}

IN_SIZE, N_ROWS = 32, 8
OUT_SIZE = 3 * N_ROWS
DIVISOR = 97
WEIGHTS_I8 = np.random.default_rng(1).integers(-128, 128, size=(N_ROWS, IN_SIZE), dtype=np.int8)

# A fake model with the generated-code interface: a dot product per row, requantised three ways,
# each saturated to int8: round-half-up shift; truncating division (a libgcc call on M0+); float
# scaling by 2^-7 (exact, so bit-exact; it faults on a hard-float core whose FPU is not enabled).
# It fails (returns 1) when the first four inputs are -128, to test the error path.
MODEL_H = f"""\
#ifndef TM_MODEL_H
#define TM_MODEL_H
#include <stdint.h>
#define TM_INPUT_SIZE {IN_SIZE}
#define TM_OUTPUT_SIZE {OUT_SIZE}
int tm_run(const int8_t *in, int8_t *out);
#endif
"""
MODEL_C_TEMPLATE = """\
#include "tm_model.h"
static const int8_t tm_weights[{rows}][{cols}] = {{ {weights} }};
{extra}
static int8_t sat8(int32_t x) {{ return (int8_t)(x > 127 ? 127 : (x < -128 ? -128 : x)); }}
int tm_run(const int8_t *in, int8_t *out)
{{
    for (int j = 0; j < {rows}; ++j) {{
        int32_t acc = 0;
        for (int i = 0; i < {cols}; ++i) acc += (int32_t)in[i] * tm_weights[j][i];
        out[j] = sat8((acc + 16) >> 5);
        out[{rows} + j] = sat8(acc / {divisor});
        out[2 * {rows} + j] = sat8((int32_t)((float)acc * 0.0078125f));
    }}
    {extra_use}
    return (in[0] == -128 && in[1] == -128 && in[2] == -128 && in[3] == -128) ? 1 : 0;
}}
"""


def reference(inputs_i8: np.ndarray) -> np.ndarray:
    acc_i32 = inputs_i8.astype(np.int32) @ WEIGHTS_I8.T.astype(np.int32)
    shifted = (acc_i32 + 16) >> 5
    divided = np.sign(acc_i32) * (np.abs(acc_i32) // DIVISOR)  # C division truncates toward zero
    scaled = np.trunc(acc_i32.astype(np.float32) * np.float32(0.0078125)).astype(np.int32)
    return np.clip(np.concatenate([shifted, divided, scaled], axis=1), -128, 127).astype(np.int8)


def write_model(directory: Path, big_table_bytes: int = 0) -> Path:
    """Write tm_model.h/.c; `big_table_bytes` adds a used constant table to inflate flash."""
    directory.mkdir(parents=True, exist_ok=True)
    extra = extra_use = ""
    if big_table_bytes:
        extra = f"static const int8_t tm_big[{big_table_bytes}] = {{1}};"
        extra_use = f"out[0] = (int8_t)(out[0] + tm_big[(uint8_t)in[5] * {big_table_bytes // 256}]);"
    weights = ", ".join("{" + ", ".join(map(str, row)) + "}" for row in WEIGHTS_I8.tolist())
    (directory / "tm_model.h").write_text(MODEL_H)
    (directory / "tm_model.c").write_text(MODEL_C_TEMPLATE.format(
        rows=N_ROWS, cols=IN_SIZE, weights=weights, divisor=DIVISOR, extra=extra, extra_use=extra_use))
    return directory


def make_inputs(n: int, seed: int) -> np.ndarray:
    """Full-range rows (mostly saturating) alternating with small rows (mostly not)."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(-128, 128, size=(n, IN_SIZE))
    narrow = rng.integers(-6, 7, size=(n, IN_SIZE))
    return np.where(np.arange(n)[:, None] % 2 == 0, wide, narrow).astype(np.int8)


@pytest.fixture(scope="session")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("model"))


def build(board: str, model: Path, out_dir: Path, **kwargs):
    return build_elf(board, [model / "tm_model.c"], [model], "tm", out_dir, **kwargs)


def test_every_core_is_tested():
    assert set(BOARD_FOR_CORE) == set(CORES)
    assert all(load_board(board).core == core for core, board in BOARD_FOR_CORE.items())


@pytest.mark.parametrize("core", CORES)
def test_outputs_exact_and_counts_deterministic_and_linear(core, model_dir, plugin, tmp_path):
    board = BOARD_FOR_CORE[core]
    elf = build(board, model_dir, tmp_path)
    assert elf.sizes.text > 0 and elf.sizes.rodata >= WEIGHTS_I8.size and elf.fit.fits
    inputs = make_inputs(6, seed=len(core))
    assert reference(inputs).min() == -128 and reference(inputs).max() == 127  # saturation exercised

    first = run_qemu(board, elf, inputs, OUT_SIZE, plugin=plugin)
    np.testing.assert_array_equal(first.outputs, reference(inputs))
    assert first.instructions_total > IN_SIZE * N_ROWS  # at least one instruction per MAC
    assert first.instructions_program > first.instructions_total  # boot and I/O are excluded

    again = run_qemu(board, elf, inputs, OUT_SIZE, plugin=plugin)
    assert (again.instructions_total, again.instructions_program) == (
        first.instructions_total, first.instructions_program)

    doubled = run_qemu(board, elf, np.concatenate([inputs, inputs]), OUT_SIZE, plugin=plugin)
    np.testing.assert_array_equal(doubled.outputs[len(inputs):], reference(inputs))
    assert doubled.instructions_total == 2 * first.instructions_total
    assert doubled.instructions_per_inference == first.instructions_per_inference


NOPS_RUN_S = """\
    .syntax unified
    .thumb
    .global tm_run
    .type tm_run, %function
    .thumb_func
tm_run:
    movs r0, #0
    .rept {nops}
    nop
    .endr
    bx lr
"""


@pytest.mark.parametrize("board", ["rp2040", "mps3-an547"])
def test_counts_are_exact(board, plugin, tmp_path):
    """A run function with k more instructions costs exactly k more per inference."""
    per_inference = []
    for nops in (0, 37):
        model = tmp_path / f"nops{nops}"
        model.mkdir()
        (model / "tm_model.h").write_text(MODEL_H)
        (model / "tm_run.S").write_text(NOPS_RUN_S.format(nops=nops))
        elf = build_elf(board, [model / "tm_run.S"], [model], "tm", model / "build")
        result = run_qemu(board, elf, make_inputs(5, seed=0), OUT_SIZE, plugin=plugin)
        per_inference.append(result.instructions_per_inference)
    assert per_inference[1] - per_inference[0] == 37
    assert per_inference[0] < 12  # movs + bx lr + the call itself (argument moves, bl, result move)


def test_counting_can_be_switched_off(model_dir, tmp_path):
    elf = build("mps2-an385", model_dir, tmp_path)
    inputs = make_inputs(3, seed=7)
    result = run_qemu("mps2-an385", elf, inputs, OUT_SIZE, count_instructions=False)
    np.testing.assert_array_equal(result.outputs, reference(inputs))
    assert result.instructions_total is None and result.instructions_per_inference is None


def test_fault_in_the_model_is_reported(tmp_path, plugin):
    model = write_model(tmp_path / "model")
    (model / "tm_model.c").write_text('#include "tm_model.h"\n'
                                      "int tm_run(const int8_t *in, int8_t *out)\n"
                                      "{ (void)in; (void)out; __builtin_trap(); }\n")
    elf = build("rp2040", model, tmp_path / "build")
    with pytest.raises(TargetError, match=r"unexpected exception(.|\n)*exception 0x00000003 at pc"):
        run_qemu("rp2040", elf, make_inputs(1, seed=0), OUT_SIZE, plugin=plugin)


def test_model_error_status_is_reported(model_dir, plugin, tmp_path):
    elf = build("mps2-an386", model_dir, tmp_path)
    inputs = make_inputs(3, seed=3)
    inputs[1, :4] = -128
    with pytest.raises(TargetError, match="run function returned a nonzero status"):
        run_qemu("mps2-an386", elf, inputs, OUT_SIZE, plugin=plugin)


def test_model_too_big_for_the_real_board(tmp_path):
    model = write_model(tmp_path / "model", big_table_bytes=600 * 1024)
    with pytest.raises(UserError, match=r"model needs 60\d\.\d KB flash; stm32f446 has 512 KB"):
        build("stm32f446", model, tmp_path / "build")
    # The same image still links for QEMU (4 MB) when the check is off.
    elf = build("stm32f446", model, tmp_path / "build", check_fit=False)
    assert not elf.fit.fits and elf.fit.flash_bytes > 600 * 1024


def test_model_too_big_for_the_qemu_memory_map(tmp_path):
    model = write_model(tmp_path / "model", big_table_bytes=600 * 1024)
    with pytest.raises(UserError, match=r"does not fit the mps3-an547 memory map"):
        build("mps3-an547", model, tmp_path / "build", check_fit=False)


def test_model_warnings_are_kept(tmp_path):
    model = write_model(tmp_path / "model")
    (model / "extra.c").write_text("int tm_extra(int x) { int unused; return x; }\n")
    elf = build_elf("mps2-an385", [model / "tm_model.c", model / "extra.c"], [model], "tm", tmp_path / "b")
    assert "unused variable 'unused'" in elf.warnings
    assert "tm_model.c" not in elf.warnings


def test_compile_error_is_a_target_error(tmp_path):
    model = write_model(tmp_path / "model")
    (model / "broken.c").write_text("int broken(void) { return undefined_name; }\n")
    with pytest.raises(TargetError, match="undefined_name"):
        build_elf("mps2-an385", [model / "tm_model.c", model / "broken.c"], [model], "tm", tmp_path / "b")


def test_unknown_board_in_build_is_a_user_error(model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown board 'nope'; known boards: " + ", ".join(list_boards())):
        build("nope", model_dir, tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_written_project_builds_with_make_and_runs(model_dir, plugin, tmp_path):
    project = write_project("nrf52840", model_dir, tmp_path / "fw", kernels=tmp_path / "no-kernels")
    subprocess.run(["make", "-s", "-j2"], cwd=project, check=True, capture_output=True)
    inputs = make_inputs(4, seed=11)
    result = run_qemu("nrf52840", project / "firmware.elf", inputs, OUT_SIZE, plugin=plugin)
    np.testing.assert_array_equal(result.outputs, reference(inputs))
    # Rewriting over a previous project is allowed; over anything else it is refused.
    write_project("nrf52840", model_dir, project, kernels=tmp_path / "no-kernels")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a qgen firmware project"):
        write_project("nrf52840", model_dir, tmp_path / "mine")


# ---------------------------------------------------------------------------- per-layer counts

TRACED_MODEL_H = f"""\
#ifndef TM_MODEL_H
#define TM_MODEL_H
#include <stdint.h>
#define TM_INPUT_SIZE {IN_SIZE}
#define TM_OUTPUT_SIZE {OUT_SIZE}
typedef void (*tm_trace_fn)(int32_t layer, const int8_t *data, int32_t size);
#ifdef TM_ENABLE_TRACE
void tm_set_trace(tm_trace_fn fn);
#endif
int tm_run(const int8_t *in, int8_t *out);
#endif
"""
# Three "layers" of known length (NOPs), each followed by a trace call, as a generated model does.
TRACED_MODEL_C = """\
#include "tm_model.h"
static tm_trace_fn trace_cb;
void tm_set_trace(tm_trace_fn fn) {{ trace_cb = fn; }}
#define TRACE(i) do {{ if (trace_cb != 0) {{ trace_cb((i), out, 1); }} }} while (0)
int tm_run(const int8_t *in, int8_t *out)
{{
    (void)in;
    __asm__ volatile(".rept {0}\\n\\tnop\\n\\t.endr");
    TRACE(0);
    __asm__ volatile(".rept {1}\\n\\tnop\\n\\t.endr");
    TRACE(1);
    __asm__ volatile(".rept {2}\\n\\tnop\\n\\t.endr");
    TRACE(2);
    return 0;
}}
"""


def _traced_model(directory: Path, nops: tuple[int, int, int]) -> Path:
    directory.mkdir(parents=True)
    (directory / "tm_model.h").write_text(TRACED_MODEL_H)
    (directory / "tm_model.c").write_text(TRACED_MODEL_C.format(*nops))
    return directory


@pytest.mark.parametrize("board", ["rp2040", "stm32f446"])
def test_per_layer_counts_are_exact(board, plugin, tmp_path):
    """k more instructions in layer 1 cost exactly k more in layer 1 and nowhere else; the layers
    add up to the whole run; the marker's body is not counted."""
    per_layer = []
    for nops in ((5, 0, 9), (5, 37, 9)):
        model = _traced_model(tmp_path / f"m{nops[1]}", nops)
        elf = build_elf(board, [model / "tm_model.c"], [model], "tm", model / "build", count_layers=True)
        assert elf.layers_counted
        result = run_qemu(board, elf, make_inputs(3, seed=1), OUT_SIZE, plugin=plugin)
        assert len(result.instructions_per_layer) == 3
        assert sum(result.instructions_per_layer) == result.instructions_per_inference
        per_layer.append(result.instructions_per_layer)
    assert per_layer[1][1] - per_layer[0][1] == 37
    assert per_layer[1][0] == per_layer[0][0] and per_layer[1][2] == per_layer[0][2]
    # layer 1 = its NOPs + the return from the previous trace call + the next call's set-up (< 12)
    assert 0 < per_layer[0][1] < 12


def test_untraced_build_reports_no_layers(model_dir, plugin, tmp_path):
    elf = build("rp2040", model_dir, tmp_path)
    assert not elf.layers_counted
    assert run_qemu("rp2040", elf, make_inputs(2, seed=2), OUT_SIZE, plugin=plugin).instructions_per_layer is None


def test_per_layer_counts_of_a_generated_model(plugin, tmp_path):
    """conv -> reshape -> linear, generated by qgen: exact outputs with and without the trace hook;
    the per-layer counts add up; the trace costs a few instructions per layer; reshape ~ nothing."""
    from qgen_testing import act, const, finish, safe_bias

    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import reference_outputs
    from codegen.ir import Graph, Node, Op
    from codegen.reference import run_int

    rng = np.random.default_rng(0)
    w1, w2 = rng.integers(-128, 128, (6, 3, 3, 3)), rng.integers(-128, 128, (5, 96))
    tensors = {"x": act("x", (6, 6, 3), 4), "a": act("a", (4, 4, 6), 3), "f": act("f", (96,), 3),
               "y": act("y", (5,), 2), "w1": const("w1", w1, 8, (3,) * 6), "w2": const("w2", w2, 8, (3,) * 5),
               "b1": const("b1", safe_bias(rng, w1), 32, (7,) * 6), "b2": const("b2", safe_bias(rng, w2), 32, (6,) * 5)}
    nodes = [Node("conv", Op.CONV2D, ["x", "w1", "b1"], ["a"], {"stride": (1, 1), "padding": (0, 0, 0, 0),
                                                                 "shift": [9] * 6, "act_min": 0, "act_max": 127}),
             Node("flat", Op.RESHAPE, ["a"], ["f"], {"shape": (96,)}),
             Node("fc", Op.LINEAR, ["f", "w2", "b2"], ["y"], {"shift": [10] * 5, "act_min": -128, "act_max": 127})]
    g = finish(Graph(tensors, nodes, ["x"], ["y"], source="test"))
    write_atomic(render(g, "pl", ["test"]), tmp_path / "m")
    model = tmp_path / "m"
    sources = [model / "pl_model.c", model / "pl_weights.c", *sorted((model / "kernels").glob("*.c"))]
    x = rng.integers(-128, 128, (3, 6, 6, 3)).astype(np.int8)
    expect = reference_outputs(g, run_int(g, x))
    results = []
    for traced in (False, True):
        elf = build_elf("stm32f446", sources, [model, model / "kernels"], "pl", tmp_path / f"b{traced}",
                        count_layers=traced)
        results.append(run_qemu("stm32f446", elf, x.reshape(3, -1), 5, plugin=plugin))
        np.testing.assert_array_equal(results[-1].outputs, expect)
    plain, traced = results
    assert plain.instructions_per_layer is None
    layers = traced.instructions_per_layer
    assert len(layers) == 3 and sum(layers) == traced.instructions_per_inference
    assert layers[1] < 12 and layers[0] > 6 * 16 * 27 and layers[2] > 5 * 96 / 2  # reshape: just the trace
    assert 0 <= traced.instructions_per_inference - plain.instructions_per_inference <= 8 * 3
