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
    concat = next(n for n in r.graph.nodes if n.op.value == "concat")
    names = [r.graph.producer(t).name for t in concat.inputs]
    flags = dict(zip(names, concat.attrs["in_place"]))
    assert flags["a"] is False and flags["b"] is True, flags
    assert "NULL" in r.files["model_model.c"]  # the copy skips the part written in place
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
    concat = next(n for n in r.graph.nodes if n.op.value == "concat")
    assert concat.attrs["in_place"] == [False, True]
    assert r.graph.producer(concat.inputs[1]).attrs["out_stride"] == 12
    x = np.concatenate([calib[:3], 4 * calib[3:5]])
    if board is None:
        check = r.verify(x)
        assert check.exact, str(check)
    else:
        run = deploy.run(tmp_path / "up", board, r.quantize_input(x))
        assert run.exact, run.first_mismatch
