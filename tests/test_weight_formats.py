"""Compressed weight formats: lossless encodings, sizes that really shrink, C kernels == reference
(host, sanitizers, Cortex-M4 and M0+ under QEMU)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qgen_testing import assert_c_equals_reference, build_host, edge_inputs, finish, safe_bias, weighted_graph

from codegen.emit import weight_formats as wf
from codegen.errors import UserError
from codegen.ir import Op


def _sparse_int8(rng, shape, sparsity: float) -> np.ndarray:
    w = rng.integers(-128, 128, shape)
    w[rng.random(shape) < sparsity] = 0
    w.reshape(-1)[0] = -128  # the extreme value is always present
    return w.astype(np.int8)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), taps=st.integers(1, 4), length=st.integers(1, 600),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), seed=st.integers(0, 2**16))
def test_sparse_encodings_are_lossless(rows, taps, length, sparsity, seed):
    rng = np.random.default_rng(seed)
    seg = rng.integers(-128, 128, (rows, taps, length)).astype(np.int8)
    seg[rng.random(seg.shape) < sparsity] = 0
    bitmap, index = wf.encode_bitmap(seg), wf.encode_index(seg)
    np.testing.assert_array_equal(wf.decode_bitmap(bitmap, seg.shape), seg)
    np.testing.assert_array_equal(wf.decode_index(index, seg.shape), seg)
    nnz = int(np.count_nonzero(seg))
    assert bitmap.nbytes == rows * taps * -(-length // 8) + max(nnz, 1)
    assert index.nbytes == rows * taps * -(-length // wf.SPARSE_CHUNK) + 2 * max(nnz, 1)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), distinct=st.integers(1, 256), seed=st.integers(0, 2**16))
def test_cluster_encoding_is_lossless_and_uses_minimal_bits(n, distinct, seed):
    rng = np.random.default_rng(seed)
    palette = rng.permutation(np.arange(-128, 128))[:distinct]
    w = rng.choice(palette, n).astype(np.int8)
    enc = wf.encode_cluster(w)
    np.testing.assert_array_equal(wf.decode_cluster(enc, w.shape), w)
    used = len(np.unique(w))
    assert enc.bits == max(1, int(np.ceil(np.log2(used))))
    assert enc.nbytes == -(-n * enc.bits // 8) + 1 + (1 << enc.bits)


def _fc_node_graph(w, rng, fmt):
    g = weighted_graph(Op.LINEAR, (w.shape[1],), w, safe_bias(rng, w), rng.integers(0, 12, w.shape[0]))
    g.nodes[0].attrs["weight_format"] = fmt
    return finish(g)


def test_fc_at_80_percent_sparsity_is_at_most_035_of_dense_flash(rng):
    """The issue's target, on a 784 -> 256 layer: weights + bias + shift in bytes, as emitted."""
    from codegen.emit.c import model_data

    w = _sparse_int8(rng, (256, 784), 0.8)
    w[w.shape[0] // 2, :] = 0  # a dead row costs its bitmap only
    sparse, dense = _fc_node_graph(w, rng, "sparse"), _fc_node_graph(w, rng, "dense")
    s, d = model_data(sparse, "t").weight_bytes, model_data(dense, "t").weight_bytes
    assert s <= 0.35 * d, (s, d)
    summary = wf.summary(sparse)[0]
    assert summary["format"] == "bitmap" and summary["layer_bytes"] == s and summary["dense_layer_bytes"] == d
    assert summary["macs_executed"] == summary["nonzero"] < 0.25 * summary["macs"]


@pytest.mark.parametrize("sparsity,expect", [(0.05, "dense"), (0.5, "bitmap"), (0.98, "index")])
def test_choice_is_the_smallest_encoding(sparsity, expect, rng):
    w = _sparse_int8(rng, (64, 400), sparsity)
    g = _fc_node_graph(w, rng, "sparse")
    enc = wf.choose(g, g.nodes[0])
    assert enc.format == expect
    sizes = {f: wf.encode(f, Op.LINEAR, w).nbytes for f in ("dense", "bitmap", "index")}
    assert enc.nbytes == min(sizes.values())


def test_dense_fallback_emits_the_dense_kernel(rng):
    w = _sparse_int8(rng, (8, 16), 0.0)
    from codegen.emit.c import render

    c = render(_fc_node_graph(w, rng, "sparse"), "t", ["test"])["t_model.c"]
    assert "qg_fully_connected_s8(" in c and "sparse" not in c


def test_unsupported_forced_format_is_refused(rng):
    w = rng.integers(-128, 128, (4, 3, 3, 1))
    g = finish(weighted_graph(Op.DEPTHWISE_CONV2D, (5, 5, 4), w, safe_bias(rng, w), np.zeros(4, int)))
    g.nodes[0].attrs["weight_format"] = "bitmap"
    with pytest.raises(UserError, match="'bitmap' is not available for depthwise_conv2d"):
        wf.choose(g, g.nodes[0])


SPARSE_CASES = [
    # op, input shape, weight shape, attrs
    (Op.CONV2D, (7, 6, 9), (5, 3, 3, 9), {"stride": (2, 1), "padding": (1, 1, 1, 1)}),
    (Op.CONV2D, (3, 4, 300), (3, 2, 2, 300), {"stride": (1, 1), "padding": (0, 1, 1, 0)}),  # > 255 channels
    (Op.LINEAR, (600,), (7, 600), {}),
]


@pytest.mark.parametrize("fmt", ["bitmap", "index"])
@pytest.mark.parametrize("case", SPARSE_CASES, ids=lambda c: f"{c[0].value}-{c[1]}")
def test_sparse_kernels_equal_reference(fmt, case, rng, tmp_path):
    op, x_shape, w_shape, attrs = case
    w = _sparse_int8(rng, w_shape, 0.8)
    w[-1] = 0  # an output channel with no weights at all
    g = weighted_graph(op, x_shape, w, safe_bias(rng, w), rng.integers(-3, 14, w_shape[0]), **attrs)
    g.nodes[0].attrs["weight_format"] = fmt
    g = finish(g)
    assert wf.choose(g, g.nodes[0]).format == fmt
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, x_shape))


CLUSTER_CASES = [SPARSE_CASES[0], SPARSE_CASES[2],
    (Op.DEPTHWISE_CONV2D, (5, 7, 3), (6, 3, 3, 1), {"stride": (1, 2), "padding": (1, 1, 1, 1)}),
]


@pytest.mark.parametrize("bits", [1, 6])
@pytest.mark.parametrize("case", CLUSTER_CASES, ids=lambda c: f"{c[0].value}-{c[1]}")
def test_cluster_kernels_equal_reference(bits, case, rng, tmp_path):
    op, x_shape, w_shape, attrs = case
    palette = np.concatenate([[-128, 127], rng.integers(-127, 127, (1 << bits) - 2)])[:1 << bits]
    w = rng.choice(palette, w_shape)
    g = weighted_graph(op, x_shape, w, safe_bias(rng, w), rng.integers(-3, 14, w_shape[0]), **attrs)
    g.nodes[0].attrs["weight_format"] = "cluster!"  # even where the codebook outweighs the savings
    g = finish(g)
    enc = wf.choose(g, g.nodes[0])
    assert enc.format == "cluster" and enc.bits <= bits
    assert enc.nbytes < w.size or w.size < 200
    assert_c_equals_reference(g, build_host(g, tmp_path), edge_inputs(rng, x_shape))


# ------------------------------------------------------------------ a whole compressed model: sanitizers, Cortex-M


@pytest.fixture(scope="module")
def compressed_model(tmp_path_factory):
    """A small CNN with one layer of each format: bitmap conv, clustered conv, index linear."""
    import torch

    from codegen import compile as qcompile
    from codegen.passes import cluster, prune_magnitude

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, padding=1, stride=2), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10)).eval()

    def compress(g):
        g = prune_magnitude.run(g, 0.7, layers=[g.nodes[0].name])
        g = prune_magnitude.run(g, 0.97, layers=[g.nodes[-1].name])
        return cluster.run(g, 3, layers=[g.nodes[1].name])

    calib = np.random.default_rng(0).standard_normal((32, 2, 8, 8)).astype(np.float32)
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    result = qcompile(model, torch.randn(1, 2, 8, 8), calib, prefix="cmp", out_dir=out,
                      extra_passes=[("compress", compress)])
    formats = [s["format"] for s in wf.summary(result.graph)]
    assert formats == ["bitmap", "cluster", "index"], formats
    return result, calib


def _inputs(result, calib, rng):
    x = result.quantize_input(calib[:8])
    extremes = np.stack([np.full(x.shape[1:], -128), np.full(x.shape[1:], 127)]).astype(np.int8)
    return np.concatenate([x, extremes, rng.integers(-128, 128, (4,) + x.shape[1:]).astype(np.int8)])


def test_compressed_model_strict_and_sanitizer_clean(compressed_model, tmp_path, rng):
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    result, calib = compressed_model
    exe = build_native(result.out_dir, "cmp", tmp_path / "cmp_asan", SANITIZE_FLAGS)
    x = _inputs(result, calib, rng)
    np.testing.assert_array_equal(run_native(exe, x.reshape(len(x), -1), 10), result.reference(x))
    assert result.verify(calib).exact


@pytest.mark.parametrize("board", ["stm32f446", "rp2040"])
def test_compressed_model_bit_exact_on_cortex_m(compressed_model, board, rng):
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing {missing_tools()}")
    result, calib = compressed_model
    run = deploy.run(result.out_dir, board, _inputs(result, calib, rng))
    assert run.exact, run.first_mismatch
    assert run.instructions_per_inference and run.instructions_per_inference > 0
