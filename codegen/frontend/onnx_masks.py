"""Constant attention masks in the ONNX front end (codegen/ops/attention.py: masked_softmax): what exporters
write for `scores.masked_fill(mask, -inf)` (Where(mask, -inf, scores)) and `scores + float_mask` (Add of a 0/-inf
initializer) right before Softmax over attention scores held as (1, M, N) tokens (the natural layout) or over a
(1, F) vector. The masked
value is the scores themselves, carrying its keep mask to the Softmax; anything else is refused by name."""
from __future__ import annotations

import numpy as np

from ..ir import Op
from .masks import MASK_FILL_MAX


class MaskedAct:
    """Marker mixed into the importer's _Act: an activation whose entries where `keep` is False are -inf."""

    keep: np.ndarray


def _masked(imp, node, x, keep: np.ndarray, what: str):
    from .onnx_import import _Act

    users = imp.users.get(node.output[0], [])
    if not users or any(u.op_type != "Softmax" for u in users):
        raise imp.err(node, f"{what} read by something other than a Softmax; qgen supports a constant mask right "
                            "before Softmax (attention scores)")
    if not (x.natural and x.rank == 3) and x.rank != 2:
        raise imp.err(node, f"{what} on a value of rank {x.rank}; qgen supports a constant mask on (1, M, N) "
                            "attention scores (single-head attention as exported from PyTorch) or on (1, F) vectors")
    shape = imp.shape_of(x.name)
    m, n = (shape[1], shape[2]) if x.rank == 3 else (1, shape[-1])
    try:
        keep = np.broadcast_to(np.asarray(keep, bool), (1, m, n) if x.rank == 3 else (1, n)).reshape(m, n)
    except ValueError:
        raise imp.err(node, f"{what} of shape {list(np.shape(keep))} on a value of shape "
                            f"{[1, m, n] if x.rank == 3 else [1, n]}") from None
    out = type("_MaskedAct", (_Act, MaskedAct), {})(x.name, x.rank, x.natural)
    prior = getattr(x, "keep", None)
    out.keep = keep & prior if prior is not None else keep
    return out


def where(imp, node):
    """Where(mask, -inf, scores) / Where(mask, scores, -inf) with a constant mask, before Softmax."""
    from .onnx_import import VALUES

    cond, a, b = (imp.values.get(i) for i in node.input)
    if cond is None or isinstance(cond, VALUES):
        raise imp.err(node, "Where with a condition computed from the input (a mask from the data?); qgen supports "
                            "a constant mask before Softmax. Make the mask a constant of the model")
    for x, fill, keep in ((b, a, ~np.asarray(cond, bool)), (a, b, np.asarray(cond, bool))):
        if isinstance(x, VALUES) and fill is not None and not isinstance(fill, VALUES) and np.asarray(fill).size == 1 \
                and float(np.asarray(fill).reshape(-1)[0]) <= MASK_FILL_MAX:
            return _masked(imp, node, x, keep, "Where(mask, -inf, scores)")
    raise imp.err(node, "Where other than a constant mask filling -inf before Softmax; qgen supports "
                        "Where(constant mask, -inf, scores) -> Softmax (masked attention)")


def additive(imp, node, a, b):
    """Add(scores, 0/-inf constant) before Softmax: the mask; None for any other add."""
    from .onnx_import import VALUES

    for x, k in ((a, b), (b, a)):
        if isinstance(x, VALUES) and k is not None and not isinstance(k, VALUES) and np.asarray(k).size > 1:
            value = np.asarray(k, np.float64)
            blocked = value <= MASK_FILL_MAX
            if blocked.any():
                if np.any(value[~blocked] != 0):
                    raise imp.err(node, "an additive mask mixing -inf with finite non-zero values; qgen supports a "
                                        "mask of 0 and -inf, or a finite additive constant")
                return _masked(imp, node, x, ~blocked, "an additive -inf mask")
    return None


def apply(imp, node, x, out: str) -> None:
    """The Softmax just added as IR tensor `out` reads a masked value: MASKED_SOFTMAX with its (M, N) mask."""
    keep = x.keep
    if not keep.any(axis=-1).all():
        raise imp.err(node, "Softmax over a row the mask takes out entirely; qgen supports masks that keep at least "
                            "one entry in every row")
    if keep.all():
        return
    n = imp.graph.producer(out)
    n.op = Op.MASKED_SOFTMAX
    name = imp.graph.fresh_name(f"{out}_keep")
    from ..ir import Tensor

    imp.graph.tensors[name] = Tensor(name, keep.shape, "float32", data=keep.astype(np.float64))
    n.inputs.append(name)
