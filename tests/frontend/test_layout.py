"""The compiler owns the layout (issue 16): permute/transpose/view are metadata, a TRANSPOSE copy is made
only where an op needs another layout (frontend/layout.py), and the float IR computes what PyTorch does."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from codegen.frontend import from_module
from codegen.frontend import layout as L
from codegen.ir import Op
from codegen.reference import run_float, to_qgen_layout, to_torch_layout


def _check(model, x):
    """Float IR == torch; returns the graph."""
    g = from_module(model.eval(), x[:1])
    values = run_float(g, to_qgen_layout(g, x.numpy()))
    with torch.no_grad():
        expect = model(x)
    expect = expect if isinstance(expect, tuple) else (expect,)
    for name, e in zip(g.outputs, expect):
        got = to_torch_layout(values[name], g.io_layout.get(name))
        np.testing.assert_allclose(got, e.numpy(), rtol=1e-4, atol=1e-5)
    return g


def _count(g, op):
    return sum(n.op is op for n in g.nodes)


class Shuffle(nn.Module):
    def __init__(self, c=8, g=2):
        super().__init__()
        self.g = g
        self.a, self.b = nn.Conv2d(3, c, 1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(x)


def test_channel_shuffle_is_one_per_pixel_transpose():
    torch.manual_seed(0)
    g = _check(Shuffle(), torch.randn(3, 3, 5, 4))
    (t,) = [n for n in g.nodes if n.op is Op.TRANSPOSE]
    assert g.tensors[t.inputs[0]].shape == (20, 2, 4) and t.attrs["perm"] == (0, 2, 1)  # (HW, g, C/g) -> (HW, C/g, g)


def test_permute_to_nhwc_and_back_copies_nothing():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            y = torch.relu(x.permute(0, 2, 3, 1))  # (N, H, W, C): qgen's buffer already
            return self.c(torch.sigmoid(y).permute(0, 3, 1, 2))

    torch.manual_seed(1)
    g = _check(M(), torch.randn(2, 2, 6, 5))
    assert _count(g, Op.TRANSPOSE) == 0


def test_view_to_5d_softmax_over_a_middle_dim():
    class M(nn.Module):
        def forward(self, x):
            y = torch.softmax(x.view(1, 2, 3, 4, 5), dim=1)  # over the 2 groups of 3 channels
            return y.view(1, 6, 4, 5)

    torch.manual_seed(2)
    g = _check(M(), torch.randn(1, 6, 4, 5))
    assert _count(g, Op.TRANSPOSE) == 2  # into softmax's layout and back to channels-last


def test_x_plus_linear_of_flattened_image():
    """Issue 16: `y = x + Linear(x)` on a flattened 1x2 image with 2 channels was refused; the Linear's output
    rows are permuted to the flattened image's element order (the output is copied to PyTorch's order)."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            f = torch.flatten(x, 1)
            return f + self.fc(f)

    torch.manual_seed(3)
    g = _check(M(), torch.randn(4, 2, 1, 2))
    assert _count(g, Op.TRANSPOSE) == 1  # the output only


def test_flatten_then_linear_stays_free():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.ReLU(), nn.Linear(3 * 4 * 5, 2))
    g = _check(model, torch.randn(3, 2, 6, 7))
    assert _count(g, Op.TRANSPOSE) == 0


def test_flattened_image_as_output_is_copied_to_pytorch_order():
    torch.manual_seed(5)
    g = _check(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten()), torch.randn(2, 2, 4, 5))
    assert _count(g, Op.TRANSPOSE) == 1


def test_sequence_transposed_to_length_last():
    class M(nn.Module):
        def forward(self, x):  # (1, C, L) -> (1, L, C) -> relu -> back
            return torch.relu(x.transpose(1, 2)).transpose(1, 2)

    torch.manual_seed(6)
    g = _check(M(), torch.randn(1, 3, 7))
    assert _count(g, Op.TRANSPOSE) == 0


def test_layout_models_compile_and_c_equals_reference():
    """Channel shuffle, x + Linear(flatten(x)), softmax over a middle dim: host C == integer reference."""
    import codegen

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.s, self.fc = Shuffle(4, 2), nn.Linear(4 * 3 * 3, 4 * 3 * 3)

        def forward(self, x):
            y = self.s(x)
            y = torch.softmax(y.view(1, 2, 2, 3, 3), dim=1).view(1, 4, 3, 3)
            f = torch.flatten(y, 1)
            return f + self.fc(f)

    torch.manual_seed(8)
    x = torch.randn(16, 3, 3, 3)
    r = codegen.compile(Both().eval(), x[:1], x.numpy(), prefix="lay")
    # the shuffle, into softmax's layout, the output (softmax's layout flows through flatten, Linear and add)
    assert sum(n.op is Op.TRANSPOSE for n in r.graph.nodes) == 3
    assert r.verify(np.concatenate([x.numpy(), 8 * x.numpy()])).exact


# ---- the algebra itself


def test_view_merges_and_splits_like_pytorch():
    x = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)
    lay = L.canonical(x.shape)  # channels-last
    phys = x.permute(0, 2, 3, 1).reshape(-1).numpy()
    for new in [(1, 24), (1, 2, 12), (1, 2, 3, 2, 2), (1, 1, 2, 3, 4, 1)]:
        v = L.view(lay, new)
        assert v is not None and v.sizes == new
        np.testing.assert_array_equal(x.reshape(new).reshape(-1).numpy()[v.torch_index()], phys)
    assert L.view(L.view(L.canonical((1, 6)), (1, 2, 3)), (1, 3, 2)) is not None  # contiguous: merge then split


def test_transpose_plan_is_a_numpy_transpose():
    x = torch.arange(2 * 6 * 5).reshape(1, 6, 2, 5)
    lay = L.transpose(L.view(L.canonical((1, 6, 2, 5)), (1, 2, 3, 2, 5)), 1, 3)
    dst = L.canonical(lay.sizes)
    phys = x.permute(0, 2, 3, 1).reshape(-1).numpy()
    in_shape, perm, out_shape = L.transpose_plan(lay, dst)
    got = phys.reshape(in_shape).transpose(perm).reshape(-1)
    y = x.reshape(1, 2, 3, 2, 5).transpose(1, 3)
    np.testing.assert_array_equal(got, y.reshape(-1).numpy()[dst.torch_index()])


# ---- chunk / split / slice / select (IR SLICE)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with channel split: half the channels pass, half go through a branch, then shuffle."""

    def __init__(self, c=8):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(nn.Conv2d(h, h, 1), nn.ReLU(), nn.Conv2d(h, h, 3, padding=1, groups=h),
                                    nn.Conv2d(h, h, 1), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_shufflenet_unit_chunk_cat_shuffle():
    torch.manual_seed(9)
    g = _check(ShuffleUnit(), torch.randn(3, 8, 5, 6))
    assert _count(g, Op.SLICE) == 2 and _count(g, Op.TRANSPOSE) == 1


def test_slices_selects_splits_along_any_dim():
    class M(nn.Module):
        def forward(self, x):  # (1, 6, 5, 4)
            a = x[:, 1:4]  # channels
            b = x[:, :, 2:, :]  # rows
            c = x.narrow(3, 1, 2)  # columns
            d = x[:, 2]  # select a channel: (1, 5, 4)
            p, q = torch.split(x, [2, 4], dim=1)
            u = x.unbind(2)[3]  # (1, 6, 4)
            return torch.relu(a), b, c, d.unsqueeze(1), q, u.unsqueeze(2), p

    torch.manual_seed(10)
    g = _check(M(), torch.randn(2, 6, 5, 4))
    assert _count(g, Op.SLICE) == 7


def test_slice_of_a_flattened_image():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            f = torch.flatten(x, 1)  # (1, 24) in qgen's (H, W, C) order
            return self.fc(f[:, 6:18])

    torch.manual_seed(11)
    _check(M(), torch.randn(2, 2, 3, 4))


def test_slice_models_compile_and_c_equals_reference():
    import codegen

    torch.manual_seed(12)
    x = torch.randn(16, 8, 5, 6)
    r = codegen.compile(ShuffleUnit().eval(), x[:1], x.numpy(), prefix="unit")
    assert r.verify(np.concatenate([x.numpy(), 8 * x.numpy()])).exact


# ---- matmul of two activations, Linear over the last dim (attention)


class Attention(nn.Module):
    """LayerNorm -> q, k, v -> softmax(q k^T / sqrt(d)) v -> Linear -> residual add, on (1, L, D)."""

    def __init__(self, d=16, norm=True):
        super().__init__()
        self.norm = nn.LayerNorm(d) if norm else nn.Identity()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.scale = d ** -0.5

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return x + self.o(attn @ v)


def test_attention_block_float_ir_equals_torch():
    torch.manual_seed(13)
    g = _check(Attention(), torch.randn(1, 8, 16))
    assert _count(g, Op.MATMUL) == 2
    # q @ k^T copies nothing; attn @ v copies v^T; the (1, C, L) input convention puts D outermost: one copy
    # in, one out
    assert _count(g, Op.TRANSPOSE) == 3


def test_linear_on_3d_is_a_pointwise_conv():
    torch.manual_seed(14)
    g = _check(nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 4)), torch.randn(1, 7, 5))
    assert _count(g, Op.CONV2D) == 2


def test_attention_compiles_and_c_equals_reference():
    import codegen

    torch.manual_seed(15)
    model = Attention().eval()
    x = torch.randn(32, 8, 16)
    r = codegen.compile(model, x[:1], x.numpy(), prefix="attn")
    assert r.verify(np.concatenate([x.numpy(), 4 * x.numpy()])).exact
    with torch.no_grad():
        expect = model(x[:4]).numpy()
    got = r.predict(x[:4].numpy())
    assert np.abs(got - expect).max() < 0.1 * np.abs(expect).max()
