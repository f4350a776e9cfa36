"""Record the float range of every activation on calibration data (runs the float interpreter).

Stored as `graph.ranges[tensor] = max |x|` for quantize to read.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Graph
from ..reference import run_float, to_qgen_layout


def run(graph: Graph, calib: np.ndarray, batch: int = 256) -> Graph:
    x = np.asarray(calib)
    expect = graph.tensors[graph.inputs[0]].shape
    if x.dtype.kind not in "fiu":
        raise UserError(f"calibration data has dtype {x.dtype}; give float samples")
    if x.ndim >= 1 and x.shape[0] == 0:
        raise UserError("calibration set is empty; give at least one sample (more is better: ~100+)")
    layout = graph.io_layout.get(graph.inputs[0], "nchw" if len(expect) == 3 else "nf")
    torch_shape = {"nchw": lambda: [expect[2], expect[0], expect[1]], "ncl": lambda: [expect[2], expect[1]],
                   "nf": lambda: list(expect)}[layout]()
    if list(x.shape[1:]) != torch_shape:
        got = list(np.asarray(calib).shape)
        raise UserError(f"calibration data has shape {got}; the model input is {torch_shape} per sample, "
                        f"so give an array of shape [N, {', '.join(map(str, torch_shape))}]")
    x = to_qgen_layout(graph, x.astype(np.float64))
    if not np.all(np.isfinite(x)):
        raise UserError("calibration data contains NaN or Inf")
    ranges: dict[str, float] = {}
    for start in range(0, x.shape[0], batch):
        values = run_float(graph, x[start:start + batch])
        for name, v in values.items():
            ranges[name] = max(ranges.get(name, 0.0), float(np.max(np.abs(v))) if v.size else 0.0)
    graph.ranges = ranges
    return graph
