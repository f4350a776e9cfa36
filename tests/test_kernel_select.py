"""codegen.kernels.select: the kernel of each layer is decided once; the planner's scratch and overlap,
and the C emitter's call, agree with it; scratch is per core (the plain conv path needs K bytes)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import codegen
from codegen.kernel_abi import conv2d_buffer_size, overlap_distance, scratch_bytes
from codegen.kernels import kernel_sources, kernel_structs, select
from codegen.ops import SPEC


def _compile(model, shape, **kw):
    torch.manual_seed(0)
    return codegen.compile(model.eval(), torch.randn(*shape), prefix="m", **kw)


@pytest.fixture(scope="module")
def variants():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    from codegen import compress

    return {
        "dense": _compile(cnn, (1, 1, 8, 8)),
        "int16": _compile(cnn, (1, 1, 8, 8), precision={"0": 16}),
        "sparse": _compile(cnn, (1, 1, 8, 8), extra_passes=compress.passes(compress.parse_cli(prune=0.9))),
        "cluster": _compile(cnn, (1, 1, 8, 8), extra_passes=compress.passes(compress.parse_cli(cluster=2))),
    }


@pytest.mark.parametrize("name", ["dense", "int16", "sparse", "cluster"])
def test_emitter_planner_and_select_agree(variants, name):
    res = variants[name]
    g = res.graph
    model_c = res.files["m_model.c"]
    for n in g.nodes:
        call = select(g, n)
        assert call.fn in SPEC[n.op].kernels or call.fn is None
        if call.fn:
            assert re.search(rf"\b{call.fn}\(", model_c), f"{n.where()}: {call.fn} not called in model.c"
            assert call.source in kernel_sources().values()
        if call.struct:
            assert call.fields == kernel_structs()[call.struct]
        assert scratch_bytes(g, n) == call.scratch
        assert overlap_distance(g, n) == call.overlap
    variants_seen = {select(g, n).variant for n in g.nodes}
    expected = {"dense": "s8", "int16": "s8_to_s16", "sparse": None, "cluster": "cluster"}[name]
    assert expected is None or expected in variants_seen, variants_seen
    if name == "sparse":
        assert variants_seen & {"bitmap", "index"}, variants_seen


def test_scratch_is_per_core(variants):
    g = variants["dense"].graph
    conv = next(n for n in g.nodes if n.op.value == "conv2d")
    k = 3 * 3 * 1
    assert select(g, conv, "cortex-m0plus").scratch == k
    # Helium, k >= 5: 4-pixel blocks, 4 columns padded to 16 values (k <= 16: gathered in place); within the C's
    # core-independent reservation
    assert select(g, conv, "cortex-m55").scratch == 4 * 16 <= select(g, conv).scratch
    assert select(g, conv, "cortex-m4").scratch == conv2d_buffer_size(1, 3, 3, 8) > k
    assert select(g, conv).scratch == conv2d_buffer_size(1, 3, 3, 8)  # core-independent C: the most any core needs
    assert select(g, conv).fn == "qg_conv2d_s8" and select(g, conv).source == "qg_conv2d_s8.c"
    assert select(g, conv).fields["in_c"] == "uint16_t"


def test_compressed_and_wide_kernels_take_no_scratch_or_overlap(variants):
    for name in ("sparse", "cluster", "int16"):
        g = variants[name].graph
        for n in g.nodes:
            call = select(g, n)
            if call.variant != "s8":
                assert call.scratch == 0 and call.overlap is None, (name, n.where(), call)
