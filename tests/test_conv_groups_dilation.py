"""Grouped and dilated convolutions (issue 16): the integer reference against PyTorch, the generated C
against the reference on the host (cffi, and ASan/UBSan), and on Cortex-M0+ and Cortex-M4 under QEMU
(one firmware per core holding every case), for the int8 kernels (qg_conv2d_s8.c: plain and DSP paths)
and the int16 ones (qg_wide.c).

Cases: groups 2..6 with a group's input channels a multiple of 4 (widened in place on DSP cores) and not
(gathered column), odd output channels per group, 1x1 grouped (the plain path's direct column, strided and
padded), dilation 2..5 with symmetric, asymmetric and causal padding, stride 2, windows whose taps skip over
the image (dilation larger than the image's border), depthwise multiplier 1 and 2 with dilation.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgen_testing import act, const, edge_inputs, finish, safe_bias

from codegen.emit.c import render, write_atomic
from codegen.fixed import QFormat
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.ops.window import conv2d_acc, depthwise_acc
from codegen.reference import run_int

X_SHAPE = (9, 10, 12)

# (name, op, w_shape (Cout, KH, KW, Cin/groups), stride, padding (t, l, b, r), dilation, groups)
CASES = [
    ("conv_g3_cg4_d2", Op.CONV2D, (9, 3, 3, 4), (1, 1), (2, 2, 2, 2), (2, 2), 3),
    ("conv_g4_cg3_k3x2_s2_d3x1", Op.CONV2D, (8, 3, 2, 3), (2, 2), (1, 0, 2, 1), (3, 1), 4),
    ("conv_g2_1x1", Op.CONV2D, (6, 1, 1, 6), (1, 1), (0, 0, 0, 0), (1, 1), 2),
    ("conv_g6_1x1_s2_pad", Op.CONV2D, (12, 1, 1, 2), (2, 2), (1, 1, 1, 1), (1, 1), 6),
    ("conv_g2_cg6_k3_s2_d2", Op.CONV2D, (10, 3, 3, 6), (2, 2), (1, 2, 2, 1), (2, 2), 2),
    ("conv_d2x3_asym", Op.CONV2D, (5, 3, 3, 12), (1, 1), (2, 3, 1, 2), (2, 3), 1),
    ("conv_d4_valid", Op.CONV2D, (3, 3, 3, 12), (1, 1), (0, 0, 0, 0), (4, 4), 1),
    ("conv_d5_skips_border", Op.CONV2D, (4, 3, 3, 12), (2, 1), (5, 5, 5, 5), (5, 5), 1),
    ("conv_1d_causal_d4", Op.CONV2D, (7, 1, 3, 12), (1, 1), (0, 8, 0, 0), (1, 4), 1),
    ("dw_d2", Op.DEPTHWISE_CONV2D, (12, 3, 3, 1), (1, 1), (2, 2, 2, 2), (2, 2), 1),
    ("dw_mult2_k2x3_s2_d3x2", Op.DEPTHWISE_CONV2D, (24, 2, 3, 1), (2, 2), (1, 2, 1, 2), (3, 2), 1),
    ("dw_d5_skips_border", Op.DEPTHWISE_CONV2D, (12, 3, 3, 1), (1, 2), (5, 5, 5, 5), (5, 5), 1),
    ("dw_1d_causal_d8", Op.DEPTHWISE_CONV2D, (12, 1, 3, 1), (1, 1), (0, 16, 0, 0), (1, 8), 1),
]


def _attrs(stride, padding, dilation, groups) -> dict:
    attrs = {"stride": stride, "padding": padding, "dilation": dilation}
    if groups != 1:
        attrs["groups"] = groups
    return attrs


def _weighted(g: Graph, rng, name: str, op: Op, src: str, w_shape, attrs: dict, dtype: str = "int8",
              act_range=(-128, 127)) -> str:
    wide = dtype == "int16" or g.tensors[src].dtype == "int16"
    w = rng.integers(-128, 128, w_shape)
    w.flat[0] = -128
    cout = w_shape[0]
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * cout)
    g.tensors[f"{name}_b"] = const(f"{name}_b", safe_bias(rng, w, 32768 if wide else 128), 32, (7,) * cout)
    lo_shift = 1 if g.tensors[src].dtype == "int16" and dtype == "int8" else -3
    node = Node(name, op, [src, f"{name}_w", f"{name}_b"], [name],
                {**attrs, "shift": [int(s) for s in rng.integers(lo_shift, 15, cout)],
                 "act_min": act_range[0], "act_max": act_range[1]})
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    if dtype == "int16":
        g.tensors[name].dtype, g.tensors[name].qformat = "int16", QFormat(16, 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    return name


def case_graph(rng) -> Graph:
    """Every case as a branch of one (9, 10, 12) input; every branch output is a model output."""
    g = Graph({"x": act("x", X_SHAPE, 3)}, [], ["x"], [], source="test")
    ranges = [(-128, 127), (0, 127), (-50, 90)]
    for i, (name, op, w_shape, stride, pad, dil, groups) in enumerate(CASES):
        g.outputs.append(_weighted(g, rng, name, op, "x", w_shape, _attrs(stride, pad, dil, groups),
                                   act_range=ranges[i % 3]))
    # a chain, so that the planner may overlap a dilated conv's output with its dying input
    c8 = _weighted(g, rng, "chain_1x1", Op.CONV2D, "x", (8, 1, 1, 12), _attrs((1, 1), (0, 0, 0, 0), (1, 1), 1))
    d = _weighted(g, rng, "chain_dw_d2", Op.DEPTHWISE_CONV2D, c8, (8, 3, 3, 1),
                  _attrs((1, 1), (2, 2, 2, 2), (2, 2), 1))
    g.outputs.append(_weighted(g, rng, "chain_conv_d3", Op.CONV2D, d, (6, 3, 3, 8),
                               _attrs((1, 1), (3, 3, 3, 3), (3, 3), 1)))
    # int16 activations (qg_wide.c): s8 -> s16, s16 -> s16, s16 -> s8
    w16 = _weighted(g, rng, "wide_g3_d2", Op.CONV2D, "x", (6, 3, 3, 4), _attrs((1, 1), (2, 1, 2, 3), (2, 2), 3),
                    dtype="int16", act_range=(-32768, 32767))
    w16 = _weighted(g, rng, "wide_dw_mult2_d3", Op.DEPTHWISE_CONV2D, w16, (12, 3, 2, 1),
                    _attrs((2, 1), (3, 2, 3, 2), (3, 2), 1), dtype="int16", act_range=(-1000, 32767))
    g.outputs.append(_weighted(g, rng, "wide_g2_cg6_s2_d2", Op.CONV2D, w16, (4, 2, 3, 6),
                               _attrs((1, 2), (1, 2, 1, 2), (2, 2), 2)))
    return finish(g)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(16)
    graph = case_graph(rng)
    out = tmp_path_factory.mktemp("gd") / "model"
    write_atomic(render(graph, "gd", ["test"]), out)
    x = edge_inputs(rng, X_SHAPE, n_random=5)
    return graph, out, x, reference_outputs(graph, run_int(graph, x))


def _first_difference(graph: Graph, got: np.ndarray, expect: np.ndarray) -> str:
    sample, at = np.argwhere(got != expect)[0]
    index = at
    for name in graph.outputs:
        size = graph.tensors[name].size * (2 if graph.tensors[name].dtype == "int16" else 1)
        if index < size:
            return f"output '{name}', sample {sample}, byte {index}: C {got[sample, at]}, ref {expect[sample, at]}"
        index -= size
    return "?"


# ---------------------------------------------------------------- the reference is PyTorch's convolution


@pytest.mark.parametrize("name,op,w_shape,stride,pad,dil,groups", CASES, ids=[c[0] for c in CASES])
def test_reference_equals_torch(name, op, w_shape, stride, pad, dil, groups):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, *X_SHAPE))
    w = rng.integers(-128, 128, w_shape)
    if op is Op.CONV2D:
        ours = conv2d_acc(x, w, stride, pad, dil, groups)
        tg = groups
    else:
        ours = depthwise_acc(x, w, stride, pad, dil)
        tg = X_SHAPE[2]
    xt = F.pad(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2), (pad[1], pad[3], pad[0], pad[2]))
    theirs = F.conv2d(xt, torch.tensor(w, dtype=torch.float64).permute(0, 3, 1, 2), stride=stride, dilation=dil,
                      groups=tg).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_shape_rule_and_verifier():
    from codegen.ir import VerifyError, verify

    g = case_graph(np.random.default_rng(0))
    assert g.tensors["conv_d5_skips_border"].shape == (5, 10, 4)  # (9 + 10 - 10 - 1) // 2 + 1
    assert g.tensors["dw_1d_causal_d8"].shape == (9, 10, 12)
    node = next(n for n in g.nodes if n.name == "conv_g3_cg4_d2")
    node.attrs["groups"] = 5  # 12 input channels are not 5 groups
    with pytest.raises(VerifyError, match="groups=5"):
        verify(g, quantized=True)


# ---------------------------------------------------------------- C == reference


def test_host_c_equals_reference_under_sanitizers(model, tmp_path):
    graph, out, x, expect = model
    exe = build_native(out, "gd", tmp_path / "gd_asan", SANITIZE_FLAGS)
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    if not np.array_equal(got, expect):
        raise AssertionError(_first_difference(graph, got, expect))


def test_grouped_conv_takes_no_overlap_and_dilated_does(model):
    from codegen.kernels import select

    graph = model[0]
    nodes = {n.name: n for n in graph.nodes}
    assert select(graph, nodes["conv_g2_1x1"]).overlap is None  # the DSP path gathers group by group
    assert select(graph, nodes["chain_conv_d3"]).overlap is not None


@pytest.mark.qemu
@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4"])
def test_bit_exact_on_core(core, model, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    graph, out, x, expect = model
    board = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}[core]
    sources = [out / "gd_model.c", out / "gd_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "gd", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False)
    if not np.array_equal(result.outputs, expect):
        raise AssertionError(f"{core}: " + _first_difference(graph, result.outputs, expect))
