"""Concatenation without copies (issue 16, item 7): producers write into their slice of the concat output;
the result is bit-exact and the arena smaller than with the copying concat."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import codegen
from codegen.passes import concat_in_place


class VectorBranches(nn.Module):
    """Two Linear branches concatenated (one contiguous range each), then a head."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 40), nn.Linear(12, 24), nn.Linear(64, 3)

    def forward(self, x):
        return self.head(torch.cat([torch.relu(self.a(x)), self.b(x)], 1))


class RowConcat(nn.Module):
    """Two conv outputs stacked along H: the outermost IR axis, one contiguous block each."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), torch.relu(self.b(x))], 2))


class SharedBranch(nn.Module):
    """`y` is read by the concat and by the head: it must stay a buffer of its own (copied)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 10), nn.Linear(6, 10), nn.Linear(30, 2)

    def forward(self, x):
        y = self.a(x)
        return self.head(torch.cat([y, self.b(x), torch.relu(y)], 1))


def _compile(model, shape, monkeypatch=None, disable=False):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, *shape[1:])).astype(np.float32)
    if disable:
        monkeypatch.setattr(concat_in_place, "run", lambda g: g)
        monkeypatch.setattr(concat_in_place, "share_formats", lambda g: g)
    r = codegen.compile(model.eval(), torch.zeros(shape), calib)
    return r, calib


@pytest.mark.parametrize("model,shape", [(VectorBranches, (1, 12)), (RowConcat, (1, 3, 5, 6))])
def test_producers_write_in_place_and_the_result_is_exact(model, shape, monkeypatch):
    torch.manual_seed(0)
    m = model()
    r, calib = _compile(m, shape)
    concat = next(n for n in r.graph.nodes if n.op.value == "concat")
    assert concat.attrs["in_place"] == [True, True]
    assert "qg_concat_s8" not in r.files["model_model.c"]  # every part is already in place: no call
    check = r.verify(np.concatenate([calib[:3], 4 * calib[3:5]]))
    assert check.exact, str(check)
    with monkeypatch.context() as mp:
        copying, _ = _compile(m, shape, mp, disable=True)
    assert "qg_concat_s8" in copying.files["model_model.c"]
    assert r.report["arena_bytes"] < copying.report["arena_bytes"], (r.report["arena_bytes"],
                                                                   copying.report["arena_bytes"])


def test_an_input_read_elsewhere_is_copied_the_others_are_not():
    r, calib = _compile(SharedBranch(), (1, 6))
    g = r.graph
    concat = [n for n in g.nodes if n.op.value == "concat"][-1]
    assert concat.attrs["in_place"] == [True, True, True]
    producers = [g.producer(t) for t in concat.inputs]
    # y (read by the head too) is copied by an early copy node; b(x) and relu(y) write in place
    assert [p.attrs.get(concat_in_place.EARLY_COPY) for p in producers] == [0, None, None]
    assert g.producer(producers[0].inputs[0]).name == "a" and producers[1].name == "b"
    assert r.files["model_model.c"].count("qg_concat_s8(") == 1  # the copy; the concat itself: no call
    check = r.verify(calib[:4])
    assert check.exact, str(check)


class Fire(nn.Module):
    """SqueezeNet's fire module: two convolutions of one squeeze output, concatenated along channels. Each
    expand conv writes its channels of every pixel of the concat output (pixel stride 24)."""

    def __init__(self):
        super().__init__()
        self.squeeze = nn.Conv2d(3, 6, 1)
        self.e1, self.e3 = nn.Conv2d(6, 9, 1), nn.Conv2d(6, 15, 3, padding=1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        return self.head(torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1))


def _no_concat_overlap(monkeypatch):
    """Fire's copying concat with the first branch inside the output (kernels.concat_overlap) needs less arena
    than the strided writes, so the planner would copy: these tests are about the strided writes."""
    from codegen import kernels

    monkeypatch.setattr(kernels, "concat_overlap", lambda g, n: None)


def test_channel_concat_producers_write_at_a_wider_pixel_stride(monkeypatch, tmp_path):
    _no_concat_overlap(monkeypatch)
    torch.manual_seed(0)
    m = Fire()
    r, calib = _compile(m, (1, 3, 7, 5))
    concat = next(n for n in r.graph.nodes if n.op.value == "concat")
    assert concat.attrs["in_place"] == [True, True]
    assert [r.graph.producer(t).attrs["out_stride"] for t in concat.inputs] == [24, 24]
    assert ".out_stride = 24" in r.files["model_weights.c"]
    assert "qg_concat_s8" not in r.files["model_model.c"]
    check = r.verify(np.concatenate([calib[:3], 4 * calib[3:5]]))
    assert check.exact, str(check)
    with monkeypatch.context() as mp:
        copying, _ = _compile(m, (1, 3, 7, 5), mp, disable=True)
    assert r.report["arena_bytes"] < copying.report["arena_bytes"]


@pytest.mark.parametrize("board", ["rp2040", "mps2-an386"])  # plain C (Cortex-M0+) and the DSP path (M4)
def test_strided_producers_are_bit_exact_on_the_cores(board, tmp_path, monkeypatch):
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    _no_concat_overlap(monkeypatch)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 7, 5)).astype(np.float32)
    r = codegen.compile(Fire().eval(), torch.zeros(1, 3, 7, 5), calib, out_dir=tmp_path / "fire")
    assert next(n for n in r.graph.nodes if n.op.value == "concat").attrs["in_place"] == [True, True]
    run = deploy.run(tmp_path / "fire", board, r.quantize_input(np.concatenate([calib[:3], 4 * calib[3:5]])))
    assert run.exact, run.first_mismatch


class UpSkip(nn.Module):
    """U-Net's decoder step: an up-convolution (ConvTranspose2d) beside a skip that another layer also reads.
    The up-convolution writes its channels in place; the skip is copied."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 6, 3, padding=1)
        self.down = nn.Conv2d(6, 10, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(10, 6, 2, stride=2)
        self.dec = nn.Conv2d(12, 4, 3, padding=1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        return self.dec(torch.cat([skip, self.up(torch.relu(self.down(skip)))], 1))


@pytest.mark.parametrize("board", [None, "rp2040", "mps2-an386"])
def test_transposed_conv_writes_in_place_beside_a_copied_skip(board, tmp_path):
    from codegen import deploy
    from codegen.target import missing_tools

    if board and missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((16, 3, 8, 6)).astype(np.float32)
    r = codegen.compile(UpSkip().eval(), torch.zeros(1, 3, 8, 6), calib, out_dir=tmp_path / "up")
    concat = [n for n in r.graph.nodes if n.op.value == "concat"][-1]
    assert concat.attrs["in_place"] == [True, True]  # the skip through an early copy node
    assert r.graph.producer(concat.inputs[0]).attrs[concat_in_place.EARLY_COPY] == 0
    assert r.graph.producer(concat.inputs[1]).attrs["out_stride"] == 12
    x = np.concatenate([calib[:3], 4 * calib[3:5]])
    if board is None:
        check = r.verify(x)
        assert check.exact, str(check)
    else:
        run = deploy.run(tmp_path / "up", board, r.quantize_input(x))
        assert run.exact, run.first_mismatch


# ------------------------------------------------------------------ early copies (a skip beside an in-place input)


class UpsampleSkips(nn.Module):
    """Two U-Net decoder steps without a 1x1 conv after the upsampling (so commute_resize leaves them): a bilinear
    and a nearest resize each write their channels straight into a concat output (`out_stride`); the skip (also
    read by the next layer) is copied by an early copy node before the resize runs, so it may lie inside the
    concat output, and the concat itself has no code."""

    def __init__(self):
        super().__init__()
        self.enc, self.down = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.up1 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.mid, self.down2 = nn.Conv2d(14, 6, 3, padding=1), nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(11, 4, 3, padding=1)

    def forward(self, x):
        skip = torch.relu(self.enc(x))
        y = torch.relu(self.mid(torch.cat([skip, self.up1(torch.relu(self.down(skip)))], 1)))
        return self.head(torch.cat([y, self.up2(torch.relu(self.down2(y)))], 1))


SKIPS_SHAPE = (1, 3, 8, 10)


def _skips(out_dir=None):
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((16, *SKIPS_SHAPE[1:])).astype(np.float32)
    return codegen.compile(UpsampleSkips().eval(), torch.zeros(SKIPS_SHAPE), calib, out_dir=out_dir), calib


@pytest.fixture(scope="module")
def skips(tmp_path_factory):
    out = tmp_path_factory.mktemp("skips") / "m"
    r, calib = _skips(out)
    return r, calib, out


def test_resizes_write_in_place_and_the_skips_are_copied_early(skips):
    from codegen.ir import Op

    r, calib, _ = skips
    g = r.graph
    concats = [n for n in g.nodes if n.op is Op.CONCAT and len(n.inputs) == 2]
    assert len(concats) == 2
    inside = []
    for cat in concats:
        assert cat.attrs["in_place"] == [True, True]
        copy, resize = (g.producer(t) for t in cat.inputs)
        assert copy.op is Op.CONCAT and copy.attrs[concat_in_place.EARLY_COPY] == 0 and len(copy.inputs) == 1
        assert resize.op is Op.RESIZE and resize.attrs["out_stride"] == g.tensors[cat.outputs[0]].shape[-1]
        assert g.nodes.index(copy) == g.nodes.index(resize) - 1  # just before the in-place producer
        skip, out = g.memory[copy.inputs[0]], g.memory[cat.outputs[0]]
        inside.append(skip[0] == out[0] == "arena" and out[1] < skip[1] < out[1] + g.tensors[cat.outputs[0]].nbytes)
    assert inside[0], inside  # the first skip dies at its copy and lies inside the concat output
    assert r.files["model_weights.c"].count(".out_stride = ") == 2  # the resizes (the copies: .out_block)
    assert r.files["model_model.c"].count("qg_concat_s8(") == 2  # the copies; the concats themselves: no call
    check = r.verify(np.concatenate([calib[:3], 4 * calib[3:5]]))
    assert check.exact, str(check)


def _unet_arena(up: str) -> int:
    from examples.zoo.models import UNet

    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((8, 1, 16, 16)).astype(np.float32)
    return codegen.compile(UNet(base=4, up=up).eval(), torch.zeros(1, 1, 16, 16), calib).report["arena_bytes"]


@pytest.mark.parametrize("up", ["bilinear", "transpose"])
def test_early_copies_shrink_the_arena(up, monkeypatch):
    """The zoo's U-Net at 16x16, 4 channels: without early copies the skip is copied at the concat's step, after
    the upsampling wrote into the output, so it lives beside the whole output (or the planner copies both)."""
    after = _unet_arena(up)
    with monkeypatch.context() as mp:
        mp.setattr(concat_in_place, "_early_copies", lambda g, n: None)
        before = _unet_arena(up)
    assert after < before, (after, before)


def test_grid_strategies_line_up_overlap_chains(monkeypatch):
    """plan_memory's 32/64-byte grid placements: the skip inside one concat output and the previous concat
    inside the decoder conv's output line up (16 B apart on the 4-byte grid, which put a buffer above the peak)."""
    from codegen.passes import plan_memory

    after = _unet_arena("bilinear")
    monkeypatch.setattr(plan_memory, "STRATEGIES", [s for s in plan_memory.STRATEGIES if "grid" not in s])
    assert after < _unet_arena("bilinear")


def test_early_copies_under_sanitizers_and_in_micropython(skips, tmp_path):
    import sys
    from pathlib import Path

    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    r, calib, out = skips
    x = np.concatenate([calib[:3], 4 * calib[3:5]])
    check = r.verify(x)
    exe = build_native(out, r.prefix, tmp_path / "asan", SANITIZE_FLAGS)
    xi = r.quantize_input(x)
    assert np.array_equal(run_native(exe, xi.reshape(len(xi), -1), check.outputs.shape[1]), check.outputs)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_micropython import check_graph

    check_graph(r.graph, xi, tmp_path, mpy=False)  # the pure module copies every part (no strides)


@pytest.mark.qemu
@pytest.mark.parametrize("board", ["rp2040", "mps2-an386"])  # plain C (Cortex-M0+) and the DSP path (M4)
def test_early_copies_bit_exact_on_the_cores(skips, board):
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    r, calib, out = skips
    run = deploy.run(out, board, r.quantize_input(np.concatenate([calib[:3], 4 * calib[3:5]])))
    assert run.exact, run.first_mismatch


class OutputConcat(nn.Module):
    """The model output is a concat (an ensemble's `--combine concat`): the branches write straight into the
    caller's output buffer."""

    def __init__(self):
        super().__init__()
        self.body, self.a, self.b = nn.Linear(12, 32), nn.Linear(32, 10), nn.Linear(32, 6)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return torch.cat([self.a(h), self.b(h)], 1)


def test_a_concat_output_is_written_in_place_into_the_callers_buffer(monkeypatch):
    r, calib = _compile(OutputConcat(), (1, 12))
    g = r.graph
    cat = next(n for n in g.nodes if n.op.value == "concat")
    assert cat.attrs["in_place"] == [True, True]
    assert [g.memory[t] for t in cat.inputs] == [("output", 0), ("output", 10)]
    assert "qg_concat_s8" not in r.files["model_model.c"]
    check = r.verify(np.concatenate([calib[:3], 4 * calib[3:5]]))
    assert check.exact, str(check)
    with monkeypatch.context() as mp:
        copying, _ = _compile(OutputConcat(), (1, 12), mp, disable=True)
    assert r.report["arena_bytes"] < copying.report["arena_bytes"]
