"""kernel_abi.overlap_distance against a byte-level simulation of each kernel's loop order.

Each `_sim_*` below replays one code path of firmware/kernels/qg_conv2d_s8.c / qg_pool2d_s8.c (and the
sparse kernel's, which the planner must not overlap): which input bytes it reads and which output bytes
it writes, in order, on a clock. With the output placed d bytes below the input, output byte j lands on
input byte j - d; the placement is safe iff every such byte is written after its last read.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codegen.fixed import QFormat
from codegen.ir import Graph, Node, Op, Tensor, conv_out_size
from codegen.kernel_abi import overlap_distance, sliding_window_overlap


class Clock:
    """Last read of every input byte and the write of every output byte, on one clock."""

    def __init__(self, in_size: int, out_size: int):
        self.t = 0
        self.last_read = np.full(in_size, -1)
        self.written = np.full(out_size, -1)

    def read(self, idx) -> None:
        self.t += 1
        self.last_read[np.asarray(idx, dtype=np.int64)] = self.t

    def write(self, idx) -> None:
        self.t += 1
        self.written[np.asarray(idx, dtype=np.int64)] = self.t

    def safe(self, d: int) -> bool:
        j = np.arange(self.written.size)
        at = j - d
        hit = (at >= 0) & (at < self.last_read.size)
        return bool(np.all(self.written[j[hit]] > self.last_read[at[hit]]))

    def min_safe(self) -> int:
        """Smallest d from which every larger d is safe (d = output size, fully below, always is)."""
        d = self.written.size
        while d > -self.last_read.size and self.safe(d - 1):
            d -= 1
        return d


class Layer:
    def __init__(self, h, w, cin, cout, kh, kw, sh, sw, pt, pl, pb, pr):
        self.h, self.w, self.cin, self.cout, self.kh, self.kw = h, w, cin, cout, kh, kw
        self.sh, self.sw, self.pt, self.pl = sh, sw, pt, pl
        self.oh, self.ow = conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr)

    def pixels(self):
        return [(oy, ox) for oy in range(self.oh) for ox in range(self.ow)]

    def window(self, oy: int, ox: int, channels) -> np.ndarray:
        """Input byte offsets of the window cells inside the image, for the given channels."""
        iy = [oy * self.sh - self.pt + k for k in range(self.kh)]
        ix = [ox * self.sw - self.pl + k for k in range(self.kw)]
        cells = [(y * self.w + x) * self.cin for y in iy if 0 <= y < self.h for x in ix if 0 <= x < self.w]
        return np.array([c + ch for c in cells for ch in channels], dtype=np.int64)

    def out(self, q: int, channels) -> np.ndarray:
        return q * self.cout + np.asarray(channels, dtype=np.int64)

    def clock(self) -> Clock:
        return Clock(self.h * self.w * self.cin, self.oh * self.ow * self.cout)

    def formula(self) -> int:
        return sliding_window_overlap((self.h, self.w), (self.oh, self.ow), (self.kh, self.kw), (self.sh, self.sw),
                                      (self.pt, self.pl), self.cin, self.cout)


def _sim_conv_plain(L: Layer) -> Clock:
    """qg_conv2d_s8 without DSP: im2col per pixel, or (unpadded 1x1) the input pixel read in place
    again for every pair of output channels, between the writes."""
    c = L.clock()
    every = range(L.cin)
    for q, (oy, ox) in enumerate(L.pixels()):
        cells = L.window(oy, ox, every)
        direct = L.kh == L.kw == 1 and cells.size > 0
        if not direct:
            c.read(cells)
        for oc in range(0, L.cout, 2):
            if direct:
                c.read(cells)
            c.write(L.out(q, range(oc, min(oc + 2, L.cout))))
    return c


def _sim_conv_dsp(L: Layer) -> Clock:
    """qg_conv2d_s8 with DSP: 4 pixels' columns (slots past the end repeat the last), then per output
    channel the 4 pixels' outputs."""
    c = L.clock()
    pix = L.pixels()
    for start in range(0, len(pix), 4):
        block = list(range(start, min(start + 4, len(pix))))
        for slot in range(4):
            c.read(L.window(*pix[block[min(slot, len(block) - 1)]], range(L.cin)))
        for oc in range(L.cout):
            for q in block:
                c.write(L.out(q, [oc]))
    return c


def _by_four(L: Layer, c: Clock, cells_of) -> None:
    """Per pixel: groups of 4 channels (reads, then the 4 outputs), then the remaining channels one by one."""
    for q, (oy, ox) in enumerate(L.pixels()):
        ch = 0
        while ch + 3 < L.cout:
            c.read(cells_of(oy, ox, range(ch, ch + 4)))
            c.write(L.out(q, range(ch, ch + 4)))
            ch += 4
        for ch in range(ch, L.cout):
            c.read(cells_of(oy, ox, [ch]))
            c.write(L.out(q, [ch]))


def _sim_depthwise_fast(L: Layer) -> Clock:
    """qg_depthwise_conv2d_s8, multiplier 1 (DSP or plain: the same order)."""
    c = L.clock()
    _by_four(L, c, L.window)
    return c


def _sim_depthwise_generic(L: Layer) -> Clock:
    """depthwise_generic (multiplier > 1): per pixel, per input channel, per multiple."""
    c = L.clock()
    mult = L.cout // L.cin
    for q, (oy, ox) in enumerate(L.pixels()):
        for oc in range(L.cout):
            c.read(L.window(oy, ox, [oc // mult]))
            c.write(L.out(q, [oc]))
    return c


def _sim_maxpool_dsp(L: Layer) -> Clock:
    c = L.clock()
    _by_four(L, c, L.window)
    return c


def _sim_per_channel(L: Layer) -> Clock:
    """qg_maxpool2d_s8 without DSP and qg_avgpool2d_s8: per pixel, per channel."""
    c = L.clock()
    for q, (oy, ox) in enumerate(L.pixels()):
        for ch in range(L.cout):
            c.read(L.window(oy, ox, [ch]))
            c.write(L.out(q, [ch]))
    return c


def _sim_sparse(L: Layer) -> Clock:
    """qg_conv2d_sparse_s8: output channel outer, pixels inner (breaks the order contract)."""
    c = L.clock()
    for oc in range(L.cout):
        for q, (oy, ox) in enumerate(L.pixels()):
            c.read(L.window(oy, ox, range(L.cin)))
            c.write(L.out(q, [oc]))
    return c


def _sim_pessimistic(L: Layer) -> Clock:
    """The formula's model: within a pixel, all writes may come before all reads."""
    c = L.clock()
    for q, (oy, ox) in enumerate(L.pixels()):
        c.write(L.out(q, range(L.cout)))
        c.read(L.window(oy, ox, range(L.cin)))
    return c


@st.composite
def layers(draw, kind: str) -> Layer:
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kw, kh, kw)]  # pt, pl, pb, pr
    h = draw(st.integers(max(1, kh - pads[0] - pads[2]), 8))
    w = draw(st.integers(max(1, kw - pads[1] - pads[3]), 8))
    cin = draw(st.integers(1, 9))
    cout = {"conv": draw(st.integers(1, 9)), "depthwise": cin * draw(st.integers(1, 3)), "pool": cin}[kind]
    return Layer(h, w, cin, cout, kh, kw, draw(st.integers(1, 3)), draw(st.integers(1, 3)), *pads)


KERNELS = {"conv": (_sim_conv_plain, _sim_conv_dsp), "pool": (_sim_maxpool_dsp, _sim_per_channel),
           "depthwise": (_sim_depthwise_fast, _sim_depthwise_generic)}


@pytest.mark.parametrize("kind", list(KERNELS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_kernel_path_is_safe_at_the_distance(kind, data):
    L = data.draw(layers(kind))
    d = L.formula()
    for sim in KERNELS[kind]:
        if sim is _sim_depthwise_fast and L.cout != L.cin:
            continue  # multiplier > 1 takes the generic path
        clock = sim(L)
        assert clock.safe(d), f"{sim.__name__} clobbers an input byte before its last read at d={d}"


@pytest.mark.parametrize("kind", list(KERNELS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_distance_is_tight_for_its_model(kind, data):
    """One byte closer and some output byte lands on input a later pixel still reads."""
    L = data.draw(layers(kind))
    clock = _sim_pessimistic(L)
    assert clock.min_safe() == L.formula()
    assert not clock.safe(L.formula() - 1)


def test_slack_on_the_real_kernels():
    """What the pixel-granular rule gives away: the plain-C 1x1 path (input read in place between
    writes of channel pairs) is safe from one channel pair closer, a 3x3 depthwise layer (window read
    before its channels are written) from one pixel closer; one byte more breaks each."""
    pw = Layer(5, 5, 8, 8, 1, 1, 1, 1, 0, 0, 0, 0)
    assert pw.formula() == 8 and _sim_conv_plain(pw).min_safe() == 8 - 2
    dw = Layer(6, 5, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1)
    assert dw.formula() == (5 + 2) * 8 and _sim_depthwise_fast(dw).min_safe() == dw.formula() - 8


def test_known_distances():
    """DS-CNN depthwise 3x3 on 25x5x64: one image row plus two pixels; a pointwise layer: one pixel;
    channel expansion 8 -> 16: the output sits below nearly all of the input; stride 2 lets the
    output start almost at the input."""
    assert Layer(25, 5, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1).formula() == 7 * 64
    assert Layer(25, 5, 64, 64, 1, 1, 1, 1, 0, 0, 0, 0).formula() == 64
    assert Layer(48, 48, 8, 16, 1, 1, 1, 1, 0, 0, 0, 0).formula() == 48 * 48 * 8 + 8
    assert Layer(32, 32, 16, 32, 1, 1, 2, 2, 0, 0, 0, 0).formula() == 32
    assert Layer(16, 16, 32, 32, 2, 2, 2, 2, 0, 0, 0, 0).formula() == 32


def test_window_in_the_padding_reads_nothing():
    # a 1x1 input padded by 3 on each side: only the middle output row reads it
    L = Layer(1, 1, 4, 4, 1, 1, 1, 1, 3, 0, 3, 0)
    assert L.formula() == 4 * 4 == _sim_pessimistic(L).min_safe()


def test_dilation_moves_the_first_tap():
    # one output, 3 taps from -1: at -1, 0, 1 the first inside is 0; dilated by 2 (-1, 1, 3) it is 1
    assert sliding_window_overlap((1, 6), (1, 1), (1, 3), (1, 1), (0, 1), 1, 1) == 1
    assert sliding_window_overlap((1, 6), (1, 1), (1, 3), (1, 1), (0, 1), 1, 1, dilation=(1, 2)) == 0


def test_sparse_order_would_break():
    """Why the sparse kernels are excluded: channel-outer order needs the output fully below the input."""
    L = Layer(6, 6, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1)
    assert not _sim_sparse(L).safe(L.formula())
    assert _sim_sparse(L).min_safe() > L.formula()


def _one_node(op: Op, weight_format: str = "dense", dtype: str = "int8") -> Graph:
    q8 = QFormat(8, 4)
    x = Tensor("x", (6, 6, 8), dtype, q8)
    y = Tensor("y", (6, 6, 8), dtype, q8)
    w_shape = (8, 3, 3, 1 if op is Op.DEPTHWISE_CONV2D else 8)
    w = Tensor("w", w_shape, "int8", q8, np.zeros(w_shape, np.int8))
    attrs = {"stride": (1, 1), "padding": (1, 1, 1, 1), "weight_format": weight_format}
    inputs = ["x"] if op is Op.MAXPOOL2D else ["x", "w"]
    if op is Op.MAXPOOL2D:
        attrs["kernel"] = (3, 3)
    return Graph({"x": x, "y": y, "w": w}, [Node("n", op, inputs, ["y"], attrs)], ["x"], ["y"])


@pytest.mark.parametrize("op,fmt,dtype,expect", [
    (Op.CONV2D, "dense", "int8", 8 * 8), (Op.DEPTHWISE_CONV2D, "dense", "int8", 8 * 8),
    (Op.MAXPOOL2D, "dense", "int8", 8 * 8), (Op.CONV2D, "sparse", "int8", None), (Op.CONV2D, "cluster", "int8", None),
    (Op.CONV2D, "dense", "int16", None)])
def test_overlap_distance_only_for_kernels_that_keep_the_contract(op, fmt, dtype, expect):
    g = _one_node(op, fmt, dtype)
    assert overlap_distance(g, g.nodes[0]) == expect
