"""Pooling with clipped and adaptive windows, and reductions (codegen/ops/pool.py; kernels in
firmware/kernels/qg_pool2d_s8.c, qg_pool2d_s16.c, qg_reduce.c; templates/micropython/_kernels.py).

- the float reference against PyTorch for ceil_mode, count_include_pad=False, adaptive pooling (uneven
  windows), mean / amax / max(dim) over any dims (pure Python);
- the average rule: one multiplier per divisor (fixed.avg_multiplier), within one LSB of the true mean;
- kernel choice: uniform windows keep the fast kernels, clipped / adaptive windows the *_windows ones;
- C == reference on the host under ASan/UBSan on random and edge inputs (-128, 127, odd sizes, ceil
  windows of one cell, one channel), the pure MicroPython module under CPython, int16 activations;
- the same graph on cortex-m0plus and cortex-m4 under QEMU (one firmware per core), with M4 instructions
  per window element printed;
- PyTorch and ONNX end to end through the API, QAT's exact twin.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from qgen_testing import act, assert_outputs_equal, edge_inputs, finish
from torch import nn

from codegen.fixed import AVG_SHIFT, avg_multiplier, requantize
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.ops.pool import uses_windows
from codegen.passes.quantize import avg_params
from codegen.reference import run_int


class Lam(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


F = nn.functional
# (module factory, input shape): every window rule of PyTorch's pooling that qgen lowers
FLOAT_CASES = {
    "squeezenet_max3s2_ceil": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (1, 3, 8, 9)),
    "max2s2_ceil_window_of_one": (lambda: nn.MaxPool2d(2, 2, ceil_mode=True), (1, 2, 7, 9)),
    "max3s2p1_ceil": (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (1, 2, 8, 8)),
    "avg3s2p1_no_pad_count": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 3, 7, 7)),
    "avg3s2p1_ceil": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 3, 8, 8)),
    "avg3s2p1_ceil_no_pad_count": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                   (1, 3, 8, 10)),
    "avg2s2_ceil_window_of_one": (lambda: nn.AvgPool2d(2, 2, ceil_mode=True), (1, 2, 7, 9)),
    "avg_5x3_s3x2_p2x1_ceil": (lambda: nn.AvgPool2d((5, 3), (3, 2), (2, 1), ceil_mode=True,
                                                    count_include_pad=False), (1, 2, 11, 8)),
    "avg1d_ceil_no_pad_count": (lambda: nn.AvgPool1d(4, 3, 2, ceil_mode=True, count_include_pad=False), (1, 3, 14)),
    "max1d_ceil": (lambda: nn.MaxPool1d(3, 2, 1, ceil_mode=True), (1, 3, 12)),
    "adaptive_avg_3x3_on_7x7": (lambda: nn.AdaptiveAvgPool2d((3, 3)), (1, 3, 7, 7)),
    "adaptive_avg_5x4_on_13x11": (lambda: nn.AdaptiveAvgPool2d((5, 4)), (1, 3, 13, 11)),
    "adaptive_avg_none_x2": (lambda: nn.AdaptiveAvgPool2d((None, 2)), (1, 2, 3, 7)),
    "adaptive_max_5x4_on_13x11": (lambda: nn.AdaptiveMaxPool2d((5, 4)), (1, 3, 13, 11)),
    "adaptive_max1d_5_on_13": (lambda: nn.AdaptiveMaxPool1d(5), (1, 3, 13)),
    "adaptive_avg1d_1": (lambda: nn.AdaptiveAvgPool1d(1), (1, 3, 13)),
    "adaptive_avg1d_larger_than_input": (lambda: nn.AdaptiveAvgPool1d(9), (1, 2, 5)),
    "mean_last_of_sequence": (lambda: Lam(lambda x: x.mean(-1)), (1, 4, 13)),
    "amax_hw_keepdim": (lambda: Lam(lambda x: x.amax(dim=(2, 3), keepdim=True)), (1, 4, 5, 6)),
    "mean_hw": (lambda: Lam(lambda x: x.mean((-2, -1))), (1, 4, 5, 6)),
    "mean_h_only": (lambda: Lam(lambda x: x.mean(2)), (1, 4, 5, 6)),
    "amax_w_only_keepdim": (lambda: Lam(lambda x: x.amax(3, keepdim=True)), (1, 4, 5, 6)),
    "mean_channels_keepdim": (lambda: Lam(lambda x: x.mean(1, keepdim=True)), (1, 4, 5, 6)),
    "mean_channels_of_image": (lambda: Lam(lambda x: x.mean(1)), (1, 4, 5, 6)),  # (1, H, W): one transpose
    "max_dim_channels_of_sequence": (lambda: Lam(lambda x: torch.max(x, 1)[0]), (1, 4, 13)),
    "max_dim_values_attr": (lambda: Lam(lambda x: x.max(dim=-1, keepdim=True).values), (1, 4, 13)),
    "mean_all_keepdim": (lambda: Lam(lambda x: x.mean((1, 2, 3), keepdim=True)), (1, 4, 5, 6)),
    "amax_features": (lambda: Lam(lambda x: x.amax(1, keepdim=True)), (1, 9)),
}


def _float_check(g, model, x):
    from codegen.reference import run_float, to_qgen_layout, to_torch_layout

    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    want = model(x).detach().numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5, err_msg=str(g))


@pytest.mark.parametrize("name", sorted(FLOAT_CASES))
def test_float_reference_is_pytorch(name):
    from codegen.frontend import from_module

    factory, shape = FLOAT_CASES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(shape)
    g = from_module(model, x)
    _float_check(g, model, x)
    if "ceil" in name and "max" in name or name.startswith("adaptive_avg_3x3"):
        assert not any(uses_windows(n.attrs, n.op, *g.tensors[n.inputs[0]].shape[:2]) for n in g.nodes), \
            f"{name} should keep the uniform kernels:\n{g}"


def test_random_pooling_configurations_match_pytorch():
    """Random kernel/stride/padding/ceil/count_include_pad and odd sizes: the float reference is PyTorch's."""
    from codegen.frontend import from_module

    rng = np.random.default_rng(7)
    for _ in range(25):
        k, s = (int(v) for v in rng.integers(1, 5, 2))
        p = int(rng.integers(0, k // 2 + 1))
        h, w = (int(v) for v in rng.integers(k, k + 9, 2))
        ceil, include = bool(rng.integers(2)), bool(rng.integers(2))
        for model in (nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=include),
                      nn.MaxPool2d(k, s, p, ceil_mode=ceil)):
            x = torch.randn(1, 2, h, w)
            _float_check(from_module(model, x), model, x)
        oh, ow = (int(v) for v in rng.integers(1, 8, 2))
        x = torch.randn(1, 2, h, w)
        for model in (nn.AdaptiveAvgPool2d((oh, ow)), nn.AdaptiveMaxPool2d((oh, ow))):
            _float_check(from_module(model, x), model, x)


def test_average_rule_is_one_multiplier_per_divisor():
    """mult(d) = round(2^23 / d) (half up, exact integers); power-of-two d gives the exact shift's values;
    every average is within one LSB of sum / d rounded, over every int8 sum of d values."""
    for d in range(1, 300):
        assert avg_multiplier(d) == int(np.floor(2**AVG_SHIFT / d + 0.5))
        sums = np.arange(-128 * d, 127 * d + 1, dtype=np.int64)
        got = requantize(sums * avg_multiplier(d), AVG_SHIFT, -128, 127)
        assert np.abs(got - np.floor(sums / d + 0.5)).max() <= 1
        p = avg_params(d)
        np.testing.assert_array_equal(got, requantize(sums * p["avg_mult"], p["avg_shift"], -128, 127))


def test_kernel_choice_keeps_the_fast_path():
    import codegen
    from codegen.kernels import select

    fn = {}
    for name, model, shape in (("max_ceil", nn.MaxPool2d(3, 2, ceil_mode=True), (1, 3, 8, 8)),
                               ("avg_uniform", nn.AvgPool2d(3, 2, 1), (1, 3, 7, 7)),
                               ("avg_ceil_exact_fit", nn.AvgPool2d(3, 2, ceil_mode=True), (1, 3, 7, 7)),
                               ("avg_no_pad_count", nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 3, 7, 7)),
                               ("adaptive_max", nn.AdaptiveMaxPool2d((5, 4)), (1, 3, 13, 11)),
                               ("adaptive_even", nn.AdaptiveAvgPool2d((3, 3)), (1, 3, 7, 7))):
        r = codegen.compile(model, torch.randn(shape), prefix="t")
        fn[name] = select(r.graph, r.graph.nodes[0]).fn
    assert fn == {"max_ceil": "qg_maxpool2d_s8", "avg_uniform": "qg_avgpool2d_s8",
                  "avg_ceil_exact_fit": "qg_avgpool2d_s8", "avg_no_pad_count": "qg_avgpool2d_windows_s8",
                  "adaptive_max": "qg_maxpool2d_windows_s8", "adaptive_even": "qg_avgpool2d_s8"}


def test_zero_pad_folds_into_an_average_that_does_not_count_padding():
    """ZeroPad2d then AvgPool2d(count_include_pad=False): the pad's zeros are input cells (counted), the
    pool's own padding is not; folded into one node with count_pad = the pad."""
    from codegen.frontend import from_module
    from codegen.passes import fold_pad

    model = nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False))
    x = torch.randn(1, 2, 7, 8)
    g = fold_pad.run(from_module(model, x))
    assert [n.op for n in g.nodes] == [Op.AVGPOOL2D] and g.nodes[0].attrs["count_pad"] == (0, 1, 1, 2), g
    _float_check(g, model, x)
    model = nn.Sequential(nn.ZeroPad2d(1), nn.AdaptiveAvgPool2d((5, 3)))  # uneven adaptive windows: no padding
    g = fold_pad.run(from_module(model, torch.randn(1, 2, 7, 8)))
    assert [n.op for n in g.nodes] == [Op.PAD, Op.AVGPOOL2D]


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2), nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=False)],
                         ids=["uniform", "windows"])
def test_average_over_a_folded_pad_wider_than_its_window(pool):
    """ZeroPad2d(3) folded into an average: border windows read only the pad's zeros (no input cell)."""
    import codegen

    model = nn.Sequential(nn.ZeroPad2d(3), pool).eval()
    r = codegen.compile(model, torch.randn(1, 2, 4, 5), prefix="t")
    assert [n.op for n in r.graph.nodes] == [Op.AVGPOOL2D]
    x = np.random.default_rng(0).standard_normal((6, 2, 4, 5)).astype(np.float32)
    assert r.verify(x).exact
    np.testing.assert_allclose(r.predict(x), model(torch.from_numpy(x)).detach().numpy(), atol=0.05)


def test_equalization_stops_at_a_channel_reduce():
    """conv -> ReLU -> mean over channels -> Linear: per-channel rescaling of the conv would change the mean."""
    from codegen.frontend import from_module
    from codegen.passes import equalize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), Lam(lambda y: y.mean(1, keepdim=True)), nn.Flatten(),
                          nn.Linear(25, 3))
    with torch.no_grad():
        model[0].weight[0] *= 50  # very unequal channel ranges: equalisation would act
    x = torch.randn(1, 2, 7, 7)
    g = equalize.run(from_module(model.eval(), x))
    _float_check(g, model.eval(), x)


def test_refusals_name_the_layer():
    from codegen.errors import UserError
    from codegen.frontend import from_module

    with pytest.raises(UserError, match="keepdim=True"):
        from_module(Lam(lambda x: x.amax(1)), torch.randn(1, 9))  # a 1-D result
    with pytest.raises(UserError, match="indices"):
        from_module(Lam(lambda x: torch.max(x, 1)[1].float()), torch.randn(1, 3, 5))


# ---------------------------------------------------------------------------------------- C, MicroPython


def _pool(g: Graph, name: str, op: Op, src: str, act_range=(-128, 127), **attrs) -> str:
    """Append a quantised pooling (or reduce) node reading `src`, an output of the graph."""
    node = Node(name, op, [src], [name], dict(attrs, act_min=act_range[0], act_max=act_range[1]))
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    h, w = g.tensors[src].shape[:2] if len(g.tensors[src].shape) == 3 else (1, 1)
    if op is Op.AVGPOOL2D:
        node.attrs.update({"avg_shift": AVG_SHIFT} if uses_windows(node.attrs, op, h, w)
                          else avg_params(node.attrs["kernel"][0] * node.attrs["kernel"][1]))
    if op is Op.REDUCE and attrs["kind"] == "mean":
        node.attrs.update(avg_params(g.tensors[src].shape[-1]))
    g.outputs.append(name)
    return name


def pool_graph() -> Graph:
    """Every window kind on one (9, 10, 7) int8 input (7 channels: the DSP max path's 4 + a tail of 3), and
    the DSP average path's edge cases (_simd_edge_cases)."""
    g = Graph({"x": act("x", (9, 10, 7), 3)}, [], ["x"], [], source="test")
    uni = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 1)}
    _pool(g, "max3s2p1_uniform", Op.MAXPOOL2D, "x", **uni)
    _pool(g, "avg3s2p1_uniform", Op.AVGPOOL2D, "x", **uni)
    # ceil mode k2 s2 on 9 rows: the last window is one row (PyTorch: extra end padding, clipped)
    _pool(g, "max2s2_ceil", Op.MAXPOOL2D, "x", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 1, 0))
    _pool(g, "avg2s2_ceil", Op.AVGPOOL2D, "x", kernel=(2, 2), stride=(2, 2), padding=(0, 0, 1, 0),
          count_pad=(0, 0, 0, 0))
    ceil = {"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1, 1, 2)}
    _pool(g, "avg3s2p1_ceil_no_pad_count", Op.AVGPOOL2D, "x", count_pad=(0, 0, 0, 0), **ceil)
    _pool(g, "avg3s2p1_ceil_relu", Op.AVGPOOL2D, "x", act_range=(0, 127), count_pad=(1, 1, 1, 1), **ceil)
    _pool(g, "avg_5x3_s3x1_asym", Op.AVGPOOL2D, "x", kernel=(5, 3), stride=(3, 1), padding=(2, 0, 3, 1),
          count_pad=(1, 0, 0, 1))
    # a folded ZeroPad2d(3): border windows read no input cell (sum 0 over the pad's counted zeros)
    _pool(g, "avg2s2_folded_pad3_empty_windows", Op.AVGPOOL2D, "x", kernel=(2, 2), stride=(2, 2),
          padding=(3, 3, 4, 3), count_pad=(3, 3, 3, 3))
    _pool(g, "adaptive_avg_5x3", Op.AVGPOOL2D, "x", adaptive=(5, 3))
    _pool(g, "adaptive_max_5x3", Op.MAXPOOL2D, "x", adaptive=(5, 3))
    _pool(g, "adaptive_avg_2x1_big", Op.AVGPOOL2D, "x", adaptive=(2, 1))
    _pool(g, "adaptive_max_7x13_up", Op.MAXPOOL2D, "x", adaptive=(7, 13))
    mean = _pool(g, "reduce_mean_c7", Op.REDUCE, "x", kind="mean")
    _pool(g, "reduce_max_c7", Op.REDUCE, "x", kind="max")
    _pool(g, "c1_adaptive_avg_4x3", Op.AVGPOOL2D, mean, adaptive=(4, 3))
    _pool(g, "c1_adaptive_max_4x3", Op.MAXPOOL2D, mean, adaptive=(4, 3))
    _simd_edge_cases(g)
    return finish(g)


def _layout(g: Graph, name: str, op: Op, srcs: list[str], **attrs) -> str:
    node = Node(name, op, srcs, [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    return name


def _simd_edge_cases(g: Graph) -> None:
    """The DSP average path's groups of 8 and 4 channels and its scalar tail (channel counts 1, 2, 3, 5, 13 =
    8 + 4 + 1, 33 = 4 x 8 + 1), its three clamp kinds, windows clipped on every border, one-cell windows
    (shift 0), and int16 lanes at their limit: a window of 256 cells of -128 sums to -2^15; 264 cells take
    the plain loop."""
    x35 = _layout(g, "x35", Op.CONCAT, ["x"] * 5, axis=2, shifts=[0] * 5)
    x33 = _layout(g, "x33", Op.SLICE, [x35], axis=2, start=1, length=33)
    x13 = _layout(g, "x13", Op.SLICE, [x35], axis=2, start=2, length=13)
    every_border = {"kernel": (4, 4), "stride": (3, 3), "padding": (2, 2, 2, 2)}  # d = 16, clipped all round
    for c in (1, 2, 3, 5):
        xc = _layout(g, f"x{c}", Op.SLICE, ["x"], axis=2, start=7 - c, length=c)
        _pool(g, f"avg2s2_c{c}", Op.AVGPOOL2D, xc, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
        _pool(g, f"avg4s3p2_c{c}", Op.AVGPOOL2D, xc, **every_border)
    for xc in (x13, x33):
        _pool(g, f"avg2s2_{xc}", Op.AVGPOOL2D, xc, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
        _pool(g, f"avg4s3p2_{xc}", Op.AVGPOOL2D, xc, **every_border)
        _pool(g, f"avg3s2p1_relu_{xc}", Op.AVGPOOL2D, xc, act_range=(0, 127), kernel=(3, 3), stride=(2, 2),
              padding=(1, 1, 1, 1))
        _pool(g, f"avg3s1p1_clamp_{xc}", Op.AVGPOOL2D, xc, act_range=(-37, 90), kernel=(3, 3), stride=(1, 1),
              padding=(1, 1, 1, 1))
        _pool(g, f"avg1s2_{xc}", Op.AVGPOOL2D, xc, kernel=(1, 1), stride=(2, 2), padding=(0, 0, 0, 0))
        _pool(g, f"max4s3p2_{xc}", Op.MAXPOOL2D, xc, **every_border)
        _pool(g, f"avg2s2_ceil_no_pad_count_{xc}", Op.AVGPOOL2D, xc, kernel=(2, 2), stride=(2, 2),
              padding=(0, 0, 1, 0), count_pad=(0, 0, 0, 0))
        _pool(g, f"adaptive_avg_3x4_{xc}", Op.AVGPOOL2D, xc, adaptive=(3, 4))
    tall = _layout(g, "x_tall", Op.CONCAT, ["x"] * 4, axis=0, shifts=[0] * 4)  # (36, 10, 7)
    _pool(g, "avg32x8_256_cells", Op.AVGPOOL2D, tall, kernel=(32, 8), stride=(4, 2), padding=(0, 0, 0, 0))
    _pool(g, "avg33x8_264_cells", Op.AVGPOOL2D, tall, kernel=(33, 8), stride=(3, 2), padding=(0, 0, 0, 0))
    _pool(g, "adaptive_avg_1x1_360_cells", Op.AVGPOOL2D, tall, adaptive=(1, 1))


def _inputs(g: Graph, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return edge_inputs(rng, g.tensors[g.inputs[0]].shape, n_random=4)


def test_c_equals_reference_under_sanitizers(tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native

    g = pool_graph()
    out = tmp_path / "model"
    write_atomic(render(g, "pw", ["test"]), out)
    exe = build_native(out, "pw", tmp_path / "pw_asan", SANITIZE_FLAGS)
    x = _inputs(g, 1)
    want = reference_outputs(g, run_int(g, x))
    got = run_native(exe, x.reshape(len(x), -1), want.shape[1])
    assert_outputs_equal(got, want, g, "host C")
    assert want.min() == -128 and want.max() == 127  # the extremes went through


def test_micropython_module_equals_reference(tmp_path):
    from test_micropython import check_graph

    g = pool_graph()
    check_graph(g, _inputs(g, 2), tmp_path, prefix="pw")  # CPython, then real MicroPython where installed


class WideNet(nn.Module):
    """int16 between conv1 and the last convs: the *_windows_s16 kernels and qg_reduce_s16."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.a, self.b, self.c = nn.Conv2d(6, 2, 1), nn.Conv2d(6, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        y = self.conv1(x)
        return (self.a(F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
                self.b(F.adaptive_max_pool2d(y, (5, 3))), self.c(y.mean(1, keepdim=True)))


def test_int16_windows_and_reduce_equal_reference(tmp_path):
    import codegen
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    calib = rng.standard_normal((32, 3, 9, 7)).astype(np.float32)
    r = codegen.compile(WideNet().eval(), torch.from_numpy(calib[:1]), calib, prefix="w16",
                        precision={"conv1": 16}, out_dir=tmp_path / "w16")
    from codegen.kernels import select

    fns = {select(r.graph, n).fn for n in r.graph.nodes}
    assert {"qg_avgpool2d_windows_s16", "qg_maxpool2d_windows_s16", "qg_reduce_s16"} <= fns, fns
    x = r.quantize_input(rng.standard_normal((8, 3, 9, 7)).astype(np.float32) * 3)
    exe = build_native(tmp_path / "w16", "w16", tmp_path / "w16_asan", SANITIZE_FLAGS)
    want = reference_outputs(r.graph, run_int(r.graph, x))
    got = run_native(exe, x.reshape(len(x), -1), want.shape[1])
    assert_outputs_equal(got, want, r.graph, "int16 host C")


# ---------------------------------------------------------------------------------------- QEMU

QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


def _window_elements(g: Graph, n: Node) -> int:
    """Input cells read by all windows of a layer (channels included): the per-element unit of the note."""
    from codegen.ops.pool import axis_windows

    x = g.tensors[n.inputs[0]]
    if n.op is Op.REDUCE:
        return x.size
    rows = axis_windows(n.attrs, 0, x.shape[0])
    cols = axis_windows(n.attrs, 1, x.shape[1])
    return int((rows[1] - rows[0]).sum() * (cols[1] - cols[0]).sum() * x.shape[2])


@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(core, tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import reference_outputs
    from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g = pool_graph()
    out = tmp_path / "model"
    write_atomic(render(g, "pw", ["test"]), out)
    sources = [out / "pw_model.c", out / "pw_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "pw", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"), count_layers=True)
    x = _inputs(g, 4)
    want = reference_outputs(g, run_int(g, x))
    result = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), want.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, want, g, core)
    if result.instructions_per_layer:  # instructions per window element of each layer (the note reports M4's)
        for n, count in zip(g.nodes, result.instructions_per_layer):
            if n.op in (Op.CONCAT, Op.SLICE):  # the edge cases' channel counts
                continue
            print(f"{core} {n.name}: {count / _window_elements(g, n):.2f} instructions/window element")


# ---------------------------------------------------------------------------------------- end to end


END_TO_END = {
    "squeezenet_maxpool_ceil": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
                                                      nn.MaxPool2d(3, 2, ceil_mode=True)), (3, 14, 14)),
    "avgpool_count_include_pad_false": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(3, 2, 1,
                                                                                              count_include_pad=False)),
                                        (3, 9, 8)),
    "adaptive_avg_3x3_on_7x7": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d((3, 3))), (3, 7, 7)),
    "adaptive_max1d_5_on_13": (lambda: nn.Sequential(nn.Conv1d(2, 3, 1), nn.AdaptiveMaxPool1d(5)), (2, 13)),
    "mean_last_of_sequence": (lambda: nn.Sequential(nn.Conv1d(2, 3, 1), Lam(lambda x: x.mean(-1))), (2, 13)),
    "amax_hw_keepdim": (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), Lam(lambda x: x.amax(dim=(2, 3), keepdim=True))),
                        (3, 5, 6)),
    "mean_channels": (lambda: nn.Sequential(nn.Conv1d(3, 5, 1), Lam(lambda x: x.mean(1))), (3, 11)),
    "amax_channels_of_image": (lambda: nn.Sequential(nn.Conv2d(3, 5, 1), Lam(lambda x: x.amax(1))), (3, 4, 6)),
    "adaptive_avg1d_1": (lambda: nn.Sequential(nn.Conv1d(2, 3, 1), nn.AdaptiveAvgPool1d(1)), (2, 13)),
    # enlarging: 1 x 3 -> 2 x 5 repeats windows (the long fuzz profile, seed 20261203: stride 0 divided by zero)
    "adaptive_avg_enlarging": (lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d((2, 5))), (2, 1, 3)),
}


@pytest.mark.parametrize("name", sorted(END_TO_END))
def test_end_to_end_through_the_api(name):
    """compile -> the host C equals the reference on every sample; the integer model tracks PyTorch."""
    import codegen

    factory, shape = END_TO_END[name]
    torch.manual_seed(0)
    model = factory().eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, *shape)).astype(np.float32)
    r = codegen.compile(model, torch.from_numpy(calib[:1]), calib, prefix="e2e")
    x = calib[:16]
    check = r.verify(x)
    assert check.exact, str(check)
    want = model(torch.from_numpy(x)).detach().numpy()
    got = r.predict(x).reshape(want.shape)
    step = max(2.0 ** -r.graph.tensors[r.graph.outputs[0]].qformat.frac, 2.0 ** -r.graph.tensors[
        r.graph.inputs[0]].qformat.frac)
    assert np.abs(got - want).max() <= 6 * step, (name, np.abs(got - want).max(), step)


@pytest.mark.parametrize("name", ["squeezenet_maxpool_ceil", "avgpool_count_include_pad_false", "mean_channels",
                                  "amax_hw_keepdim"])
def test_onnx_end_to_end(name, tmp_path):
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    import contextlib
    import io
    import warnings

    import codegen
    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout, to_torch_layout

    factory, shape = END_TO_END[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, *shape)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path))
    g = from_onnx_file(str(path))
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got.reshape(model(x).shape), model(x).detach().numpy(), atol=1e-5)
    r = codegen.compile(str(path), prefix="ox")
    assert r.verify(np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32)).exact


def test_qat_twin_is_exact():
    from codegen import qat

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 3 * 3 + 4 * 4 * 5 + 16, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            a = F.adaptive_avg_pool2d(y, (3, 3))  # 7x9 -> uneven windows
            b = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True, count_include_pad=False)
            c = F.adaptive_max_pool2d(y, (4, 4)).mean(1, keepdim=True)
            return self.fc(torch.cat([a.flatten(1), b.flatten(1), c.flatten(1)], 1))

    torch.manual_seed(0)
    x = np.random.default_rng(4).standard_normal((16, 2, 7, 9)).astype(np.float32)
    qm = qat.prepare(Net().eval(), torch.from_numpy(x[:1]), x)
    result = qat.compile(qm, eval_data=x[:8])
    with torch.no_grad():
        y_qat = qm.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(y_qat, result.predict(x))
