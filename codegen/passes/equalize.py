"""Cross-layer equalisation by powers of two (float IR, before calibration).

For a producer P (conv / depthwise / linear) whose output reaches a single consumer C (conv / depthwise /
linear) only through ops that commute with a positive per-channel scale (fused or plain ReLU with
lo in {None, 0} and no upper bound, max/avg pooling, zero pad, flatten), channel c of P's output is
multiplied by t_c = 2^k_c (P's weights and bias of channel c times t_c) and C's weights reading channel c
are divided by t_c. The float function is unchanged (exactly: scaling by 2^k is exact in floating point),
and so are P's per-channel weight formats (a power of two moves the frac, not the integers).
What changes is the shared activation format between P and C and the precision of C's weights:

- C depthwise / per output channel only: C's formats absorb t_c exactly, so every channel is scaled
  up to the tensor's largest channel range (k_c = floor(log2(R / r_c))): small channels stop wasting
  the int8 activation range.
- C conv / linear: dividing column c of C coarsens it relative to its row's format. Balancing the two
  noise terms (activation step seen through C's weights vs C's weight step seen through x_c) gives
  t_c ~ sqrt(w_c / r_c) (the DFQ rule, with C's column range w_c taken relative to its row maximum);
  k_c is that rounded, minus the median so the tensor's range stays where it was.

r_c is channel c's max |x| on calibration data (float interpreter) when given, else a proxy from P's
weights (sum |W[c]| + |b[c]|, i.e. the range for inputs bounded by 1). k_c is clipped to +-MAX_K.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Op
from ..ops import Trait, has, with_trait
from ..reference import run_float
from . import calibrate

WEIGHTED = with_trait(Trait.WEIGHTED)
# scale-commuting: keeps each channel apart (a channel reduce mixes them) or flattens (checked below)
PASS_THROUGH = tuple(op for op in with_trait(Trait.KEEPS_FORMAT) if has(op, Trait.CHANNELWISE) or op is Op.RESHAPE)
MAX_K = 8
CALIB_SAMPLES = 256


def run(graph: Graph, calib: np.ndarray | None = None) -> Graph:
    values = None
    if calib is not None:
        x = calibrate._check_and_convert(graph, np.asarray(calib)[:CALIB_SAMPLES])
        values = run_float(graph, x)
    for producer in [n for n in graph.nodes if n.op in WEIGHTED]:
        consumer = _single_path_consumer(graph, producer)
        if consumer is None:
            continue
        w1 = graph.tensors[producer.inputs[1]].data
        b1 = graph.tensors[producer.inputs[2]].data
        channels = w1.shape[0]
        if values is not None:
            r = np.abs(values[producer.outputs[0]]).reshape(-1, channels).max(axis=0)
        else:
            r = np.abs(w1.reshape(channels, -1)).sum(axis=1) + np.abs(b1)
        k = _exponents(graph, consumer, r, channels)
        if not np.any(k):
            continue
        t = np.exp2(k.astype(np.float64))
        graph.tensors[producer.inputs[1]].data = w1 * t.reshape((-1,) + (1,) * (w1.ndim - 1))
        graph.tensors[producer.inputs[2]].data = b1 * t
        w2_t = graph.tensors[consumer.inputs[1]]
        w2_t.data = w2_t.data / _consumer_scale(consumer, w2_t.data, t)
    return graph


def _single_path_consumer(graph: Graph, producer: Node) -> Node | None:
    """The weighted node P's output reaches through scale-commuting single-use ops, if any."""
    lo, hi = producer.attrs.get("act", (None, None))
    if lo not in (None, 0, 0.0) or hi is not None:
        return None
    tensor = producer.outputs[0]
    while True:
        users = graph.consumers(tensor)
        if len(users) != 1 or tensor in graph.outputs:
            return None
        user = users[0]
        if user.op in WEIGHTED:  # not a grouped conv: its weight columns read channels by group
            return user if user.inputs[0] == tensor and user.attrs.get("groups", 1) == 1 else None
        if user.op not in PASS_THROUGH:
            return None
        if user.op is Op.RELU and (user.attrs["lo"] not in (None, 0, 0.0) or user.attrs["hi"] is not None):
            return None
        if user.op is Op.RESHAPE and len(graph.tensors[user.inputs[0]].shape) == 3 \
                and len(user.attrs["shape"]) != 1:
            return None  # only flatten (H, W, C) -> (H*W*C,) keeps channel = index % C
        tensor = user.outputs[0]


def _channel_of_input(consumer: Node, w: np.ndarray, channels: int) -> np.ndarray:
    """For each input index of the consumer's weight (last axis; axis 0 for depthwise), its channel."""
    if consumer.op is Op.DEPTHWISE_CONV2D:
        return np.arange(w.shape[0]) // (w.shape[0] // channels)
    return np.arange(w.shape[-1]) % channels


def _consumer_scale(consumer: Node, w: np.ndarray, t: np.ndarray) -> np.ndarray:
    """t broadcast onto the consumer's weight: per output channel (depthwise) or per input column."""
    channel = _channel_of_input(consumer, w, t.shape[0])
    if consumer.op is Op.DEPTHWISE_CONV2D:
        return t[channel].reshape((-1,) + (1,) * (w.ndim - 1))
    return t[channel]


def _exponents(graph: Graph, consumer: Node, r: np.ndarray, channels: int) -> np.ndarray:
    alive = r > 0
    if not alive.any():
        return np.zeros(channels, dtype=np.int64)
    w2 = graph.tensors[consumer.inputs[1]].data
    if consumer.op is Op.DEPTHWISE_CONV2D:
        k = np.floor(np.log2(r.max() / np.where(alive, r, r.max())))
        return np.clip(np.where(alive, k, 0), 0, MAX_K).astype(np.int64)
    if w2.ndim == 4:  # conv2d, conv_transpose2d: (Cout, KH, KW, Cin)
        rows = np.abs(w2).reshape(w2.shape[0], -1, w2.shape[-1])  # (Cout, KH*KW, Cin)
        rel = (rows / np.maximum(rows.max(axis=(1, 2), keepdims=True), 1e-300)).max(axis=(0, 1))
    else:  # linear: columns may be a flattened (H, W, C) input, channel = column % C
        rows = np.abs(w2)
        rel_col = (rows / np.maximum(rows.max(axis=1, keepdims=True), 1e-300)).max(axis=0)
        rel = np.zeros(channels)
        np.maximum.at(rel, _channel_of_input(consumer, w2, channels), rel_col)
    usable = alive & (rel > 0)
    if not usable.any():
        return np.zeros(channels, dtype=np.int64)
    e = 0.5 * np.log2(np.where(usable, rel, 1.0) / np.where(usable, r, 1.0))
    k = np.round(e - np.median(e[usable]))
    return np.clip(np.where(usable, k, 0), -MAX_K, MAX_K).astype(np.int64)
