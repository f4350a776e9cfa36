"""Fixed-point Q-format arithmetic: the one rounding rule and the one saturation rule.

A Q-format value is an integer `q` standing for the real number `q * 2**-frac`.

Rounding rule (used everywhere a value loses precision, in Python and in C):
    round_shift(x, s) = floor((x + 2**(s-1)) / 2**s)   for s > 0   (round half up, towards +inf)
    round_shift(x, s) = x                               for s == 0
    round_shift(x, s) = x * 2**-s                       for s < 0   (exact left shift)
Saturation rule: clamp to the integer range of the destination type, [-2**(bits-1), 2**(bits-1) - 1].

Float -> Q conversion uses the same rule: q = saturate(floor(x * 2**frac + 0.5)).

The C twin of every function here lives in firmware/kernels/qg_fixed.h under the same name with a
`qg_` prefix; tests/test_fixed.py checks them against each other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_SHIFT = 31  # the C rounding shift works on int32 and takes shifts in [-31, 31]


@dataclass(frozen=True)
class QFormat:
    """A fixed-point type: `bits` wide two's-complement integer, value = int * 2**-frac.

    `frac` is an int for a per-tensor format, or a tuple (one per output channel, axis 0) for
    per-channel weights. `frac` may be negative (a coarse format for large values).
    """

    bits: int
    frac: int | tuple[int, ...]
    signed: bool = True

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def per_channel(self) -> bool:
        return isinstance(self.frac, tuple)

    def frac_array(self) -> np.ndarray:
        return np.asarray(self.frac, dtype=np.int64)

    def __str__(self) -> str:
        kind = "s" if self.signed else "u"
        if self.per_channel:
            lo, hi = min(self.frac), max(self.frac)
            return f"{kind}{self.bits}.f[{lo}..{hi}]" if lo != hi else f"{kind}{self.bits}.f{lo}/ch"
        return f"{kind}{self.bits}.f{self.frac}"

    def to_dict(self) -> dict:
        frac = list(self.frac) if self.per_channel else self.frac
        return {"bits": self.bits, "frac": frac, "signed": self.signed}

    @staticmethod
    def from_dict(d: dict) -> "QFormat":
        frac = tuple(d["frac"]) if isinstance(d["frac"], list) else int(d["frac"])
        return QFormat(int(d["bits"]), frac, bool(d["signed"]))


def int_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(x: np.ndarray | int, bits: int) -> np.ndarray:
    """Clamp to the signed `bits`-wide range (the saturation rule)."""
    lo, hi = int_range(bits)
    return np.clip(np.asarray(x, dtype=np.int64), lo, hi)


def round_shift(x: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """Divide by 2**shift with round-half-up (the rounding rule); negative shift multiplies exactly.

    `shift` broadcasts against `x` (per-channel shifts on the last axis). Works on int64.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(np.abs(shift) > MAX_SHIFT):
        raise ValueError(f"shift {shift} outside [-{MAX_SHIFT}, {MAX_SHIFT}]")
    right = np.maximum(shift, 0)
    left = np.maximum(-shift, 0)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    return np.where(shift > 0, np.right_shift(x + half, right), np.left_shift(x, left))


AVG_SHIFT = 23  # averages: |sum * mult| <= 128 * 2**23 + 64 * d < 2**31 for int8 sums of d < 2**24 values


def avg_multiplier(count: int, shift: int = AVG_SHIFT) -> int:
    """round(2**shift / count), half up on the exact quotient (the rounding rule): an average of `count`
    values is round_shift(sum * avg_multiplier(count), shift). Exact for a power-of-two count."""
    return ((1 << (shift + 1)) + count) // (2 * count)


def requantize(acc: np.ndarray, shift: np.ndarray | int, lo: int, hi: int) -> np.ndarray:
    """Wide accumulator -> narrow integer: round_shift (the rounding rule), then clamp to [lo, hi].

    [lo, hi] is the destination range narrowed by a fused activation (ReLU: lo = 0). This is the
    mathematical definition (exact in int64); `qg_requantize_s8` in C computes the same values
    without overflowing int32 (tests/test_fixed.py checks them against each other).
    Before a left shift, acc is clipped to [min(lo, 0) - 1, max(hi, 0) + 1]: that changes no result
    (anything beyond saturates either way) and keeps the shift inside int64 for any int64 acc.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    if np.any(shift < 0):
        acc = np.where(shift < 0, np.clip(acc, min(lo, 0) - 1, max(hi, 0) + 1), acc)
    return np.clip(round_shift(acc, shift), lo, hi)


def quantize(x: np.ndarray, fmt: QFormat) -> np.ndarray:
    """float -> Q-format integers: floor(x * 2**frac + 0.5), saturated. Per-channel on axis 0.

    Computed as v = x*2**frac (exact for a power of two), q = floor(v), q += (v - q >= 0.5): no
    double rounding, so C's float32 version (qg_quantize_f32) gives the same integers for float32 x.
    """
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantise NaN or Inf")
    frac = fmt.frac_array()
    if fmt.per_channel:
        frac = frac.reshape((-1,) + (1,) * (x.ndim - 1))
    v = x.astype(np.float64) * np.exp2(frac.astype(np.float64))
    q = np.floor(v)
    q = q + (v - q >= 0.5)
    q = np.clip(q, fmt.min_int, fmt.max_int)
    return q.astype(np.int64)


def dequantize(q: np.ndarray, fmt: QFormat) -> np.ndarray:
    frac = fmt.frac_array()
    if fmt.per_channel:
        frac = frac.reshape((-1,) + (1,) * (np.ndim(q) - 1))
    return np.asarray(q, dtype=np.float64) * np.exp2(-frac.astype(np.float64))


def frac_for_range(max_abs: float, bits: int = 8) -> int:
    """The largest frac such that max_abs still fits: max_abs * 2**frac <= 2**(bits-1) - 1.

    Documented calibration choice (min/max): no value seen in calibration saturates; the top code is
    used only by the largest value. A zero range gets the finest format that keeps 1.0 representable.
    """
    if not math.isfinite(max_abs):
        raise ValueError(f"range {max_abs} is not finite")
    top = (1 << (bits - 1)) - 1
    if max_abs <= 0.0:
        return bits - 1
    frac = math.floor(math.log2(top / max_abs))
    # guard float log2 edge cases: step until it fits and frac+1 would not
    while max_abs * 2.0**frac > top:
        frac -= 1
    while max_abs * 2.0 ** (frac + 1) <= top:
        frac += 1
    return frac
