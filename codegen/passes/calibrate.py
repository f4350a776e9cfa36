"""Record the range every activation's Q-format must cover, from calibration data (float interpreter).

Stored as `graph.ranges[tensor]` = the *effective maximum* |x| for that tensor; quantize.py maps it to
a frac with fixed.frac_for_range (the one place ranges become formats). The method chooses it:

- "minmax" (default): the largest |x| seen. No calibration value saturates.
- "percentile": the `percentile`-th percentile of |x| (e.g. 99.99): rare outliers saturate, the bulk of
  the values gets finer steps. Falls back to the maximum when the percentile is 0 (a mostly-zero tensor).
- "mse": the frac minimising the total squared error sum (x - dequant(quant(x)))^2 over the calibration
  values, rounding and saturation included (int8, the exact fixed.quantize rule). Candidates run from the
  min/max frac (no saturation) to 8 bits finer; ties go to the coarser frac. Stored as the effective
  max 127 * 2^-frac, which frac_for_range maps back to exactly that frac.
- "kl": the frac whose int8 grid loses the least information, as TensorRT's entropy calibration: the
  Kullback-Leibler divergence between the histogram of |x| below the format's limit with the clipped
  values counted in its last bin, and the in-range histogram merged into the format's 128 levels and
  spread back over each level's occupied bins (so clipping costs divergence). Same candidates and tie
  rule as "mse".

percentile/mse work on a sample of each tensor's values: every value when a tensor has at most
SAMPLE_SIZE values over the calibration set, else a seeded uniform random sample of about that many
(deterministic: same data, same formats). The exact maximum is always kept.

Tensors that assign_precision made int16 always get their min/max range: with 256 times finer steps,
clipping outliers buys nothing and costs saturation.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..fixed import QFormat, dequantize, frac_for_range, quantize
from ..ir import Graph
from ..reference import run_float, to_qgen_layout
from .assign_precision import tensor_bits

METHODS = ("minmax", "percentile", "mse", "kl")
KL_BINS = 1 << 15  # histogram bins over [0, max|x|]: >= 128 bins below the finest candidate's limit
SAMPLE_SIZE = 1 << 18
MSE_FRAC_SEARCH = 8  # how many bits finer than min/max the MSE search may go
ACT_BITS = 8


def run(graph: Graph, calib: np.ndarray, batch: int = 256, method: str = "minmax",
        percentile: float = 99.99) -> Graph:
    if method not in METHODS:
        raise UserError(f"calibration method '{method}' is not known; use one of {', '.join(METHODS)}")
    if method == "percentile" and not 0.0 < percentile <= 100.0:
        raise UserError(f"percentile {percentile} is outside (0, 100]; typical values are 99.9 to 99.999")
    x = _check_and_convert(graph, calib)
    n = x.shape[0]
    rng = np.random.default_rng(0)
    maxima: dict[str, float] = {}
    samples: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        values = run_float(graph, x[start:start + batch])
        for name, v in values.items():
            if v.size and not np.all(np.isfinite(v)):
                node = graph.producer(name)
                where = node.where() if node is not None else f"input %{name}"
                raise UserError(f"{where}: the float model produces NaN or Inf on the calibration data "
                                f"(tensor %{name}); check the model's weights and the input scaling")
            maxima[name] = max(maxima.get(name, 0.0), float(np.max(np.abs(v))) if v.size else 0.0)
            if method != "minmax" and v.size:
                samples.setdefault(name, []).append(_subsample(v.ravel(), n * v[0].size, rng))
    if method == "minmax":
        graph.ranges = maxima
        return graph
    ranges: dict[str, float] = {}
    wide = {name for name, b in tensor_bits(graph).items() if b == 16}
    for name, top in maxima.items():
        if name in wide:
            ranges[name] = top
            continue
        values = np.concatenate(samples[name]) if name in samples else np.zeros(0)
        ranges[name] = effective_max(values, top, method, percentile)
    graph.ranges = ranges
    return graph


def effective_max(values: np.ndarray, top: float, method: str, percentile: float = 99.99) -> float:
    """The range to give frac_for_range for one tensor's calibration values (top = exact max |x|)."""
    if method == "minmax" or values.size == 0 or top == 0.0:
        return top
    if method == "percentile":
        p = float(np.percentile(np.abs(values), percentile))
        return p if p > 0.0 else top
    if method == "kl":
        return 127.0 * 2.0 ** -kl_frac(values, top)
    return 127.0 * 2.0 ** -mse_frac(values, top)


def kl_frac(values: np.ndarray, top: float, bits: int = ACT_BITS) -> int:
    """The frac whose quantisation grid keeps the |x| histogram closest in KL divergence (see module doc)."""
    base = frac_for_range(top, bits)
    levels = (1 << (bits - 1)) - 1
    width = top / KL_BINS
    hist = np.histogram(np.abs(values), bins=KL_BINS, range=(0.0, top))[0].astype(np.float64)
    centers = (np.arange(KL_BINS) + 0.5) * width
    best, best_kl = base, np.inf
    for frac in range(base, base + MSE_FRAC_SEARCH + 1):
        step = 2.0 ** -frac
        n = min(KL_BINS, max(1, int(np.ceil((levels + 0.5) * step / width))))  # bins below the limit
        inside = hist[:n]
        p = inside.copy()
        p[-1] += hist[n:].sum()  # the reference keeps the clipped values (on the last bin) ...
        group = np.minimum(np.floor(centers[:n] / step + 0.5), levels).astype(np.int64)
        mass = np.bincount(group, weights=inside, minlength=levels + 1)  # ... the quantised one loses them
        occupied = np.bincount(group, weights=(inside > 0).astype(np.float64), minlength=levels + 1)
        q = np.where(inside > 0, mass[group] / np.maximum(occupied[group], 1.0), 0.0)
        q[-1] = max(q[-1], 1e-12 * p.sum())  # clipped mass with no in-range partner: a large, finite KL
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log((p[nz] / p.sum()) / (q[nz] / q.sum()))) / p.sum())
        if kl < best_kl - 1e-12:  # strict: ties keep the coarser (less saturating) frac
            best, best_kl = frac, kl
    return best


def mse_frac(values: np.ndarray, top: float, bits: int = ACT_BITS) -> int:
    """The frac with the least squared quantisation error (rounding + saturation) over `values`."""
    base = frac_for_range(top, bits)
    best, best_err = base, np.inf
    for frac in range(base, base + MSE_FRAC_SEARCH + 1):
        fmt = QFormat(bits, frac)
        err = float(np.sum(np.square(values - dequantize(quantize(values, fmt), fmt))))
        if err < best_err:  # strict: ties keep the coarser (less saturating) frac
            best, best_err = frac, err
    return best


def _subsample(v: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """About SAMPLE_SIZE * len(v) / total values of v, uniformly (all of them when total is small)."""
    if total <= SAMPLE_SIZE:
        return v.astype(np.float64, copy=True)
    k = max(1, round(SAMPLE_SIZE * v.size / total))
    return v[rng.choice(v.size, size=min(k, v.size), replace=False)].astype(np.float64)


def _check_and_convert(graph: Graph, calib: np.ndarray) -> np.ndarray:
    """Validate calibration data (PyTorch layout) and return it in qgen layout, float64."""
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
        bad = np.argwhere(~np.isfinite(x))[0]
        raise UserError(f"calibration data contains NaN or Inf ({x[tuple(bad)]} in sample {int(bad[0])} at "
                        f"{tuple(int(i) for i in bad[1:])}); remove or repair the non-finite samples")
    return x
