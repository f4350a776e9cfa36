"""Transposed convolutions with kernel == stride (the U-Net decoder's ConvTranspose2d(2, stride=2)) run as 1x1
convolutions per input row (codegen/ops/upsample.py pointwise_form, firmware/kernels/qg_conv_transpose_pw_s8.c):

- the kernel choice: k == stride, no crop, dilation 1, groups 1 (1-D too) and nothing else;
- C == the integer reference byte for byte, one model with every case: host (strict flags, ASan/UBSan) and QEMU
  cortex-m0plus (plain C / 4-row assembly), cortex-m4 (DSP pointwise block and its assembly rows, the im2col
  path for in_c not a multiple of 4) and cortex-m55 (Helium blocks): k2s2 and k3s3, asymmetric k = s (2x3),
  odd sizes and channel counts, 8 and 16 input channels (the assembly rows), saturation, zero bias, fused ReLU
  and clamps, 1-D, and written in place into a channels-last concat (out_stride: one call per tap column);
- the same on an 8-bit AVR (atmega2560 under simavr: parameters in flash, 16-bit int).
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish, safe_bias

from codegen.fixed import QFormat
from codegen.hostcheck import reference_outputs
from codegen.ir import SHAPE_RULES, Graph, Node, Op, Tensor
from codegen.kernels import select
from codegen.passes import concat_in_place
from codegen.reference import run_int

POINTWISE = "qg_conv_transpose2d_pointwise_s8"
CT = Op.CONV_TRANSPOSE2D


def _node(g: Graph, name: str, op: Op, inputs, output=True, **attrs) -> str:
    node = Node(name, op, inputs, [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = Tensor(name, (1,), "int8", QFormat(8, 3))
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    if output:
        g.outputs.append(name)
    return name


def _weighted(g: Graph, rng, name: str, op: Op, src: str, w_shape, act_range=(-128, 127), bias=True,
              shifts=(-3, 15), output=True, **attrs) -> str:
    w = rng.integers(-128, 128, w_shape)
    w.flat[0] = -128
    g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
    b = safe_bias(rng, w, 128) if bias else np.zeros(w_shape[0], np.int64)
    g.tensors[f"{name}_b"] = const(f"{name}_b", b, 32, (7,) * w_shape[0])
    attrs.update(shift=[int(s) for s in rng.integers(*shifts, w_shape[0])], act_min=act_range[0],
                 act_max=act_range[1])
    return _node(g, name, op, [src, f"{name}_w", f"{name}_b"], output, **attrs)


def pointwise_graph(rng) -> Graph:
    """Branches over one (5, 7, 16) int8 input; every branch output is a model output."""
    g = Graph({"x": act("x", (5, 7, 16), 3)}, [], ["x"], [], source="test")
    one = {"stride": (1, 1), "padding": (0, 0, 0, 0)}
    c8 = _weighted(g, rng, "c8", Op.CONV2D, "x", (8, 1, 1, 16), output=False, **one)
    c7 = _weighted(g, rng, "c7", Op.CONV2D, "x", (7, 1, 1, 16), output=False, **one)
    none = (0, 0, 0, 0)
    # 16 input channels, ReLU, shifts >= 1: the M4 assembly rows (pw16); any clamp / shifts <= 0: the C block
    _weighted(g, rng, "k2s2_c16_relu", CT, "x", (16, 2, 2, 16), act_range=(0, 127), shifts=(1, 15), stride=(2, 2),
              crop=none)
    _weighted(g, rng, "k2s2_c16_to5_any", CT, "x", (5, 2, 2, 16), act_range=(-50, 90), stride=(2, 2), crop=none)
    _weighted(g, rng, "k3s3_c16_to3_nobias", CT, "x", (3, 3, 3, 16), bias=False, stride=(3, 3), crop=none)
    _weighted(g, rng, "k2s2_c8_to9_relu", CT, c8, (9, 2, 2, 8), act_range=(0, 127), shifts=(1, 15), stride=(2, 2),
              crop=none)
    _weighted(g, rng, "k3s3_c8_to4", CT, c8, (4, 3, 3, 8), stride=(3, 3), crop=none)
    _weighted(g, rng, "k2x3_s2x3_c8_to5", CT, c8, (5, 2, 3, 8), stride=(2, 3), crop=none)
    # 7 input channels (not a multiple of 4: the DSP im2col path of the row convs), odd outputs
    _weighted(g, rng, "k2s2_c7_to6_relu", CT, c7, (6, 2, 2, 7), act_range=(0, 127), stride=(2, 2), crop=none)
    _weighted(g, rng, "k3s3_c7_to3", CT, c7, (3, 3, 3, 7), stride=(3, 3), crop=none)
    # 1-D (H = 1): a (1, 7, 16) sequence from a (5, 1) max pool
    seq = _node(g, "seq", Op.MAXPOOL2D, ["x"], output=False, kernel=(5, 1), stride=(5, 1), padding=(0, 0, 0, 0))
    _weighted(g, rng, "ct1d_k2s2_c16_to6", CT, seq, (6, 1, 2, 16), stride=(1, 2), crop=none)
    # a U-Net decoder: the convT written in place into its concat with a skip (out_stride), 8 -> 6 and 7 -> 5
    # channels (the DSP block and the im2col path), the skip copied early
    for src, cin, cout in ((c8, 8, 6), (c7, 7, 5)):
        up = _weighted(g, rng, f"up_c{cin}", CT, src, (cout, 2, 2, cin), act_range=(0, 127), stride=(2, 2),
                       crop=none, output=False)
        skip = _node(g, f"skip_c{cin}", Op.RESIZE, ["x"], output=False, mode="nearest", align_corners=False,
                     size=(10, 14), scales=(2.0, 2.0), frac_bits=10)
        _node(g, f"cat_c{cin}", Op.CONCAT, [up, skip], axis=2, shifts=[0, 0])
    # not the pointwise form: a crop, output_padding, a dilation, groups, kernel != stride
    _weighted(g, rng, "k2s2_crop1", CT, c8, (4, 2, 2, 8), stride=(2, 2), crop=(1, 1, 0, 0))
    _weighted(g, rng, "k2s2_op1", CT, c8, (4, 2, 2, 8), stride=(2, 2), crop=(0, 0, -1, -1))
    _weighted(g, rng, "k2s2_d2", CT, c8, (4, 2, 2, 8), stride=(2, 2), crop=none, dilation=(2, 2))
    _weighted(g, rng, "k2s2_g2", CT, c8, (4, 2, 2, 4), stride=(2, 2), crop=none, groups=2)
    _weighted(g, rng, "k4s2", CT, c8, (4, 4, 4, 8), stride=(2, 2), crop=none)
    return finish(concat_in_place.run(g))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic

    rng = np.random.default_rng(8)
    g = pointwise_graph(rng)
    out = tmp_path_factory.mktemp("convt_pw") / "model"
    write_atomic(render(g, "ctpw", ["test"]), out)
    x = edge_inputs(rng, g.tensors["x"].shape, n_random=4)
    return g, out, x, reference_outputs(g, run_int(g, x))


def test_kernel_choice_is_pointwise_for_kernel_equal_stride_only(model):
    g = model[0]
    chosen = {n.name: select(g, n).fn for n in g.nodes if n.op is CT}
    assert {name for name, fn in chosen.items() if fn == POINTWISE} == {
        "k2s2_c16_relu", "k2s2_c16_to5_any", "k3s3_c16_to3_nobias", "k2s2_c8_to9_relu", "k3s3_c8_to4",
        "k2x3_s2x3_c8_to5", "k2s2_c7_to6_relu", "k3s3_c7_to3", "ct1d_k2s2_c16_to6", "up_c8", "up_c7"}, chosen
    for cin in (8, 7):  # written into the concat at its pixel stride
        up = next(n for n in g.nodes if n.name == f"up_c{cin}")
        assert up.attrs["out_stride"] == g.tensors[f"cat_c{cin}"].shape[2]
        assert next(n for n in g.nodes if n.name == f"cat_c{cin}").attrs["in_place"][0]


def test_reference_saturates(model):
    g, _, x, expect = model
    values = run_int(g, x)
    for name, lo, hi in (("k2s2_c16_to5_any", -50, 90), ("k3s3_c16_to3_nobias", -128, 127),
                         ("k2s2_c16_relu", 0, 127), ("k2s2_c8_to9_relu", 0, 127)):
        assert values[name].min() == lo and values[name].max() == hi, name


def test_c_equals_reference_on_host_with_sanitizers(model, tmp_path):
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    g, out, x, expect = model
    assert POINTWISE in (out / "ctpw_model.c").read_text()
    exe = build_native(out, "ctpw", tmp_path / "ctpw_asan", SANITIZE_FLAGS)
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, "host C")


@pytest.mark.parametrize("core,board", [("cortex-m0plus", "rp2040"), ("cortex-m4", "mps2-an386"),
                                        ("cortex-m55", "mps3-an547")])
def test_c_equals_reference_under_qemu(model, core, board, tmp_path):
    from codegen.target import build_elf, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g, out, x, expect = model
    sources = [out / "ctpw_model.c", out / "ctpw_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [out, out / "kernels"], "ctpw", tmp_path,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    got = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False).outputs
    assert_outputs_equal(got, expect, g, core)


def test_c_equals_reference_on_atmega2560(tmp_path):
    """AVR: the parameters in flash (QG_CONST), the row convolutions' struct built in RAM by the kernel, its
    weights, bias and shift read through qg_w* by qg_conv2d_s8; 16-bit int."""
    from codegen.emit.c import render, write_atomic
    from codegen.target.avr import avr_missing_tools, run_avr

    if avr_missing_tools():
        pytest.skip(f"missing tools: {avr_missing_tools()}")
    rng = np.random.default_rng(3)
    g = Graph({"x": act("x", (3, 3, 8), 3)}, [], ["x"], [], source="test")
    none = (0, 0, 0, 0)
    _weighted(g, rng, "k2s2_relu", CT, "x", (5, 2, 2, 8), act_range=(0, 127), shifts=(1, 15), stride=(2, 2),
              crop=none)
    _weighted(g, rng, "k3s3", CT, "x", (3, 3, 3, 8), stride=(3, 3), crop=none)
    up = _weighted(g, rng, "up", CT, "x", (6, 2, 2, 8), stride=(2, 2), crop=none, output=False)
    skip = _node(g, "skip", Op.RESIZE, ["x"], output=False, mode="nearest", align_corners=False, size=(6, 6),
                 scales=(2.0, 2.0), frac_bits=10)
    _node(g, "cat", Op.CONCAT, [up, skip], axis=2, shifts=[0, 0])
    g = finish(concat_in_place.run(g))
    assert {n.name for n in g.nodes if select(g, n).fn == POINTWISE} == {"k2s2_relu", "k3s3", "up"}
    assert next(n for n in g.nodes if n.name == "up").attrs["out_stride"] == 14
    write_atomic(render(g, "avr", ["test"]), tmp_path / "model")
    x = edge_inputs(rng, g.tensors["x"].shape, n_random=2)
    expect = reference_outputs(g, run_int(g, x))
    run = run_avr("atmega2560", tmp_path / "model", "avr", x, tmp_path / "avr", expect.shape[1])
    assert_outputs_equal(run.outputs, expect, g, "atmega2560")


def test_scratch_equals_the_c_buffer_size(model, tmp_path):
    """The planner's scratch (codegen.kernels.select, any core) == qg_conv_transpose2d_pointwise_s8_buffer_size."""
    import shutil
    import subprocess

    from codegen.resources import kernel_dir

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no host C compiler")
    g = model[0]
    nodes = [n for n in g.nodes if select(g, n).fn == POINTWISE]
    lines = []
    for n in nodes:
        (h, w, c), (cout, kh, kw, _) = g.tensors[n.inputs[0]].shape, g.tensors[n.inputs[1]].shape
        lines.append(f"p.in_h = {h}; p.in_w = {w}; p.in_c = {c}; p.out_c = {cout}; p.k_h = {kh}; p.k_w = {kw}; "
                     f"p.stride_h = {kh}; p.stride_w = {kw}; "
                     "printf(\"%ld\\n\", (long)qg_conv_transpose2d_pointwise_s8_buffer_size(&p));")
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "qg_kernels.h"\nint main(void) {\n    qg_conv2d_params_t p = {0};\n'
                    + "\n".join(f"    {line}" for line in lines) + "\n    return 0;\n}\n")
    exe = tmp_path / "sizes"
    kernels = kernel_dir()
    subprocess.run([cc, "-std=c99", "-O1", f"-I{kernels}", str(main), str(kernels / "qg_conv_transpose_pw_s8.c"),
                    str(kernels / "qg_conv2d_s8.c"), "-o", str(exe)], check=True)
    got = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    assert got == [select(g, n).scratch for n in nodes]
