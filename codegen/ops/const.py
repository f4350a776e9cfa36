"""const: a constant tensor made an activation (a positional encoding added to a sequence, a cls token
concatenated to it, a learned (1, C, H, W) bias): the op has no activation input; its one input is the
constant, its output an ordinary arena tensor that add / sub / mul / concat / matmul read like any other.

Q-format rule: the constant gets its own format from its values, like a weight tensor: int8 (int16 where
--precision names the const node: `Trait.CHOOSES_FORMAT`), frac = fixed.frac_for_range(max|C|, bits) (the largest
frac at which max|C| does not saturate, kept within the activation frac range), integers = fixed.quantize(C)
(round half up, saturate). Calibration does not choose it (the constant's range is exact). The op that reads it
aligns it like any operand (add/sub: both operands to a common frac, one rounding into the output format; concat:
each part requantised to the output format).
Integer semantics: the output is those integers; C `qg_const_s8` / `qg_const_s16` copies the array (QG_CONST, read
through qg_w8 / qg_w16: in flash on AVR) into the arena. The front end (frontend/torch_export.py `_with_const`) keeps
a constant at most half the activation's size at its own sizes, read by the op's broadcasting form; otherwise it
broadcasts the constant to the activation's shape and lays it out as the activation lies.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _zero_macs

MAX_ACT_FRAC = 120  # as passes/quantize.py: 2**+-120 is an exact float32


def const_shape(g, n) -> tuple[int, ...]:
    return tuple(g.tensors[n.inputs[0]].shape)


def check_const(g, n) -> None:
    if len(n.inputs) != 1 or not g.tensors[n.inputs[0]].is_const:
        raise VerifyError(f"{n.where()}: const takes exactly one constant tensor, got {n.inputs}")


def _float_value(g, n) -> np.ndarray:
    from ..fixed import dequantize

    t = g.tensors[n.inputs[0]]
    data = np.asarray(t.data, dtype=np.float64)
    return dequantize(t.data, t.qformat) if t.qformat is not None else data


def f_const(g, n, xs):
    return _float_value(g, n)[None]  # batch 1: the walkers broadcast a node without activation inputs


def i_const(g, n, xs):
    return np.asarray(g.tensors[n.inputs[0]].data, dtype=np.int64)[None]


def const_format(value: np.ndarray, bits: int = 8):
    """The constant's Q-format: frac_for_range(max|C|) at `bits`, within the activation frac range."""
    from ..fixed import QFormat, frac_for_range

    top = float(np.max(np.abs(value))) if value.size else 0.0
    return QFormat(bits, max(-MAX_ACT_FRAC, min(frac_for_range(top, bits), MAX_ACT_FRAC)))


def q_const(g, n, act) -> None:
    from ..fixed import quantize
    from ..ir import Tensor
    from ..passes import quantize as q

    value = _float_value(g, n)  # a graph quantised again (QAT convert): from the integers' values
    fmt = const_format(value, 16 if n.attrs.get("out_bits") == 16 else 8)
    old = n.inputs[0]
    name = g.fresh_name(f"{n.outputs[0]}_value")
    dtype = {8: "int8", 16: "int16"}[fmt.bits]
    g.tensors[name] = Tensor(name, tuple(value.shape), dtype, fmt, quantize(value, fmt).astype(dtype))
    if not any(old in m.inputs for m in g.nodes if m is not n):
        del g.tensors[old]
    n.inputs = [name]
    q._set_act(g.tensors[n.outputs[0]], fmt)


def torch_const(node, xs, const):
    return const(node.inputs[0])[None]  # batch 1: torch_ir.execute expands it


def kernel_const(variant: str) -> tuple[str, str]:
    if variant == "s8":
        return "qg_const_s8", "qg_const_params_t"
    if variant == "s16":
        return "qg_const_s16", "qg_const_s16_params_t"
    raise ValueError(f"const has int8 and int16 kernels, not {variant}")


def c_const(b, index: int, n):
    io = b.io(index, n)
    data = b.const_tensor(io.sym, n.inputs[0], "value")
    return ("qg_const_params_t", [("size", b.g.tensors[io.out].size), ("data", data)],
            f"qg_const_s8(&{io.struct}, {io.out_expr});")


def c_const_wide(b, index: int, n):
    io = b.io(index, n, wide=True)
    data = b.const_tensor(io.sym, n.inputs[0], "value")
    return ("qg_const_s16_params_t", [("size", b.g.tensors[io.out].size), ("data", data)],
            f"qg_const_s16(&{io.struct}, {io.out_expr});")


def py_const(b, n, index: int):
    return "_const", [("data", tuple(int(v) for v in b.g.tensors[n.inputs[0]].data.reshape(-1)))], ""


def qat_const(q, i: int, n, xs, s):
    """The constant's integers (not trained: a learned positional embedding is fixed during QAT)."""
    import torch

    from ..fixed import QFormat, quantize

    value = q._graph.tensors[n.inputs[0]].data
    bits = 16 if s.attrs.get("out_bits") == 16 else 8
    return torch.tensor(quantize(np.asarray(value, dtype=np.float64), QFormat(bits, s.fout)), dtype=s.dtype)[None]


SPECS = [
    OpSpec(Op.CONST, "const", Trait.CHOOSES_FORMAT, const_shape, check_const, f_const, i_const, q_const, _zero_macs,
           torch_const, "a constant tensor (buffer / Parameter) added to, multiplied with or concatenated to "
           "activations", ("Add", "Sub", "Mul", "Concat"), ("qg_const_s8", "qg_const_s16"),
           "a constant tensor in its own int8 (or int16) format, copied from flash into the arena", kernel=kernel_const,
           emit_py=py_const, emit_c=c_const, emit_c_wide=c_const_wide, qat=qat_const),
]
