"""batch_norm: a per-channel affine x * scale + shift, only in the float IR (fold_bn folds it away)."""
from __future__ import annotations

from . import Op, OpSpec, Trait, _no_check, _zero_macs
from .window import same_shape


def f_batch_norm(g, n, xs):
    return xs[0] * g.tensors[n.inputs[1]].data + g.tensors[n.inputs[2]].data


def torch_batch_norm(node, xs, const):
    return xs[0] * const(node.inputs[1]) + const(node.inputs[2])


def kernel_none(variant: str) -> tuple[None, None]:
    return None, None


SPECS = [
    OpSpec(Op.BATCH_NORM, "norm", Trait.FLOAT_ONLY | Trait.KEEPS_ORDER,
           same_shape, _no_check, f_batch_norm, None, None, _zero_macs, torch_batch_norm,
           "BatchNorm", ("BatchNormalization",), (),
           "folded into the preceding conv/linear (fold_bn)", kernel=kernel_none,
           no_py="float only: fold_bn folds it into the preceding conv/linear before any target"),
]
