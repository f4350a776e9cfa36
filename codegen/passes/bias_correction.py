"""Bias correction: remove the mean error quantisation adds to each conv/linear output channel.

Runs on the quantised graph (after quantize). For every conv / depthwise / linear node, in graph order,
on calibration data:
    e[c] = mean over samples and positions of  (W_q x_q + b_q) * 2^-(f_in + f_w[c])  -  (W x + b)[c]
where x_q is the node's int8 input as the integer reference computes it (so errors from earlier layers,
already corrected, are included) and x the float input from the float graph. The int32 bias becomes
b_q[c] - round(e[c] * 2^(f_in + f_w[c])). The error is measured before the fused activation clamp.
A channel whose corrected bias would break the proven int32 accumulator bound keeps its bias.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op
from ..ops import Trait, with_trait
from ..reference import conv2d_acc, depthwise_acc, quantize_input, run_float, run_int
from . import calibrate
from .quantize import INT32_MAX

WEIGHTED = with_trait(Trait.WEIGHTED)
MAX_SAMPLES = 512


def run(graph: Graph, float_graph: Graph, calib: np.ndarray, max_samples: int = MAX_SAMPLES) -> Graph:
    """graph: quantised; float_graph: the calibrated float graph it came from (same tensor names);
    calib: float samples in PyTorch layout (the calibration set)."""
    x = np.asarray(calib)[:max_samples]
    x_float = calibrate._check_and_convert(float_graph, x)
    x_q = quantize_input(graph, x)
    fvals = run_float(float_graph, x_float)
    for node in graph.nodes:
        if node.op not in WEIGHTED:
            continue
        ivals = run_int(graph, x_q)  # after the corrections of earlier layers
        _correct(graph, float_graph, node, ivals[node.inputs[0]], fvals[node.inputs[0]])
    return graph


def _sums(node: Node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if node.op is Op.LINEAR:
        return x.astype(np.float64) @ w.T.astype(np.float64)
    if node.op is Op.CONV_TRANSPOSE2D:
        from ..ops.upsample import conv_transpose_acc, dilation, groups

        return conv_transpose_acc(x, w, node.attrs["stride"], node.attrs["crop"], groups(node), dilation(node))
    from ..ops.conv import dilation, groups

    if node.op is Op.CONV2D:
        return conv2d_acc(x, w, node.attrs["stride"], node.attrs["padding"], dilation(node), groups(node))
    return depthwise_acc(x, w, node.attrs["stride"], node.attrs["padding"], dilation(node))


def _correct(graph: Graph, float_graph: Graph, node: Node, x_int: np.ndarray, x_float: np.ndarray) -> None:
    w_t, b_t = graph.tensors[node.inputs[1]], graph.tensors[node.inputs[2]]
    fin = graph.tensors[node.inputs[0]].qformat.frac
    scale = np.exp2((fin + w_t.qformat.frac_array()).astype(np.float64))  # per output channel
    acc_q = (_sums(node, x_int, w_t.data) + b_t.data.astype(np.float64)) / scale
    acc_f = _sums(node, x_float, float_graph.tensors[node.inputs[1]].data) + float_graph.tensors[node.inputs[2]].data
    err = (acc_q - acc_f).reshape(-1, acc_q.shape[-1]).mean(axis=0)
    delta = np.floor(err * scale + 0.5).astype(np.int64)
    b_new = b_t.data.astype(np.int64) - delta
    w_sum = np.abs(w_t.data.astype(np.int64).reshape(w_t.shape[0], -1)).sum(axis=1) * 128
    b_new = np.where(w_sum + np.abs(b_new) <= INT32_MAX, b_new, b_t.data.astype(np.int64))
    b_t.data = b_new.astype(np.int32)
    node.attrs["acc_bound"] = int((w_sum + np.abs(b_new)).max())
