"""The Helium (MVE) kernel paths on Cortex-M55 (mps3-an547 under QEMU) equal codegen.reference.run_int byte for byte.

One firmware holds every case: single-op branches over one (3, 5, 33) input, each branch a model output.
MVE works on 16 int8 lanes with a predicated tail, so the channel / in-feature counts that matter are every
count 1..17 (each tail length, one and two vectors), 31 and 33 (a full vector plus a long or short tail);
a slice of the input gives each count. Output rows come four per pass (a vector requantisation; eight for
rows shorter than 16), so the output-channel counts cycle through 1..8 and 9..16 (every remainder of 4 and 8).
Shifts include the extremes -31 and 31 (VQRSHL's saturating left and rounding right shifts against the rule),
clamps the three kinds, and the inputs include all -128 (edge_inputs); "fine" twins with small biases and a
shift sized to the sums show every product instead of a clamped result.
The same firmware holds the packed-int4 layers (qg_conv2d_s4.c: 32 weights per vector, 4-pixel conv blocks whose
last block is partial) and int16-activation chains int8 -> int16 -> int16 -> int8 (qg_wide.c: 8 int16 lanes for the
dot products, 4 int32 lanes for depthwise, int32 and int64 accumulators), sub / maximum / minimum (int16 lanes for
alignment shifts >= -7, int32 lanes below), scalar affine, PReLU and channel affine (4 channels a vector, one channel:
4 elements a vector) with extreme slopes / scales / offsets / shifts, and int16 max / average pooling (uniform and
windows kernels, every tail of 8 and 4 lanes, small- and full-range int16 values).
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import GraphBuilder, assert_outputs_equal, const, edge_inputs, finish, safe_bias

from codegen.emit.c import render, write_atomic
from codegen.fixed import AVG_SHIFT, QFormat, avg_multiplier
from codegen.hostcheck import reference_outputs
from codegen.ir import Graph, Op, Tensor
from codegen.reference import run_int
from codegen.target import build_elf, missing_tools, run_qemu

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")

BOARD = "mps3-an547"  # Cortex-M55 with MVE
COUNTS = [*range(1, 18), 31, 33]  # channel / in-feature counts: every tail of a 16-lane vector
SHAPE = (3, 5, 33)
EXTREME_SHIFTS = (-31, -23, -1, 0, 1, 15, 23, 31)
ACTS = ((-128, 127), (0, 127), (-50, 90))  # the clamp kinds: none, ReLU, any range


class Builder(GraphBuilder):
    def __init__(self, rng):
        super().__init__(rng, SHAPE)

    def weighted(self, name: str, op: Op, src: str, w_shape: tuple, act_range=None, shift=None, bits: int = 8,
                 out16: bool = False, output: bool = True, **attrs) -> str:
        """A weighted node; shift None: per-channel shifts drawn over [-3, 15) and a quarter at the extremes, large
        biases; a given shift: small biases (outputs that show every product instead of saturating). bits 4: packed
        int4 weights in [-8, 7] (qg_conv2d_s4.c), the first row all -8; out16: an int16 output (qg_wide.c)."""
        rng = self.rng
        lim = 1 << (bits - 1)
        w = rng.integers(-lim, lim, w_shape)
        w.flat[0] = -lim
        if bits == 4:
            w[0] = -8
        cout = w_shape[0]
        in16 = self.g.tensors[src].dtype == "int16"
        bias = safe_bias(rng, w, 2**15 if in16 else 128) if shift is None else rng.integers(-2**9, 2**9, cout)
        self.g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * cout)
        if bits == 4:
            self.g.tensors[f"{name}_w"].qformat = QFormat(4, (3,) * cout)
        self.g.tensors[f"{name}_b"] = const(f"{name}_b", bias, 32, (7,) * cout)
        if shift is None:
            shift = rng.integers(-3, 15, cout)
            extreme = rng.random(cout) < 0.25  # a quarter of the channels at an extreme shift
            shift[extreme] = rng.choice(EXTREME_SHIFTS, int(extreme.sum()))
        shift = np.broadcast_to(shift, (cout,))
        act_range = act_range or ((-32768, 32767) if out16 else (-128, 127))
        attrs.update(shift=[int(s) for s in shift], act_min=act_range[0], act_max=act_range[1])
        name = self.node(name, op, [src, f"{name}_w", f"{name}_b"], output, **attrs)
        if out16:
            t = self.g.tensors[name]
            self.g.tensors[name] = Tensor(name, t.shape, "int16", QFormat(16, 8))
        return name


def _fine_shift(k: int, x_std: float = 74, w_std: float = 74, out_max: int = 127) -> int:
    """The right shift that maps 3 standard deviations of a k-term sum of random products onto +-out_max (default:
    int8 inputs and weights, an int8 output)."""
    return max(int(np.ceil(np.log2(3 * x_std * w_std * np.sqrt(k) / out_max))), 0)


I16_STD = 32767 / 3  # the spread of an int16 output produced with a _fine_shift(..., out_max=32767)


def mve_graph(rng) -> Graph:
    b = Builder(rng)
    same = {"stride": (1, 1), "padding": (1, 1, 1, 1)}
    flat = b.node("flat", Op.RESHAPE, ["x"], output=False, shape=(int(np.prod(SHAPE)),))
    for i, c in enumerate(COUNTS):
        a = ACTS[i % 3]
        src = "x" if c == SHAPE[2] else b.node(f"x_c{c}", Op.SLICE, ["x"], output=False, axis=2, start=0, length=c)
        vec = b.node(f"v_{c}", Op.SLICE, [flat], output=False, axis=0, start=i, length=c)
        b.weighted(f"fc_{c}", Op.LINEAR, vec, (i % 8 + 1, c), a)
        b.weighted(f"conv1x1_c{c}", Op.CONV2D, src, (i % 8 + 1, 1, 1, c), a, stride=(1, 1), padding=(0, 0, 0, 0))
        b.weighted(f"conv3x3_c{c}", Op.CONV2D, src, ((i + 3) % 8 + 1, 3, 3, c), ACTS[(i + 1) % 3], **same)
        b.weighted(f"dw3x3_c{c}", Op.DEPTHWISE_CONV2D, src, (c, 3, 3, 1), a, **same)
        # the same kinds with a shift that maps ~3 standard deviations of the sums onto the int8 range
        b.weighted(f"fc_fine_{c}", Op.LINEAR, vec, (i % 8 + 9, c), shift=_fine_shift(c))
        b.weighted(f"conv1x1_fine_c{c}", Op.CONV2D, src, (i % 8 + 9, 1, 1, c), shift=_fine_shift(c), stride=(1, 1),
                   padding=(0, 0, 0, 0))
        b.weighted(f"dw3x3_fine_c{c}", Op.DEPTHWISE_CONV2D, src, (c, 3, 3, 1), shift=_fine_shift(9), **same)
        b.node(f"maxpool_c{c}", Op.MAXPOOL2D, [src], kernel=(2, 3), stride=(1, 2), padding=(0, 1, 0, 1))
        b.node(f"avgpool_c{c}", Op.AVGPOOL2D, [src], kernel=(3, 3), stride=(1, 1), padding=(0, 0, 0, 0),
               avg_mult=avg_multiplier(9), avg_shift=AVG_SHIFT, act_min=a[0], act_max=a[1])
        # element-wise over 15 * c elements (every tail of 4) and a (1, 1, c) gate broadcast over the pixels
        dw = f"dw3x3_c{c}"
        b.node(f"add_c{c}", Op.ADD, [src, dw], shift_a=int(rng.integers(-6, 5)), shift_b=int(rng.integers(-6, 5)),
               shift=int(rng.choice([-31, -2, 0, 1, 3, 9, 31])), act_min=a[0], act_max=a[1])
        b.node(f"mul_c{c}", Op.MUL, [dw, src], shift=int(rng.choice([-3, 0, 1, 7, 14, 31])), act_min=a[0],
               act_max=a[1])
        pixel = b.node(f"px_c{c}", Op.SLICE, [b.node(f"row_c{c}", Op.SLICE, [src], output=False, axis=0, start=1,
                                                     length=1)], output=False, axis=1, start=2, length=1)
        b.node(f"mul_gate_c{c}", Op.MUL, [src, pixel], shift=6, act_min=a[0], act_max=a[1])
        # (3, 5, c) x (3, 5, c)^T: k = c, rows of a times rows of b (qg_dot_1x2_s8 / qg_dot_1x1_s8)
        b.node(f"matmul_c{c}", Op.MATMUL, [src, dw], shift=int(rng.choice([0, 5, 9, 14])), act_min=a[0],
               act_max=a[1])
        int4_cases(b, i, c, src, vec)
        eltwise_cases(b, i, c, src, f"dw3x3_fine_c{c}")
        if c <= 9 or c in (16, 17, 33):  # every tail of the 8 int16 lanes (max) and of two 4-lane vectors (average)
            pool16_cases(b, i, c, src)
        if c <= 9 or c in (16, 17, 33):  # every tail of the 8 int16 lanes (FC) and of the 4 int32 lanes (depthwise)
            int16_cases(b, i, c, src, vec)
    # k < 16: output channels in the lanes; shifts that keep the outputs inside the int8 range (no clamp hides a sum)
    b.weighted("fc_7_21", Op.LINEAR, "v_7", (21, 7), shift=8)
    b.weighted("fc_15_16", Op.LINEAR, "v_15", (16, 15), (0, 127), shift=8)
    b.weighted("conv1x1_c9_18", Op.CONV2D, "x_c9", (18, 1, 1, 9), shift=8, stride=(1, 1), padding=(0, 0, 0, 0))
    # long rows (k = 495: 30 full vectors and a tail), many rows, a KWS-like first layer (1 channel, a window
    # hanging over the padding, stride 2), a strided and dilated conv, a grouped conv, a depthwise stride and multiplier
    b.weighted("fc_495_17", Op.LINEAR, flat, (17, int(np.prod(SHAPE))))
    b.weighted("conv_c1_k3x4_s2", Op.CONV2D, "x_c1", (13, 3, 4, 1), stride=(2, 2), padding=(1, 1, 2, 1))
    b.weighted("conv_c7_k3x2_d2", Op.CONV2D, "x_c7", (6, 3, 2, 7), stride=(1, 2), padding=(2, 1, 2, 1),
               dilation=(1, 2))
    b.weighted("conv_c12_g2", Op.CONV2D, "x_c12", (10, 1, 3, 6), stride=(1, 1), padding=(0, 1, 0, 1), groups=2)
    b.weighted("conv1x1_c7_pad", Op.CONV2D, "x_c7", (9, 1, 1, 7), shift=8, stride=(2, 1), padding=(1, 0, 0, 1))
    b.weighted("dw3x3_c17_s2", Op.DEPTHWISE_CONV2D, "x_c17", (17, 3, 3, 1), stride=(2, 2), padding=(1, 1, 1, 1))
    b.weighted("dw3x3_c5_mult2", Op.DEPTHWISE_CONV2D, "x_c5", (10, 3, 3, 1), **same)
    # one channel over many pixels (PReLU / channel affine: 4 elements a step, not 4 channels of a pixel)
    col = b.node("x_col", Op.RESHAPE, [flat], output=False, shape=(int(np.prod(SHAPE)), 1))
    prelu(b, "prelu_col", col, np.array([-32768]), slope_frac=14, shift=14, act_min=-128, act_max=127)
    prelu(b, "prelu_col_left", col, np.array([-3]), slope_frac=1, shift=-2, act_min=-128, act_max=127)
    channel_affine(b, "caff_col", col, np.array([-32768]), np.array([2**31 - 2**22 - 1]), [22])
    channel_affine(b, "caff_col_fine", col, np.array([-23456]), np.array([-2**20]), [15])
    # int4: a 2-pixel output (one partial block), a padded 1x1 (gathered), grouped + dilated, dilated taps, long rows
    b.weighted("s4_conv3x3_s2", Op.CONV2D, "x", (7, 3, 3, 33), bits=4, stride=(2, 2), padding=(0, 0, 0, 0))
    b.weighted("s4_conv1x1_pad", Op.CONV2D, "x_c9", (6, 1, 1, 9), bits=4, stride=(1, 1), padding=(1, 0, 0, 1))
    b.weighted("s4_conv_g2_d2", Op.CONV2D, "x_c12", (6, 3, 3, 6), bits=4, stride=(1, 1), padding=(2, 1, 2, 1),
               groups=2, dilation=(2, 1))
    b.weighted("s4_conv_c7_k3x2_d2", Op.CONV2D, "x_c7", (5, 3, 2, 7), bits=4, stride=(1, 2), padding=(2, 1, 2, 1),
               dilation=(1, 2))
    b.weighted("s4_fc_495_17", Op.LINEAR, flat, (17, int(np.prod(SHAPE))), bits=4)
    # int16: a long row (8-lane VMLADAVA.S16 + tail) into an int64 accumulator (VMLALDAVA), the depthwise paths the
    # vector body does not take (multiplier 2) and a strided one
    h = b.weighted("w16_fc_495", Op.LINEAR, flat, (29, int(np.prod(SHAPE))), shift=_fine_shift(495, out_max=32767),
                   out16=True, output=False)
    b.weighted("w16_fc_acc64", Op.LINEAR, h, (5, 29), acc64=True)
    b.weighted("w16_fc_acc64_fine", Op.LINEAR, h, (7, 29), shift=_fine_shift(29, x_std=I16_STD), acc64=True)
    h = b.weighted("w16_pw_c5", Op.CONV2D, "x_c5", (5, 1, 1, 5), shift=_fine_shift(5, out_max=32767), out16=True,
                   output=False, stride=(1, 1), padding=(0, 0, 0, 0))
    b.weighted("w16_dw_mult2", Op.DEPTHWISE_CONV2D, h, (10, 3, 3, 1), **same)
    h12 = b.weighted("w16_pw_c12", Op.CONV2D, "x_c12", (12, 1, 1, 12), shift=_fine_shift(12, out_max=32767),
                     out16=True, output=False, stride=(1, 1), padding=(0, 0, 0, 0))
    b.weighted("w16_conv_g2_d2_fine", Op.CONV2D, h12, (10, 3, 2, 6), shift=_fine_shift(36, x_std=I16_STD),
               stride=(1, 1), padding=(2, 1, 2, 1), groups=2, dilation=(2, 2))  # 5 rows a group: 4 + 1
    b.weighted("w16_conv_acc64", Op.CONV2D, h12, (6, 3, 3, 12), shift=_fine_shift(108, x_std=I16_STD), acc64=True,
               **same)
    b.weighted("w16_dw_s2_fine", Op.DEPTHWISE_CONV2D, h, (5, 3, 3, 1), shift=_fine_shift(9, x_std=I16_STD),
               stride=(2, 2), padding=(1, 1, 1, 1))
    return finish(b.g)


AFFINES = ((16384, 3 << 17, 15, 0, 96), (-32768, 0, 14, -128, 127), (21845, -(1 << 29) + 1, 20, -128, 127),
           (12345, 777, -3, -128, 127), (32767, (1 << 29) - 1, 23, -100, 100), (-20000, -5, 12, 0, 127),
           (-32768, 5, -31, -128, 127), (7, -3, 31, -128, 127))  # (mult, bias, shift, act_min, act_max)


def prelu(b: Builder, name: str, src: str, slope: np.ndarray, **attrs) -> str:
    b.g.tensors[f"{name}_slope"] = const(f"{name}_slope", slope, 16, attrs["slope_frac"])
    return b.node(name, Op.PRELU, [src, f"{name}_slope"], alpha=(0.25,), **attrs)


def channel_affine(b: Builder, name: str, src: str, scale: np.ndarray, offset: np.ndarray, shift, act=(-128, 127)):
    c = len(scale)
    b.g.tensors[f"{name}_s"] = const(f"{name}_s", scale, 16, (3,) * c)
    b.g.tensors[f"{name}_o"] = const(f"{name}_o", offset, 32, (6,) * c)
    return b.node(name, Op.CHANNEL_AFFINE, [src, f"{name}_s", f"{name}_o"], shift=[int(v) for v in shift],
                  act_min=act[0], act_max=act[1])


def eltwise_cases(b: Builder, i: int, c: int, src: str, other: str) -> None:
    """sub / maximum / minimum / add over 15 * c elements (every tail of 8 and of 4): even counts with alignment shifts
    >= -7 (the int16-lane path; -7 on both sides reaches |x - y| = 255 * 2^7), odd counts with one below (int32 lanes);
    scalar affine; PReLU and channel affine over c channels (every tail of 4 channels) with extreme slopes, scales,
    offsets and shifts, and fine twins whose shifts keep every value inside int8."""
    rng, a = b.rng, ACTS[i % 3]
    if i % 2 == 0:
        shifts = [(-7, -7), (int(rng.integers(-7, 6)), int(rng.integers(-7, 6))), (-7, 3)][i % 3]
    else:
        shifts = [(-8, 0), (int(rng.integers(-22, -8)), int(rng.integers(-7, 6))), (2, -22)][i % 3]
    for k, op in enumerate((Op.SUB, Op.MAXIMUM, Op.MINIMUM, Op.ADD)):
        x, y = (other, src) if op is Op.MAXIMUM else (src, other)  # add: -128 * 2^8 + a negative b leaves int16
        b.node(f"{op.value}_al_c{c}", op, [x, y], shift_a=shifts[0], shift_b=shifts[1],
               shift=int(rng.choice([-31, -2, 0, 1, 3, 9, 31] if k == i % 3 else range(-min(shifts),
                                                                                        -min(shifts) + 3))),
               act_min=a[0], act_max=a[1])
    mult, bias, shift, lo, hi = AFFINES[i % len(AFFINES)]
    b.node(f"affine_c{c}", Op.AFFINE, [src], scale=1.0, offset=0.0, mult=mult, bias=bias, shift=shift, act_min=lo,
           act_max=hi)
    b.node(f"affine_fine_c{c}", Op.AFFINE, [src], scale=1.0, offset=0.0, mult=int(rng.integers(-32768, 32768)),
           bias=int(rng.integers(-2**14, 2**14)), shift=15, act_min=a[0], act_max=a[1])
    slopes = rng.integers(-32768, 32768, c)
    slopes[:2] = [-32768, 32767][:c]
    frac = int(rng.integers(0, 15))
    prelu(b, f"prelu_c{c}", src, slopes, slope_frac=frac, shift=int(rng.choice(EXTREME_SHIFTS)), act_min=a[0],
          act_max=a[1])
    prelu(b, f"prelu_fine_c{c}", src, slopes, slope_frac=frac, shift=frac if i % 2 else 15,
          act_min=-128, act_max=127)
    scale = rng.integers(-32768, 32768, c)
    scale[0] = -32768
    offset = rng.integers(-2**20, 2**20, c)
    offset[c // 2] = (2**31 - 2**22 - 1) * (1 if i % 2 else -1)
    shift = rng.integers(-3, 24, c)
    shift[rng.random(c) < 0.3] = rng.choice(EXTREME_SHIFTS)
    channel_affine(b, f"caff_c{c}", src, scale, offset, shift, a)
    channel_affine(b, f"caff_fine_c{c}", src, scale, rng.integers(-2**14, 2**14, c), np.full(c, 15))


def pool16_cases(b: Builder, i: int, c: int, src: str) -> None:
    """int16 max / average pooling (qg_wide.c uniform windows, padded and clipped; qg_pool2d_s16.c windows: a
    count_include_pad=False average, adaptive max) on a small-range int16 input (|x| <= 128: each pooled value is
    an int8 model output through an exact copy) and on a full-range one (|x| ~ 2^15: the 64-bit product's high
    word; seen through a rounding shift by 8)."""
    def wide(name: str, x: str, **attrs) -> str:
        name = b.node(name, Op.AFFINE, [x], output=False, scale=1.0, offset=0.0, **attrs)
        b.g.tensors[name] = Tensor(name, b.g.tensors[name].shape, "int16", QFormat(16, 3))
        return name

    def out8(name: str, x: str, shift: int) -> None:
        b.node(name, Op.AFFINE, [x], scale=1.0, offset=0.0, mult=1, bias=0, shift=shift, act_min=-128, act_max=127)

    small = wide(f"w16_small_c{c}", src, mult=1, bias=0, shift=0, act_min=-32768, act_max=32767)
    big = wide(f"w16_big_c{c}", src, mult=-29000 if i % 2 else 32767, bias=777, shift=7, act_min=-32768,
               act_max=32767)
    lo, hi = ((-32768, 32767), (-32768, 32767), (-100, 90))[i % 3]
    for x, tag, shift in ((small, "small", 0), (big, "big", 8)):
        lo, hi = (lo, hi) if tag == "small" or lo == -32768 else (256 * lo, 256 * hi)
        pools = [("max", Op.MAXPOOL2D, dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1, 0, 1))),
                 ("avg3", Op.AVGPOOL2D, dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
                                             avg_mult=avg_multiplier(9), avg_shift=AVG_SHIFT, act_min=lo, act_max=hi)),
                 ("avg_win", Op.AVGPOOL2D, dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
                                                count_pad=(0, 0, 0, 0), avg_shift=AVG_SHIFT, act_min=lo, act_max=hi))]
        if tag == "small":
            pools += [("avg2_pow2", Op.AVGPOOL2D, dict(kernel=(2, 2), stride=(1, 2), padding=(0, 0, 0, 0), avg_mult=1,
                                                       avg_shift=2, act_min=lo, act_max=hi)),
                      ("avg1", Op.AVGPOOL2D, dict(kernel=(1, 1), stride=(2, 2), padding=(0, 0, 0, 0), avg_mult=1,
                                                  avg_shift=0, act_min=lo, act_max=hi)),
                      ("max_adaptive", Op.MAXPOOL2D, dict(adaptive=(2, 3))),
                      # not an average (sum * mult / 2 leaves int32): the kernels' int64 loop, not the Helium one
                      ("avg2_big_mult", Op.AVGPOOL2D, dict(kernel=(2, 2), stride=(1, 1), padding=(0, 0, 0, 0),
                                                           avg_mult=(1 << 30) - 1, avg_shift=1, act_min=lo,
                                                           act_max=hi))]
        for kind, op, attrs in pools:
            name = b.node(f"p16_{kind}_{tag}_c{c}", op, [x], output=False, **attrs)
            b.g.tensors[name] = Tensor(name, b.g.tensors[name].shape, "int16", QFormat(16, 3))
            out8(f"{name}_8", name, shift)


def int4_cases(b: Builder, i: int, c: int, src: str, vec: str) -> None:
    """Packed int4 weights (qg_conv2d_s4.c): FC (VLD2 input, 4 rows per pass, predicated tail) and conv (4-pixel
    blocks of 32-value deinterleaved columns: k = c or 9c covers every k % 32 for the counts; 15 pixels end in a
    3-pixel block) with the extreme shifts, and fine twins."""
    a = ACTS[i % 3]
    same = {"stride": (1, 1), "padding": (1, 1, 1, 1)}
    b.weighted(f"s4_fc_{c}", Op.LINEAR, vec, (i % 8 + 1, c), a, bits=4)
    b.weighted(f"s4_fc_fine_{c}", Op.LINEAR, vec, (i % 8 + 5, c), bits=4, shift=_fine_shift(c, w_std=4.6))
    b.weighted(f"s4_conv1x1_c{c}", Op.CONV2D, src, (i % 8 + 1, 1, 1, c), ACTS[(i + 2) % 3], bits=4, stride=(1, 1),
               padding=(0, 0, 0, 0))
    b.weighted(f"s4_conv3x3_c{c}", Op.CONV2D, src, ((i + 3) % 8 + 1, 3, 3, c), a, bits=4, **same)
    b.weighted(f"s4_conv3x3_fine_c{c}", Op.CONV2D, src, (i % 5 + 1, 3, 3, c), bits=4,
               shift=_fine_shift(9 * c, w_std=4.6), **same)


def int16_cases(b: Builder, i: int, c: int, src: str, vec: str) -> None:
    """int16 activations (qg_wide.c): each op as int8 -> int16, int16 -> int16 and int16 -> int8 in a chain whose end
    is an int8 model output; int16 stages with shifts sized to the int16 range (the chain carries every product),
    the last with the extreme shifts on a quarter of the channels. Depthwise: 4 channels per vector, tail predicated."""
    same = {"stride": (1, 1), "padding": (1, 1, 1, 1)}
    o16 = {"out16": True, "output": False}
    for op, w_of, k_of, kw in ((Op.LINEAR, lambda n, m: (n, m), lambda m: m, {}),
                               (Op.CONV2D, lambda n, m: (n, 3, 3, m), lambda m: 9 * m, same),
                               (Op.DEPTHWISE_CONV2D, lambda n, m: (m, 3, 3, 1), lambda m: 9, same)):
        kind = {Op.LINEAR: "fc", Op.CONV2D: "conv3x3", Op.DEPTHWISE_CONV2D: "dw3x3"}[op]
        x = vec if op is Op.LINEAR else src
        n1, n2 = (i % 8 + 1, (i + 5) % 8 + 9) if op is not Op.DEPTHWISE_CONV2D else (c, c)
        h = b.weighted(f"w16_{kind}_a_c{c}", op, x, w_of(n1, c), shift=_fine_shift(k_of(c), out_max=32767), **o16,
                       **kw)
        h = b.weighted(f"w16_{kind}_b_c{c}", op, h, w_of(n2, n1),
                       shift=_fine_shift(k_of(n1), x_std=I16_STD, out_max=32767), **o16, **kw)
        b.weighted(f"w16_{kind}_c_c{c}", op, h, w_of(n1, n2), ACTS[i % 3], **kw)  # extreme and random shifts
        b.weighted(f"w16_{kind}_fine_c{c}", op, h, w_of(n1, n2), shift=_fine_shift(k_of(n2), x_std=I16_STD), **kw)


def test_mve_kernels_bit_exact_on_cortex_m55(tmp_path):
    rng = np.random.default_rng(55)
    graph = mve_graph(rng)
    out = tmp_path / "model"
    write_atomic(render(graph, "mv", ["test"]), out)
    x = edge_inputs(rng, SHAPE, n_random=3)
    expect = reference_outputs(graph, run_int(graph, x))
    sources = [out / "mv_model.c", out / "mv_weights.c", *sorted((out / "kernels").glob("*.c"))]
    # the flags `qgen firmware` builds a model with (codegen/deploy.py): conversion warnings are errors
    elf = build_elf(BOARD, sources, [out, out / "kernels"], "mv", tmp_path / "build",
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    result = run_qemu(BOARD, elf, x.reshape(len(x), -1), expect.shape[1], count_instructions=False)
    assert_outputs_equal(result.outputs, expect, graph, "cortex-m55")
