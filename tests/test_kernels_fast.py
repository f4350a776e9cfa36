"""The optimised kernel paths on the cores themselves: generated single-op models, cross-compiled
for each core and run under QEMU, must equal codegen.reference.run_int byte for byte.

The host tests (test_kernels.py) run the plain C paths; the DSP paths (SMLAD/SXTB16/SSUB8/SEL, M4,
M7, M33, M55) only exist on the target, and the ARMv6-M build of the plain paths is checked here too.
Shapes are chosen so that every tail runs: in_c 7 (gathered column, K % 4 = 1) and 8 (widened in
place), 3x5 kernels, stride 2, asymmetric padding, pixel counts that are not a multiple of the
4-pixel block, odd output channels, channel counts that are not a multiple of 4, depthwise
multiplier 2, FC with 33 inputs; per-channel shifts from -3 (left shift) to 14; the three clamp
kinds (no activation, ReLU, any range).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish, safe_bias

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")

BOARD_FOR_CORE = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500",
                  "cortex-m33": "mps2-an505", "cortex-m55": "mps3-an547"}


def _add(g: Graph, rng, name: str, op: Op, src: str, w_shape=None, act_range=(-128, 127), **attrs) -> str:
    """Append node `name` reading tensor `src`; returns its output tensor's name."""
    inputs = [src]
    if w_shape is not None:
        w = rng.integers(-128, 128, w_shape)
        w.flat[0] = -128
        g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
        g.tensors[f"{name}_b"] = const(f"{name}_b", safe_bias(rng, w), 32, (7,) * w_shape[0])
        inputs += [f"{name}_w", f"{name}_b"]
        attrs.update(shift=[int(s) for s in rng.integers(-3, 15, w_shape[0])],
                     act_min=act_range[0], act_max=act_range[1])
    node = Node(name, op, inputs, [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    g.outputs.append(name)
    return name


def image_graph(rng) -> Graph:
    """Branches over one (9, 7, 7) input, every branch output is a model output."""
    g = Graph({"x": act("x", (9, 7, 7), 3)}, [], ["x"], [], source="test")
    conv = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
    _add(g, rng, "conv_c7_k3x5_s2", Op.CONV2D, "x", (5, 3, 5, 7), stride=(2, 2), padding=(1, 2, 1, 2))
    c8 = _add(g, rng, "conv1x1_c7_to_8", Op.CONV2D, "x", (8, 1, 1, 7), act_range=(0, 127), **conv)
    _add(g, rng, "conv3x3_c8_pad", Op.CONV2D, c8, (3, 3, 3, 8), act_range=(-50, 90), stride=(1, 1),
         padding=(1, 1, 1, 1))
    _add(g, rng, "conv2x3_c8_s3x1", Op.CONV2D, c8, (4, 2, 3, 8), stride=(3, 1), padding=(0, 1, 0, 1))
    _add(g, rng, "dw3x3_c8", Op.DEPTHWISE_CONV2D, c8, (8, 3, 3, 1), act_range=(0, 127), stride=(1, 1),
         padding=(1, 1, 1, 1))
    _add(g, rng, "dw5x2_c7_s1x2", Op.DEPTHWISE_CONV2D, "x", (7, 5, 2, 1), stride=(1, 2), padding=(2, 0, 2, 1))
    _add(g, rng, "dw3x3_c7_mult2", Op.DEPTHWISE_CONV2D, "x", (14, 3, 3, 1), act_range=(-20, 100),
         stride=(2, 2), padding=(1, 1, 1, 1))
    _add(g, rng, "maxpool3x3_c7_s2_pad", Op.MAXPOOL2D, "x", kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
    _add(g, rng, "maxpool2x2_c8", Op.MAXPOOL2D, c8, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
    return finish(g)


def vector_graph(rng) -> Graph:
    g = Graph({"x": act("x", (33,), 3)}, [], ["x"], [], source="test")
    _add(g, rng, "fc_33_17", Op.LINEAR, "x", (17, 33))
    _add(g, rng, "fc_33_8_relu", Op.LINEAR, "x", (8, 33), act_range=(0, 127))
    _add(g, rng, "fc_33_3_any", Op.LINEAR, "x", (3, 33), act_range=(-7, 60))
    return finish(g)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(31)
    made = {}
    for name, graph in {"image": image_graph(rng), "vector": vector_graph(rng)}.items():
        out = tmp_path_factory.mktemp(name) / "model"
        write_atomic(render(graph, "kf", ["test"]), out)
        x_shape = graph.tensors[graph.inputs[0]].shape
        x = edge_inputs(rng, x_shape, n_random=4)
        made[name] = (graph, out, x, reference_outputs(graph, run_int(graph, x)))
    return made


def _build_and_run(core: str, model, work: Path, plugin: Path):
    _, out, x, expect = model
    sources = [out / "kf_model.c", out / "kf_weights.c", *sorted((out / "kernels").glob("*.c"))]
    # the flags `qgen firmware` builds a model with (codegen/deploy.py): conversion warnings are errors
    elf = build_elf(BOARD_FOR_CORE[core], sources, [out, out / "kernels"], "kf", work,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    return run_qemu(BOARD_FOR_CORE[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=plugin), expect


@pytest.mark.parametrize("core", list(BOARD_FOR_CORE))
def test_kernels_bit_exact_on_core(core, models, tmp_path):
    plugin = build_plugin()
    with ThreadPoolExecutor(2) as pool:
        runs = {name: pool.submit(_build_and_run, core, model, tmp_path / name, plugin)
                for name, model in models.items()}
        for name, job in runs.items():
            result, expect = job.result()
            assert_outputs_equal(result.outputs, expect, models[name][0], f"{core}, {name} model")


REQUANT_MODEL_C = r"""
#include "rq_model.h"
#include "qg_simd.h"
/* qg_requantize_pos_s8 (every clamp kind) against qg_requantize_s8 on every shift 1..31 and on
 * edge and pseudo-random accumulators; out[0..3] = number of mismatches (little-endian). */
static const int32_t edges[] = {0, 1, -1, 2, -2, 127, 128, -128, -129, 255, 256, -256, 32767, -32768,
                                1073741823, 1073741824, -1073741824, -1073741825, 2147483647, -2147483647 - 1,
                                2147483646, -2147483647};
static int32_t check(int32_t acc, int32_t lo, int32_t hi)
{
    int32_t s, bad = 0;
    const int32_t kind = qg_clamp_kind(lo, hi);
    for (s = 1; s < 32; s++) {
        bad += qg_requantize_pos_s8(acc, s - 1, kind, lo, hi) != qg_requantize_s8(acc, s, lo, hi);
        bad += qg_requantize_pos_s8(acc, s - 1, QG_CLAMP_ANY, lo, hi) != qg_requantize_s8(acc, s, lo, hi);
        /* near the rounding boundaries of this shift */
        bad += qg_requantize_pos_s8(acc >> s << s, s - 1, kind, lo, hi) != qg_requantize_s8(acc >> s << s, s, lo, hi);
    }
    return bad;
}
int rq_run(const int8_t *in, int8_t *out)
{
    static const int32_t ranges[4][2] = {{-128, 127}, {0, 127}, {-50, 90}, {0, 6}};
    uint32_t state = (uint32_t)(uint8_t)in[0] + 1u;
    int32_t bad = 0, i, r;
    for (r = 0; r < 4; r++) {
        for (i = 0; i < (int32_t)(sizeof edges / sizeof edges[0]); i++) {
            bad += check(edges[i], ranges[r][0], ranges[r][1]);
        }
        for (i = 0; i < 300; i++) {
            state = state * 1664525u + 1013904223u;
            bad += check((int32_t)state >> (int32_t)(state & 15u), ranges[r][0], ranges[r][1]);
        }
    }
    for (i = 0; i < 4; i++) {
        out[i] = (int8_t)(uint8_t)((uint32_t)bad >> (8 * i));
    }
    return 0;
}
"""


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4"])
def test_fast_requantisation_equals_the_rule(core, tmp_path):
    """qg_requantize_pos_s8 (QADD rounding, SSAT/USAT clamps on DSP cores) == qg_requantize_s8."""
    from codegen.resources import kernel_dir

    (tmp_path / "rq_model.h").write_text("#include <stdint.h>\n#define RQ_INPUT_SIZE 1\n#define RQ_OUTPUT_SIZE 4\n"
                                         "int rq_run(const int8_t *in, int8_t *out);\n")
    (tmp_path / "rq_model.c").write_text(REQUANT_MODEL_C)
    elf = build_elf(BOARD_FOR_CORE[core], [tmp_path / "rq_model.c"], [tmp_path, kernel_dir()], "rq",
                    tmp_path / "build", extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(BOARD_FOR_CORE[core], elf, np.array([[3], [200 - 256]], dtype=np.int8), 4,
                      count_instructions=False)
    assert result.outputs.view("<i4").ravel().tolist() == [0, 0]
