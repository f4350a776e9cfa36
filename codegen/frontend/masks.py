"""Constant attention masks in the torch front end (codegen/ops/attention.py: masked_softmax).

The spellings users bring all end in a softmax whose input has some entries at -inf:
- F.scaled_dot_product_attention(..., is_causal=True / attn_mask=bool or 0/-inf float) — what
  nn.MultiheadAttention(need_weights=False) and nn.TransformerEncoderLayer run in eval, with attn_mask /
  src_mask / is_causal / a constant key_padding_mask (merged into attn_mask by PyTorch);
- nn.MultiheadAttention(need_weights=True) with a mask: baddbmm(mask, q, k^T) then softmax;
- `scores.masked_fill(self.mask[:T, :T] == 0, float('-inf'))` or `scores + self.float_mask` then softmax.
The mask itself is built from buffers by ops on constants (triu, ==, ~, masked_fill of zeros, view, expand):
`fold` evaluates those at compile time. A masked activation is recorded in `lw.masked` (fx node -> keep, a
boolean array in that node's PyTorch sizes, True = takes part) and bound to the unmasked IR tensor; the softmax
that reads it becomes a MASKED_SOFTMAX whose bitmap is the keep mask laid out as the softmax's input lies.
Anything else reading a masked value, a mask computed from the input, and a fully masked row are refused.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ir import Op

aten = torch.ops.aten
MASK_FILL_MAX = -1e4  # masked_fill(..., v) with v <= this (or -inf) is a mask: exp(v - max) is 0 in float32

# ops on constants evaluated at compile time (the mask's construction); never an op on an activation
FOLDABLE = {
    aten.zeros_like.default, aten.ones_like.default, aten.full_like.default, aten.zeros.default, aten.ones.default,
    aten.full.default, aten.arange.default, aten.arange.start, aten.arange.start_step,
    aten.masked_fill.Scalar, aten.masked_fill_.Scalar, aten.masked_fill.Tensor, aten.masked_fill_.Tensor,
    aten.eq.Scalar, aten.ne.Scalar, aten.eq.Tensor, aten.ne.Tensor, aten.lt.Scalar, aten.le.Scalar,
    aten.gt.Scalar, aten.ge.Scalar, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor, aten.ge.Tensor,
    aten.bitwise_not.default, aten.logical_not.default, aten.logical_and.default, aten.logical_or.default,
    aten.bitwise_and.Tensor, aten.bitwise_or.Tensor, aten.triu.default, aten.tril.default,
    aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.view.default, aten.reshape.default,
    aten._unsafe_view.default, aten.expand.default, aten.slice.Tensor, aten.select.int, aten.transpose.int,
    aten.permute.default, aten.to.dtype, aten._to_copy.default, aten.where.self, aten.where.ScalarOther,
    aten.where.ScalarSelf, aten.add.Tensor, aten.clone.default, aten.contiguous.default, aten.repeat.default,
}


def _nodes(args) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    for a in args:
        if isinstance(a, torch.fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out += _nodes(a)
    return out


def foldable(lw, n) -> bool:
    """n is a mask-building op whose tensor arguments are all constants (and one is, or it creates one)."""
    if n.target not in FOLDABLE:
        return False
    args = _nodes(list(n.args) + list(n.kwargs.values()))
    if any(a.name in lw.lay or not isinstance(lw.env.get(a.name), np.ndarray) for a in args):
        return False
    return bool(args) or n.target in (aten.zeros.default, aten.ones.default, aten.full.default,
                                      aten.arange.default, aten.arange.start, aten.arange.start_step)


def fold(lw, n) -> np.ndarray:
    """Evaluate n on its constant arguments with PyTorch (each constant in its own dtype: a bool mask stays bool);
    the result as the front end keeps constants (float64)."""
    def conv(a):
        if isinstance(a, torch.fx.Node):
            val = a.meta.get("val")
            dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float64
            return torch.from_numpy(np.asarray(lw.env[a.name])).to(dtype)
        if isinstance(a, (list, tuple)):
            return type(a)(conv(x) for x in a)
        return a
    kwargs = {k: conv(v) for k, v in n.kwargs.items() if k not in ("device", "pin_memory", "layout")}
    with torch.no_grad():
        out = n.target(*conv(tuple(n.args)), **kwargs)
    return out.detach().double().numpy().copy()


def keep_of(lw, n, mask_arg, what: str, *, is_bool: bool | None = None) -> np.ndarray | None:
    """The keep mask (True = takes part) of a constant mask argument: a bool mask is `mask_arg` (attn_mask) as is,
    a float mask whose entries are 0 or -inf (<= MASK_FILL_MAX) keeps its 0 entries; None for a finite additive
    float mask (a bias). A mask computed from the input is refused."""
    from .torch_export import _err

    value = lw.env.get(mask_arg.name) if isinstance(mask_arg, torch.fx.Node) else None
    if not isinstance(value, np.ndarray) or mask_arg.name in lw.lay:
        raise _err(lw, n, f"{what} computed from the model's input; qgen supports constant masks (is_causal=True, "
                          "a causal or padding mask registered as a buffer or built from constants). Make the mask "
                          "a constant of the model")
    val = mask_arg.meta.get("val")
    if is_bool is None:
        is_bool = isinstance(val, torch.Tensor) and val.dtype == torch.bool
    if is_bool:
        return value != 0
    blocked = value <= MASK_FILL_MAX
    if not blocked.any():
        return None
    if np.any(value[~blocked] != 0):
        raise _err(lw, n, f"{what} mixes -inf entries with finite non-zero values (a bias and a mask); qgen supports "
                          "a mask of 0 and -inf (or a bool mask), or a finite additive constant. Split the bias and "
                          "the mask")
    return ~blocked


def _positive_scale(n) -> bool:
    """n is scores * c or scores / c with a Python number c > 0: -inf stays -inf, 0 stays 0."""
    if n.target not in (aten.mul.Tensor, aten.div.Tensor) or len(n.args) != 2:
        return False
    c = n.args[1]
    return isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0


def _users_are_softmax(n) -> bool:
    """Every user of n is a softmax, or a positive scaling whose users are (masked, then scaled by 1/sqrt(d))."""
    return bool(n.users) and all(u.target in (aten.softmax.int, aten._softmax.default)
                                 or (_positive_scale(u) and u.args[0] is n and _users_are_softmax(u)) for u in n.users)


def pending(lw, arg) -> np.ndarray | None:
    """The keep mask pending on a softmax's input: recorded on it, or on the masked value it scales."""
    while isinstance(arg, torch.fx.Node):
        if arg.name in lw.masked:
            return lw.masked[arg.name]
        arg = arg.args[0] if _positive_scale(arg) else None
    return None


def mark(lw, n, x, keep: np.ndarray, what: str) -> str:
    """n = x with the entries where keep is False at -inf: x itself, with keep pending for the softmax."""
    from .torch_export import _err, _torch_sizes

    if not _users_are_softmax(n):
        raise _err(lw, n, f"{what} whose result is read by something other than a softmax; qgen supports a constant "
                          "mask right before softmax (attention scores). Apply the mask in the softmax's input only")
    sizes = _torch_sizes(n)
    keep = np.broadcast_to(keep, sizes)
    if x.name in lw.masked:
        keep = keep & np.broadcast_to(lw.masked[x.name], sizes)
    lw.masked[n.name] = keep
    x_ir, lay = lw.raw(x)
    return lw.bind(n, x_ir, lay)


def masked_fill(lw, n) -> str:
    """scores.masked_fill(mask, -inf) of an activation with a constant mask, read by a softmax."""
    from .torch_export import _err

    x, mask, value = n.args[:3]
    if isinstance(value, torch.fx.Node):
        v = lw.env.get(value.name)
        value = float(np.asarray(v).reshape(-1)[0]) if isinstance(v, np.ndarray) and v.size == 1 else None
    if value is None or not float(value) <= MASK_FILL_MAX:
        raise _err(lw, n, f"masked_fill of an activation with {value}; qgen supports masked_fill(mask, -inf) (or a "
                          f"value <= {MASK_FILL_MAX:g}) right before softmax, an attention mask")
    keep = keep_of(lw, n, mask, "masked_fill mask", is_bool=True)
    return mark(lw, n, x, ~keep, "masked_fill(mask, -inf)")


def additive(lw, n, a, b) -> str | None:
    """scores + mask with a constant 0/-inf float mask read by a softmax: the mask; None for anything else."""
    for x, k in ((a, b), (b, a)):
        if (isinstance(x, torch.fx.Node) and x.name in lw.lay and isinstance(k, torch.fx.Node)
                and isinstance(lw.env.get(k.name), np.ndarray) and k.name not in lw.lay):
            value = lw.env[k.name]
            if value.size > 1 and np.any(value <= MASK_FILL_MAX):
                keep = keep_of(lw, n, k, "additive attention mask", is_bool=False)
                return mark(lw, n, x, keep, "an additive -inf mask")
    return None


def baddbmm(lw, n) -> str:
    """torch.baddbmm(mask, q, k^T) (nn.MultiheadAttention with need_weights=True and a mask): q @ k^T, then the
    mask (0/-inf: masked softmax; finite: an add)."""
    from .torch_export import _err, _steps, _torch_sizes

    m, b1, b2 = n.args[:3]
    beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
    if beta != 1:
        raise _err(lw, n, f"baddbmm with beta={beta}; qgen supports beta=1")
    step = _steps(lw, n)
    sizes = _torch_sizes(n)
    s = step("bmm", aten.bmm.default, (b1, b2), sizes)
    if alpha != 1:
        s = step("alpha", aten.mul.Tensor, (s, float(alpha)), sizes)
    keep = keep_of(lw, n, m, "baddbmm's attention mask") if isinstance(m, torch.fx.Node) else None
    if keep is None:
        s = step("bias", aten.add.Tensor, (s, m), sizes)
        lw.lay[n.name] = lw.lay[s.name]
        return lw.env[s.name]
    return mark(lw, n, s, keep, "baddbmm's attention mask")


def sdpa_keep(lw, n, q_sizes, k_sizes, attn_mask, is_causal: bool) -> tuple[np.ndarray | None, Any]:
    """(keep mask over the scores' sizes or None, a finite additive mask node or None) of F.scaled_dot_product_
    attention's attn_mask / is_causal (top-left causal: query i attends keys 0..i, PyTorch's rule)."""
    scores = tuple(q_sizes[:-1]) + (k_sizes[-2],)
    keep = None
    if is_causal:
        keep = np.tril(np.ones((scores[-2], scores[-1]), dtype=bool))
    bias = None
    if attn_mask is not None:
        k = keep_of(lw, n, attn_mask, "attn_mask (or key_padding_mask)")
        if k is None:
            bias = attn_mask
        else:
            keep = k if keep is None else keep & k
    return (np.broadcast_to(keep, scores) if keep is not None else None), bias


def apply(lw, n, out: str, lay) -> None:
    """The softmax n just lowered to IR tensor `out` (laid out as `lay`, its dim innermost) reads a masked value:
    it becomes MASKED_SOFTMAX with the keep mask in its rows' order (the period of the repetition over batch and
    heads only), or stays a softmax where the mask keeps everything."""
    from .torch_export import _err

    keep = pending(lw, n.args[0])
    node = lw.graph.producer(out)
    if node is None or node.op is not Op.SOFTMAX:
        raise _err(lw, n, "a masked input to this op; qgen supports a constant mask before softmax only")
    sizes = tuple(lay.sizes)
    row = lw.graph.tensors[out].shape[-1]
    rows = np.broadcast_to(keep, sizes).reshape(-1)[lay.torch_index()].reshape(-1, row)
    if not rows.any(axis=-1).all():
        raise _err(lw, n, "softmax over a row the mask takes out entirely (PyTorch gives NaN there); qgen supports "
                          "masks that keep at least one entry in every row")
    if rows.all():
        return
    period = next(p for p in range(1, len(rows) + 1)
                  if len(rows) % p == 0 and np.array_equal(rows, np.tile(rows[:p], (len(rows) // p, 1))))
    node.op = Op.MASKED_SOFTMAX
    node.inputs.append(lw.const(f"{node.outputs[0]}_keep", rows[:period].astype(np.float64)))


COMPARISONS = (aten.eq.Scalar, aten.ne.Scalar, aten.eq.Tensor, aten.ne.Tensor, aten.lt.Scalar, aten.le.Scalar,
               aten.gt.Scalar, aten.ge.Scalar, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor, aten.ge.Tensor)


def compare(lw, n) -> str:
    """A comparison of an activation (constants fold above): a mask computed from the data, refused."""
    from .torch_export import _err

    raise _err(lw, n, "a comparison of an activation (a mask computed from the model's input?); qgen supports "
                      "constant masks before softmax (is_causal=True, a causal or padding mask registered as a buffer "
                      "or built from constants) and computes no booleans from data. Make the mask a constant")
