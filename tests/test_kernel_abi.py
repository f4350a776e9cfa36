"""codegen/kernel_abi.py mirrors the C kernels' *_buffer_size() exactly."""
from __future__ import annotations

import hashlib
import importlib.util

import pytest

from codegen import kernel_abi
from codegen.hostcheck import cache_root
from codegen.resources import kernel_dir

SHAPES = [(1, 3, 3, 8), (8, 3, 3, 16), (32, 1, 1, 32), (3, 10, 4, 64), (7, 3, 5, 5), (16, 5, 5, 1), (2, 1, 1, 4)]


@pytest.fixture(scope="module")
def clib():
    import cffi

    sources = sorted(kernel_dir().glob("*.c"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(kernel_dir().iterdir()))).hexdigest()[:12]
    name = f"_qgt_abi_{digest}"
    ffi = cffi.FFI()
    ffi.cdef("""
        typedef struct { uint16_t in_h, in_w, in_c; uint16_t out_h, out_w, out_c;
            uint8_t k_h, k_w, stride_h, stride_w, pad_top, pad_left; uint8_t dil_h, dil_w; int8_t act_min, act_max;
            uint16_t groups; uint16_t out_stride; const int8_t *weights; const int32_t *bias; const int8_t *shift;
            } qg_conv2d_params_t;
        typedef struct { uint16_t in_features, out_features; int8_t act_min, act_max;
            const int8_t *weights; const int32_t *bias; const int8_t *shift; } qg_fully_connected_params_t;
        int32_t qg_conv2d_s8_buffer_size(const qg_conv2d_params_t *p);
        int32_t qg_depthwise_conv2d_s8_buffer_size(const qg_conv2d_params_t *p);
        int32_t qg_fully_connected_s8_buffer_size(const qg_fully_connected_params_t *p);
    """)
    ffi.set_source(name, '#include "qg_kernels.h"', sources=[str(s) for s in sources],
                   include_dirs=[str(kernel_dir())], extra_compile_args=["-std=c99", "-O1"])
    path = ffi.compile(tmpdir=str(cache_root() / "abi-test"))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("in_c,k_h,k_w,out_c", SHAPES)
def test_conv_buffer_sizes_match(clib, in_c, k_h, k_w, out_c):
    p = clib.ffi.new("qg_conv2d_params_t *", {"in_h": 16, "in_w": 16, "in_c": in_c, "out_h": 16, "out_w": 16,
                                              "out_c": out_c, "k_h": k_h, "k_w": k_w, "stride_h": 1, "stride_w": 1,
                                              "dil_h": 2, "dil_w": 3, "groups": 1})
    assert clib.lib.qg_conv2d_s8_buffer_size(p) == kernel_abi.conv2d_buffer_size(in_c, k_h, k_w, out_c)
    for groups in (g for g in (2, 3, 4, 8) if in_c % g == 0 and out_c % g == 0):  # one group's channels
        p.groups = groups
        assert clib.lib.qg_conv2d_s8_buffer_size(p) == kernel_abi.conv2d_buffer_size(in_c // groups, k_h, k_w,
                                                                                      out_c)
    p.groups = 1
    for mult in (1, 2):  # depthwise: multiplier 1 transposes its weights into scratch, others take none
        p.out_c = in_c * mult
        assert clib.lib.qg_depthwise_conv2d_s8_buffer_size(p) == kernel_abi.depthwise_conv2d_buffer_size(
            in_c, k_h, k_w, in_c * mult)


def test_scratch_sizes_are_word_multiples_and_cover_the_kernels_needs():
    """Sizes the C kernels rely on: 4 int16 columns of K rounded to 4 (+ an int8 column when in_c % 4),
    the transposed depthwise weights; compressed-weight kernels take none."""
    assert kernel_abi.conv2d_buffer_size(8, 3, 3, 16) == 8 * 72
    assert kernel_abi.conv2d_buffer_size(7, 3, 5, 5) == 8 * 108 + 108
    assert kernel_abi.depthwise_conv2d_buffer_size(5, 3, 3, 5) == 96 + 40  # int16 weights + biases, shifts (DSP)
    assert kernel_abi.depthwise_conv2d_plain_buffer_size(5, 3, 3, 5) == 48
    assert kernel_abi.depthwise_conv2d_buffer_size(5, 3, 3, 10) == 0
    for in_c, k_h, k_w, out_c in SHAPES:
        assert kernel_abi.conv2d_buffer_size(in_c, k_h, k_w, out_c) % 4 == 0
        assert kernel_abi.depthwise_conv2d_buffer_size(in_c, k_h, k_w, in_c) % 4 == 0


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (256, 10), (784, 128), (33, 7)])
def test_fc_buffer_sizes_match(clib, n_in, n_out):
    p = clib.ffi.new("qg_fully_connected_params_t *", {"in_features": n_in, "out_features": n_out})
    assert clib.lib.qg_fully_connected_s8_buffer_size(p) == kernel_abi.fully_connected_buffer_size(n_in, n_out)
