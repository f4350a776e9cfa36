"""The rounding and saturation rules: Python (codegen/fixed.py) vs C (qg_fixed.h), exhaustively."""
from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codegen import fixed
from codegen.fixed import QFormat
from codegen.hostcheck import cache_root
from codegen.resources import kernel_dir

WRAPPERS = """
#include "qg_fixed.h"
void t_round_shift(const int32_t *x, const int32_t *s, int32_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_round_shift(x[i], s[i]); }
void t_requantize(const int32_t *x, const int32_t *s, int32_t lo, int32_t hi, int8_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_requantize_s8(x[i], s[i], lo, hi); }
void t_quantize(const float *x, float scale, int8_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_quantize_f32(x[i], scale); }
void t_requantize_wide(const int64_t *x, const int32_t *s, int32_t lo, int32_t hi, int32_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_requantize_wide(x[i], s[i], lo, hi); }
void t_quantize_s16(const float *x, float scale, int16_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_quantize_f32_s16(x[i], scale); }
void t_requantize_s32(const int32_t *x, const int32_t *s, int32_t lo, int32_t hi, int32_t *out, int32_t n)
{ for (int32_t i = 0; i < n; i++) out[i] = qg_requantize_s32(x[i], s[i], lo, hi); }
"""


@pytest.fixture(scope="module")
def clib():
    import cffi

    header = (kernel_dir() / "qg_fixed.h").read_text()
    name = "_qgt_fixed_" + hashlib.sha256((header + WRAPPERS).encode()).hexdigest()[:12]
    ffi = cffi.FFI()
    ffi.cdef("""
        void t_round_shift(const int32_t *x, const int32_t *s, int32_t *out, int32_t n);
        void t_requantize(const int32_t *x, const int32_t *s, int32_t lo, int32_t hi, int8_t *out, int32_t n);
        void t_quantize(const float *x, float scale, int8_t *out, int32_t n);
        void t_requantize_wide(const int64_t *x, const int32_t *s, int32_t lo, int32_t hi, int32_t *out, int32_t n);
        void t_quantize_s16(const float *x, float scale, int16_t *out, int32_t n);
        void t_requantize_s32(const int32_t *x, const int32_t *s, int32_t lo, int32_t hi, int32_t *out, int32_t n);
    """)
    ffi.set_source(name, WRAPPERS, include_dirs=[str(kernel_dir())],
                   extra_compile_args=["-std=c99", "-O1", "-fsanitize=undefined", "-fno-sanitize-recover"],
                   extra_link_args=["-fsanitize=undefined"])
    build = cache_root() / "fixed-test"
    path = ffi.compile(tmpdir=str(build))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def c_round_shift(clib, x, s):
    x = np.ascontiguousarray(x, dtype=np.int32)
    s = np.ascontiguousarray(np.broadcast_to(s, x.shape), dtype=np.int32)
    out = np.zeros_like(x)
    f = clib.ffi.from_buffer
    clib.lib.t_round_shift(f("int32_t[]", x), f("int32_t[]", s), f("int32_t[]", out), x.size)
    return out


def c_requantize(clib, x, s, lo, hi):
    x = np.ascontiguousarray(x, dtype=np.int32)
    s = np.ascontiguousarray(np.broadcast_to(s, x.shape), dtype=np.int32)
    out = np.zeros(x.shape, dtype=np.int8)
    f = clib.ffi.from_buffer
    clib.lib.t_requantize(f("int32_t[]", x), f("int32_t[]", s), lo, hi, f("int8_t[]", out), x.size)
    return out


def test_round_shift_examples():
    # round half up: +2.5 -> 3, -2.5 -> -2, -2.75 -> -3
    assert fixed.round_shift(np.array([5, -5, -11, 4, 3]), 1).tolist() == [3, -2, -5, 2, 2]
    assert fixed.round_shift(np.array([-11]), 2).tolist() == [-3]
    assert fixed.round_shift(np.array([3, -3]), -2).tolist() == [12, -12]


def test_round_shift_exhaustive_int16_all_right_shifts(clib):
    x = np.arange(-32768, 32768, dtype=np.int64)
    for s in range(0, 32):
        np.testing.assert_array_equal(c_round_shift(clib, x, s), fixed.round_shift(x, s), err_msg=f"shift {s}")


def test_round_shift_int32_extremes(clib):
    x = np.array([2**31 - 1, -2**31, 2**31 - 2, -2**31 + 1, 2**30, -2**30, 0, 1, -1], dtype=np.int64)
    for s in range(0, 32):
        np.testing.assert_array_equal(c_round_shift(clib, x, s), fixed.round_shift(x, s), err_msg=f"shift {s}")


def test_left_shift_exact(clib):
    x = np.arange(-128, 128, dtype=np.int64)
    for s in range(-22, 0):
        np.testing.assert_array_equal(c_round_shift(clib, x, s), x << -s)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=64), st.integers(-31, 31),
       st.integers(-128, 127), st.integers(-128, 127))
def test_requantize_python_equals_c(clib, xs, shift, a, b):
    lo, hi = min(a, b), max(a, b)
    x = np.array(xs, dtype=np.int64)
    np.testing.assert_array_equal(c_requantize(clib, x, shift, lo, hi), fixed.requantize(x, shift, lo, hi))


def test_requantize_exhaustive_int16_every_shift(clib):
    x = np.arange(-32768, 32768, dtype=np.int64)
    for s in range(-31, 32):
        np.testing.assert_array_equal(c_requantize(clib, x, s, -128, 127), fixed.requantize(x, s, -128, 127),
                                      err_msg=f"shift {s}")
    np.testing.assert_array_equal(c_requantize(clib, x, 3, 0, 48), fixed.requantize(x, 3, 0, 48))


def test_quantize_float_python_equals_c(clib, rng):
    vals = np.concatenate([rng.standard_normal(20000) * 3, np.arange(-300, 300) / 4.0, [0.49999997, -0.5, 0.5, -2.5,
                           1e30, -1e30, np.float32(2.5 - 2**-22)]]).astype(np.float32)
    for frac in (-3, 0, 4, 6, 7, 12):
        fmt = QFormat(8, frac)
        out = np.zeros(vals.size, dtype=np.int8)
        f = clib.ffi.from_buffer
        clib.lib.t_quantize(f("float[]", vals), float(2.0**frac), f("int8_t[]", out), vals.size)
        np.testing.assert_array_equal(out, fixed.quantize(vals, fmt), err_msg=f"frac {frac}")


def c_requantize_wide(clib, x, s, lo, hi):
    x = np.ascontiguousarray(x, dtype=np.int64)
    s = np.ascontiguousarray(np.broadcast_to(s, x.shape), dtype=np.int32)
    out = np.zeros(x.shape, dtype=np.int32)
    f = clib.ffi.from_buffer
    clib.lib.t_requantize_wide(f("int64_t[]", x), f("int32_t[]", s), lo, hi, f("int32_t[]", out), x.size)
    return out


@settings(max_examples=200)
@given(st.lists(st.integers(-2**46, 2**46), min_size=1, max_size=64), st.integers(-31, 31),
       st.integers(-32768, 32767), st.integers(-32768, 32767))
def test_requantize_wide_python_equals_c(clib, xs, shift, a, b):
    """int64 accumulators (int16 activations) to an int8 or int16 range: the same rule."""
    lo, hi = min(a, b), max(a, b)
    x = np.array(xs, dtype=np.int64)
    np.testing.assert_array_equal(c_requantize_wide(clib, x, shift, lo, hi), fixed.requantize(x, shift, lo, hi))


@given(st.integers(-2**62, 2**62), st.integers(-31, 31), st.integers(-32768, 32767), st.integers(-32768, 32767))
def test_requantize_is_exact_for_any_int64(x, shift, a, b):
    """The spec against Python's unbounded integers (no int64 wrap-around, even for huge left shifts)."""
    lo, hi = min(a, b), max(a, b)
    exact = x << -shift if shift < 0 else (x + (1 << (shift - 1))) >> shift if shift > 0 else x
    assert int(fixed.requantize(np.array([x]), shift, lo, hi)[0]) == min(max(exact, lo), hi)


def test_requantize_wide_every_shift_at_the_edges(clib):
    x = np.concatenate([np.arange(-70000, 70000, 7), [-(2**46), 2**46, -(2**31), 2**31 - 1, 32768, -32769]])
    for lo, hi in ((-32768, 32767), (-128, 127), (0, 20000)):
        for s in range(-31, 32):
            np.testing.assert_array_equal(c_requantize_wide(clib, x, s, lo, hi), fixed.requantize(x, s, lo, hi),
                                          err_msg=f"shift {s} range [{lo}, {hi}]")


def test_quantize_float_int16_python_equals_c(clib, rng):
    vals = np.concatenate([rng.standard_normal(20000) * 3, np.arange(-3000, 3000) / 64.0,
                           [0.5, -0.5, -2.5, 1e30, -1e30, np.float32(2.5 - 2**-22), 255.99, -256.01]]).astype(np.float32)
    for frac in (-3, 0, 7, 12, 14):
        out = np.zeros(vals.size, dtype=np.int16)
        f = clib.ffi.from_buffer
        clib.lib.t_quantize_s16(f("float[]", vals), float(2.0**frac), f("int16_t[]", out), vals.size)
        np.testing.assert_array_equal(out, fixed.quantize(vals, QFormat(16, frac)), err_msg=f"frac {frac}")


def test_quantize_rejects_nan():
    with pytest.raises(ValueError):
        fixed.quantize(np.array([np.nan]), QFormat(8, 4))


@pytest.mark.parametrize("max_abs,expect", [(1.0, 6), (0.99, 7), (127.0, 0), (128.0, -1), (0.0, 7), (1e-9, 36)])
def test_frac_for_range(max_abs, expect):
    f = fixed.frac_for_range(max_abs)
    assert f == expect
    assert max_abs * 2.0**f <= 127 and max_abs * 2.0 ** (f + 1) > 127 or max_abs == 0.0


def test_frac_for_range_rejects_inf():
    with pytest.raises(ValueError):
        fixed.frac_for_range(float("inf"))


def test_qformat_str_and_roundtrip():
    q = QFormat(8, (3, 5, 4))
    assert str(q) == "s8.f[3..5]" and QFormat.from_dict(q.to_dict()) == q
    assert str(QFormat(8, 6)) == "s8.f6" and QFormat(16, 2).max_int == 32767


def c_requantize_s32(clib, x, s, lo, hi):
    x = np.ascontiguousarray(x, dtype=np.int32)
    s = np.ascontiguousarray(np.broadcast_to(s, x.shape), dtype=np.int32)
    out = np.zeros(x.shape, dtype=np.int32)
    f = clib.ffi.from_buffer
    clib.lib.t_requantize_s32(f("int32_t[]", x), f("int32_t[]", s), lo, hi, f("int32_t[]", out), x.size)
    return out


def test_requantize_s32_every_shift_at_the_edges(clib, rng):
    """int32 values to any int32 range (the recurrent kernels' +-2^24 alignment, int16 state, int8 output):
    fixed.requantize, also for left shifts that would overflow int32 (UBSan watches the C)."""
    x = np.concatenate([np.arange(-70000, 70000, 7), [-(2**31), 2**31 - 1, 2**24, 2**24 + 1, -(2**24) - 1, 32768],
                        rng.integers(-(2**31), 2**31, 2000), rng.integers(-300, 300, 600)])
    ranges = ((-(2**24), 2**24), (-32768, 32767), (-128, 127), (0, 127), (-50, 90), (5, 20), (-20, -5),
              (-(2**31) + 1, 2**31 - 1))
    for lo, hi in ranges:
        for s in range(-31, 32):
            np.testing.assert_array_equal(c_requantize_s32(clib, x, s, lo, hi), fixed.requantize(x, s, lo, hi),
                                          err_msg=f"shift {s} range [{lo}, {hi}]")
