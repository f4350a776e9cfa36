"""conv_transpose2d and resize (codegen/ops/upsample.py, firmware/kernels/qg_upsample_s8.c).

- the float rules equal torch (ConvTranspose1d/2d, Upsample/F.interpolate in every mode and spelling);
- the C kernels equal the integer reference byte for byte: host (strict flags, ASan/UBSan) and QEMU on
  cortex-m0plus (plain C) and cortex-m4 (DSP path), one model with every case (strides 1..3, kernels
  1..5, crops with output_padding, in_c 7 and 8, borders, bias-only phases, 1-D, int16 resize);
- MACs count only the products that land on an output (no zeros inserted);
- a tiny U-Net (conv, maxpool, conv, up, cat skip, conv) compiles and runs end to end through the API.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish, safe_bias
from torch import nn

from codegen.fixed import QFormat
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op, Tensor
from codegen.reference import run_int


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


FLOAT_CASES = {
    "ct2d_k3_s2_p1_op1": (nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (1, 3, 4, 5)),
    "ct2d_k2x3_s3x2_op": (nn.ConvTranspose2d(3, 4, (2, 3), stride=(3, 2), output_padding=(2, 1)), (1, 3, 4, 5)),
    "ct2d_k1_s3_nobias": (nn.ConvTranspose2d(3, 2, 1, stride=3, bias=False), (1, 3, 4, 5)),
    "ct1d_k3_s2": (nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1), (1, 3, 8)),
    "ct2d_groups2_k3_s2_op1": (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
                               (1, 6, 4, 5)),
    "ct2d_groups3_k2_s2_x2": (nn.ConvTranspose2d(3, 6, 2, stride=2, groups=3), (1, 3, 4, 5)),
    "ct1d_groups2_k3_s2": (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, groups=2), (1, 4, 8)),
    "ct2d_dil2_k3_s2_p2_op1": (nn.ConvTranspose2d(3, 4, 3, stride=2, padding=2, output_padding=1, dilation=2),
                               (1, 3, 4, 5)),
    "ct2d_dil2x3_k2x3_s3x2_g2": (nn.ConvTranspose2d(4, 6, (2, 3), stride=(3, 2), output_padding=(1, 2),
                                                    dilation=(2, 3), groups=2), (1, 4, 4, 5)),
    "ct1d_dil3_k3_s1_p1": (nn.ConvTranspose1d(3, 4, 3, padding=1, dilation=3), (1, 3, 8)),
    "nearest_x2": (nn.Upsample(scale_factor=2, mode="nearest"), (1, 3, 4, 5)),
    "nearest_size": (_Fn(lambda x: F.interpolate(x, size=(7, 9), mode="nearest")), (1, 3, 4, 5)),
    "nearest_1.7": (_Fn(lambda x: F.interpolate(x, scale_factor=1.7, mode="nearest")), (1, 3, 4, 5)),
    "nearest_down": (_Fn(lambda x: F.interpolate(x, size=(3, 2), mode="nearest")), (1, 3, 4, 5)),
    "nearest_exact_1.5": (_Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest-exact")), (1, 3, 4, 5)),
    "bilinear_x2": (nn.Upsample(scale_factor=2, mode="bilinear"), (1, 3, 4, 5)),
    "bilinear_x2_ac": (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), (1, 3, 4, 5)),
    "bilinear_size": (_Fn(lambda x: F.interpolate(x, size=(7, 9), mode="bilinear")), (1, 3, 4, 5)),
    "bilinear_1.3": (_Fn(lambda x: F.interpolate(x, scale_factor=1.3, mode="bilinear")), (1, 3, 5, 7)),
    "UpsamplingNearest2d": (nn.UpsamplingNearest2d(scale_factor=2), (1, 3, 4, 5)),
    "UpsamplingBilinear2d": (nn.UpsamplingBilinear2d(size=(6, 11)), (1, 3, 4, 5)),
    "recompute_scale": (_Fn(lambda x: F.interpolate(x, scale_factor=1.6, mode="bilinear",
                                                   recompute_scale_factor=True)), (1, 3, 5, 7)),
    "nearest1d_x3": (nn.Upsample(scale_factor=3, mode="nearest"), (1, 3, 8)),
    "linear1d_x2": (nn.Upsample(scale_factor=2, mode="linear"), (1, 3, 8)),
    "linear1d_ac_size": (nn.Upsample(size=13, mode="linear", align_corners=True), (1, 3, 8)),
}


@pytest.mark.parametrize("case", list(FLOAT_CASES))
def test_float_rule_equals_torch(case):
    from codegen.frontend import from_module
    from codegen.reference import run_float, to_qgen_layout, to_torch_layout
    from codegen.torch_ir import FloatModule, to_ir_layout

    torch.manual_seed(0)
    model, shape = FLOAT_CASES[case]
    model.eval()
    x = torch.randn(*shape)
    g = from_module(model, x)
    assert {n.op for n in g.nodes} <= {Op.CONV_TRANSPOSE2D, Op.RESIZE}
    want = model(x).detach().numpy()
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got, want, atol=2e-6)
    got_torch = FloatModule(g)(to_ir_layout(x)).detach().numpy()  # torch_ir.float_node: QAT's float rule
    np.testing.assert_allclose(got_torch, want, atol=1e-5)


def test_conv_transpose_macs_count_no_zeros():
    """MACs = the (input, tap) pairs that land on an output pixel: k2 s2 = 4 per input pixel and channel pair."""
    g = Graph({"x": act("x", (4, 5, 3), 4), "w": const("w", np.zeros((6, 2, 2, 3)), 8, (3,) * 6),
               "b": const("b", np.zeros(6), 32, (7,) * 6)}, [], ["x"], ["y"], source="t")
    n = Node("ct", Op.CONV_TRANSPOSE2D, ["x", "w", "b"], ["y"], {"stride": (2, 2), "crop": (0, 0, 0, 0)})
    g.nodes.append(n)
    g.tensors["y"] = act("y", SHAPE_RULES[Op.CONV_TRANSPOSE2D](g, n), 4)
    from codegen.ops import SPEC

    assert g.tensors["y"].shape == (8, 10, 6)
    assert SPEC[Op.CONV_TRANSPOSE2D].macs(g, n) == 4 * 5 * 3 * 6 * 4  # each output pixel: one tap of 3 channels
    n.attrs["crop"] = (1, 1, 1, 1)  # k3 s2 p1 would have 9 taps per input pixel, cropped at the borders
    g.tensors["w"] = const("w", np.zeros((6, 3, 3, 3)), 8, (3,) * 6)
    g.tensors["y"].shape = SHAPE_RULES[Op.CONV_TRANSPOSE2D](g, n)
    assert g.tensors["y"].shape == (7, 9, 6)
    # rows: oy = 2 iy - 1 + ky in [0, 7): 4*3 pairs less iy=0,ky=0 and iy=3,ky=2 -> 10; columns 5*3 - 2 = 13
    assert SPEC[Op.CONV_TRANSPOSE2D].macs(g, n) == 10 * 13 * 3 * 6
    n.attrs["groups"] = 3  # each output channel reads one input channel of each tap
    g.tensors["w"] = const("w", np.zeros((6, 3, 3, 1)), 8, (3,) * 6)
    assert SHAPE_RULES[Op.CONV_TRANSPOSE2D](g, n) == (7, 9, 6)
    assert SPEC[Op.CONV_TRANSPOSE2D].macs(g, n) == 10 * 13 * 1 * 6


# ------------------------------------------------------------------ C == reference: one model with every case


def _weighted(g: Graph, rng, name: str, op: Op, src: str, w_shape, act_range=(-128, 127), out_bits=8, **attrs):
    w = rng.integers(-128, 128, w_shape)
    w.flat[0] = -128
    in_bits = 16 if g.tensors[src].dtype == "int16" else 8
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
    g.tensors[f"{name}_b"] = const(f"{name}_b", safe_bias(rng, w, 1 << (in_bits - 1)), 32, (7,) * w_shape[0])
    lo_shift = 1 if out_bits == 16 or in_bits == 16 else -3
    attrs.update(shift=[int(s) for s in rng.integers(lo_shift, 15 if in_bits == 8 else 20, w_shape[0])],
                 act_min=act_range[0], act_max=act_range[1])
    return _node(g, name, op, [src, f"{name}_w", f"{name}_b"], out_bits, **attrs)


def _node(g: Graph, name: str, op: Op, inputs, out_bits=8, output=True, **attrs) -> str:
    node = Node(name, op, inputs, [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = Tensor(name, (1,), "int16" if out_bits == 16 else "int8", QFormat(out_bits, 3))
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    if output:
        g.outputs.append(name)
    return name


def _resize(g: Graph, name: str, src: str, mode: str, size, scales=(None, None), align=False, output=True,
            frac_bits: int | None = None) -> str:
    bits = 16 if g.tensors[src].dtype == "int16" else 8
    return _node(g, name, Op.RESIZE, [src], bits, output=output, mode=mode, align_corners=align, size=size,
                 scales=scales, frac_bits=frac_bits or (10 if bits == 8 else 7))


def upsample_graph(rng, wide: bool = True) -> Graph:
    """Branches over one (5, 6, 7) int8 input; every branch output is a model output (wide: and int16 ones)."""
    g = Graph({"x": act("x", (5, 6, 7), 3)}, [], ["x"], [], source="test")
    c8 = _weighted(g, rng, "c8", Op.CONV2D, "x", (8, 1, 1, 7), stride=(1, 1), padding=(0, 0, 0, 0))
    ct = Op.CONV_TRANSPOSE2D
    _weighted(g, rng, "ct_k3_s2_crop1_op1_c7", ct, "x", (5, 3, 3, 7), stride=(2, 2), crop=(1, 1, 0, 0))
    _weighted(g, rng, "ct_k2_s2_c8_relu", ct, c8, (6, 2, 2, 8), act_range=(0, 127), stride=(2, 2), crop=(0, 0, 0, 0))
    _weighted(g, rng, "ct_k3x5_s3x2_c7_any", ct, "x", (3, 3, 5, 7), act_range=(-50, 90), stride=(3, 2),
              crop=(0, 2, -2, 1))
    _weighted(g, rng, "ct_k1_s3_c8_bias_phases", ct, c8, (4, 1, 1, 8), stride=(3, 3), crop=(0, 0, -1, 0))
    _weighted(g, rng, "ct_k4x3_s1_c8", ct, c8, (9, 4, 3, 8), stride=(1, 1), crop=(1, 2, 1, 0))
    _weighted(g, rng, "ct_k5_s2_c8_crop3", ct, c8, (7, 5, 5, 8), stride=(2, 2), crop=(3, 1, 2, 0))
    _resize(g, "nearest_x2", "x", "nearest", (10, 12), (2.0, 2.0))
    _resize(g, "nearest_size_11x4", c8, "nearest", (11, 4))
    _resize(g, "nearest_exact_1.5", "x", "nearest_exact", (7, 9), (1.5, 1.5))
    _resize(g, "bilinear_x2", c8, "bilinear", (10, 12), (2.0, 2.0))
    _resize(g, "bilinear_ac_9x13", "x", "bilinear", (9, 13), align=True)
    _resize(g, "bilinear_1.3", c8, "bilinear", (6, 7), (1.3, 1.3))
    _resize(g, "bilinear_q9_weights", "x", "bilinear", (8, 11), frac_bits=9)  # the kernels' generic-shift path
    # 1-D (H = 1): a (1, 6, 7) sequence from a (5, 1) max pool
    seq = _node(g, "seq", Op.MAXPOOL2D, ["x"], output=False, kernel=(5, 1), stride=(5, 1), padding=(0, 0, 0, 0))
    _weighted(g, rng, "ct1d_k3_s2_c7", ct, seq, (4, 1, 3, 7), stride=(1, 2), crop=(0, 1, 0, 0))
    _resize(g, "nearest1d_x3", seq, "nearest", (1, 18), (None, 3.0))
    _resize(g, "linear1d_x2", seq, "bilinear", (1, 12), (None, 2.0))
    # groups (weights (Cout, KH, KW, Cin / groups)): 4 channels per group (M4: fill_block), 2 and 1 (fill_col,
    # 7 groups of x's 7 channels), odd rows per group, 1-D
    _weighted(g, rng, "ct_g2_k3_s2_c8_cg4", ct, c8, (6, 3, 3, 4), stride=(2, 2), crop=(1, 1, 0, 0), groups=2)
    _weighted(g, rng, "ct_g4_k4x3_s2x3_cg2_any", ct, c8, (12, 4, 3, 2), act_range=(-50, 90), stride=(2, 3),
              crop=(1, 0, -1, 2), groups=4)
    _weighted(g, rng, "ct_g7_k2_s2_cg1_relu", ct, "x", (14, 2, 2, 1), act_range=(0, 127), stride=(2, 2),
              crop=(0, 0, 0, 0), groups=7)
    _weighted(g, rng, "ct1d_g2_k3_s2_cg4", ct, c8, (4, 1, 3, 4), stride=(1, 2), crop=(0, 1, 0, 0), groups=2)
    # dilation: gcd(d, s) = 2 (odd rows and columns: bias only), gcd 1 with k0 > 0 (tap rows below the phase's
    # first output: qy < 0), stride 1, grouped, 1-D (TCN-style)
    _weighted(g, rng, "ct_d2_k3_s2_c8", ct, c8, (5, 3, 3, 8), stride=(2, 2), crop=(1, 1, 0, 0), dilation=(2, 2))
    _weighted(g, rng, "ct_d3x2_k3x2_s2x1_c7_any", ct, "x", (4, 3, 2, 7), act_range=(-50, 90), stride=(2, 1),
              crop=(2, 1, -1, 0), dilation=(3, 2))
    _weighted(g, rng, "ct_d2_k4_s3_c8", ct, c8, (3, 4, 4, 8), stride=(3, 3), crop=(2, 0, 0, -1), dilation=(2, 2))
    _weighted(g, rng, "ct_g2_d2_k3_s1_cg4_relu", ct, c8, (6, 3, 3, 4), act_range=(0, 127), stride=(1, 1),
              crop=(2, 2, 2, 2), groups=2, dilation=(2, 2))
    _weighted(g, rng, "ct1d_d3_k3_s2_c7", ct, seq, (4, 1, 3, 7), stride=(1, 2), crop=(0, 1, 0, 0), dilation=(1, 3))
    if not wide:
        return finish(g)
    # int16: conv to int16, resize at int16, conv back to int8 (qg_resize_s16)
    to16 = _weighted(g, rng, "to_s16", Op.CONV2D, "x", (4, 1, 1, 7), act_range=(-32768, 32767), out_bits=16,
                     stride=(1, 1), padding=(0, 0, 0, 0))
    g.outputs.remove(to16)
    for name, mode, size, scales in (("bilinear_s16", "bilinear", (9, 11), (None, None)),
                                     ("nearest_s16", "nearest", (10, 12), (2.0, 2.0))):
        up = _resize(g, name, to16, mode, size, scales, output=False)
        _weighted(g, rng, f"{name}_to_s8", Op.CONV2D, up, (3, 1, 1, 4), stride=(1, 1), padding=(0, 0, 0, 0))
    # int16 transposed convolutions (qg_conv_transpose2d_s8_to_s16 / _s16_to_s8 / _s16, int32 and int64 sums)
    wide16 = {"act_range": (-32768, 32767), "out_bits": 16}
    one = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
    ct16 = _weighted(g, rng, "ct_s16_acc64", ct, to16, (3, 3, 3, 4), **wide16, stride=(2, 2), crop=(1, 1, 0, 0),
                     acc64=True)
    g.outputs.remove(ct16)
    _weighted(g, rng, "ct_s16_acc64_to_s8", Op.CONV2D, ct16, (2, 1, 1, 3), **one)
    _weighted(g, rng, "ct_s16_to_s8_k2s2", ct, to16, (5, 2, 2, 4), act_range=(0, 127), stride=(2, 2),
              crop=(0, 0, 0, 0))
    ct8_16 = _weighted(g, rng, "ct_s8_to_s16_k3x2_s3x2", ct, "x", (4, 3, 2, 7), **wide16, stride=(3, 2),
                       crop=(0, 1, -1, 0))
    g.outputs.remove(ct8_16)
    _weighted(g, rng, "ct_s8_to_s16_to_s8", Op.CONV2D, ct8_16, (3, 1, 1, 4), **one)
    _weighted(g, rng, "ct_s16_to_s8_g2_k3s2", ct, to16, (6, 3, 3, 2), stride=(2, 2), crop=(1, 1, 0, 0), groups=2)
    ct8_16g = _weighted(g, rng, "ct_s8_to_s16_g7", ct, "x", (7, 2, 3, 1), **wide16, stride=(2, 1), crop=(0, 1, 0, 0),
                        groups=7)
    g.outputs.remove(ct8_16g)
    _weighted(g, rng, "ct_s8_to_s16_g7_to_s8", Op.CONV2D, ct8_16g, (3, 1, 1, 7), **one)
    _weighted(g, rng, "ct_s16_to_s8_d2x3_k3_s2", ct, to16, (5, 3, 3, 4), stride=(2, 2), crop=(1, 1, 0, -1),
              dilation=(2, 3))
    ct8_16d = _weighted(g, rng, "ct_s8_to_s16_d3_k2_s2", ct, "x", (4, 2, 2, 7), **wide16, stride=(2, 2),
                        crop=(0, 2, 0, 0), dilation=(3, 3))
    g.outputs.remove(ct8_16d)
    _weighted(g, rng, "ct_s8_to_s16_d3_to_s8", Op.CONV2D, ct8_16d, (3, 1, 1, 4), **one)
    return finish(g)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic

    rng = np.random.default_rng(16)
    g = upsample_graph(rng)
    out = tmp_path_factory.mktemp("upsample") / "model"
    write_atomic(render(g, "up", ["test"]), out)
    x = edge_inputs(rng, g.tensors["x"].shape, n_random=4)
    return g, out, x, reference_outputs(g, run_int(g, x))


def test_reference_saturates_and_stays_in_range(model):
    """The cases reach the extremes (so the C comparison tests saturation) and resize stays in its input range."""
    g, _, x, expect = model
    values = run_int(g, x)
    assert expect.min() == -128 and expect.max() == 127
    for n in g.nodes:
        if n.op is Op.RESIZE:
            src, out = values[n.inputs[0]], values[n.outputs[0]]
            assert out.min() >= src.min() and out.max() <= src.max()


def test_c_equals_reference_on_host_with_sanitizers(model, tmp_path):
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    g, out, x, expect = model
    exe = build_native(out, "up", tmp_path / "up_asan", SANITIZE_FLAGS)
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, "host C")


@pytest.mark.parametrize("core,board", [("cortex-m0plus", "rp2040"), ("cortex-m4", "mps2-an386")])
def test_c_equals_reference_under_qemu(model, core, board, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = model
    sources = [out / "up_model.c", out / "up_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "up", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    got = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False).outputs
    assert_outputs_equal(got, expect, g, core)


# ------------------------------------------------------------------ end to end: a tiny U-Net through the API


class TinyUNet(nn.Module):
    """conv, maxpool (down), conv, up (ConvTranspose2d stride 2 / Upsample), cat with the skip, conv."""

    def __init__(self, up: str):
        super().__init__()
        self.enc = nn.Conv2d(2, 6, 3, padding=1)
        self.mid = nn.Conv2d(6, 8, 3, padding=1)
        if up == "convt_d2":  # a dilated one: 3x3, dilation 2, stride 2 (4 -> 8 pixels)
            self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=2, output_padding=1, dilation=2)
        elif up.startswith("convt"):  # convt_g2: a grouped one (2 groups of 4 -> 3 channels)
            self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2 if up == "convt_g2" else 1)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode=up), nn.Conv2d(8, 6, 1))
        self.dec = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        y = torch.relu(self.mid(F.max_pool2d(skip, 2)))
        y = torch.relu(self.up(y))
        return self.dec(torch.cat([y, skip], 1))


@pytest.mark.parametrize("up", ["convt", "convt_d2", "nearest", "bilinear"])
def test_tiny_unet_end_to_end(up, tmp_path):
    import codegen

    torch.manual_seed(1)
    model = TinyUNet(up).eval()
    calib = torch.rand(32, 2, 8, 8) * 2 - 1
    result = codegen.compile(model, calib[:1], calib.numpy(), prefix="unet", out_dir=tmp_path / "unet")
    ops = {n.op for n in result.graph.nodes}
    assert (Op.CONV_TRANSPOSE2D if up.startswith("convt") else Op.RESIZE) in ops
    assert result.verify(calib.numpy()[:8]).exact  # C (host) == integer reference, byte for byte
    want = model(calib[:8]).detach().numpy()
    err = np.abs(result.predict(calib.numpy()[:8]) - want).max() / np.abs(want).max()
    assert err < 0.05, f"{up}: the quantised output differs from torch by {err:.3f} of its range"


class _OnnxUps(nn.Module):
    def __init__(self):
        super().__init__()
        self.ct = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        y = self.ct(x)
        return torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"),
                          F.interpolate(y, size=(16, 20), mode="nearest"),
                          F.interpolate(y, scale_factor=2, mode="bilinear"),
                          F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)], 1)


def test_onnx_import_equals_torch(tmp_path):
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    import contextlib
    import io
    import warnings

    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout, to_torch_layout

    torch.manual_seed(0)
    model, x = _OnnxUps().eval(), torch.randn(1, 3, 4, 5)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "ups.onnx"))
    g = from_onnx_file(str(tmp_path / "ups.onnx"))
    modes = sorted(n.attrs["mode"] + ("_ac" if n.attrs["align_corners"] else "") for n in g.nodes if n.op is Op.RESIZE)
    assert modes == ["bilinear", "bilinear_ac", "nearest", "nearest"]
    assert any(n.op is Op.CONV_TRANSPOSE2D for n in g.nodes)
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=2e-6)


def _onnx_export(model, x, path) -> None:
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path))


@pytest.mark.parametrize("case", ["2d", "1d", "dilated", "dilated_1d"])
def test_onnx_grouped_conv_transpose(case, tmp_path):
    """ConvTranspose with group > 1 (2-D, 1-D) and dilations > 1 imports and equals torch."""
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout, to_torch_layout

    torch.manual_seed(0)
    layer, x = {"2d": (nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2),
                       torch.randn(1, 6, 4, 5)),
                "1d": (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(1, 4, 8)),
                "dilated": (nn.ConvTranspose2d(4, 4, 3, stride=2, dilation=(2, 3), groups=2, padding=1,
                                               output_padding=1), torch.randn(1, 4, 4, 5)),
                "dilated_1d": (nn.ConvTranspose1d(3, 4, 3, stride=1, dilation=4), torch.randn(1, 3, 8))}[case]
    model = nn.Sequential(layer).eval()
    _onnx_export(model, x, tmp_path / "ct.onnx")
    g = from_onnx_file(str(tmp_path / "ct.onnx"))
    node = next(n for n in g.nodes if n.op is Op.CONV_TRANSPOSE2D)
    assert node.attrs.get("groups", 1) == layer.groups
    assert node.attrs.get("dilation", (1, 1)) == {"2d": (1, 1), "1d": (1, 1), "dilated": (2, 3),
                                                  "dilated_1d": (1, 4)}[case]
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x.numpy()))[g.outputs[0]], g.io_layout[g.outputs[0]])
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=2e-6)


@pytest.mark.parametrize("up", ["convt", "convt_g2", "convt_d2", "nearest", "bilinear"])
def test_qat_twin_is_exact_and_trains(up):
    """QAT's fake-quantised twin (ops' qat rules) in eval mode == the integer reference, exactly; the train
    path has gradients through the up-sampling."""
    from codegen import qat

    torch.manual_seed(2)
    model = TinyUNet(up).eval()
    x = (np.random.default_rng(3).random((16, 2, 8, 8)) * 2 - 1).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    result = qat.compile(qm, eval_data=x[:8])
    with torch.no_grad():
        y_qat = qm.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(y_qat, result.predict(x))
    qm.train()
    qm(torch.from_numpy(x)).square().mean().backward()
    assert all(p.grad is not None for p in qm.parameters())


# ------------------------------------------------------------------ the passes around a transposed convolution


@pytest.mark.parametrize("what", ["equalize", "bias_correction", "cluster", "int16_resize", "int16_convt",
                                  "grouped_equalize", "grouped_bias_correction"])
def test_unet_through_the_optional_passes(what, tmp_path):
    """Cross-layer equalisation (conv -> ConvTranspose), bias correction (its own sums), clustering (the values
    are clustered, its storage stays dense: no clustered kernel), an int16 activation through resize and out of
    a ConvTranspose (qg_conv_transpose2d_s8_to_s16, then the wide concat). A grouped ConvTranspose (groups=2):
    equalisation leaves the conv feeding it alone (its weight columns read channels by group), bias correction
    sums by group. (Channel pruning freezes a ConvTranspose's input and output channels, grouped or not.)"""
    import codegen
    from codegen.options import CompileOptions, CompressOptions

    torch.manual_seed(1)
    grouped = what.startswith("grouped_")
    what = what.removeprefix("grouped_")
    model = TinyUNet("bilinear" if what == "int16_resize" else "convt_g2" if grouped else "convt").eval()
    # the layers whose output becomes int16; for the resize also its 1x1 conv, which commute_resize runs first
    up = ("mid", "up.1") if what == "int16_resize" else ("up",)
    calib = (torch.rand(32, 2, 8, 8) * 2 - 1).numpy()
    kw = {"equalize": {"equalize": True}, "bias_correction": {"bias_correction": True},
          "cluster": {"options": CompileOptions(compress=CompressOptions(cluster=4))},
          "int16_resize": {"precision": dict.fromkeys(up, 16)},
          "int16_convt": {"precision": dict.fromkeys(up, 16)}}[what]
    result = codegen.compile(model, torch.from_numpy(calib[:1]), calib, prefix="unet", **kw)
    node = next(n for n in result.graph.nodes if n.op in (Op.CONV_TRANSPOSE2D, Op.RESIZE))
    if grouped:
        assert node.attrs["groups"] == 2 and result.graph.tensors[node.inputs[1]].shape == (6, 2, 2, 4)
        if what == "equalize":  # the conv feeding it keeps its weights (no per-channel rescaling)
            plain = codegen.compile(model, torch.from_numpy(calib[:1]), calib, prefix="unet").graph
            w_mid = [next(g.tensors[n.inputs[1]].data for n in g.nodes if n.outputs[0] == node.inputs[0])
                     for g in (plain, result.graph)]
            np.testing.assert_array_equal(*w_mid)
    if what.startswith("int16"):
        assert result.graph.tensors[node.outputs[0]].dtype == "int16"
    if what == "cluster":
        assert len(np.unique(result.graph.tensors[node.inputs[1]].data)) <= 16
    assert result.verify(calib[:8]).exact
    want = model(torch.from_numpy(calib[:8])).detach().numpy()
    assert np.abs(result.predict(calib[:8]) - want).max() / np.abs(want).max() < 0.1


def test_refusals_name_the_layer_and_the_way_out():
    import codegen
    from codegen.errors import UserError

    x = torch.zeros(1, 4, 6, 6)
    for layer, words in ((nn.ConvTranspose2d(4, 4, 3, stride=2, dilation=(300, 2)), "dilation=[300, 2]"),
                         (nn.Upsample(scale_factor=2, mode="bicubic"), "upsample_bicubic2d"),
                         (nn.ConvTranspose1d(4, 4, 3, dilation=256), "dilation=[256]")):
        if isinstance(layer, nn.ConvTranspose1d):
            x = torch.zeros(1, 4, 6)
        with pytest.raises(UserError, match=re.escape(words)):
            codegen.compile(nn.Sequential(layer).eval(), x)


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_pure_micropython_module_equals_reference(runtime, tmp_path):
    """The pure MicroPython kernels _conv_transpose2d / _resize (templates/micropython/_kernels.py), under host
    CPython and real MicroPython (WebAssembly port), == the integer reference on every int8 case."""
    from test_micropython import check_graph, mpy_available  # MicroPython through tests/mpy_runner.mjs

    if runtime == "micropython" and mpy_available():
        pytest.skip(mpy_available())
    rng = np.random.default_rng(16)
    g = upsample_graph(rng, wide=False)
    check_graph(g, edge_inputs(rng, g.tensors["x"].shape, n_random=3), tmp_path, mpy=runtime == "micropython")


def test_compression_summary_counts_the_transposed_convs_real_macs():
    """weight_storage.summary (report's MACs executed) takes the op's MAC count: for a transposed conv only the
    taps that land on an output, not every weight at every output pixel (4x more for a 2x2 stride-2 layer)."""
    import codegen
    from codegen.ops import SPEC
    from codegen.weight_storage import summary

    torch.manual_seed(1)
    result = codegen.compile(TinyUNet("convt").eval(), torch.zeros(1, 2, 8, 8))
    g = result.graph
    node = next(n for n in g.nodes if n.op is Op.CONV_TRANSPOSE2D)
    row = next(r for r in summary(g) if r["name"] == node.name)
    assert row["macs"] == row["macs_executed"] == SPEC[node.op].macs(g, node) == 4 * 4 * 8 * 6 * 4
