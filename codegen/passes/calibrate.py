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
- "kl": the frac whose int8 grid loses the least information, as TensorRT's entropy calibration: a
  histogram of the nonzero |x| (KL_BINS = 2048 bins over [0, max|x|]); for each candidate, the reference
  P is the histogram below the format's limit with the clipped values added to its last bin, and Q is the
  in-range histogram merged into the format's levels (round to nearest) and spread back over each
  level's nonzero bins; the frac with the least KL(P || Q) (both smoothed) wins. Exact zeros stay out of
  the histogram: they quantise exactly at every frac, and a ReLU output's spike of zeros in bin 0 would
  otherwise dominate the divergence and pull the choice to absurdly fine formats (a conv+ReLU with 68 %
  zeros went from min/max's s8.f3 to s8.f11, clipping 30 % of its values: accuracy to chance).
  Candidates: the min/max frac and finer ones whose limit still spans >= 128 histogram bins
  (TensorRT's smallest threshold), at most MSE_FRAC_SEARCH bits finer; ties keep the coarser frac.

Every method other than min/max is guarded per tensor: the SQNR (float calibration values vs the values
quantised with the chosen format) must be within SQNR_MARGIN_DB of min/max's format's SQNR; a tensor
that falls further behind gets the min/max range, a CalibrationWarning naming the layer and both SQNRs,
and a record in graph.calibration (the report shows it per layer and in its fallback list). Only tensors
whose format their own range decides are guarded (format_source): pooling, reshape, pad and ReLU keep
their input's format, softmax and bounded LUTs have fixed ones.

percentile/mse work on a sample of each tensor's values: every value when a tensor has at most
SAMPLE_SIZE values over the calibration set, else a seeded uniform random sample of about that many
(deterministic: same data, same formats). The exact maximum is always kept.

Tensors that assign_precision made int16 always get their min/max range: with 256 times finer steps,
clipping outliers buys nothing and costs saturation.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import UserError
from ..fixed import QFormat, dequantize, frac_for_range, quantize
from ..ir import Graph, Op
from ..ops import SPEC, Trait, has
from ..reference import run_float, to_qgen_layout
from .assign_precision import tensor_bits

METHODS = ("minmax", "percentile", "mse", "kl")
KL_BINS = 2048  # histogram bins over [0, max|x|] (TensorRT's entropy calibration)
KL_MIN_BINS = 128  # a candidate's limit must span at least this many bins (TensorRT's smallest threshold)
KL_SMOOTH = 1e-4  # probability given to empty bins before the divergence (as TensorRT/MXNet)
SQNR_MARGIN_DB = 6.0  # a method may lose this much SQNR against min/max on a tensor before it falls back
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
        for node in graph.nodes:  # internal state some ops keep (an LSTM's cell): min/max, whatever the method
            rule = SPEC[node.op].state_ranges
            if rule is not None:
                xs = [values[t] for t in node.inputs if not graph.tensors[t].is_const]
                for key, top in rule(graph, node, xs).items():
                    maxima[key] = max(maxima.get(key, 0.0), top)
    graph.calibration = {}
    if method == "minmax":
        graph.ranges = maxima
        return graph
    ranges: dict[str, float] = {}
    wide = {name for name, b in tensor_bits(graph).items() if b == 16}
    for name, top in maxima.items():
        if name not in graph.tensors:  # internal state (an LSTM's cell '<output>#cell'): its min/max
            ranges[name] = top
            continue
        if name in wide:
            ranges[name] = top
            graph.calibration[name] = "minmax (int16)"
            continue
        values = np.concatenate(samples[name]) if name in samples else np.zeros(0)
        ranges[name] = effective_max(values, top, method, percentile)
        graph.calibration[name] = method
        if format_source(graph, name) == name:
            fallback = guard(values, top, ranges[name])
            if fallback is not None:
                got, ref, frac, base, saturated = fallback
                ranges[name] = top
                graph.calibration[name] = f"minmax ({method} fell back: SQNR {got:.1f} dB vs {ref:.1f} dB)"
                warnings.warn(f"{_where(graph, name)}: calibration '{method}' would give %{name} s8.f{frac}: SQNR "
                              f"{got:.1f} dB on the calibration data ({saturated:.1%} of the values saturate) vs "
                              f"{ref:.1f} dB with minmax's s8.f{base}; using minmax for this tensor",
                              CalibrationWarning, stacklevel=2)
    graph.ranges = ranges
    return graph


class CalibrationWarning(UserWarning):
    """A calibration method lost too much SQNR on a tensor; it got the min/max range instead."""


def sqnr_db(values: np.ndarray, fmt: QFormat) -> float:
    """SQNR (dB) of `values` quantised to `fmt` (rounding and saturation): +inf when exact."""
    noise = float(np.sum(np.square(values - dequantize(quantize(values, fmt), fmt))))
    signal = float(np.sum(np.square(values)))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0.0 else float("-inf")


def guard(values: np.ndarray, top: float, chosen: float,
          bits: int = ACT_BITS) -> tuple[float, float, int, int, float] | None:
    """None when the chosen range's format keeps its SQNR on `values` within SQNR_MARGIN_DB of the min/max
    format's, else (its SQNR, min/max's SQNR, its frac, min/max's frac, fraction of values it saturates)."""
    base, frac = frac_for_range(top, bits), frac_for_range(chosen, bits)
    if frac == base or values.size == 0:
        return None
    fmt = QFormat(bits, frac)
    got, ref = sqnr_db(values, fmt), sqnr_db(values, QFormat(bits, base))
    if not got < ref - SQNR_MARGIN_DB:
        return None
    saturated = float(np.mean(np.abs(values) > (fmt.max_int + 0.5) * 2.0 ** -frac))
    return got, ref, frac, base, saturated


def format_source(graph: Graph, name: str) -> str | None:
    """The tensor whose calibrated range decides `name`'s format (mirrors quantize.py): itself for the
    input, conv/linear, add, concat, free-range LUT and torch.sum (REDUCE kind sum) outputs; the input's source
    through pooling, reshape, pad and ReLU (they keep their input's format); None for fixed formats (softmax,
    bounded LUTs)."""
    from .quantize import LUT_OUTPUT_FRAC

    node = graph.producer(name)
    while node is not None and has(node.op, Trait.KEEPS_FORMAT) and node.attrs.get("kind") != "sum":
        name = node.inputs[0]
        node = graph.producer(name)
    fixed = node is not None and (node.op is Op.SOFTMAX or node.op is Op.LOG_SOFTMAX
                                  or node.op is Op.MASKED_SOFTMAX)
    if fixed or (node is not None and (node.op is Op.LUT and node.attrs.get("fn") in LUT_OUTPUT_FRAC)):
        return None
    return name


def _where(graph: Graph, name: str) -> str:
    node = graph.producer(name)
    return node.where() if node is not None else f"input %{name}"


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
    magnitudes = np.abs(values)
    magnitudes = magnitudes[magnitudes > 0.0]  # exact zeros are exact at every frac (module doc)
    if magnitudes.size == 0 or top <= 0.0:
        return base
    levels = (1 << (bits - 1)) - 1
    width = top / KL_BINS
    hist = np.histogram(magnitudes, bins=KL_BINS, range=(0.0, top))[0].astype(np.float64)
    centers = (np.arange(KL_BINS) + 0.5) * width
    best, best_kl = base, np.inf
    for frac in range(base, base + MSE_FRAC_SEARCH + 1):
        step = 2.0 ** -frac
        n = min(KL_BINS, int(np.ceil((levels + 0.5) * step / width)))  # bins below the format's limit
        if n < KL_MIN_BINS and frac > base:
            break
        inside = hist[:n]
        p = inside.copy()
        p[-1] += hist[n:].sum()  # the reference keeps the clipped values (on the last bin) ...
        group = np.minimum(np.floor(centers[:n] / step + 0.5), levels).astype(np.int64)
        mass = np.bincount(group, weights=inside, minlength=levels + 1)  # ... the quantised one loses them
        occupied = np.bincount(group, weights=(p > 0).astype(np.float64), minlength=levels + 1)
        q = np.where(p > 0, mass[group] / np.maximum(occupied[group], 1.0), 0.0)
        kl = _kl_divergence(p, q)
        if kl < best_kl - 1e-12:  # strict: ties keep the coarser (less saturating) frac
            best, best_kl = frac, kl
    return best


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two histograms after smoothing (empty bins get KL_SMOOTH, taken from the others)."""
    p, q = _smooth(p), _smooth(q)
    if q is None:
        return np.inf
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def _smooth(h: np.ndarray) -> np.ndarray | None:
    total = h.sum()
    if total <= 0.0:
        return None
    d = h / total
    empty = d == 0
    if not empty.any():
        return d
    taken = KL_SMOOTH * empty.sum() / (~empty).sum()
    return np.where(empty, KL_SMOOTH, np.maximum(d - taken, KL_SMOOTH))


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
                   "nlc": lambda: [expect[1], expect[2]], "nf": lambda: list(expect)}[layout]()
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
