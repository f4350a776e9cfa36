"""Where a PyTorch tensor's elements lie in qgen's buffer: the torch front end's layout algebra.

A `Layout` maps a PyTorch tensor (its sizes, batch included) onto qgen's dense buffer. The buffer is a
row-major array of physical axes (`phys`, outermost first, every size > 1); each PyTorch dim is a group of
physical axes (`dims[d]`, major first; empty for a dim of size 1). A strided tensor has one axis per dim
(channels-last image: phys (H, W, C), dims ((), (2,), (0,), (1,))); a view that merges dims which are not
physically adjacent (flattening a channels-last image) keeps several axes in one dim, so permute, transpose,
squeeze and view are metadata only and a copy (IR TRANSPOSE) is made only where an op needs a given layout.
This generalises PyTorch's own view rule (at::detail::computeStride): merging is always possible here,
splitting a dim needs its axes to split at the requested size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    phys: tuple[int, ...]  # physical axis sizes, outermost first (all > 1)
    dims: tuple[tuple[int, ...], ...]  # per PyTorch dim: its physical axes, major first

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(self.phys[a] for a in g) for g in self.dims)

    @property
    def size(self) -> int:
        return math.prod(self.phys)

    def torch_index(self) -> np.ndarray:
        """index[j] = PyTorch's (row-major) flat index of the element at physical position j."""
        idx = np.arange(self.size).reshape(self.sizes) if self.dims else np.arange(1)
        split = [self.phys[a] for g in self.dims for a in g]
        axes = [a for g in self.dims for a in g]
        idx = idx.reshape(split) if split else idx.reshape(())
        return idx.transpose(np.argsort(axes)).reshape(-1) if axes else idx.reshape(-1)

    def innermost_dim(self) -> int | None:
        """The PyTorch dim that is exactly the innermost physical axis, or None."""
        if not self.phys:
            return None
        last = len(self.phys) - 1
        for d, g in enumerate(self.dims):
            if g == (last,):
                return d
        return None

    def __str__(self) -> str:
        return f"phys{list(self.phys)} dims{[list(g) for g in self.dims]}"


def _build(order: list, size_of: dict, groups: list[list]) -> Layout:
    """A normalised Layout from physical axis tokens (outermost first), their sizes and the groups of tokens
    per dim: size-1 axes are dropped, axes adjacent both physically and in their group are merged."""
    order = [t for t in order if size_of[t] > 1]
    groups = [[t for t in g if size_of[t] > 1] for g in groups]
    merged = True
    while merged:
        merged = False
        for g in groups:
            for i in range(len(g) - 1):
                a, b = g[i], g[i + 1]
                if order.index(b) == order.index(a) + 1:  # one axis: a major, b minor, adjacent in the buffer
                    token = (a, b)
                    size_of[token] = size_of[a] * size_of[b]
                    order[order.index(a):order.index(a) + 2] = [token]
                    g[i:i + 2] = [token]
                    merged = True
                    break
            if merged:
                break
    index = {t: i for i, t in enumerate(order)}
    return Layout(tuple(size_of[t] for t in order), tuple(tuple(index[t] for t in g) for g in groups))


def _tokens(lay: Layout) -> tuple[list, dict, list[list]]:
    order = list(range(len(lay.phys)))
    return order, {a: s for a, s in enumerate(lay.phys)}, [list(g) for g in lay.dims]


def from_order(sizes: tuple[int, ...], order: tuple[int, ...]) -> Layout:
    """The strided layout whose physical axes are the dims `order` (outermost first)."""
    size_of = {d: int(s) for d, s in enumerate(sizes)}
    return _build(list(order), size_of, [[d] for d in range(len(sizes))])


def canonical(sizes: tuple[int, ...]) -> Layout:
    """qgen's layout convention: (1, C, H, W) -> (H, W, C), (1, C, L) -> (L, C), (1, F) -> (F,), else
    row-major."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) == 4 and sizes[0] == 1:
        return from_order(sizes, (0, 2, 3, 1))
    if len(sizes) == 3 and sizes[0] == 1:
        return from_order(sizes, (0, 2, 1))
    return from_order(sizes, tuple(range(len(sizes))))


def canonical_shape(sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The IR shape of a tensor in the canonical layout: (H, W, C), (1, L, C), (F,), else without batch."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) == 4 and sizes[0] == 1:
        return (sizes[2], sizes[3], sizes[1])
    if len(sizes) == 3 and sizes[0] == 1:
        return (1, sizes[2], sizes[1])
    if len(sizes) >= 2 and sizes[0] == 1:
        return sizes[1:]
    return sizes or (1,)


def permute(lay: Layout, perm) -> Layout:
    perm = [int(p) % len(lay.dims) for p in perm]
    return Layout(lay.phys, tuple(lay.dims[p] for p in perm))


def transpose(lay: Layout, d0: int, d1: int) -> Layout:
    perm = list(range(len(lay.dims)))
    d0, d1 = d0 % len(perm), d1 % len(perm)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return permute(lay, perm)


def _chunks(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Blocks of consecutive non-1 dims with equal products: [(old dims, new dims)]."""
    a = [d for d, s in enumerate(old) if s > 1]
    b = [d for d, s in enumerate(new) if s > 1]
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i >= len(a) or j >= len(b):
            return None
        oa, nb = [a[i]], [b[j]]
        pa, pb = old[a[i]], new[b[j]]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb:
                if i >= len(a):
                    return None
                oa.append(a[i])
                pa *= old[a[i]]
                i += 1
            else:
                if j >= len(b):
                    return None
                nb.append(b[j])
                pb *= new[b[j]]
                j += 1
        out.append((oa, nb))
    return out


def view(lay: Layout, new: tuple[int, ...]) -> Layout | None:
    """The layout of `x.view(new)` with no data moved, or None if the dims to split do not split."""
    new = tuple(int(s) for s in new)
    if math.prod(new) != math.prod(lay.sizes):
        return None
    chunks = _chunks(lay.sizes, new)
    if chunks is None:
        return None
    order, size_of, groups = _tokens(lay)
    new_groups: list[list] = [[] for _ in new]
    fresh = [0]

    def split(token, major: int):  # token -> (major part, minor part), adjacent in the buffer
        fresh[0] += 1
        hi, lo = ("s", fresh[0], 0), ("s", fresh[0], 1)
        size_of[hi], size_of[lo] = major, size_of[token] // major
        k = order.index(token)
        order[k:k + 1] = [hi, lo]
        return hi, lo

    for old_dims, new_dims in chunks:
        axes = [t for d in old_dims for t in groups[d]]
        i = 0
        while i < len(axes) - 1:  # axes adjacent in the buffer and in the block are one axis
            a, b = axes[i], axes[i + 1]
            if order.index(b) == order.index(a) + 1:
                fresh[0] += 1
                token = ("m", fresh[0])
                size_of[token] = size_of[a] * size_of[b]
                order[order.index(a):order.index(a) + 2] = [token]
                axes[i:i + 2] = [token]
            else:
                i += 1
        for d in new_dims:
            want, got = new[d], 1
            while got < want:
                if not axes:
                    return None
                t = axes[0]
                rem = want // got
                if want % got:
                    return None
                if size_of[t] <= rem and rem % size_of[t] == 0:
                    new_groups[d].append(axes.pop(0))
                    got *= size_of[t]
                elif size_of[t] % rem == 0:
                    hi, lo = split(t, rem)
                    axes[0] = lo
                    new_groups[d].append(hi)
                    got *= rem
                else:
                    return None
    return _build(order, size_of, new_groups)


def view_target(lay: Layout, new: tuple[int, ...]) -> Layout:
    """The cheapest layout to copy into so that `view(new)` succeeds: the old dims of each block that the view
    merges or splits are made one row-major run, placed where the block's outermost axis is; the rest stays."""
    chunks = _chunks(lay.sizes, tuple(int(s) for s in new)) or [([d for d, s in enumerate(lay.sizes) if s > 1], [])]
    order, size_of, groups = _tokens(lay)
    units = []  # (physical position, tokens in physical order)
    done = set()
    for old_dims, _ in chunks:
        tokens = [t for d in old_dims for t in groups[d]]
        done.update(old_dims)
        if tokens:
            units.append((min(order.index(t) for t in tokens), tokens))
    for d, g in enumerate(groups):
        if d not in done:
            units += [(order.index(t), [t]) for t in g]
    new_order = [t for _, ts in sorted(units, key=lambda u: u[0]) for t in ts]
    return _build(new_order, size_of, groups)


def move_innermost(lay: Layout, dim: int) -> Layout:
    """`lay` with PyTorch dim `dim` made one innermost physical axis (softmax over it, MATMUL's K)."""
    return move_dims_innermost(lay, [dim])


def move_dims_innermost(lay: Layout, dims) -> Layout:
    """`lay` with PyTorch dims `dims` made the innermost physical axes, row-major in that order (the other
    axes keep theirs): LayerNorm over the trailing dims."""
    order, size_of, groups = _tokens(lay)
    dims = [d % len(groups) for d in dims]
    moved = [t for d in dims for t in groups[d]]
    return _build([t for t in order if t not in moved] + moved, size_of, groups)


def transpose_plan(src: Layout, dst: Layout) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(input shape, perm, output shape) of one physical permutation copy (np.transpose(x.reshape(input
    shape), perm) viewed as dst) from `src` to `dst`, simplified (axes that stay adjacent are merged); None if
    the two layouts split some dim in incompatible ways (then go through the canonical layout)."""
    if src.sizes != dst.sizes:
        raise ValueError(f"layouts of different sizes {src.sizes} {dst.sizes}")
    pieces = []  # (size, src axis, dst axis)
    for ga, gb in zip(src.dims, dst.dims):
        ia, ib = list(ga), list(gb)
        ra = src.phys[ia[0]] if ia else 1
        rb = dst.phys[ib[0]] if ib else 1
        while ia and ib:
            if ra == rb:
                pieces.append((ra, ia.pop(0), ib.pop(0)))
                ra = src.phys[ia[0]] if ia else 1
                rb = dst.phys[ib[0]] if ib else 1
            elif rb % ra == 0:
                pieces.append((ra, ia.pop(0), ib[0]))
                rb //= ra
                ra = src.phys[ia[0]] if ia else 1
            elif ra % rb == 0:
                pieces.append((rb, ia[0], ib.pop(0)))
                ra //= rb
                rb = dst.phys[ib[0]] if ib else 1
            else:
                return None
    # order the pieces physically: by axis, then by their order inside it (pieces list is major first)
    src_order = sorted(range(len(pieces)), key=lambda k: (pieces[k][1], k))
    dst_order = sorted(range(len(pieces)), key=lambda k: (pieces[k][2], k))
    # merge pieces adjacent in both orders
    runs: list[list[int]] = []
    pos_dst = {k: i for i, k in enumerate(dst_order)}
    for k in src_order:
        if runs and pos_dst[k] == pos_dst[runs[-1][-1]] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    in_shape = tuple(math.prod(pieces[k][0] for k in r) for r in runs)
    run_of = {r[0]: i for i, r in enumerate(runs)}
    perm = tuple(run_of[k] for k in dst_order if k in run_of)
    out_shape = tuple(in_shape[p] for p in perm)
    return in_shape, perm, out_shape


def resize_dim(lay: Layout, dim: int, size: int) -> Layout:
    """The layout of a slice of `size` elements along `dim`, which must be one physical axis (or size 1)."""
    order, size_of, groups = _tokens(lay)
    dim %= len(groups)
    if len(groups[dim]) == 1:
        size_of[groups[dim][0]] = int(size)
    elif size != 1:  # a size-1 dim grows: a new axis, placed outermost (only ever sliced back to size 1)
        raise ValueError(f"dim {dim} of {lay} is not one physical axis")
    return _build(order, size_of, groups)


def single_axis(lay: Layout, dim: int) -> int | None:
    """The physical axis that is PyTorch dim `dim`, or None (size 1, or several axes)."""
    g = lay.dims[dim % len(lay.dims)]
    return g[0] if len(g) == 1 else None


def broadcast_of(lay: Layout, sizes: tuple[int, ...]) -> Layout:
    """The layout of an operand of `sizes` (each lay.sizes[d] or 1) read as broadcast against a tensor lying in
    `lay`: lay's physical axes in their order, those of the dims the operand has size 1 along dropped."""
    order, size_of, groups = _tokens(lay)
    for d, g in enumerate(groups):
        if sizes[d] == 1:
            for t in g:
                size_of[t] = 1
    return _build(order, size_of, groups)
