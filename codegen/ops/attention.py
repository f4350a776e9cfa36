"""masked_softmax: softmax over the last axis where a constant boolean mask, known at compile time, takes
entries out (causal self-attention, a constant padding mask, `scores.masked_fill(mask, -inf)` before softmax).

A masked entry contributes exactly 0 to the exp sum and its output is exactly 0; the kept entries follow
softmax's integer rule (eltwise.i_softmax: the same Q14 exp table and the same single rounding) over the kept
entries only. inputs: x, then (after quantisation) the exp table, and last the mask:
- in the float IR a 0/1 float32 constant (mask_rows, row_size): row r of x uses mask row r % mask_rows (the
  front end folds the mask's repetition over batch and heads into that period);
- after quantisation a bitmap (mask_rows, ceil(row_size / 8)) int8: bit j % 8 of byte j / 8 is 1 where key j
  takes part (qg_masked_softmax_s8 reads it as uint8). Every mask row keeps at least one entry (a fully masked
  row is softmax of nothing: PyTorch gives NaN; the front end refuses it).
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _zero_macs
from .window import same_shape

MAX_ROW = 65535  # 2 * sum(e) < 2 * 65535 * 2^14 < 2^31


def keep_rows(g, n) -> np.ndarray:
    """The mask as booleans (mask_rows, row_size), from its float form or its quantised bitmap."""
    t = g.tensors[n.inputs[-1]]
    row = g.tensors[n.inputs[0]].shape[-1]
    if t.dtype == "float32":
        return np.asarray(t.data) > 0.5
    bits = np.unpackbits(np.asarray(t.data).astype(np.uint8), axis=-1, bitorder="little")
    return bits[:, :row].astype(bool)


def pack_keep(keep: np.ndarray) -> np.ndarray:
    """(mask_rows, row_size) booleans -> the kernel's bitmap (mask_rows, ceil(row_size / 8)) as int8."""
    return np.packbits(keep.astype(np.uint8), axis=-1, bitorder="little").view(np.int8)


def _rows(g, n, x: np.ndarray) -> np.ndarray:
    """x's mask broadcast over its rows: (..., row_size) booleans."""
    keep = keep_rows(g, n)
    rows = int(np.prod(x.shape[1:-1], dtype=np.int64))
    return np.tile(keep, (rows // keep.shape[0], 1)).reshape(x.shape[1:])


def check(g, n) -> None:
    x, m = g.tensors[n.inputs[0]], g.tensors[n.inputs[-1]]
    if len(n.inputs) < 2 or not m.is_const or m.data.ndim != 2:
        raise VerifyError(f"{n.where()}: masked_softmax needs its constant mask (mask_rows, row_size) last")
    row = x.shape[-1]
    rows = x.size // row
    width = row if m.dtype == "float32" else (row + 7) // 8
    if m.data.shape[1] != width or rows % m.data.shape[0]:
        raise VerifyError(f"{n.where()}: mask {list(m.data.shape)} does not fit rows of {row} ({rows} rows)")
    if not keep_rows(g, n).any(axis=-1).all():
        raise VerifyError(f"{n.where()}: a mask row keeps no entry")


def f_masked_softmax(g, n, xs):
    x = xs[0]
    keep = _rows(g, n, x)
    z = np.where(keep, x, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def i_masked_softmax(g, n, xs):
    """Integer masked softmax over the last axis; output s8.f7.

    m = max of the kept x; e = keep ? exp_table[m - x] : 0 (Q14); S = sum(e) >= 2^14;
    out = keep ? min(floor((256 * e + S) / (2 * S)), 127) : 0 = round_half_up(128 * e / S), saturated
    (a masked entry's e = 0 gives 0 by the same formula)."""
    x = xs[0].astype(np.int64)
    table = g.tensors[n.inputs[1]].data.astype(np.int64)
    keep = _rows(g, n, x)
    m = np.where(keep, x, -128).max(axis=-1, keepdims=True)
    e = np.where(keep, table[np.where(keep, m - x, 0)], 0)
    total = e.sum(axis=-1, keepdims=True)
    return np.minimum((256 * e + total) // (2 * total), 127)


def q_masked_softmax(g, n, act) -> None:
    from ..errors import UserError
    from ..fixed import QFormat
    from ..ir import Tensor
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    if out.shape[-1] > MAX_ROW:
        raise UserError(f"{n.where()}: masked softmax over {out.shape[-1]} values; qgen supports up to {MAX_ROW} "
                        "(the int32 exp sum). Attend over fewer keys")
    fin = g.tensors[n.inputs[0]].qformat.frac
    mask = g.tensors[n.inputs[-1]]
    if len(n.inputs) == 3:  # re-quantising: drop the previous table
        del g.tensors[n.inputs[1]]
    if mask.dtype == "float32":
        name = g.fresh_name(f"{n.outputs[0]}_keep")
        g.tensors[name] = Tensor(name, (mask.data.shape[0], (mask.data.shape[1] + 7) // 8), "int8", QFormat(8, 0),
                                 pack_keep(np.asarray(mask.data) > 0.5))
        if not any(mask.name in m.inputs for m in g.nodes if m is not n):
            del g.tensors[mask.name]
        mask = g.tensors[name]
    n.inputs = [n.inputs[0]]
    q._set_act(out, act(out.name, q.SOFTMAX_FRAC))
    q._add_table(g, n, "exp_table", q.softmax_exp_table(fin), 16, q.EXP_TABLE_FRAC)
    n.inputs.append(mask.name)


def torch_masked_softmax(node, xs, const):
    import torch

    x = xs[0]
    keep = const(node.inputs[-1]).detach() > 0.5
    keep = keep.repeat(int(np.prod(x.shape[1:-1])) // keep.shape[0], 1).reshape(x.shape[1:])
    return torch.softmax(x.masked_fill(~keep, float("-inf")), dim=-1)


def kernel_masked_softmax(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"masked_softmax has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_masked_softmax_s8", "qg_masked_softmax_params_t"


def c_masked_softmax(b, index: int, n):
    io = b.io(index, n)
    shape = b.g.tensors[io.out].shape
    table = b.const_tensor(io.sym, n.inputs[1], "exp_table")
    t = b.g.tensors[n.inputs[2]]
    keep = b.array(f"{io.sym}_keep", np.asarray(t.data).view(np.uint8), "uint8",
                   f"keep bitmap {list(t.shape)}: bit j % 8 of byte j / 8 = key j takes part")
    fields = [("rows", b.g.tensors[io.out].size // shape[-1]), ("row_size", shape[-1]),
              ("mask_rows", t.shape[0]), ("exp_table", table), ("keep", keep)]
    return ("qg_masked_softmax_params_t", fields,
            f"qg_masked_softmax_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});")


def qat_masked_softmax(q, i: int, n, xs, s):
    """exact: the integer rule above in int64 torch; training: float masked softmax, fake-quantised to s8.f7."""
    import torch

    from ..qat import pow2, requant

    x = xs[0]
    keep = torch.as_tensor(keep_rows(q._graph, n), device=x.device)
    keep = keep.repeat(int(np.prod(x.shape[1:-1])) // keep.shape[0], 1).reshape(x.shape[1:])
    if s.exact:
        table = q._tables[n.outputs[0]]
        xi = x.to(torch.int64)
        m = torch.where(keep, xi, -128).max(dim=-1, keepdim=True).values
        e = torch.where(keep, table[torch.where(keep, m - xi, 0)], 0)
        total = e.sum(dim=-1, keepdim=True)
        return torch.clamp(torch.div(256 * e + total, 2 * total, rounding_mode="floor"), max=127).to(s.dtype)
    p = torch.softmax((x * pow2(-s.fin)).masked_fill(~keep, float("-inf")), dim=-1)
    return requant(p * pow2(s.fout), -128, 127, s.ste)


SPECS = [
    OpSpec(Op.MASKED_SOFTMAX, "attention", Trait.IN_PLACE | Trait.KEEPS_ORDER | Trait.INT8_ONLY | Trait.TABLE,
           same_shape, check, f_masked_softmax, i_masked_softmax, q_masked_softmax, _zero_macs,
           torch_masked_softmax,
           "softmax after a constant mask: is_causal, attn_mask, constant key_padding_mask, masked_fill(-inf)",
           ("Where",), ("qg_masked_softmax_s8",),
           "softmax whose masked entries (a constant bitmap in flash) add 0 to the exp sum and output 0",
           kernel=kernel_masked_softmax, no_py="its table kernel is not written in MicroPython (the C target and "
                                               "the natmod module run it)",
           emit_c=c_masked_softmax, qat=qat_masked_softmax),
]
