"""What the generator must know about the C kernels: scratch sizes and how far an output may overlap
its input, mirrored from C.

Each *_buffer_size function here mirrors a `qg_*_buffer_size()` in firmware/kernels/ exactly (same
arguments from the layer's parameters, same result); tests/test_kernel_abi.py compares them through
cffi. A kernel whose size is 0 gets scratch = NULL.

`overlap_distance` is the other kernel fact the memory planner uses: how many bytes below the start
of its (dying) input a sliding-window kernel's output may start, so that the output overwrites input
bytes only after their last read (tests/passes/test_overlap_distance.py checks it against a byte-level
simulation of each kernel's loop order).
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, Node
from .ops import Trait, with_trait


def _round_up4(n: int) -> int:
    return (n + 3) & ~3


def conv2d_buffer_size(in_c: int, k_h: int, k_w: int, out_c: int) -> int:
    """Four im2col columns of K = k_h*k_w*in_c values (rounded up to 4) as int16, plus one int8
    column to gather into when in_c is not a multiple of 4."""
    k4 = _round_up4(k_h * k_w * in_c)
    return 8 * k4 + (k4 if in_c % 4 else 0)


def depthwise_conv2d_buffer_size(in_c: int, k_h: int, k_w: int, out_c: int) -> int:
    """The weights transposed for the multiplier-1 kernel (others use none). The size of the DSP path: per 4
    channels the biases and shifts (5 words) and the taps as int16 (qg_conv2d_s8.c depthwise_dsp); the plain and
    Helium paths need less (depthwise_conv2d_plain_buffer_size; codegen/kernels.py scratch_for)."""
    return 2 * _round_up4(k_h * k_w * out_c) + 5 * _round_up4(out_c) if out_c == in_c else 0


def depthwise_conv2d_plain_buffer_size(in_c: int, k_h: int, k_w: int, out_c: int) -> int:
    """The plain and Helium paths' part of depthwise_conv2d_buffer_size: the int8 weights as (k_h, k_w, channels)."""
    return _round_up4(k_h * k_w * out_c) if out_c == in_c else 0


def fully_connected_buffer_size(in_features: int, out_features: int) -> int:
    return 0


def scratch_bytes(g: Graph, n: Node, core: str | None = None) -> int:
    """Scratch bytes the kernel chosen for node `n` needs on `core` (None: any core; 0: none):
    codegen.kernels.select decides the kernel."""
    from .kernels import select

    return select(g, n, core).scratch


def _first_tap(n_out: int, size: int, k: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    """Per output index along one axis: the first input index its window reads, -1 if none is inside."""
    origin = np.arange(n_out, dtype=np.int64) * stride - pad
    first = np.where(origin >= 0, origin, origin + (-origin + dilation - 1) // dilation * dilation)
    return np.where((first < size) & (first <= origin + (k - 1) * dilation), first, -1)


def sliding_window_overlap(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
                           stride: tuple[int, int], pad_top_left: tuple[int, int], in_pixel_bytes: int,
                           out_pixel_bytes: int, dilation: tuple[int, int] = (1, 1)) -> int:
    """Smallest d such that `out` may start d bytes below `in` (out = in - d; d < 0: above) for a
    channels-last kernel that honours the order contract of firmware/kernels/qg_conv2d_s8.c: output
    pixels q = oy * out_w + ox in increasing order, and after writing pixel q it reads input only for
    pixels >= q.

    Let need(q) be the lowest input byte any output pixel >= q reads (the first image cell of its
    window; a window entirely in the padding reads nothing). Pixel q's bytes end at
    (q + 1) * out_pixel_bytes - d relative to `in` and may only cover input that is never read again,
    so d >= max_q((q + 1) * out_pixel_bytes - need(q)). Whole pixels are the unit: a kernel may
    interleave reads and writes within one output pixel (the plain-C 1x1 path reads its input pixel in
    place between writes). The bound is tight for that model; it ignores input bytes that no later
    window reads (gaps of strides larger than the kernel), which only makes it conservative.
    """
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    iy = _first_tap(out_h, in_h, kernel[0], stride[0], pad_top_left[0], dilation[0])
    ix = _first_tap(out_w, in_w, kernel[1], stride[1], pad_top_left[1], dilation[1])
    iy, ix = np.meshgrid(iy, ix, indexing="ij")
    reads = ((iy >= 0) & (ix >= 0)).ravel()
    if not reads.any():
        return -in_h * in_w * in_pixel_bytes  # reads nothing: any placement is safe
    never = np.iinfo(np.int64).max
    first_byte = np.where(reads, (iy * in_w + ix).ravel() * in_pixel_bytes, never)
    need = np.minimum.accumulate(first_byte[::-1])[::-1]
    ends = (np.arange(out_h * out_w, dtype=np.int64) + 1) * out_pixel_bytes
    return int(np.max((ends - need)[need < never]))


# ops with a sliding-window kernel that may honour the order contract (codegen/kernels.py: ORDERED)
OVERLAP_OPS = with_trait(Trait.SLIDING_WINDOW)


def overlap_distance(g: Graph, n: Node) -> int | None:
    """How many bytes below its input node `n`'s output may start (see sliding_window_overlap), or
    None when the kernel chosen for `n` (codegen.kernels.select) gives no such guarantee."""
    from .kernels import select

    return select(g, n).overlap
