"""NumPy interpreters over the IR.

`run_int` is THE SPEC: it executes the quantised IR with the exact integer arithmetic the C kernels
must reproduce (codegen/fixed.py rules). `run_float` executes the float IR (before quantisation) and
is used for calibration and for the float side of accuracy/error reports.

Both take a batch: x has shape (N, *input_shape) and every intermediate keeps the leading N.
"""
from __future__ import annotations

import numpy as np

from .fixed import quantize
from .ir import Graph
from .ops import SPEC
from .ops.eltwise import lut_function  # noqa: F401 (re-exported: the float function behind a LUT)
from .ops.window import conv2d_acc, depthwise_acc, pad_hw, pool_windows, windows  # noqa: F401 (re-exported)

# Each op's float and integer rule is in its spec (codegen/ops/<family>.py: ref_float, ref_int); the two
# walkers below only feed them the activation inputs in order.


def run_float(g: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Execute the float IR on a batch; returns every activation tensor by name."""
    values = {g.inputs[0]: np.asarray(x, dtype=np.float64)}
    for n in g.nodes:
        xs = [values[t] for t in n.inputs if not g.tensors[t].is_const]
        values[n.outputs[0]] = _batch(SPEC[n.op].ref_float(g, n, xs), xs, len(x))
    return values


def run_int(g: Graph, x_q: np.ndarray) -> dict[str, np.ndarray]:
    """Execute the quantised IR on integer input (N, *input_shape); every activation by name (int64)."""
    x_q = np.asarray(x_q)
    if not np.issubdtype(x_q.dtype, np.integer):
        raise TypeError(f"run_int takes integer input, got {x_q.dtype}; use quantize_input first")
    values = {g.inputs[0]: x_q.astype(np.int64)}
    for n in g.nodes:
        xs = [values[t] for t in n.inputs if not g.tensors[t].is_const]
        rule = SPEC[n.op].ref_int
        if rule is None:
            raise KeyError(f"{n.where()}: {n.op.value} has no integer semantics (fold it before quantising)")
        values[n.outputs[0]] = _batch(rule(g, n, xs).astype(np.int64), xs, len(x_q))
    return values


def _batch(out: np.ndarray, xs: list, n: int) -> np.ndarray:
    """A node without activation inputs (const) gives batch 1: repeated for the batch."""
    return out if xs else np.repeat(out, n, axis=0)


def to_qgen_layout(g: Graph, x: np.ndarray) -> np.ndarray:
    """Input batch in PyTorch layout -> qgen layout: (N,C,H,W) -> (N,H,W,C), (N,C,L) -> (N,1,L,C); with the
    input's io_layout 'nlc' (a time-major sequence), (N,L,C) -> (N,1,L,C)."""
    x = np.asarray(x)
    if x.ndim == 3 and g is not None and g.io_layout.get(g.inputs[0]) == "nlc":
        return x[:, None]
    if x.ndim == 4:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 3:
        return x.transpose(0, 2, 1)[:, None, :, :]
    return x


def quantize_input(g: Graph, x_torch: np.ndarray) -> np.ndarray:
    """Float input in PyTorch layout -> the model's input type (int8, or int16 with `input=int16`) in
    qgen layout, with the rounding rule (fixed.quantize)."""
    x = to_qgen_layout(g, np.asarray(x_torch, dtype=np.float32))
    inp = g.tensors[g.inputs[0]]
    return quantize(x, inp.qformat).astype(inp.dtype)


def to_torch_layout(x: np.ndarray, layout: str | None = None) -> np.ndarray:
    """qgen layout -> PyTorch layout: (N,H,W,C) -> (N,C,H,W); with layout 'ncl', (N,1,L,C) -> (N,C,L); with
    'nlc', (N,1,L,C) -> (N,L,C)."""
    if x.ndim == 4 and layout == "nlc":
        return x[:, 0]
    if x.ndim == 4 and layout == "ncl":
        return x[:, 0].transpose(0, 2, 1)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def torch_sample_shape(g: Graph, name: str) -> tuple[int, ...]:
    """One sample's PyTorch shape of a model input or output: (C, H, W), (C, L), (L, C) ('nlc') or (F,)."""
    shape = g.tensors[name].shape
    layout = g.io_layout.get(name, "nchw" if len(shape) == 3 else "nf")
    if layout == "nchw":
        return (shape[2], shape[0], shape[1])
    if layout == "ncl":
        return (shape[2], shape[1])
    if layout == "nlc":
        return (shape[1], shape[2])
    return tuple(shape)


def boundary_hwc(g: Graph, name: str) -> tuple[int, int, int]:
    """(h, w, c) for the C / MicroPython boundary helpers that convert PyTorch's CHW floats to qgen's HWC: an
    'nlc' sequence (and a vector) lies in PyTorch's order already, (1, 1, size) makes the conversion a copy."""
    shape = g.tensors[name].shape
    if len(shape) == 3 and g.io_layout.get(name) != "nlc":
        return tuple(int(s) for s in shape)  # type: ignore[return-value]
    return (1, 1, int(np.prod(shape)))
