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
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish, safe_bias

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
    assert_outputs_equal(got, expect, graph, "host C")


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
    assert_outputs_equal(result.outputs, expect, graph, core)


# ---------------------------------------------------------------- end to end from PyTorch


class TCN(torch.nn.Module):
    """A TCN: causal dilated Conv1d blocks (left pad (k-1)*d, then the conv) with residual adds, a grouped
    Conv1d with padding='same' and even kernel (asymmetric padding), a dilated depthwise head."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.inp = nn.Conv1d(3, 8, 1)
        self.blocks = nn.ModuleList([nn.Conv1d(8, 8, 3, dilation=d) for d in (2, 4)])
        self.grouped = nn.Conv1d(8, 12, 4, padding="same", dilation=3, groups=4)
        self.head = nn.Conv1d(12, 12, 3, padding=2, dilation=2, groups=12)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        for conv in self.blocks:
            x = torch.relu(x + conv(F.pad(x, (2 * conv.dilation[0], 0))))
        return self.head(torch.relu(self.grouped(x)))


class Grouped2d(torch.nn.Module):
    """ResNeXt/ShuffleNet-style grouped convs (groups 2, 3, 4; stride 2; odd channels per group), dilated and
    padding='same' 2-D convs, a depthwise conv with multiplier 2 and dilation."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.a = nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3)
        self.b = nn.Conv2d(12, 12, (3, 2), padding="same", dilation=(2, 3), groups=4)
        self.c = nn.Conv2d(12, 10, 3, dilation=2, padding=2, groups=2)
        self.dw = nn.Conv2d(10, 20, 3, dilation=2, padding="same", groups=10)
        self.d = nn.Conv2d(20, 5, 1, groups=5)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y)) + y
        return self.d(torch.relu(self.dw(torch.relu(self.c(y)))))


E2E = {"tcn": (TCN, (1, 3, 40)), "grouped2d": (Grouped2d, (1, 6, 15, 13))}


@pytest.fixture(scope="module")
def compiled():
    from codegen.api import compile as qcompile

    made = {}
    for name, (factory, shape) in E2E.items():
        torch.manual_seed(0)
        model = factory().eval()
        x = torch.randn(64, *shape[1:])
        made[name] = (model, x, qcompile(model, torch.zeros(shape), x.numpy()))
    return made


@pytest.mark.parametrize("name", list(E2E))
def test_torch_model_compiles_bit_exact_and_close_to_float(name, compiled):
    model, x, result = compiled[name]
    ops = [(n.op, n.attrs.get("groups", 1), n.attrs.get("dilation", (1, 1))) for n in result.graph.nodes]
    assert all(op is not Op.PAD for op, _, _ in ops)  # the causal pads fold into the convs
    assert any(g > 1 for _, g, _ in ops) and any(d != (1, 1) for _, _, d in ops)
    check = result.verify(x[:16].numpy())
    assert check.exact, str(check)
    with torch.no_grad():
        want = model(x[:16]).numpy()
    got = result.predict(x[:16].numpy())
    rms = float(np.sqrt(np.mean((got - want) ** 2)))  # int8 noise; a wrong window would be ~ the signal itself
    assert rms < 0.02 * np.abs(want).max()


def test_tcn_same_padding_is_asymmetric_like_torch(compiled):
    nodes = {n.name: n for n in compiled["tcn"][2].graph.nodes}
    # kernel 4, dilation 3: PyTorch pads 9 in total, 4 before and 5 after
    assert nodes["grouped"].attrs["padding"] == (0, 4, 0, 5)
    assert nodes["blocks.1"].attrs["padding"] == (0, 8, 0, 0)  # F.pad((8, 0)) folded: causal


@pytest.mark.parametrize("name", list(E2E))
def test_pure_micropython_module_equals_reference(name, compiled, tmp_path):
    from test_micropython import check_graph, mpy_available

    graph = compiled[name][2].graph
    x = edge_inputs(np.random.default_rng(1), graph.tensors[graph.inputs[0]].shape, n_random=3)
    check_graph(graph, x, tmp_path, mpy=mpy_available() is None)


def test_int16_layers_use_the_wide_kernels_bit_exact(tmp_path):
    from codegen.api import compile as qcompile

    torch.manual_seed(0)
    model = Grouped2d().eval()
    x = torch.randn(32, 6, 15, 13)
    result = qcompile(model, torch.zeros(1, 6, 15, 13), x.numpy(), precision={"b": 16, "c": 16, "dw": 16})
    wide = [n.name for n in result.graph.nodes if result.graph.tensors[n.outputs[0]].dtype == "int16"]
    assert {"b", "c", "dw"} <= set(wide)
    check = result.verify(x[:8].numpy())
    assert check.exact, str(check)


def test_qat_integer_twin_is_exact():
    from codegen import qat

    torch.manual_seed(0)
    model = Grouped2d().eval()
    x = np.random.default_rng(2).standard_normal((16, 6, 15, 13)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    result = qat.compile(qm, eval_data=x[:8])
    with torch.no_grad():
        y_qat = qm.eval()(torch.from_numpy(x)).numpy()
    assert np.array_equal(y_qat, result.predict(x))


def test_onnx_group_and_dilations_give_the_same_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from codegen.frontend.onnx_import import from_onnx_model

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((12, 2, 3, 3)).astype(np.float32)  # group 3 of 6 input channels
    w2 = rng.standard_normal((12, 1, 3, 3)).astype(np.float32)  # depthwise, dilated
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"], group=3, dilations=[2, 1], pads=[2, 1, 2, 1]),
             helper.make_node("Conv", ["y", "w2"], ["z"], group=12, dilations=[2, 2], auto_pad="SAME_UPPER")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 9, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 12, 9, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    g = from_onnx_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    conv, dw = g.nodes
    assert (conv.op, conv.attrs["groups"], conv.attrs["dilation"], conv.attrs["padding"]) == \
        (Op.CONV2D, 3, (2, 1), (2, 1, 2, 1))
    assert (dw.op, dw.attrs["dilation"], dw.attrs["padding"]) == (Op.DEPTHWISE_CONV2D, (2, 2), (2, 2, 2, 2))
    from codegen.reference import run_float

    x = rng.standard_normal((2, 9, 8, 6))
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    want = F.conv2d(F.conv2d(xt, torch.tensor(w1, dtype=torch.float64), padding=(2, 1), dilation=(2, 1), groups=3),
                    torch.tensor(w2, dtype=torch.float64), padding=2, dilation=2, groups=12).permute(0, 2, 3, 1)
    assert np.allclose(run_float(g, x)[g.outputs[0]], want.numpy())
    assert onnx is not None


# ---------------------------------------------------------------- compression passes: work or skip, never wrong


def test_compression_passes_skip_grouped_convs_with_a_reason():
    from codegen.errors import UserError
    from codegen.passes import low_rank, prune_channels
    from codegen.weight_storage import candidates

    g = case_graph(np.random.default_rng(0))
    grouped = next(n for n in g.nodes if n.name == "conv_g2_1x1")
    dilated = next(n for n in g.nodes if n.name == "conv_d2x3_asym")
    for node in (grouped, dilated):
        node.attrs["weight_format"] = "auto"
        assert candidates(node) == ()  # requested compression: dense storage
        node.attrs["weight_format"] = "bitmap"
        with pytest.raises(UserError, match="grouped or dilated"):
            candidates(node)
        del node.attrs["weight_format"]
    with pytest.raises(UserError, match="grouped convolutions"):
        low_rank.run(g, rank=2, layers=["conv_g2_1x1"])
    spaces = prune_channels.channel_spaces(g)
    assert not any(grouped in s.producers or grouped in s.consumers for s in spaces)


def test_fold_pad_keeps_a_pad_whose_sum_would_not_fit_the_kernel():
    """F.pad(100) before a conv padded 200 (a long dilated TCN layer): 300 does not fit the uint8_t pad
    fields, so the pad stays a copy (it used to be folded and then refused by the emitter)."""
    from codegen.api import compile as qcompile

    class Far(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv1d(2, 3, 3, dilation=100, padding=200)

        def forward(self, x):
            return self.c(F.pad(x, (100, 0)))

    x = torch.randn(16, 2, 12)
    result = qcompile(Far().eval(), torch.zeros(1, 2, 12), x.numpy())
    assert [n.op for n in result.graph.nodes] == [Op.PAD, Op.CONV2D]
    assert result.verify(x[:4].numpy()).exact
