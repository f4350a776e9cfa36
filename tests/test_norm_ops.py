"""layer_norm, group_norm, channel_affine (codegen/ops/norm.py, firmware/kernels/qg_norm_s8.c).

- the integer reference against float LayerNorm (SQNR, within 1 LSB of the float-rounded output);
- C == reference on the host (strict warnings, ASan/UBSan) on random and edge inputs: constant rows
  (variance 0), -128/127, odd sizes, a large C, eps 0 and a large eps, instance norm (groups = C);
- the same graphs cross-compiled for cortex-m0plus and cortex-m4 under QEMU, byte for byte (one firmware
  per core), with M4 instructions per element printed;
- PyTorch end to end through the API: an MLP with LayerNorm, a conv net with GroupNorm, BatchNorm that
  cannot be folded (after a max pool, first layer, a vector BN after a ReLU), and QAT's exact twin.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from qgen_testing import act, assert_outputs_equal, const, edge_inputs, finish
from torch import nn

from codegen.fixed import QFormat, dequantize, quantize
from codegen.ir import SHAPE_RULES, Graph, Node, Op
from codegen.ops.norm import affine_params, norm_int, norm_params, rsqrt_q, xhat_frac
from codegen.reference import run_int

# ---------------------------------------------------------------------------------------- pure reference


def test_rsqrt_is_accurate_to_29_bits():
    w = np.array([1, 2, 3, 10, 12345, (1 << 40) + 7, (1 << 61) + 12345, (1 << 62) - 1], dtype=np.int64)
    inv, e = rsqrt_q(w)
    approx = inv.astype(np.float64) * np.exp2(e.astype(np.float64) - 60)
    np.testing.assert_allclose(approx, 1 / np.sqrt(w.astype(np.float64)), rtol=2.0**-28)
    assert inv.max() <= 1 << 30 and inv.min() >= 1 << 29


def _float_ln(xd: np.ndarray, gamma, beta, eps) -> np.ndarray:
    return (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + eps) * gamma + beta


@pytest.mark.parametrize("channels", [7, 64, 1000])
def test_integer_layer_norm_matches_float_within_one_lsb(channels):
    """int8 outputs within 1 LSB of float LayerNorm (on the same int8 input) rounded to the output format,
    and almost always equal to it; SQNR above 34 dB (the int8 output's own rounding bounds it)."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1000, channels)) * rng.uniform(0.1, 3, (1000, 1)) + rng.standard_normal((1000, 1))
    fin, fout = 4, 4
    xq = quantize(x, QFormat(8, fin))
    gamma, beta, eps = rng.uniform(0.5, 1.5, channels), rng.uniform(-0.5, 0.5, channels), 1e-5
    attrs, gq, bq, _, _ = norm_params(gamma, beta, eps, channels, 8, fin, fout, "test")
    attrs.update(act_min=-128, act_max=127)
    y = norm_int(xq, 1, 1, channels, 1, attrs, gq, bq)
    f = _float_ln(dequantize(xq, QFormat(8, fin)), gamma, beta, eps)
    diff = np.abs(y - quantize(f, QFormat(8, fout)))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.005
    err = dequantize(y, QFormat(8, fout)) - f
    assert 10 * np.log10((f**2).sum() / (err**2).sum()) > 34


def test_constant_rows_give_beta():
    """variance 0: x - mean = 0 exactly, so the output is beta (eps_q >= 1 keeps W >= 1)."""
    c = 9
    gamma, beta = np.linspace(0.5, 2, c), np.linspace(-1, 1, c)
    attrs, gq, bq, _, _ = norm_params(gamma, beta, 0.0, c, 8, 3, 5, "test")
    assert attrs["eps_q"] == 1
    attrs.update(act_min=-128, act_max=127)
    for v in (-128, 0, 5, 127):
        y = norm_int(np.full((1, c), v), 1, 1, c, 1, attrs, gq, bq)
        np.testing.assert_array_equal(y[0], quantize(beta, QFormat(8, 5)))


def test_xhat_fits_int32_for_the_largest_deviation():
    """one element against count - 1 equal others: |x-hat| = sqrt(count - 1), the largest possible."""
    for count in (2, 3, 17, 1024, 4097):
        x = np.zeros((1, count), dtype=np.int64)
        x[0, 0] = 127
        x[0, 1:] = -128
        attrs, gq, bq, _, _ = norm_params(np.ones(count), np.zeros(count), 0.0, count, 8, 0, 0, "test")
        fh = xhat_frac(count)
        assert np.sqrt(count - 1) * 2.0**fh < 2**31
        attrs.update(act_min=-(1 << 40), act_max=1 << 40)
        attrs["out_shift"] = 0  # read x-hat * gamma_q itself
        y = norm_int(x, 1, 1, count, 1, attrs, np.ones(count, dtype=np.int64), np.zeros(count, dtype=np.int64))
        assert np.abs(y).max() < 2**31


def test_an_eps_beyond_int64_is_capped_not_refused():
    """A very fine input format (f_in 40) makes count^2 * eps * 2^(2 f_in) exceed int64: eps_q is capped at
    2^62 - 1 - the largest variance term, where x-hat is still ~0, so the output is beta."""
    c = 16
    attrs, gq, bq, _, _ = norm_params(np.ones(c), np.full(c, 0.25), 1e-5, c, 8, 40, 4, "test")
    assert attrs["eps_q"] == (1 << 62) - 1 - c * c * (1 << 14)
    attrs.update(act_min=-128, act_max=127)
    x = np.where(np.arange(c) % 2, 127, -128)[None]
    np.testing.assert_array_equal(norm_int(x, 1, 1, c, 1, attrs, gq, bq), np.full((1, c), 4))


def test_too_large_a_set_is_refused():
    from codegen.errors import UserError

    with pytest.raises(UserError, match="at most 4194304"):
        norm_params(np.ones(4), np.zeros(4), 1e-5, (1 << 22) + 1, 8, 4, 4, "layer_norm 'ln'")


# ---------------------------------------------------------------------------------------- C primitives

PRIMITIVES_C = r"""
#include <stdio.h>
#include <inttypes.h>
#include "qg_norm_s8.c"
/* argv: none. stdin: lines "w". stdout: "inv e" per w (qg_norm_rsqrt), then the number of (acc, shift)
 * pairs where qg_norm_shift_i32 differs from qg_round_shift64 (acc random with |result| < 2^31). */
int main(void)
{
    uint64_t w, state = 12345;
    int32_t e, shift;
    long bad = 0, i;
    while (scanf("%" SCNu64, &w) == 1) {
        int32_t inv = qg_norm_rsqrt(w, &e);
        printf("%" PRId32 " %" PRId32 "\n", inv, e);
    }
    for (i = 0; i < 200000; i++) {
        int64_t acc;
        int32_t bits;
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        shift = (int32_t)((state >> 33) % 61);
        bits = (int32_t)((state >> 40) % 31) + shift; /* |acc| < 2^(bits) <= 2^(shift + 30) */
        acc = (int64_t)(state >> (64 - (bits < 1 ? 1 : (bits > 62 ? 62 : bits))));
        if ((state >> 20) & 1) {
            acc = -acc;
        }
        if (i < 122) { /* the edges: +-(2^shift - 1), +-2^(shift-1) (ties) */
            shift = (int32_t)(i / 2) % 61;
            acc = (i & 1) ? -((int64_t)1 << (shift > 0 ? shift - 1 : 0)) : ((int64_t)1 << (shift > 0 ? shift - 1 : 0));
        }
        bad += qg_norm_shift_i32(acc, shift) != (int32_t)qg_round_shift64(acc, shift);
    }
    printf("%ld\n", bad);
    return 0;
}
"""


def test_c_rsqrt_and_shift_equal_the_python_ones(tmp_path):
    """qg_norm_rsqrt == rsqrt_q (the bit-by-bit isqrt == math.isqrt) on edges and random W; the two-halves
    shift qg_norm_shift_i32 == qg_round_shift64 on every shift 0..60 (the kernel's fast paths)."""
    import subprocess

    from codegen.hostcheck import SANITIZE_FLAGS, STRICT_CFLAGS
    from codegen.resources import kernel_dir

    src = tmp_path / "prim.c"
    src.write_text(PRIMITIVES_C)
    exe = tmp_path / "prim"
    subprocess.run(["gcc", *STRICT_CFLAGS, *SANITIZE_FLAGS, "-I", str(kernel_dir()), str(src), "-o", str(exe)],
                   check=True)
    rng = np.random.default_rng(3)
    w = np.concatenate([[1, 2, 3, 4, 5, (1 << 60) - 1, 1 << 60, (1 << 61) + 1, (1 << 62) - 1],
                        [int(v) for v in rng.integers(1, 1 << 62, 300, dtype=np.int64)],
                        [int(v) for v in rng.integers(1, 1 << 20, 300, dtype=np.int64)]]).astype(np.int64)
    out = subprocess.run([str(exe)], input="\n".join(map(str, w.tolist())) + "\n", capture_output=True, text=True,
                         check=True).stdout.split("\n")
    got = np.array([[int(v) for v in line.split()] for line in out[:len(w)]])
    inv, e = rsqrt_q(w)
    np.testing.assert_array_equal(got[:, 0], inv)
    np.testing.assert_array_equal(got[:, 1], e)
    assert int(out[len(w)]) == 0, "qg_norm_shift_i32 != qg_round_shift64"


# ---------------------------------------------------------------------------------------- graphs for C


def _node(g: Graph, name: str, op: Op, src: str, inputs=(), **attrs) -> str:
    node = Node(name, op, [src, *inputs], [name], attrs)
    g.nodes.append(node)
    g.tensors[name] = act(name, (1,), 3)
    g.tensors[name].shape = SHAPE_RULES[op](g, node)
    return name


def _reshape(g: Graph, src: str, shape) -> str:
    return _node(g, f"{src}_as_{'x'.join(map(str, shape))}", Op.RESHAPE, src, shape=tuple(shape))


def _norm(g: Graph, rng, name: str, op: Op, src: str, eps: float, fin: int, fout: int, out: bool = True,
          act_range=(-128, 127), gamma_scale: float = 1.0, out_bits: int = 8, **attrs) -> str:
    from codegen.ops.norm import geometry

    probe = Node(name, op, [src], [name], attrs)
    rows, pixels, channels, groups = geometry(g, probe)
    gamma = rng.uniform(0.3, 1.7, channels) * gamma_scale * rng.choice([-1, 1], channels)
    beta = rng.uniform(-1, 1, channels)
    in_bits = 16 if g.tensors[src].dtype == "int16" else 8
    a, gq, bq, fg, fb = norm_params(gamma, beta, eps, pixels * channels // groups, in_bits, fin, fout, name)
    g.tensors[f"{name}_g"] = const(f"{name}_g", gq, 16, fg)
    g.tensors[f"{name}_b"] = const(f"{name}_b", bq, 32, fb)
    if out_bits == 16:
        act_range = (-32768, 32767)
    y = _node(g, name, op, src, [f"{name}_g", f"{name}_b"], eps=eps, **attrs, **a, act_min=act_range[0],
              act_max=act_range[1])
    if out_bits == 16:
        _widen(g, y, fout)
    if out:
        g.outputs.append(y)
    return y


def _widen(g: Graph, tensor: str, frac: int) -> None:
    g.tensors[tensor].dtype, g.tensors[tensor].qformat = "int16", QFormat(16, frac)


def _affine(g: Graph, rng, name: str, src: str, fin: int, fout: int, act_range=(-128, 127)) -> str:
    c = g.tensors[src].shape[-1]
    scale, shift = rng.standard_normal(c) * 10.0 ** rng.integers(-2, 2, c), rng.standard_normal(c) * 4
    scale[0], shift[1] = 0.0, 0.0
    sq, tq, fs, sh = affine_params(scale, shift, fin, fout, name)
    g.tensors[f"{name}_s"] = const(f"{name}_s", sq, 16, tuple(int(f) for f in fs))
    g.tensors[f"{name}_o"] = const(f"{name}_o", tq, 32, tuple(int(fin + f) for f in fs))
    y = _node(g, name, Op.CHANNEL_AFFINE, src, [f"{name}_s", f"{name}_o"], shift=[int(v) for v in sh],
              act_min=act_range[0], act_max=act_range[1])
    g.outputs.append(y)
    return y


def norm_graph(wide: bool = True) -> Graph:
    """Every case on one (420,) int8 input viewed as (1, 35, 12), (5, 7, 12), (1, 60, 7) and (1, 1, 420); with
    `wide`, int16 activations too: x -> layer norm (int8 -> int16) -> group norm (int16) -> layer norm (-> int8)."""
    rng = np.random.default_rng(5)
    g = Graph({"x": act("x", (420,), 4)}, [], ["x"], [], source="test")
    _norm(g, rng, "ln_420", Op.LAYER_NORM, "x", 1e-5, 4, 4, axes=1)
    seq = _reshape(g, "x", (1, 35, 12))
    _norm(g, rng, "ln_rows35_c12", Op.LAYER_NORM, seq, 1e-5, 4, 5, axes=1, act_range=(0, 127))
    _norm(g, rng, "ln_2axes_eps0", Op.LAYER_NORM, seq, 0.0, 4, 3, axes=2)
    _norm(g, rng, "ln_big_eps", Op.LAYER_NORM, seq, 4.0, 4, 6, axes=1)
    odd = _reshape(g, "x", (1, 60, 7))
    _norm(g, rng, "ln_c7_gamma_small", Op.LAYER_NORM, odd, 1e-5, 4, 7, axes=1, gamma_scale=0.05)
    img = _reshape(g, "x", (5, 7, 12))
    _norm(g, rng, "gn_g3", Op.GROUP_NORM, img, 1e-5, 4, 4, groups=3)
    _norm(g, rng, "gn_instance", Op.GROUP_NORM, img, 1e-5, 4, 2, groups=12, gamma_scale=8.0)
    _norm(g, rng, "gn_g1", Op.GROUP_NORM, img, 1e-3, 4, 4, groups=1)
    _affine(g, rng, "affine_vec", "x", 4, 3)
    _affine(g, rng, "affine_img_relu", img, 4, 5, act_range=(0, 127))
    if wide:
        w16 = _norm(g, rng, "ln_s8_to_s16", Op.LAYER_NORM, seq, 1e-5, 4, 12, out=False, out_bits=16, axes=1)
        img16 = _reshape(g, w16, (5, 7, 12))
        _widen(g, img16, 12)
        gn16 = _norm(g, rng, "gn_s16", Op.GROUP_NORM, img16, 1e-5, 12, 11, out=False, out_bits=16, groups=4)
        _norm(g, rng, "ln_s16_to_s8", Op.LAYER_NORM, gn16, 1e-5, 11, 4, axes=2)
    return finish(g)


def large_graph() -> Graph:
    """A large C (4096: 2-pass statistics over int64 sums) and a large group (3 x 32 x 16 x ...)."""
    rng = np.random.default_rng(6)
    g = Graph({"x": act("x", (4096,), 2)}, [], ["x"], [], source="test")
    _norm(g, rng, "ln_4096", Op.LAYER_NORM, "x", 1e-5, 2, 4, axes=1)
    img = _reshape(g, "x", (16, 16, 16))
    _norm(g, rng, "gn_16x16x16_g2", Op.GROUP_NORM, img, 1e-5, 2, 4, groups=2)
    # the kernel's other shift paths: x-hat shifts of 32 and 33+ (an eps dominating W: 2^52, 2^54), a final
    # shift below 33 (large gamma, coarse output), a one-value set (x - mean = 0, shift 0)
    _norm(g, rng, "ln_eps_2e14", Op.LAYER_NORM, "x", 2.0**14, 7, 4, axes=1)
    _norm(g, rng, "ln_eps_2e16", Op.LAYER_NORM, "x", 2.0**16, 7, 4, axes=1)
    _norm(g, rng, "ln_gamma_100", Op.LAYER_NORM, "x", 1e-5, 2, 2, axes=1, gamma_scale=100.0)
    _norm(g, rng, "ln_c1", Op.LAYER_NORM, _reshape(g, "x", (1, 4096, 1)), 1e-5, 2, 4, axes=1)
    return finish(g)


def _inputs(g: Graph, seed: int) -> np.ndarray:
    """edge_inputs (all -128, all 127, alternating extremes, zeros: constant rows) + random + rows where
    one element stands out of constant others (the largest x-hat)."""
    rng = np.random.default_rng(seed)
    shape = g.tensors[g.inputs[0]].shape
    x = edge_inputs(rng, shape, n_random=4).reshape(-1, int(np.prod(shape)))
    spike = np.full((2, x.shape[1]), -128, dtype=np.int8)
    spike[0, ::5] = 127
    spike[1, 3] = 127
    small = rng.integers(-2, 3, (1, x.shape[1])).astype(np.int8)  # tiny variances
    return np.concatenate([x, spike, small]).reshape((-1,) + tuple(shape))


GRAPHS = {"norm": norm_graph, "large": large_graph}


def test_the_inputs_reach_every_shift_path_of_the_kernel():
    """qg_norm_shift_i32 has paths for x-hat shifts 0, 1..31, 32, 33+; the output shift one for >= 33 and
    one below: the C tests above run all of them."""
    from codegen.ops.norm import geometry

    xhat_shifts, out_shifts = set(), set()
    for make in GRAPHS.values():
        g = make()
        x = _inputs(g, 1)
        values = run_int(g, x)
        for n in (n for n in g.nodes if n.op in (Op.LAYER_NORM, Op.GROUP_NORM)):
            rows, pixels, channels, groups = geometry(g, n)
            count = pixels * channels // groups
            v = values[n.inputs[0]].reshape(len(x), rows, pixels, groups, channels // groups)
            s, q = v.sum(axis=(2, 4)), (v * v).sum(axis=(2, 4))
            _, e = rsqrt_q(count * q - s * s + n.attrs["eps_q"])
            xhat_shifts |= set((60 - e - xhat_frac(count)).ravel().tolist())
            out_shifts.add(n.attrs["out_shift"])
    assert {0, 32} <= xhat_shifts and min(xhat_shifts - {0}) < 32 and max(xhat_shifts) >= 33, sorted(xhat_shifts)
    assert min(out_shifts) < 33 <= max(out_shifts), sorted(out_shifts)


@pytest.mark.parametrize("which", list(GRAPHS))
def test_c_equals_reference_under_sanitizers(which, tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native

    g = GRAPHS[which]()
    out = tmp_path / "model"
    write_atomic(render(g, "nm", ["test"]), out)
    exe = build_native(out, "nm", tmp_path / "nm_asan", SANITIZE_FLAGS)
    x = _inputs(g, 1)
    expect = reference_outputs(g, run_int(g, x))
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert_outputs_equal(got, expect, g, which)


# ---------------------------------------------------------------------------------------- QEMU


QEMU_BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


@pytest.mark.parametrize("core", list(QEMU_BOARDS))
def test_bit_exact_on_core(core, tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import reference_outputs
    from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    g = norm_graph()
    out = tmp_path / "model"
    write_atomic(render(g, "nm", ["test"]), out)
    sources = [out / "nm_model.c", out / "nm_weights.c", *sorted((out / "kernels").glob("*.c"))]
    elf = build_elf(QEMU_BOARDS[core], sources, [out, out / "kernels"], "nm", tmp_path / "fw",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"), count_layers=True)
    x = _inputs(g, 2)
    expect = reference_outputs(g, run_int(g, x))
    result = run_qemu(QEMU_BOARDS[core], elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
    assert_outputs_equal(result.outputs, expect, g, core)
    if result.instructions_per_layer:  # instructions per element of each norm layer (the note reports M4's)
        for n, count in zip(g.nodes, result.instructions_per_layer):
            if n.op is not Op.RESHAPE:
                print(f"{core} {n.name}: {count / g.tensors[n.outputs[0]].size:.1f} instructions/element")


# ---------------------------------------------------------------------------------------- PyTorch end to end


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(12, 24), nn.LayerNorm(24), nn.Linear(24, 5)
        self.ln2 = nn.LayerNorm(5, bias=False)

    def forward(self, x):
        return self.ln2(self.fc2(torch.relu(self.ln(self.fc1(x)))))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(2, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.Conv2d(8, 6, 3)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        y = torch.relu(self.gn(self.c1(x)))
        y = torch.relu(self.inorm(self.c2(nn.functional.max_pool2d(y, 2))))
        return self.fc(torch.flatten(y, 1))


class BNAfterPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.bn(nn.functional.max_pool2d(self.c(x), 2)), 1))


def _bn_models():
    return {
        "bn_after_maxpool": (BNAfterPool(), (1, 1, 8, 8)),
        "bn_first_image": (nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)),
                           (1, 2, 8, 8)),
        "bn_first_vector": (nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 3)), (1, 6)),
        "bn_after_relu_vector": (nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.ReLU(),
                                               nn.Linear(5, 3)), (1, 6)),
    }


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.modules.batchnorm._BatchNorm)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def _cases():
    torch.manual_seed(0)
    cases = {"layer_norm_mlp": (LayerNormMLP(), (1, 12)), "group_norm_convnet": (GroupNormNet(), (1, 2, 8, 8))}
    cases.update(_bn_models())
    return {name: (_randomize(m, i), shape) for i, (name, (m, shape)) in enumerate(cases.items())}


@pytest.mark.parametrize("name", list(_cases()))
def test_torch_end_to_end(name, tmp_path):
    """Compile through the API; the generated C (ASan/UBSan) equals the reference; the integer model tracks
    PyTorch's float output."""
    import codegen
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    model, shape = _cases()[name]
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((128, *shape[1:])).astype(np.float32)
    result = codegen.compile(model, torch.zeros(shape), calib, prefix="e2e", out_dir=tmp_path / "out")
    ops = {n.op for n in result.graph.nodes}
    expected = {"layer_norm_mlp": Op.LAYER_NORM, "group_norm_convnet": Op.GROUP_NORM,
                "bn_first_vector": Op.CHANNEL_AFFINE, "bn_after_relu_vector": Op.CHANNEL_AFFINE}
    assert expected.get(name, Op.DEPTHWISE_CONV2D) in ops and Op.BATCH_NORM not in ops, result.graph
    x = rng.standard_normal((32, *shape[1:])).astype(np.float32)
    x_i8 = result.quantize_input(x)
    exe = build_native(tmp_path / "out", "e2e", tmp_path / "asan", SANITIZE_FLAGS)
    expect = result.reference(x_i8)
    np.testing.assert_array_equal(run_native(exe, x_i8.reshape(len(x), -1), expect.shape[1]), expect)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = result.predict(x)
    sqnr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert sqnr > 20, f"{name}: integer model vs PyTorch SQNR {sqnr:.1f} dB"


def test_layer_norm_over_a_non_innermost_dim_is_laid_out():
    """(1, C, L) LayerNorm(L): L is not qgen's innermost axis there; the front end copies it innermost (one
    TRANSPOSE in) instead of refusing (issue 16: the compiler owns the layout); the output leaves as it lies
    (io_layout 'nlc': PyTorch's own (C, L) order), no copy back."""
    import codegen
    from codegen.ir import Op

    class SeqLN(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(10)

        def forward(self, x):
            return self.ln(x)

    torch.manual_seed(0)
    x = torch.randn(8, 4, 10)
    r = codegen.compile(SeqLN().eval(), x[:1], x.numpy())
    assert sum(n.op is Op.TRANSPOSE for n in r.graph.nodes) == 1
    assert r.graph.io_layout[r.graph.outputs[0]] == "nlc"
    with torch.no_grad():
        expect = SeqLN().eval()(x).numpy()
    np.testing.assert_allclose(r.predict(x.numpy()), expect, atol=0.1)


def test_qat_exact_twin_equals_the_integer_reference():
    """QAT's eval forward (the fake-quantised twin) is the compiled integer model, bit for bit."""
    from codegen import qat

    model, shape = _cases()["layer_norm_mlp"]
    calib = np.random.default_rng(2).standard_normal((64, *shape[1:])).astype(np.float32)
    qm = qat.prepare(model, torch.zeros(shape), calib)
    x = np.random.default_rng(3).standard_normal((16, *shape[1:])).astype(np.float32)
    with torch.no_grad():
        twin = qm.eval()(torch.from_numpy(x)).numpy()
    compiled = qat.compile(qm, prefix="qln")
    np.testing.assert_array_equal(twin, compiled.predict(x))
    qm.train()
    qm(torch.from_numpy(x)).sum().backward()  # the training forward is differentiable


@pytest.mark.parametrize("which", list(GRAPHS))
def test_micropython_kernels_bit_exact(which, tmp_path):
    """The pure MicroPython module (_norm, _channel_affine in templates/micropython/_kernels.py) under CPython
    and real MicroPython (the WebAssembly port through tests/mpy_runner.mjs) equals the reference."""
    from test_micropython import check_graph

    g = norm_graph(wide=False) if which == "norm" else GRAPHS[which]()
    x = _inputs(g, 4)
    check_graph(g, x[:6] if which == "large" else x, tmp_path, prefix="nm")


@pytest.mark.parametrize("precision", [{"fc1": 16}, {"ln": 16}])
def test_mixed_precision_layer_norm(precision, tmp_path):
    """An int16 producer before the norm (qg_norm_wide int16 -> int8), or the norm raised to int16 output
    (int8 -> int16): C (ASan/UBSan) == reference, and no less accurate than int8."""
    import codegen
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    model, shape = _cases()["layer_norm_mlp"]
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((128, *shape[1:])).astype(np.float32)
    result = codegen.compile(model, torch.zeros(shape), calib, prefix="mp", out_dir=tmp_path / "out",
                             precision=precision)
    ln = next(n for n in result.graph.nodes if n.op is Op.LAYER_NORM)
    dtypes = (result.graph.tensors[ln.inputs[0]].dtype, result.graph.tensors[ln.outputs[0]].dtype)
    assert "int16" in dtypes, result.graph
    x = rng.standard_normal((32, *shape[1:])).astype(np.float32)
    x_i8 = result.quantize_input(x)
    exe = build_native(tmp_path / "out", "mp", tmp_path / "asan", SANITIZE_FLAGS)
    expect = result.reference(x_i8)
    np.testing.assert_array_equal(run_native(exe, x_i8.reshape(len(x), -1), expect.shape[1]), expect)


def test_layer_norm_over_the_model_dim_of_a_sequence():
    """Transformer-style (1, L, D): Linear over D then LayerNorm(D); the front end lays D innermost. The C
    equals the reference and the integer model tracks PyTorch."""
    import codegen

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.ln = nn.Linear(8, 8), nn.LayerNorm(8)

        def forward(self, x):
            return self.ln(self.fc(x))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(16, 6, 8)
    result = codegen.compile(model, x[:1], x.numpy())
    assert any(n.op is Op.LAYER_NORM and n.attrs["axes"] == 1 for n in result.graph.nodes), result.graph
    assert result.verify(x.numpy()).exact
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(result.predict(x.numpy()), want, atol=0.1)


def test_onnx_group_norm_as_torch_exports_it(tmp_path):
    """torch.onnx writes GroupNorm as Reshape(1, G, -1) -> InstanceNormalization -> Reshape -> Mul -> Add (no
    GroupNormalization node): the ONNX import makes it one group_norm, the same float model as the torch path."""
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    import contextlib
    import io
    import warnings

    from codegen.frontend import from_module
    from codegen.frontend.onnx_import import from_onnx_file
    from codegen.reference import run_float, to_qgen_layout

    model, shape = _cases()["group_norm_convnet"]
    path = tmp_path / "gn.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), str(path))
    g_onnx, g_torch = from_onnx_file(str(path)), from_module(model, torch.zeros(shape))
    assert [n.op for n in g_onnx.nodes if n.op is Op.GROUP_NORM] == [Op.GROUP_NORM] * 2, g_onnx
    x = np.random.default_rng(0).standard_normal((4, *shape[1:]))
    a = run_float(g_onnx, to_qgen_layout(g_onnx, x))[g_onnx.outputs[0]]
    b = run_float(g_torch, to_qgen_layout(g_torch, x))[g_torch.outputs[0]]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


class ConvNeXtStyleBlock(nn.Module):
    """ConvNeXt's official code (issue 16): the channels_first LayerNorm written out with mean/pow/sqrt (or
    rsqrt), then a channels-last block whose layer scale `gamma * x` varies along the last PyTorch dim."""

    def __init__(self, dim: int = 8, spelling: str = "sqrt"):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.weight, self.bias = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(torch.randn(dim) * 0.1)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) * 0.8 + 0.2)
        self.spelling = spelling

    def forward(self, x):
        x = self.conv(x)
        if self.spelling == "var_first":  # the variance written before the mean in forward()
            v = x.var(1, keepdim=True, unbiased=False)
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(v + 1e-6)
        elif self.spelling == "var":
            u = x.mean(1, keepdim=True)
            x = (x - u) / (x.var(1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        else:
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) * torch.rsqrt(s + 1e-6) if self.spelling == "rsqrt" else (x - u) / torch.sqrt(s + 1e-6)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


@pytest.mark.parametrize("spelling", ["sqrt", "rsqrt", "var", "var_first"])
def test_a_written_out_channels_first_layer_norm_and_layer_scale_compile(spelling):
    """The mean/sub/pow/mean/add/sqrt/div chain (or `* rsqrt`, or `x.var(unbiased=False)`, also written before the
    mean: was 'aten.var.dim, which qgen does not support') over dim 1 lowers to
    one layer_norm over the channels (was: 'sub of IR shapes (16, 16, 16) and (16, 16, 1)'); `gamma * x` over the
    last dim of a channels-last (1, H, W, C) scales the channels where they lie (was: 'mul with a constant
    tensor')."""
    import codegen

    torch.manual_seed(0)
    model = ConvNeXtStyleBlock(spelling=spelling).eval()
    x = torch.randn(16, 3, 8, 8)
    r = codegen.compile(model, x[:1], x.numpy())
    ops = [n.op for n in r.graph.nodes]
    assert ops.count(Op.LAYER_NORM) == 1 and Op.SUB not in ops and Op.REDUCE not in ops
    assert Op.TRANSPOSE not in ops
    with torch.no_grad():
        want = model(x).numpy()
    got = r.predict(x.numpy())
    sqnr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert sqnr > 20, f"integer model vs PyTorch SQNR {sqnr:.1f} dB"


class PatchTransformer(nn.Module):
    """MobileViT's unfolding (apple/ml-cvnets): (1, C, H, W) -> (P, N, C) with the patch pixels P = 4 in the leading
    dim, a pre-norm attention + LayerNorm over those (P, N, C) rows, folded back to (1, C, H, W)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm, self.qkv, self.proj, self.norm2 = nn.LayerNorm(c), nn.Linear(c, 3 * c), nn.Linear(c, c), \
            nn.LayerNorm(c)

    def forward(self, x):
        fm = self.conv(x)
        _, c, h, w = fm.shape
        p = fm.reshape(c * (h // 2), 2, w // 2, 2).transpose(1, 2).reshape(1, c, (h // 2) * (w // 2), 4)
        p = p.transpose(1, 3).reshape(4, (h // 2) * (w // 2), c)
        q, k, v = self.qkv(self.norm(p)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-1, -2) * c ** -0.5, dim=-1)
        p = self.norm2(p + self.proj(attn @ v))
        p = p.contiguous().view(1, 4, (h // 2) * (w // 2), c).transpose(1, 3)
        fm = p.reshape(c * (h // 2), w // 2, 2, 2).transpose(1, 2).reshape(1, c, h, w)
        return fm


def test_layer_norm_over_rows_with_a_leading_dim_above_one():
    """LayerNorm over the last dim of MobileViT's (B * P, N, C) patches normalises rows: the leading dim is data
    there, not a batch (was refused: 'qgen normalises within one sample (batch 1, not over the batch dim)')."""
    import codegen

    torch.manual_seed(0)
    model = PatchTransformer().eval()
    _randomize(model, 1)
    x = torch.randn(16, 3, 8, 8)
    r = codegen.compile(model, x[:1], x.numpy())
    assert [n.op for n in r.graph.nodes].count(Op.LAYER_NORM) == 2
    with torch.no_grad():
        want = torch.cat([model(x[i:i + 1]) for i in range(len(x))]).numpy()
    got = r.predict(x.numpy())
    sqnr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert sqnr > 20, f"integer model vs PyTorch SQNR {sqnr:.1f} dB"


def test_a_variance_outside_a_written_out_layer_norm_is_refused_naming_it():
    from codegen.errors import UserError
    from codegen.frontend import from_module

    class M(nn.Module):
        def forward(self, x):
            return x * x.var(1, keepdim=True, unbiased=False)

    with pytest.raises(UserError, match=r"computes a variance \(x.var\) outside a LayerNorm written out"):
        from_module(M().eval(), torch.randn(1, 3, 4, 4))
