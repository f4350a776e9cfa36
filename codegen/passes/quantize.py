"""Quantise the calibrated float IR to power-of-two Q-format integers.

- Activations: int8 (int16 where assign_precision raised a layer: weights stay int8, activations
  get 8 more bits of resolution), one frac per tensor from its calibrated range graph.ranges[t] (fixed.frac_for_range:
  the largest frac at which that range does not saturate). The range is the effective maximum chosen
  by the calibration method (calibrate.py: min/max, percentile, MSE; QAT pins it to 127 * 2^-frac).
  Pooling and reshape keep their input's format (max/avg of values cannot exceed the input range), so
  they need no requantisation.
- Weights: int8, one frac per output channel (per-channel; `attrs["weight_per_tensor"]` forces one
  frac for the tensor), bias: int32 at frac (f_in + f_w[c]); chosen by weight_formats (also used by QAT).
  `attrs["weight_bits"] = 4` (assign_precision: --weights int4, --precision LAYER=w4) makes them int4:
  q in [-8, 7], frac = frac_for_range(max|w[c]|, 4), stored packed (weight_storage "int4"); int8 activations only.
- Each conv/linear output channel requantises its int32 accumulator by shift[c] = f_in + f_w[c] - f_out
  (fixed.requantize), and the fused activation becomes integer bounds act_min/act_max.
- The int32 accumulator bound sum|w_q| * 128 + |b_q| is proven <= 2**31 - 1 for every channel; where
  it is not, that channel's weight frac is lowered, and a layer that cannot be made safe is refused.
  With int16 input (|x| <= 2**15) the layer gets an int64 accumulator (`acc64`) instead of coarser
  weights when the int32 bound fails.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..fixed import AVG_SHIFT, MAX_SHIFT, QFormat, avg_multiplier, frac_for_range
from ..fixed import quantize as quantize_array
from ..ir import Graph, Node
from ..ops import SPEC
from .assign_precision import check_bits, tensor_bits

INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1
ACT_BITS = 8  # the default; assign_precision may raise a layer's output to 16
MAX_ACT_FRAC = 120  # 2**+-120 is an exact float32 (an input range below 1e-36 gets the 2**-120 step)
ADD_ALIGN_MAX = 22  # |int8 << 22| * 2 < 2**31: the aligned add cannot overflow


def run(graph: Graph) -> Graph:
    if not graph.ranges:
        raise UserError("quantize needs calibration ranges: run calibration with sample data first")
    bits = tensor_bits(graph)
    check_bits(graph, bits)

    def act(name: str, frac: int | None = None) -> QFormat:
        # activation fracs stay within float32's exponent range so the C float helpers can scale exactly
        if frac is None:
            frac = frac_for_range(graph.ranges[name], bits[name])
        return QFormat(bits[name], max(-MAX_ACT_FRAC, min(int(frac), MAX_ACT_FRAC)))

    x = graph.tensors[graph.inputs[0]]
    _set_act(x, act(x.name))
    for node in graph.nodes:
        rule = SPEC[node.op].quantize  # the op's rule: codegen/ops/<family>.py
        if rule is None:
            raise UserError(f"{node.where()}: cannot quantise op {node.op.value} (fold or lower it first)")
        rule(graph, node, act)
    return graph


SOFTMAX_FRAC = 7  # softmax output s8.f7: probabilities in [0, 127/128]
EXP_TABLE_FRAC = 14  # exp table entries are Q14 (16384 = 1.0), int16
LOG_SOFTMAX_FRAC = 4  # log_softmax output s8.f4: log-probabilities in [-8, 0], saturated at -128 (-8.0)
LUT_OUTPUT_FRAC = {"sigmoid": 7, "tanh": 7, "hardsigmoid": 7}  # bounded functions: fixed output format


def softmax_exp_table(fin: int) -> np.ndarray:
    """exp(-k * 2^-fin) in Q14 for k = 0..255 (the difference max - x of two int8 values)."""
    k = np.arange(256, dtype=np.float64)
    return quantize_array(np.exp(-k * 2.0**-fin), QFormat(16, EXP_TABLE_FRAC))


def lut_table(attrs: dict, fin: int, fout: int) -> np.ndarray:
    """table[i] = f((i - 128) * 2^-fin) quantised to s8.f<fout>: the op's whole integer semantics."""
    from ..reference import lut_function

    x = (np.arange(256, dtype=np.float64) - 128) * 2.0**-fin
    return quantize_array(lut_function(attrs)(x), QFormat(8, fout))


def _add_table(graph: Graph, node: Node, role: str, data: np.ndarray, bits: int, frac: int) -> None:
    from ..ir import Tensor

    if len(node.inputs) > 1:  # re-quantising: replace the previous table
        del graph.tensors[node.inputs[1]]
        node.inputs = node.inputs[:1]
    name = graph.fresh_name(f"{node.outputs[0]}_{role}")
    dtype = {8: "int8", 16: "int16"}[bits]
    graph.tensors[name] = Tensor(name, data.shape, dtype, QFormat(bits, frac), data.astype(dtype))
    node.inputs.append(name)


def _set_act(t, fmt: QFormat) -> None:
    t.qformat, t.dtype = fmt, {8: "int8", 16: "int16"}[fmt.bits]


def avg_params(count: int) -> dict[str, int]:
    """Average = sum * avg_mult >> avg_shift (rounded). Exact for power-of-two windows."""
    if count & (count - 1) == 0:
        return {"avg_mult": 1, "avg_shift": count.bit_length() - 1}
    return {"avg_mult": avg_multiplier(count), "avg_shift": AVG_SHIFT}  # codegen/ops/pool.py: the average rule


def _act_bounds(act: tuple, fmt: QFormat) -> tuple[int, int]:
    lo, hi = act
    qlo = fmt.min_int if lo is None else int(quantize_array(np.array(lo), fmt))
    qhi = fmt.max_int if hi is None else int(quantize_array(np.array(hi), fmt))
    return qlo, qhi


def weight_formats(w: np.ndarray, b: np.ndarray, fin: int, fout: int, per_tensor: bool = False,
                   where: str = "layer", in_bits: int = 8,
                   bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The weight/bias quantisation of one conv/linear: (fw, w_q, b_q, acc_bound) per output channel.

    acc_bound = sum|w_q| * 2**(in_bits-1) + |b_q|. For int8 input it is kept <= 2**31 - 1 by lowering
    weight fracs; for int16 input a larger bound is allowed (the caller switches to int64).
    bits: weight width, 8 or 4 (int4: q in [-8, 7], the frac per channel of least squared error, _int4_fracs).
    The int4 DSP kernels (qg_conv2d_s4.c) accumulate 16 * sum(w_q * x) before adding the bias, so for int4
    16 * sum|w_q| * 2**(in_bits-1) is bounded too.

    The one place that chooses weight fracs (codegen/qat.py calls it on the live float weights, so
    QAT's fake quantisation and the compiled integer model use identical formats).
    """
    cout = w.shape[0]
    wmax = np.abs(w.reshape(cout, -1)).max(axis=1) if w.size else np.zeros(cout)
    fw = np.array([frac_for_range(float(m), bits) for m in wmax])
    if per_tensor:  # one format for the whole tensor (e.g. shared codebooks)
        fw = np.full(cout, fw.min())
    elif bits == 4 and w.size:
        fw = _int4_fracs(w.reshape(cout, -1), fw)
    fw = np.minimum(fw, MAX_SHIFT + fout - fin)  # requantise shift <= 31
    for c in range(cout):  # bias must fit int32 with headroom for the accumulator
        if b[c] != 0:
            fw[c] = min(fw[c], math.floor(math.log2(2**30 / abs(b[c]))) - fin)
    in_max = 1 << (in_bits - 1)  # |int8| or |int16| worst case
    acc_max = INT32_MAX if in_bits == 8 else INT64_MAX
    for _ in range(64):
        w_q = quantize_array(w, QFormat(bits, tuple(int(f) for f in fw)))
        b_q = quantize_array(b, QFormat(32, tuple(int(fin + f) for f in fw)))
        w_sum = np.abs(w_q.reshape(cout, -1)).sum(axis=1).astype(np.int64) * in_max
        bound = w_sum + np.abs(b_q)
        bad = (bound > acc_max) | ((16 * w_sum > acc_max) if bits == 4 else False)
        if not bad.any():
            break
        fw = np.where(bad, fw - 1, fw)
    else:
        raise UserError(f"{where}: the int32 accumulator can overflow (worst case "
                        f"{int(bound.max())} > 2^31-1) even with coarser weights; reduce the layer's fan-in.")
    shift = fin + fw - fout
    if np.any(shift < -MAX_SHIFT):
        raise UserError(f"{where}: needs a requantisation shift of {int(shift.min())} (weights too large "
                        f"for Q-format: max |w| = {float(wmax.max()):.3g}); rescale the layer.")
    return fw, w_q, b_q, bound


def _int4_fracs(w: np.ndarray, fw: np.ndarray) -> np.ndarray:
    """Per output channel (row of w), the int4 frac with the least squared weight error: the no-saturation frac
    fw (frac_for_range) or fw + 1, which halves the step and saturates the few largest weights at 7 or -8. With 16
    levels the step dominates the error: on the tones task of bench/quant.py int4 PTQ accuracy rose 1.0-2.4 points.
    (int8 keeps frac_for_range: its step is 16 times finer.)"""
    out = fw.copy()
    for c in range(w.shape[0]):
        errs = [float(np.square(quantize_array(w[c], QFormat(4, int(f))) * 2.0**-f - w[c]).sum())
                for f in (fw[c], fw[c] + 1)]
        out[c] = fw[c] + int(errs[1] < errs[0])
    return out


def _quantize_weighted(graph: Graph, node: Node, x_fmt: QFormat, out_fmt: QFormat) -> None:
    w_t, b_t = graph.tensors[node.inputs[1]], graph.tensors[node.inputs[2]]
    fin, fout = x_fmt.frac, out_fmt.frac
    bits = int(node.attrs.get("weight_bits", 8))
    if bits == 4 and (x_fmt.bits != 8 or out_fmt.bits != 8):
        raise UserError(f"{node.where()} has int4 weights, whose kernels take int8 activations only, but its "
                        "input or output is int16; keep it int8 (--precision LAYER=w4 with int8 neighbours) "
                        "or give it int8 weights")
    fw, w_q, b_q, bound = weight_formats(w_t.data, b_t.data, fin, fout,
                                         bool(node.attrs.get("weight_per_tensor")), node.where(), x_fmt.bits, bits)
    shift = fin + fw - fout
    w_t.data, w_t.dtype, w_t.qformat = w_q.astype(np.int8), "int8", QFormat(bits, tuple(int(f) for f in fw))
    b_t.data, b_t.dtype, b_t.qformat = b_q.astype(np.int32), "int32", QFormat(32, tuple(int(fin + f) for f in fw))
    lo, hi = _act_bounds(node.attrs.get("act", (None, None)), out_fmt)
    node.attrs.update(shift=[int(s) for s in shift], act_min=lo, act_max=hi, acc_bound=int(bound.max()))
    if bound.max() > INT32_MAX:
        node.attrs["acc64"] = True  # only reachable with int16 input (weight_formats)
    else:
        node.attrs.pop("acc64", None)


def _quantize_add(graph: Graph, node: Node, out_fmt: QFormat) -> None:
    fout = out_fmt.frac
    fa, fb = (graph.tensors[i].qformat.frac for i in node.inputs)
    common = min(max(fa, fb), min(fa, fb) + ADD_ALIGN_MAX)
    common = max(min(common, fout + MAX_SHIFT), fout - MAX_SHIFT)
    lo, hi = _act_bounds(node.attrs.get("act", (None, None)), out_fmt)
    # a right shift of an int8 value by 8 or more gives 0 or -1 exactly as by 31: cap it for the C shift
    node.attrs.update(shift_a=min(fa - common, MAX_SHIFT), shift_b=min(fb - common, MAX_SHIFT),
                      shift=common - fout, act_min=lo, act_max=hi)
