"""mean, vote: n activations of one shape combined into one (an ensemble's member outputs, codegen/fuse).

No front end produces them: codegen/fuse/ensemble_graph.py inserts them after the members of an ensemble graph.
Both read their inputs as flat vectors (a member's class logits); each input keeps its own Q format.

Alignment (both ops). The inputs x_i (frac f_i) are brought to one common frac
    fc = min(max_i f_i, min_i f_i + 16)    (mean: also fc <= fo + 31 - avg_shift, so its shift stays <= 31)
by a_i = round_shift(x_i, f_i - fc): an exact left shift unless the formats lie more than 16 bits apart
(never in practice: then the finer inputs are rounded once here). |sum_i a_i| <= n * 128 * 2^16 < 2^31
for n <= 127 members: int32.

mean (output frac fo from its calibrated range): out = requantize(sum_i a_i * avg_mult(n), avg_shift + fc - fo)
with (avg_mult, avg_shift) = (1, log2 n) for a power-of-two n, else (round(2^23 / n), 23) (fixed.avg_multiplier,
the average rule of pooling): ONE rounding (round half up) and saturation. The product is formed in int64 (C)
because the aligned sum may use all 31 bits.

vote (output s8.f1, i.e. the value 2 * votes + winner bit): member i votes for the index of its largest value
(the first one on a tie within the member); votes[c] = number of members voting for class c. The ensemble's
decision (the winner) is the class with the most votes; a tie between classes goes to the largest aligned
logit sum sum_i a_i[c] (i.e. the largest mean logit), then to the lowest class index. out[c] = 2 * votes[c]
+ (c == winner): dequantised, the vote counts with 0.5 added to the decided class, so argmax(out) is the
ensemble's decision and floor(out) the counts. At most 63 members (2 * 63 + 1 = 127).
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _zero_macs

ALIGN_BITS = 16  # inputs' fracs aligned at most this far apart exactly (module docstring)
MAX_MEMBERS = 127  # mean: n * 128 * 2^16 < 2^31
MAX_VOTERS = 63  # vote: 2 * votes + 1 <= 127
VOTE_FRAC = 1  # vote output: 2 * votes + winner bit


def combine_shape(g, n) -> tuple[int, ...]:
    return tuple(g.tensors[n.inputs[0]].shape)


def check_combine(g, n) -> None:
    shapes = [g.tensors[t].shape for t in n.inputs]
    if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
        raise VerifyError(f"{n.where()}: {n.op.value} needs two or more inputs of one shape, got {shapes}")
    limit = MAX_VOTERS if n.op is Op.VOTE else MAX_MEMBERS
    if len(shapes) > limit:
        raise VerifyError(f"{n.where()}: {n.op.value} of {len(shapes)} inputs; at most {limit}")


def _flat(xs) -> np.ndarray:
    """(n, N, S): the inputs stacked, each sample flattened."""
    return np.stack([x.reshape(x.shape[0], -1) for x in xs])


def align_frac(fracs: list[int], fo: int | None = None, avg_shift: int = 0) -> int:
    """The common frac fc of the module docstring."""
    fc = min(max(fracs), min(fracs) + ALIGN_BITS)
    if fo is not None:
        fc = min(fc, fo + 31 - avg_shift)
    return int(fc)


def _aligned(n, xs) -> np.ndarray:
    from ..fixed import round_shift

    return np.stack([round_shift(x.reshape(x.shape[0], -1), s) for x, s in zip(xs, n.attrs["shifts"])])


# ---------------------------------------------------------------- mean


def f_mean(g, n, xs):
    return sum(xs) / len(xs)


def i_mean(g, n, xs):
    from ..fixed import requantize

    total = _aligned(n, xs).sum(axis=0)
    out = requantize(total * n.attrs["avg_mult"], n.attrs["shift"], n.attrs["act_min"], n.attrs["act_max"])
    return out.reshape(xs[0].shape)


def q_mean(g, n, act) -> None:
    from ..fixed import MAX_SHIFT
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name))
    avg = q.avg_params(len(n.inputs))
    fracs = [int(g.tensors[t].qformat.frac) for t in n.inputs]
    fc = align_frac(fracs, out.qformat.frac, avg["avg_shift"])
    shift = max(-MAX_SHIFT, avg["avg_shift"] + fc - out.qformat.frac)
    n.attrs.update(shifts=[f - fc for f in fracs], avg_mult=avg["avg_mult"], shift=int(shift),
                   act_min=out.qformat.min_int, act_max=out.qformat.max_int)


def torch_mean(node, xs, const):
    return sum(xs) / len(xs)


def qat_mean(q, i: int, n, xs, s):
    from ..qat import pow2, requant

    total = sum(requant(x * pow2(-sh), None, None, s.ste) for x, sh in zip(xs, s.attrs["shifts"]))
    return requant(total * s.attrs["avg_mult"] * pow2(-s.attrs["shift"]), s.attrs["act_min"], s.attrs["act_max"],
                   s.ste)


def kernel_mean(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"mean has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_mean_s8", "qg_mean_params_t"


def py_mean(b, n, index: int):
    muls, rnds, shrs = b.triples(n.attrs["shifts"])
    (mo,), (ro,), (so,) = b.triples([n.attrs["shift"]])
    params = [("size", b.g.tensors[n.outputs[0]].size), ("mul_in", tuple(muls)), ("rnd_in", tuple(rnds)),
              ("shr_in", tuple(shrs)), ("avg_mult", n.attrs["avg_mult"]), ("mul", mo), ("rnd", ro), ("shr", so),
              ("act_min", n.attrs["act_min"]), ("act_max", n.attrs["act_max"])]
    return "_mean", params, ""


def _parts(io) -> str:
    return f"const int8_t *const parts[{len(io.xs)}] = {{{', '.join(io.ins)}}};"


def c_mean(b, index: int, n):
    io = b.io(index, n)
    shifts = b.array(f"{io.sym}_shift", np.array(n.attrs["shifts"]), "int8", "alignment shift per input")
    fields = [("n_inputs", len(io.xs)), ("size", b.g.tensors[io.out].size), ("shift", shifts),
              ("avg_mult", n.attrs["avg_mult"]), ("out_shift", n.attrs["shift"]), ("act_min", n.attrs["act_min"]),
              ("act_max", n.attrs["act_max"])]
    return "qg_mean_params_t", fields, f"{{ {_parts(io)} qg_mean_s8(&{io.struct}, parts, {io.out_expr}); }}"


# ---------------------------------------------------------------- vote


def _votes(values: np.ndarray, tie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """values (n, N, S) -> (votes (N, S), winner (N,)): the rule of the module docstring; tie (N, S) the sums."""
    members, batch, size = values.shape
    picks = values.argmax(axis=2)  # first maximum within a member
    votes = np.zeros((batch, size), dtype=np.int64)
    for i in range(members):
        np.add.at(votes, (np.arange(batch), picks[i]), 1)
    best = votes == votes.max(axis=1, keepdims=True)
    key = np.where(best, tie, -np.inf if tie.dtype.kind == "f" else np.iinfo(np.int64).min)
    return votes, key.argmax(axis=1)  # first index among the largest sums


def f_vote(g, n, xs):
    values = _flat(xs).astype(np.float64)
    votes, winner = _votes(values, values.sum(axis=0))
    out = votes.astype(np.float64)
    out[np.arange(out.shape[0]), winner] += 0.5
    return out.reshape(xs[0].shape)


def i_vote(g, n, xs):
    values = _flat(xs).astype(np.int64)
    votes, winner = _votes(values, _aligned(n, xs).sum(axis=0))
    out = 2 * votes
    out[np.arange(out.shape[0]), winner] += 1
    return out.reshape(xs[0].shape)


def q_vote(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, VOTE_FRAC))
    fracs = [int(g.tensors[t].qformat.frac) for t in n.inputs]
    fc = align_frac(fracs)
    n.attrs.update(shifts=[f - fc for f in fracs])


def torch_vote(node, xs, const):
    import torch

    values = torch.stack([x.reshape(x.shape[0], -1) for x in xs])
    members, batch, size = values.shape
    votes = torch.nn.functional.one_hot(values.argmax(dim=2), size).sum(dim=0).to(values.dtype)
    tie = torch.where(votes == votes.amax(dim=1, keepdim=True), values.sum(dim=0), torch.full_like(votes, -torch.inf))
    out = votes * 2 + torch.nn.functional.one_hot(tie.argmax(dim=1), size).to(values.dtype)
    return (out / 2).reshape(xs[0].shape)


def qat_vote(q, i: int, n, xs, s):
    import torch

    from ..qat import pow2, requant

    values = torch.stack([x.reshape(x.shape[0], -1) for x in xs])
    aligned = torch.stack([requant(x.reshape(x.shape[0], -1) * pow2(-sh), None, None, False)
                           for x, sh in zip(xs, s.attrs["shifts"])])
    size = values.shape[2]
    votes = torch.nn.functional.one_hot(values.argmax(dim=2), size).sum(dim=0).to(values.dtype)
    tie = torch.where(votes == votes.amax(dim=1, keepdim=True), aligned.sum(dim=0),
                      torch.full_like(votes, -torch.inf))
    out = votes * 2 + torch.nn.functional.one_hot(tie.argmax(dim=1), size).to(values.dtype)
    return out.reshape(xs[0].shape).detach()  # counts: no gradient


def py_vote(b, n, index: int):
    muls, rnds, shrs = b.triples(n.attrs["shifts"])
    params = [("size", b.g.tensors[n.outputs[0]].size), ("mul_in", tuple(muls)), ("rnd_in", tuple(rnds)),
              ("shr_in", tuple(shrs))]
    return "_vote", params, ""


def kernel_vote(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"vote has only an int8 kernel, not {variant} (Trait.INT8_ONLY)")
    return "qg_vote_s8", "qg_vote_params_t"


def c_vote(b, index: int, n):
    io = b.io(index, n)
    shifts = b.array(f"{io.sym}_shift", np.array(n.attrs["shifts"]), "int8", "alignment shift per input")
    fields = [("n_inputs", len(io.xs)), ("size", b.g.tensors[io.out].size), ("shift", shifts)]
    return "qg_vote_params_t", fields, f"{{ {_parts(io)} qg_vote_s8(&{io.struct}, parts, {io.out_expr}); }}"


SPECS = [
    OpSpec(Op.MEAN, "combine", Trait.INT8_ONLY, combine_shape, check_combine, f_mean, i_mean, q_mean, _zero_macs,
           torch_mean, "", (), ("qg_mean_s8",),
           "average of n activations (an ensemble's member outputs) aligned to one format, one rounding",
           kernel=kernel_mean, emit_py=py_mean, emit_c=c_mean, qat=qat_mean),
    OpSpec(Op.VOTE, "combine", Trait.INT8_ONLY, combine_shape, check_combine, f_vote, i_vote, q_vote, _zero_macs,
           torch_vote, "", (), ("qg_vote_s8",),
           "per-class vote counts of n members' argmax (2 * votes + 1 on the decided class, s8.f1)",
           kernel=kernel_vote, emit_py=py_vote, emit_c=c_vote, qat=qat_vote),
]
