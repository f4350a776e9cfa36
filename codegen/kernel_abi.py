"""What the generator must know about the C kernels: scratch sizes, mirrored from C.

Each function here mirrors a `qg_*_buffer_size()` in firmware/kernels/ exactly (same arguments
from the layer's parameters, same result); tests/test_kernel_abi.py compares them through cffi.
A kernel whose size is 0 gets scratch = NULL.
"""
from __future__ import annotations

from .ir import Graph, Node, Op


def _round_up4(n: int) -> int:
    return (n + 3) & ~3


def conv2d_buffer_size(in_c: int, k_h: int, k_w: int, out_c: int) -> int:
    """Four im2col columns of K = k_h*k_w*in_c values (rounded up to 4) as int16, plus one int8
    column to gather into when in_c is not a multiple of 4."""
    k4 = _round_up4(k_h * k_w * in_c)
    return 8 * k4 + (k4 if in_c % 4 else 0)


def depthwise_conv2d_buffer_size(in_c: int, k_h: int, k_w: int, out_c: int) -> int:
    """The weights transposed to (k_h, k_w, channels); multiplier 1 only (others use none)."""
    return _round_up4(k_h * k_w * out_c) if out_c == in_c else 0


def fully_connected_buffer_size(in_features: int, out_features: int) -> int:
    return 0


def scratch_bytes(g: Graph, n: Node) -> int:
    """Scratch bytes the kernel chosen for node `n` needs (0: none)."""
    if n.attrs.get("weight_format", "dense") != "dense":
        return 0  # the compressed-weight kernels (qg_sparse_s8.c, qg_cluster_s8.c) take no scratch
    if n.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D):
        cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
        cin = g.tensors[n.inputs[0]].shape[2]
        fn = conv2d_buffer_size if n.op is Op.CONV2D else depthwise_conv2d_buffer_size
        return fn(cin, kh, kw, cout)
    if n.op is Op.LINEAR:
        out_f, in_f = g.tensors[n.inputs[1]].shape
        return fully_connected_buffer_size(in_f, out_f)
    return 0
