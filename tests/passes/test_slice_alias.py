"""Slices without copies (issue 16, item 2 layout): a slice that is one contiguous run of its input (rows of a
channels-last image, time steps of a sequence, a range of a vector) is no code: the planner places its output
inside its input's bytes. A slice of channels of an image is strided and stays a copy. Bit-exact either way."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import codegen
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native
from codegen.ir import Op
from codegen.kernels import select
from codegen.ops.matmul import slice_alias


class RowSplit(nn.Module):
    """chunk along H (rows of a channels-last image: contiguous) and along W (not), each half convolved."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.d = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        top, bottom = y.chunk(2, dim=2)  # rows: one contiguous run each
        left, right = y[:, :, :, :3], y[:, :, :, 2:]  # columns: strided
        return torch.cat([(self.b(top) + self.c(bottom)).flatten(1), (self.d(left) + self.d(right)).flatten(1)], 1)


class VectorSplit(nn.Module):
    """A Linear output split into three ranges read by different heads (and one range added to another)."""

    def __init__(self):
        super().__init__()
        self.fc, self.h1, self.h2 = nn.Linear(10, 24), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        a, b, c = torch.relu(self.fc(x)).split(8, dim=1)
        return self.h1(a + c) + self.h2(b)


class ChannelSplit(nn.Module):
    """channels of an image (ShuffleNet's chunk): strided, copied."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, dim=1)
        return torch.cat([p, self.b(q)], 1)


def _compile(model, shape, out_dir=None):
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    return codegen.compile(model.eval(), torch.zeros(shape), calib, out_dir=out_dir), calib


@pytest.mark.parametrize("model,shape,aliased,copied", [(RowSplit, (1, 3, 6, 5), 2, 2), (VectorSplit, (1, 10), 3, 0),
                                                        (ChannelSplit, (1, 3, 4, 4), 0, 2)])
def test_contiguous_slices_are_aliases_and_the_c_is_exact(model, shape, aliased, copied, tmp_path):
    r, calib = _compile(model(), shape, tmp_path / "m")
    g = r.graph
    slices = [n for n in g.nodes if n.op is Op.SLICE]
    alias = [n for n in slices if slice_alias(g, n) is not None]
    assert (len(alias), len(slices) - len(alias)) == (aliased, copied), g
    for n in alias:
        x, y = n.inputs[0], n.outputs[0]
        assert select(g, n).fn is None
        region, at = g.memory[y]
        assert region == g.memory[x][0] and at == g.memory[x][1] + slice_alias(g, n)  # inside its input's bytes
    model_c = r.files[f"{r.prefix}_model.c"]
    model_c = model_c.decode() if isinstance(model_c, bytes) else model_c
    assert model_c.count("qg_slice_s8(") == copied
    check = r.verify(calib[:4])
    assert check.exact, str(check)  # host C == integer reference
    if aliased:  # and under ASan/UBSan: no read outside the input's bytes
        exe = build_native(tmp_path / "m", r.prefix, tmp_path / "asan", SANITIZE_FLAGS)
        x = r.quantize_input(calib[:4])
        assert np.array_equal(run_native(exe, x.reshape(len(x), -1), check.outputs.shape[1]), check.outputs)


def test_aliased_slices_lower_the_arena():
    from codegen.passes import plan_memory

    r, _ = _compile(VectorSplit(), (1, 10))
    g = r.graph
    saved = plan_memory.slice_offsets
    try:
        plan_memory.slice_offsets = lambda graph: {}
        copying = plan_memory._plan(g)[1]
    finally:
        plan_memory.slice_offsets = saved
    assert g.arena_size < plan_memory._arena_end(copying)


class InputSplit(nn.Module):
    """Ranges of the flattened model input (a reshape of the caller's buffer): never aliased, copied, so no
    target needs a view at an offset inside the caller's input (the pure MicroPython module reads it whole)."""

    def __init__(self):
        super().__init__()
        self.h1, self.h2 = nn.Linear(8, 3), nn.Linear(6, 3)

    def forward(self, x):
        rows = x.view(1, 4, 4)  # a reshape of the caller's buffer; rows of it are contiguous runs
        return self.h1(rows[:, 0:2].flatten(1)) + self.h2(rows[:, 2:4].flatten(1)[:, :6])


def test_slices_of_a_reshaped_model_input_are_copied(tmp_path):
    r, calib = _compile(InputSplit(), (1, 16))
    g = r.graph
    slices = [n for n in g.nodes if n.op is Op.SLICE]
    assert len(slices) == 3, g  # two row ranges of the input, one range of a copied (arena) row range
    assert all(g.memory[n.outputs[0]][0] == "arena" for n in slices), g.memory  # never inside the input
    assert sum(slice_alias(g, n) is None for n in slices) == 2, g
    from codegen.emit.micropython import render_micropython

    src = render_micropython(g, "inp", ["test"])["inp.py"]
    assert src.count("_slice(") >= 2  # the pure module copies them out of its input
    check = r.verify(calib[:4])
    assert check.exact, str(check)
