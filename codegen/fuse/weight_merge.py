"""Weight-space merging: models of one architecture become one, W = sum_i C_i * W_i.

    merged = merge([m1, m2, m3])                                    # uniform average (a "soup")
    merged = merge(models, method="greedy", eval_data=x, labels=y)  # greedy soup (Wortsman et al. 2022)
    merged = merge(models, align=True, calib_data=xc)               # independently trained: align, then REPAIR
    merged = merge(models, method="search", eval_data=x, labels=y)  # coefficients searched on held-out data

Models fine-tuned from one initialisation lie in one basin: their average works as it is. Independently trained
models do not: hidden unit 3 of one model is some other unit of the next, and the average of unrelated units
collapses. `align=True` first permutes each model's hidden units / channels to match the first model's (weight
matching, "Git Re-Basin", Ainsworth et al. 2023: per permutation, a linear assignment that maximises the inner
product of the weights touching it, iterated over the permutations until none changes), which leaves each model's
function unchanged. The permutations are derived from the model's graph (torch.export): a weighted layer's output
units are a new permutation; element-wise ops, pooling and BatchNorm carry it; a residual add joins the
permutations of its operands into one; flatten turns a channel permutation into blocks of C x H x W features.

Averaging still shrinks the activations' variance ("variance collapse"): with `calib_data`, BatchNorm running
statistics are re-estimated on the merged model, and the output channels of hidden weighted layers that no
BatchNorm follows are rescaled so that each channel's mean and std are the coefficient-weighted mean and std of
the aligned members' (REPAIR, Jordan et al. 2023), folded into that layer's weight and bias.

The result is an ordinary nn.Module (a copy of the first model with the merged state) for the normal pipeline:
QAT, pruning, codegen.compile, verify.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UserError

METHODS = ("uniform", "greedy", "search")


@dataclass
class MergeInfo:
    """What merge() did: the coefficients, and the held-out accuracy (%) of each member and of the result."""

    coeffs: list[float]
    method: str
    aligned: bool
    align_method: str | None = None  # "weights" / "activations" (the one "auto" kept)
    repaired: list[str] = field(default_factory=list)  # BatchNorm nodes re-estimated, layers rescaled (REPAIR)
    member_accuracy: list[float] | None = None
    accuracy: float | None = None
    permutations: int = 0  # permutation groups aligned

    def summary(self) -> str:
        parts = [f"coefficients {', '.join(f'{c:.4g}' for c in self.coeffs)} ({self.method}"
                 + (f", aligned by {self.align_method}" if self.aligned else "") + ")"]
        if self.repaired:
            parts.append(f"statistics re-estimated at {len(self.repaired)} layers")
        if self.member_accuracy is not None:
            parts.append("members " + ", ".join(f"{a:.2f}%" for a in self.member_accuracy))
        if self.accuracy is not None:
            parts.append(f"merged {self.accuracy:.2f}% on the held-out data")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------
# permutation groups, from the graph


@dataclass
class PermSpec:
    """Permutation groups of a model. axes[fqn] = [(axis, group, block)]: along `axis` of state tensor `fqn`,
    index unit * block + r belongs to unit `unit` of permutation `group` (block > 1 after a flatten)."""

    sizes: dict[int, int]
    axes: dict[str, list[tuple[int, int, int]]]
    hidden_outputs: dict[str, int]  # weighted node name -> its output's (free) group: REPAIR candidates
    bn_nodes: list[str]

    def members(self, group: int) -> list[tuple[str, int, int]]:
        return [(fqn, axis, block) for fqn, entries in self.axes.items() for axis, g, block in entries if g == group]


_UNARY = {"relu", "relu_", "hardtanh", "hardtanh_", "relu6", "sigmoid", "tanh", "gelu", "silu", "silu_", "elu",
          "leaky_relu", "leaky_relu_", "clamp", "clamp_min", "clamp_max", "dropout", "abs", "neg", "exp", "log",
          "sqrt", "rsqrt", "hardswish", "hardsigmoid", "softplus", "mish", "clone", "contiguous", "alias", "detach",
          "_to_copy", "to", "softmax", "log_softmax", "_softmax", "_log_softmax", "square", "pow", "reciprocal",
          "add_", "mul_", "selu", "celu", "prelu_scalar", "sign", "floor", "ceil", "round", "logit", "erf"}
_POOL = {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
         "adaptive_max_pool1d", "adaptive_max_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices",
         "upsample_nearest2d", "upsample_bilinear2d", "upsample_nearest1d", "pad", "constant_pad_nd"}
_BINARY = {"add", "sub", "mul", "div", "maximum", "minimum", "rsub"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_RESHAPE = {"flatten", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "unflatten", "expand"}


class _Groups:
    """Union-find over permutation groups; a fixed group keeps its order (identity)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: set[int] = set()

    def new(self, n: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(n)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            if b in self.fixed:
                self.fixed.add(a)

    def fix(self, g: int) -> None:
        self.fixed.add(self.find(g))


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    if hasattr(target, "_schema"):  # aten.add.Tensor -> add
        name = target._schema.name.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _where(node) -> str:
    """'layer.path' (Module type) of a node, else its name; plus its source line when torch recorded one."""
    import re

    stack = node.meta.get("nn_module_stack") or {}
    where = f"'{node.name}'"
    if stack:
        path, kind = list(stack.values())[-1]
        kind = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
        where = f"'{path}' ({kind})" if path else where
    lines = [(f, n) for f, n in re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
             if "/torch/" not in f]  # the user's line, not torch's
    if lines:
        file, line = lines[-1]
        where += f" ({file.rsplit('/', 1)[-1]}:{line})"
    return where


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None  # ShapeProp on the example input
    return tuple(int(d) for d in meta.shape) if hasattr(meta, "shape") else None


def traced(model, example):
    """The model as an exported GraphModule (batch size dynamic where the model allows it), node shapes from
    the example input (meta['tensor_meta'])."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        was_training = model.training
        model.eval()
        batch = torch.cat([example[:1], example[:1]]) if len(example) == 1 else example[:2]
        try:
            try:
                program = torch.export.export(model, (batch,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            except Exception:  # noqa: BLE001 - the forward fixes the batch size: one sample at a time
                program = torch.export.export(model, (example[:1],))
        except Exception as exc:  # noqa: BLE001 - torch raises many types
            raise UserError(f"cannot trace the model (torch.export: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); alignment, statistics re-estimation "
                            "and held-out evaluation need a traceable model: merge without align/calib/eval "
                            "data") from None
        finally:
            model.train(was_training)
    with warnings.catch_warnings():  # torch's own deprecation notice (LeafSpec) when copying the module
        warnings.simplefilter("ignore", FutureWarning)
        gm = copy.deepcopy(program.module())
    for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        gm.graph.erase_node(node)  # the input-shape guard of a saved program (batch 1): calibration runs batches
    gm.recompile()
    try:
        ShapeProp(gm).propagate(example[:1])
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the model does not run on the example input {list(example.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return gm


def perm_spec(gm, *, strict: bool = True) -> PermSpec:
    """The permutation groups of an exported GraphModule (ExportedProgram.module()): which state tensors' axes
    one permutation of hidden units acts on. strict: refuse an op a permuted value cannot pass through (else the
    permutations reaching it are fixed)."""
    import torch

    groups = _Groups()
    state_shapes = {k: tuple(v.shape) for k, v in gm.state_dict().items()}
    values: dict[Any, Any] = {}  # node -> tuple per axis of (group, block) | None; ("param", fqn) for get_attr
    param_axes: dict[str, set[tuple[int, int, int]]] = {}
    weighted_out: dict[str, int] = {}
    bn_nodes: list[str] = []

    def attach(fqn: str, axis: int, entry) -> None:
        if entry is not None:
            param_axes.setdefault(fqn, set()).add((axis, entry[0], entry[1]))

    def join(entries: list, node) -> Any:
        """Entries of one axis from several operands: one permutation for all (residual add)."""
        present = [e for e in entries if e is not None]
        if not present:
            return None
        if len(present) < len(entries) or len({e[1] for e in present}) > 1 or \
                len({groups.size[groups.find(e[0])] for e in present}) > 1:
            for e in present:  # joined with an unpermuted value (or another layout): cannot permute
                groups.fix(e[0])
            return None
        for e in present[1:]:
            groups.union(present[0][0], e[0])
        return present[0]

    def refuse(node, why: str):
        if strict:
            raise UserError(f"cannot align hidden units through {why} at {_where(node)}; qgen aligns through "
                            "linear, conv (groups 1 or depthwise), BatchNorm, LayerNorm, element-wise ops, pooling, "
                            "residual add and flatten/reshape. Merge without align (models fine-tuned from one "
                            "initialisation need none)")
        for entry in _flat_entries(node):
            groups.fix(entry[0])
        return None

    def _flat_entries(node):
        out = []
        for arg in node.all_input_nodes:
            v = values.get(arg)
            if isinstance(v, tuple) and v and not (v[0] == "param"):
                out += [e for e in v if e is not None]
        return out

    def value(arg):
        return values.get(arg) if isinstance(arg, torch.fx.Node) else None

    def is_param(v) -> bool:
        return isinstance(v, tuple) and len(v) == 2 and v[0] == "param"

    def activation(v) -> bool:
        return isinstance(v, tuple) and not is_param(v) and not (v and isinstance(v[0], list))

    def reshape(entries, shape_in, shape_out, node):
        out: list = [None] * len(shape_out)
        for axis, entry in enumerate(entries):
            if entry is None:
                continue
            gid, block = entry
            n = groups.size[groups.find(gid)]
            outer = int(np.prod(shape_in[:axis], dtype=np.int64))
            span = block * int(np.prod(shape_in[axis + 1:], dtype=np.int64))  # elements per unit
            placed = False
            for a in range(len(shape_out)):
                if int(np.prod(shape_out[:a], dtype=np.int64)) != outer or shape_out[a] % n:
                    continue
                inner = int(np.prod(shape_out[a + 1:], dtype=np.int64))
                new_block = shape_out[a] // n
                if new_block * inner == span and out[a] is None and (shape_out[a] > 1 or n == 1):
                    out[a] = (gid, new_block)
                    placed = True
                    break
            if not placed:
                return refuse(node, f"a reshape {list(shape_in)} -> {list(shape_out)} that splits permuted units")
        return tuple(out)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            shape = _shape(node)
            values[node] = tuple([None] * len(shape)) if shape is not None else None
            continue
        if node.op == "get_attr":
            values[node] = ("param", str(node.target))
            continue
        if node.op == "output":
            outs = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            for arg in outs:
                v = value(arg)
                if activation(v):
                    for entry in v:
                        if entry is not None:
                            groups.fix(entry[0])
            continue
        if node.op == "call_module":  # torch.export's input guard (_guards_fn): no values
            values[node] = None
            continue
        name = _op_name(node)
        args = node.args
        x = value(args[0]) if args else None
        shape_out = _shape(node)
        none_out = tuple([None] * len(shape_out)) if shape_out is not None else None
        if name.startswith("sym_") or name in ("size", "dim", "_assert_scalar", "_assert_tensor_metadata"):
            values[node] = None  # a size, not a tensor
            continue
        if name in _UNARY | _POOL | _REDUCE | _RESHAPE | {"permute", "transpose", "t"} and not activation(x):
            values[node] = none_out
            continue

        if name == "linear" or name.startswith("conv") and name != "convolution_backward":
            w = value(args[1])
            bias = value(args[2]) if len(args) > 2 else None
            if not activation(x):
                values[node] = none_out
                continue
            if not is_param(w) or (bias is not None and not is_param(bias)):
                if any(e is not None for e in x):
                    refuse(node, f"{name} with weights computed in the graph")
                values[node] = none_out
                continue
            wshape = state_shapes[w[1]]
            if name == "convolution":  # (input, weight, bias, stride, padding, dilation, transposed, out_pad, groups)
                transposed, conv_groups = bool(args[6]), int(args[8])
            else:
                transposed = name.startswith("conv_transpose")
                conv_groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
            channel = len(x) - 1 if name == "linear" else (1 if len(x) == len(wshape) else 0)  # unbatched: 0
            entry_in = x[channel]
            if conv_groups != 1:
                if not transposed and conv_groups == _shape(args[0])[channel] == wshape[0]:
                    # depthwise: output channel c reads input channel c only, so it carries c's permutation
                    attach(w[1], 0, entry_in)
                    if bias is not None:
                        attach(bias[1], 0, entry_in)
                    values[node] = tuple(entry_in if a == channel else None for a in range(len(shape_out)))
                    continue
                refuse(node, f"a grouped convolution (groups={conv_groups})")
                values[node] = none_out
                continue
            if entry_in is not None and entry_in[1] != 1 and name != "linear":
                refuse(node, f"{name} reading blocks of permuted features")
                entry_in = None
            gid = groups.new(wshape[1] if transposed else wshape[0])
            attach(w[1], 1 if transposed else 0, (gid, 1))
            attach(w[1], 0 if transposed else 1, entry_in)
            if bias is not None:
                attach(bias[1], 0, (gid, 1))
            out = list(x)
            out[channel] = (gid, 1)
            values[node] = tuple(out)
            weighted_out[node.name] = gid
            continue
        if name in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
                    "_native_batch_norm_legit", "instance_norm"):
            if name == "instance_norm":
                refuse(node, "instance_norm")
            entry = x[1] if activation(x) and len(x) > 1 else None
            for i in (1, 2, 3, 4):
                p = value(args[i]) if len(args) > i else None
                if is_param(p):
                    attach(p[1], 0, entry)
            bn_nodes.append(node.name)
            values[node] = x if name == "batch_norm" else [x, None, None]
            continue
        if name in ("layer_norm", "native_layer_norm"):
            k = len(args[1])
            for i in (2, 3):
                p = value(args[i]) if len(args) > i else None
                if is_param(p):
                    for j in range(k):
                        attach(p[1], j, x[len(x) - k + j])
            values[node] = x if name == "layer_norm" else [x, None, None]
            continue
        if name == "getitem":
            v = values.get(args[0])
            values[node] = v[args[1]] if isinstance(v, list) and args[1] < len(v) else (
                tuple([None] * len(shape_out)) if shape_out is not None else None)
            continue
        if name in _UNARY or (name in _BINARY and len([a for a in args if isinstance(a, torch.fx.Node)]) == 1
                              and not is_param(x)):
            values[node] = x if activation(x) else (tuple([None] * len(shape_out)) if shape_out else None)
            continue
        if name in _POOL:  # shape-preserving on the channel axis: a permuted axis must keep its size
            shape_in = _shape(args[0])
            if len(shape_in) != len(shape_out) or any(e is not None and shape_in[a] != shape_out[a]
                                                      for a, e in enumerate(x)):
                refuse(node, f"{name} changing the size of a permuted axis")
                values[node] = none_out
                continue
            values[node] = [x, None] if name.endswith("with_indices") else x
            continue
        if name in _BINARY or name == "where":
            operands = [a for a in args if isinstance(a, torch.fx.Node)]
            out = []
            for a in range(len(shape_out)):
                entries = []
                for op in operands:
                    v, s = values.get(op), _shape(op)
                    if s is None:
                        continue
                    k = a - (len(shape_out) - len(s))  # broadcast from the right
                    if k < 0 or s[k] == 1:
                        continue
                    if is_param(v):
                        continue  # attached after the join below
                    entries.append(v[k] if activation(v) else None)
                joined = join(entries, node) if entries else None
                for op in operands:
                    v, s = values.get(op), _shape(op)
                    k = a - (len(shape_out) - len(s)) if s is not None else -1
                    if is_param(v) and k >= 0 and s[k] > 1:
                        if joined is not None:
                            attach(v[1], k, joined)
                out.append(joined)
            values[node] = tuple(out)
            continue
        if name in _REDUCE:
            dims = args[1] if len(args) > 1 else list(range(len(x)))
            dims = [d % len(x) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
            keep = (len(args) > 2 and bool(args[2])) or node.kwargs.get("keepdim", False)
            out = [None if a in dims else e for a, e in enumerate(x)] if keep else \
                [e for a, e in enumerate(x) if a not in dims]
            values[node] = tuple(out)
            continue
        if name == "expand":
            shape_in = _shape(args[0])
            values[node] = tuple(e if len(shape_in) == len(shape_out) and shape_in[a] == shape_out[a] else None
                                 for a, e in enumerate(x)) if len(shape_in) == len(shape_out) else none_out
            continue
        if name in _RESHAPE:
            values[node] = reshape(x, _shape(args[0]), shape_out, node) if activation(x) and any(
                e is not None for e in x) else tuple([None] * len(shape_out))
            continue
        if name in ("permute", "transpose", "t", "numpy_T"):
            n = len(x)
            if name == "permute":
                order = [d % n for d in args[1]]
            else:
                d0, d1 = (args[1] % n, args[2] % n) if name == "transpose" else (0, 1)
                order = list(range(n))
                order[d0], order[d1] = order[d1], order[d0]
            values[node] = tuple(x[d] for d in order)
            continue
        if name == "cat":
            tensors = args[0]
            dim = (args[1] if len(args) > 1 else node.kwargs.get("dim", 0)) % len(shape_out)
            vals = [values.get(t) for t in tensors]
            if any(activation(v) and v[dim] is not None for v in vals):
                refuse(node, "a concatenation of permuted channels")
            out = []
            for a in range(len(shape_out)):
                out.append(None if a == dim else join([v[a] if activation(v) else None for v in vals], node))
            values[node] = tuple(out)
            continue
        # anything else: fine on unpermuted values; refused (or fixed) where a permutation reaches it
        inputs = [values.get(a) for a in node.all_input_nodes]
        if any(activation(v) and any(e is not None for e in v) for v in inputs) or \
                any(is_param(v) for v in inputs):
            if any(is_param(v) for v in inputs) and not any(activation(v) and any(e is not None for e in v)
                                                              for v in inputs):
                values[node] = tuple([None] * len(shape_out)) if shape_out is not None else None
                continue
            refuse(node, f"aten.{name}")
        values[node] = tuple([None] * len(shape_out)) if shape_out is not None else None

    roots: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for g in range(len(groups.parent)):
        r = groups.find(g)
        if r in groups.fixed or r in roots:
            continue
        roots[r] = len(roots)
        sizes[roots[r]] = groups.size[r]
    axes: dict[str, list[tuple[int, int, int]]] = {}
    for fqn, entries in param_axes.items():
        kept = sorted({(axis, roots[groups.find(g)], block) for axis, g, block in entries
                       if groups.find(g) in roots})
        if kept:
            axes[fqn] = kept
    hidden = {name: roots[groups.find(g)] for name, g in weighted_out.items() if groups.find(g) in roots}
    return PermSpec(sizes=sizes, axes=axes, hidden_outputs=hidden, bn_nodes=bn_nodes)


# --------------------------------------------------------------------------------------------------------------
# weight matching


def _unit_index(perm: np.ndarray, block: int) -> np.ndarray:
    return (perm[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def permute_state(state: dict[str, Any], spec: PermSpec, perms: dict[int, np.ndarray],
                  except_axis: tuple[str, int] | None = None) -> dict[str, Any]:
    """The state with every permuted axis reordered: new unit i = old unit perms[group][i]."""
    import torch

    out = dict(state)
    for fqn, entries in spec.axes.items():
        t = state[fqn]
        for axis, g, block in entries:
            if except_axis == (fqn, axis):
                continue
            t = torch.index_select(t, axis, torch.as_tensor(_unit_index(perms[g], block)))
        out[fqn] = t
    return out


def _unit_rows(t, axis: int, n: int) -> np.ndarray:
    return np.moveaxis(t.detach().double().numpy(), axis, 0).reshape(n, -1)


def weight_matching(spec: PermSpec, state_ref: dict[str, Any], state: dict[str, Any], *, max_iter: int = 100,
                    seed: int = 0) -> dict[int, np.ndarray]:
    """Permutations that make `state` match `state_ref` (Ainsworth et al. 2023, weight matching): coordinate
    descent over the groups, each solved as a linear assignment on the summed inner products."""
    from scipy.optimize import linear_sum_assignment

    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    members = {g: spec.members(g) for g in spec.sizes}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for g in rng.permutation(sorted(spec.sizes)):
            g = int(g)
            n = spec.sizes[g]
            cost = np.zeros((n, n))
            for fqn, axis, _block in members[g]:
                other = permute_state({fqn: state[fqn]}, PermSpec(spec.sizes, {fqn: spec.axes[fqn]}, {}, []),
                                      perms, except_axis=(fqn, axis))[fqn]
                cost += _unit_rows(state_ref[fqn], axis, n) @ _unit_rows(other, axis, n).T
            _, cols = linear_sum_assignment(cost, maximize=True)
            old = cost[np.arange(n), perms[g]].sum()
            new = cost[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g], changed = cols, True
        if not changed:
            break
    return perms


def _activations(gm, spec: PermSpec, state: dict[str, Any], calib) -> dict[int, list[np.ndarray]]:
    """Per group, the standardised values (samples, units) of every layer writing it, at its output and after its
    BatchNorm and activation (what the next layer reads), on the calibration data."""
    at = {name: (name, _after_activation(gm, name)) for name in spec.hidden_outputs}
    linear = {name: _op_name(next(n for n in gm.graph.nodes if n.name == name)) == "linear" for name in at}
    axes = {node: -1 if linear[name] else 1 for name, nodes in at.items() for node in nodes}
    recorded = _run_with_stats(gm, state, calib, reset_bn=[], record=list(axes), keep=True, channels=axes)[2]
    out: dict[int, list[np.ndarray]] = {g: [] for g in spec.sizes}
    for name, g in spec.hidden_outputs.items():
        for node in dict.fromkeys(at[name]):  # once each, in order
            out[g].append(_standardised(recorded[node]))
    return out


def _match(acts_ref: dict[int, list[np.ndarray]], acts: dict[int, list[np.ndarray]], sizes: dict[int, int],
           perms_ref: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """Per group, the assignment of `acts`' units to the reference's (units permuted by perms_ref) maximising the
    summed correlation. Groups no weighted layer writes keep their order."""
    from scipy.optimize import linear_sum_assignment

    perms = {g: np.arange(n) for g, n in sizes.items()}
    for g, n in sizes.items():
        corr = np.zeros((n, n))
        for a, b in zip(acts_ref[g], acts[g]):
            a = a if perms_ref is None else a[:, perms_ref[g]]
            corr += a.T @ b / len(a)
        if corr.any():
            perms[g] = linear_sum_assignment(corr, maximize=True)[1]
    return perms


def activation_matching(gm, spec: PermSpec, state_ref: dict[str, Any], state: dict[str, Any], calib) \
        -> dict[int, np.ndarray]:
    """Permutations that make `state`'s hidden units match `state_ref`'s by the correlation of their values on
    calibration data (Ainsworth et al. 2023, activation matching; Jordan et al. 2023): per group, the summed
    correlation matrices of every layer writing it, at its output and after its BatchNorm and activation (what
    the next layer reads), solved as a linear assignment. Groups no weighted layer writes keep their order."""
    return _match(_activations(gm, spec, state_ref, calib), _activations(gm, spec, state, calib), spec.sizes)


def activation_merge_many(gm, spec: PermSpec, states: list[dict[str, Any]], calib, *, rounds: int = 5) \
        -> list[dict[int, np.ndarray]]:
    """Permutations of every state: first each matched to state 0 by activations, then (3 or more models) each
    re-matched to the sum of the others' aligned activations (MergeMany with activation matching) until no
    permutation changes (at most `rounds` rounds). A permutation leaves a model's function unchanged, so each
    model's activations are recorded once and only their columns move."""
    acts = [_activations(gm, spec, s, calib) for s in states]
    perms = [{g: np.arange(n) for g, n in spec.sizes.items()}]
    perms += [_match(acts[0], a, spec.sizes) for a in acts[1:]]
    if len(states) < 3:
        return perms
    for _ in range(rounds):
        changed = False
        for i in range(len(states)):
            others = {g: [sum(acts[j][g][k][:, perms[j][g]] for j in range(len(states)) if j != i)
                          for k in range(len(acts[i][g]))] for g in spec.sizes}
            found = _match(others, acts[i], spec.sizes)
            if any(not np.array_equal(found[g], perms[i][g]) for g in found):
                changed = True
            perms[i] = found
        if not changed:
            break
    return perms


def _after_activation(gm, name: str) -> str:
    """The node after a weighted layer's BatchNorm and activation (single-user chain of per-channel ops)."""
    node = next(n for n in gm.graph.nodes if n.name == name)
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_function" or user.args[0] is not node or \
                _op_name(user) not in _UNARY | {"batch_norm"} or _op_name(user) in ("softmax", "log_softmax"):
            break
        node = user
    return node.name


def _standardised(values) -> np.ndarray:
    x = values.double().numpy()
    x = x - x.mean(0)
    return x / (x.std(0) + 1e-8)


def align_states(spec: PermSpec, states: list[dict[str, Any]], *, rounds: int = 5, seed: int = 0,
                 gm=None, calib=None) -> list[dict[str, Any]]:
    """Each state permuted to match the others. With calibration data (gm, calib): by activation matching.
    Otherwise by weight matching. Either way, with 3 or more models, each is then re-matched to the others (the
    average of their weights / the sum of their activations; MergeMany, Ainsworth et al. 2023, appendix) until
    no permutation changes (at most `rounds` rounds); rounds=0: each matched to the first only."""
    if calib is not None:
        perms = activation_merge_many(gm, spec, states, calib, rounds=rounds)
        return [permute_state(s, spec, p) for s, p in zip(states, perms)]
    aligned = [states[0]] + [permute_state(s, spec, weight_matching(spec, states[0], s, seed=seed + i))
                             for i, s in enumerate(states[1:], start=1)]
    if len(states) < 3:
        return aligned
    perms: list[dict[int, np.ndarray] | None] = [None] * len(states)
    for r in range(rounds):
        changed = False
        for i, s in enumerate(states):
            others = [a for j, a in enumerate(aligned) if j != i]
            mean = combine(others, [1.0 / len(others)] * len(others))
            found = weight_matching(spec, mean, s, seed=seed + r * len(states) + i)
            if perms[i] is None or any(not np.array_equal(found[g], perms[i][g]) for g in found):
                changed = True
            perms[i] = found
            aligned[i] = permute_state(s, spec, found)
        if not changed:
            break
    return aligned


# --------------------------------------------------------------------------------------------------------------
# statistics: BatchNorm re-estimation and REPAIR


def _run_with_stats(gm, state: dict[str, Any], x, *, reset_bn: list[str], record: list[str],
                    targets: dict[str, tuple[Any, Any]] | None = None, keep: bool = False,
                    channels: dict[str, int] | None = None):
    """Run the exported module on x (one batch) with `state`. BatchNorm nodes in reset_bn use (and return) the
    statistics of their input here; outputs of nodes in `record` are recorded (per-channel mean, std) and, with
    `targets`, rescaled to the target mean/std (REPAIR), returning the per-channel (scale, shift) applied.
    keep: record the outputs themselves instead, as (samples, channels). channels: the channel axis of a recorded
    node (default: last for linear, else 1)."""
    import torch

    channels = channels or {}
    gm.load_state_dict(state, strict=True)
    bn_stats: dict[str, tuple[Any, Any]] = {}
    recorded: dict[str, tuple[Any, Any]] = {}
    corrections: dict[str, tuple[Any, Any]] = {}

    class Interp(torch.fx.Interpreter):
        def run_node(self, n):
            if n.name in reset_bn:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                inp = args[0]
                dims = [0] + list(range(2, inp.dim()))
                mean, var = inp.mean(dims), inp.var(dims, unbiased=inp.numel() // inp.shape[1] > 1)
                bn_stats[n.name] = (mean, var)
                args = list(args)
                args[3], args[4] = mean, var
                return n.target(*args, **kwargs)
            out = super().run_node(n)
            if n.name in record:
                channel = channels.get(n.name, -1 if _op_name(n) == "linear" else 1) % out.dim()
                dims = [d for d in range(out.dim()) if d != channel]
                if keep:
                    recorded[n.name] = out.movedim(channel, -1).reshape(-1, out.shape[channel]).clone()
                    return out
                mean, std = out.mean(dims), out.std(dims, unbiased=False)
                recorded[n.name] = (mean, std)
                if targets is not None and n.name in targets:
                    t_mean, t_std = targets[n.name]
                    scale = t_std / (std + 1e-5)
                    shift = t_mean - mean * scale
                    corrections[n.name] = (scale, shift)
                    view = [1] * out.dim()
                    view[channel] = -1
                    out = out * scale.view(view) + shift.view(view)
            return out

    with torch.no_grad():
        out = _batch_run(lambda: Interp(gm).run(x), x)
    return out, bn_stats, recorded, corrections


def _batch_run(fn, x):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        raise UserError(f"the model does not run on a batch of {len(x)} samples {list(x.shape)} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); statistics and "
                        "held-out accuracy run the data as one batch: if the forward fixes the batch size "
                        "(x.view(1, -1)), write x.flatten(1)") from None


def _bn_buffers(gm, name: str) -> tuple[str, str]:
    node = next(n for n in gm.graph.nodes if n.name == name)
    return str(node.args[3].target), str(node.args[4].target)


def _weight_bias(gm, name: str) -> tuple[str, str | None]:
    node = next(n for n in gm.graph.nodes if n.name == name)
    bias = node.args[2] if len(node.args) > 2 else None
    return str(node.args[1].target), (str(bias.target) if bias is not None else None)


def _repair(gm, spec: PermSpec, merged: dict[str, Any], members: list[dict[str, Any]], coeffs: list[float],
            calib) -> tuple[dict[str, Any], list[str]]:
    """BatchNorm running statistics re-estimated on calib; hidden weighted layers without a BatchNorm after them
    rescaled per output channel to the coefficient-weighted mean/std of the members (REPAIR)."""
    import torch

    followed_by_bn = set()
    for node in gm.graph.nodes:
        if node.name in spec.bn_nodes and isinstance(node.args[0], torch.fx.Node):
            followed_by_bn.add(node.args[0].name)
    layers = [name for name in spec.hidden_outputs if name not in followed_by_bn
              and _weight_bias(gm, name)[1] is not None]
    targets = {}
    if layers:
        stats = [_run_with_stats(gm, s, calib, reset_bn=[], record=layers)[2] for s in members]
        for name in layers:
            targets[name] = (sum(c * st[name][0] for c, st in zip(coeffs, stats)),
                             sum(c * st[name][1] for c, st in zip(coeffs, stats)))
    _, bn_stats, _, corrections = _run_with_stats(gm, merged, calib, reset_bn=spec.bn_nodes, record=layers,
                                                  targets=targets)
    out = dict(merged)
    for name, (mean, var) in bn_stats.items():
        rm, rv = _bn_buffers(gm, name)
        out[rm], out[rv] = mean.to(out[rm].dtype), var.to(out[rv].dtype)
    for name, (scale, shift) in corrections.items():
        w, b = _weight_bias(gm, name)
        axis = 1 if _op_name(next(n for n in gm.graph.nodes if n.name == name)).startswith("conv_transpose") else 0
        view = [1] * out[w].dim()
        view[axis] = -1
        out[w] = out[w] * scale.view(view)
        out[b] = out[b] * scale + shift
    gm.load_state_dict(merged, strict=True)
    return out, list(bn_stats) + list(corrections)


# --------------------------------------------------------------------------------------------------------------
# merge


def _states(models: list[Any]) -> list[dict[str, Any]]:
    import torch

    states = []
    for i, m in enumerate(models):
        if isinstance(m, torch.export.ExportedProgram):
            m = m.module()
        if not isinstance(m, torch.nn.Module):
            raise UserError(f"model {i + 1} is a {type(m).__name__}; give nn.Modules (or ExportedPrograms) of one "
                            "architecture")
        states.append({k: v.detach().cpu() for k, v in m.state_dict().items()})
    ref = states[0]
    for i, s in enumerate(states[1:], start=2):
        for name in ref:
            if name not in s:
                raise UserError(f"model {i} has no '{name}' (model 1 has it): merging needs models of one "
                                "architecture (same parameter names and shapes)")
            if tuple(s[name].shape) != tuple(ref[name].shape) or s[name].dtype != ref[name].dtype:
                raise UserError(f"model {i} differs from model 1 at '{name}': {s[name].dtype} "
                                f"{list(s[name].shape)} vs {ref[name].dtype} {list(ref[name].shape)}; merging needs "
                                "models of one architecture")
        extra = [name for name in s if name not in ref]
        if extra:
            raise UserError(f"model {i} has '{extra[0]}', which model 1 has not: merging needs models of one "
                            "architecture (same parameter names and shapes)")
    return states


def check_coeffs(coeffs: Any, n: int) -> list[float]:
    """Validated coefficients: n finite, non-negative numbers summing to 1."""
    try:
        values = [float(c) for c in coeffs]
    except (TypeError, ValueError):
        raise UserError(f"coefficients {coeffs!r}: give {n} numbers, e.g. {','.join(['%.3g' % (1 / n)] * n)}") \
            from None
    if len(values) != n:
        raise UserError(f"{len(values)} coefficients for {n} models; give one per model (e.g. "
                        f"{','.join(['%.3g' % (1 / n)] * n)})")
    if not all(np.isfinite(values)):
        raise UserError(f"coefficients {values}: not finite")
    if any(c < 0 for c in values):
        raise UserError(f"coefficient {min(values):g} is negative; merging averages models, coefficients are >= 0 "
                        "and sum to 1")
    total = sum(values)
    if abs(total - 1.0) > 1e-6:
        hint = f", e.g. {','.join('%.4g' % (c / total) for c in values)}" if total > 0 else ""
        raise UserError(f"coefficients sum to {total:.6g}; they must sum to 1 (W = sum C_i W_i is a weighted "
                        f"average){hint}")
    return values


def combine(states: list[dict[str, Any]], coeffs: list[float]) -> dict[str, Any]:
    """W = sum_i C_i W_i for every floating-point tensor; integer buffers (BatchNorm's batch count) of model 1."""
    out = {}
    for name, ref in states[0].items():
        if ref.is_floating_point():
            acc = ref.double() * coeffs[0]
            for c, s in zip(coeffs[1:], states[1:]):
                acc = acc + s[name].double() * c
            out[name] = acc.to(ref.dtype)
        else:
            out[name] = ref.clone()
    return out


def _tensor(data, what: str):
    import torch

    if data is None:
        return None
    t = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    if not t.is_floating_point():
        raise UserError(f"{what} has dtype {t.dtype}; give float samples in the model's input layout")
    if t.dim() < 1 or len(t) == 0:
        raise UserError(f"{what} is empty; give float samples (N, ...) in the model's input layout")
    return t.float()


def merge(models: list[Any], coeffs: list[float] | None = None, *, method: str = "uniform",
          align: bool | str = False,
          repair: bool | str = "auto", calib_data: Any = None, eval_data: Any = None, labels: Any = None,
          example_input: Any = None, seed: int = 0, reference: int | str = 0, rounds: int = 5,
          return_info: bool = False):
    """Merge models of one architecture into one: W = sum_i C_i W_i.

    models: nn.Modules (or ExportedPrograms) with the same parameter names and shapes.
    coeffs: one per model, >= 0, summing to 1. If None, `method` chooses them:
        "uniform": 1/n each; "greedy": greedy soup (members sorted by held-out accuracy, each added only if the
        average's held-out accuracy does not drop; Wortsman et al. 2022); "search": coordinate search on the
        simplex from the uniform point, maximising held-out accuracy (ties: lower loss). greedy and search need
        eval_data and labels.
    align: permute each model's hidden units to match the reference model first (for independently trained
        models): "activations" (by the correlation of their outputs on calib_data), "weights" (weight matching, no
        data needed), "auto" (both, keeping the one whose merged model scores better on the held-out data: needs
        calib_data, eval_data and labels), True = "auto" when all three are given, else activations when
        calib_data is given, else weights. With 3 or more models each is then re-matched to the others
        (MergeMany) for up to `rounds` rounds (0: each matched to the reference only).
    reference: the model the others are aligned to first: its index (default 0, the first) or "best" (the best
        on the held-out data). The merged model is a copy of the first model either way.
    repair: re-estimate BatchNorm statistics and rescale hidden layers without BatchNorm (REPAIR) on calib_data;
        "auto" = when calib_data is given.
    calib_data: float samples in the model's input layout, (N, C, H, W) / (N, F), run as one batch.
    eval_data, labels: held-out samples and integer class labels for greedy / search (and the reported accuracy).
    example_input: an input tensor for torch.export (align / repair); default: the first sample of calib_data
        or eval_data.
    Returns the merged nn.Module (a copy of model 1 with the merged state; an ExportedProgram gives its module());
    with return_info=True, (module, MergeInfo).
    """
    import torch

    models = list(models)
    if len(models) < 2:
        raise UserError(f"merge needs at least 2 models, got {len(models)}")
    if method not in METHODS:
        raise UserError(f"method '{method}': choose one of {', '.join(METHODS)}")
    if coeffs is not None and method != "uniform":
        raise UserError(f"give coefficients or method='{method}', not both")
    if repair not in ("auto", True, False):
        raise UserError(f"repair={repair!r}: give True, False or 'auto'")
    states = _states(models)
    n = len(models)
    weights = check_coeffs(coeffs, n) if coeffs is not None else None
    calib = _tensor(calib_data, "calibration data")
    x_eval = _tensor(eval_data, "evaluation data")
    y_eval = None
    if labels is not None:
        y_eval = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        if x_eval is None:
            raise UserError("labels given without eval_data; give both (held-out samples and their labels)")
        if len(y_eval) != len(x_eval):
            raise UserError(f"{len(y_eval)} labels for {len(x_eval)} evaluation samples")
    if method in ("greedy", "search") and y_eval is None:
        raise UserError(f"method='{method}' chooses coefficients by held-out accuracy: give eval_data and labels")
    if align not in (True, False, "weights", "activations", "auto"):
        raise UserError(f"align={align!r}: give True, False, 'weights', 'activations' or 'auto'")
    if align == "activations" and calib is None:
        raise UserError("align='activations' matches hidden units by their outputs: give calib_data")
    if align == "auto" and (calib is None or y_eval is None):
        raise UserError("align='auto' tries weight and activation matching and keeps the better on held-out data: "
                        "give calib_data, eval_data and labels")
    if align is True:
        align = "auto" if calib is not None and y_eval is not None else "activations" if calib is not None \
            else "weights"
    if reference != "best" and (isinstance(reference, bool) or not isinstance(reference, (int, np.integer))
                                or not 0 <= reference < n):
        raise UserError(f"reference={reference!r}: give a model index 0..{n - 1} or 'best'")
    if reference == "best" and y_eval is None:
        raise UserError("reference='best' picks the member with the best held-out accuracy: give eval_data and "
                        "labels")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 0:
        raise UserError(f"rounds={rounds!r}: give a number of MergeMany rounds >= 0")
    do_repair = (calib is not None) if repair == "auto" else bool(repair)
    if do_repair and calib is None:
        raise UserError("repair needs calibration data (calib_data: samples the merged model's statistics are "
                        "re-estimated on)")

    first = models[0].module() if isinstance(models[0], torch.export.ExportedProgram) else models[0]
    gm = spec = None
    if align or do_repair or x_eval is not None:
        example = example_input
        if example is None:
            source = calib if calib is not None else x_eval
            if source is None:
                raise UserError("give example_input (an input tensor) or calib_data to trace the model")
            example = source[:1]
        example = _tensor(example, "example input")
        gm = traced(models[0], example)
        spec = perm_spec(gm, strict=align)

    def build(c: list[float]) -> tuple[dict[str, Any], list[str]]:
        merged = combine(states, c)
        if do_repair:
            used = [(ci, s) for ci, s in zip(c, states) if ci > 0]
            return _repair(gm, spec, merged, [s for _, s in used], [ci for ci, _ in used], calib)
        return merged, []

    def evaluate(state: dict[str, Any]) -> tuple[float, float]:
        gm.load_state_dict(state, strict=True)
        with torch.no_grad():
            out = _batch_run(lambda: gm(x_eval), x_eval)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out = out.reshape(len(x_eval), -1)
        acc = 100.0 * float((out.argmax(1) == y_eval).double().mean())
        loss = float(torch.nn.functional.cross_entropy(out.double(), y_eval))
        return acc, -loss

    member_acc = [evaluate(s)[0] for s in states] if y_eval is not None else None
    align_method = align or None
    if align:
        ref = int(np.argmax(member_acc)) if reference == "best" else int(reference)  # first of the best on ties
        order = [ref] + [i for i in range(n) if i != ref]

        def aligned_states(by_activations: bool) -> list[dict[str, Any]]:
            got = align_states(spec, [states[i] for i in order], seed=seed, rounds=int(rounds), gm=gm,
                               calib=calib if by_activations else None)
            return [got[order.index(i)] for i in range(n)]

        if align == "auto":  # both; the better merged model (given / uniform coefficients) on the held-out data
            trial = weights or [1.0 / n] * n
            candidates = {m: aligned_states(m == "activations") for m in ("activations", "weights")}
            scores = {}
            for m, cand in candidates.items():
                states = cand
                scores[m] = evaluate(build(trial)[0])
            align_method = max(scores, key=lambda m: scores[m])  # ties: activations (listed first)
            states = candidates[align_method]
        else:
            states = aligned_states(align == "activations")
    if weights is None:
        if method == "uniform":
            weights = [1.0 / n] * n
        elif method == "greedy":
            weights = _greedy(n, member_acc, build, evaluate)
        else:
            weights = _search(n, build, evaluate)
    state, repaired = build(weights)
    accuracy = evaluate(state)[0] if y_eval is not None else None
    with warnings.catch_warnings():  # torch's own deprecation notice (LeafSpec) when copying a GraphModule
        warnings.simplefilter("ignore", FutureWarning)
        result = copy.deepcopy(first)
    result.load_state_dict(state, strict=True)
    info = MergeInfo(coeffs=weights, method="coeffs" if coeffs is not None else method, aligned=bool(align),
                     align_method=align_method,
                     repaired=repaired, member_accuracy=member_acc, accuracy=accuracy,
                     permutations=len(spec.sizes) if align and spec is not None else 0)
    return (result, info) if return_info else result


def _greedy(n: int, member_acc: list[float], build, evaluate) -> list[float]:
    """Greedy soup: the best member, then each next-best added if the held-out accuracy does not drop."""
    order = sorted(range(n), key=lambda i: (-member_acc[i], i))
    chosen = [order[0]]
    best = member_acc[order[0]]
    for i in order[1:]:
        trial = chosen + [i]
        acc = evaluate(build([1.0 / len(trial) if j in trial else 0.0 for j in range(n)])[0])[0]
        if acc >= best:
            chosen, best = trial, acc
    return [1.0 / len(chosen) if j in chosen else 0.0 for j in range(n)]


def _search(n: int, build, evaluate, *, min_step: float = 1 / 32, max_evals: int = 200) -> list[float]:
    """Coordinate search on the simplex from the uniform point: move `step` of weight from model j to model i
    while held-out (accuracy, -loss) improves; halve the step when no move does. Deterministic."""
    c = [1.0 / n] * n
    best = evaluate(build(c)[0])
    step, evals = 1.0 / (2 * n), 1
    while step >= min_step and evals < max_evals:
        improved = False
        for i in range(n):
            for j in range(n):
                move = min(step, c[j])
                if i == j or move <= 0:
                    continue
                trial = list(c)
                trial[i] += move
                trial[j] -= move
                score = evaluate(build(trial)[0])
                evals += 1
                if score > best:
                    c, best, improved = trial, score, True
        if not improved:
            step /= 2
    total = sum(c)
    return [v / total for v in c]


# --------------------------------------------------------------------------------------------------------------
# files (qgen merge)


def _is_factory(target: str) -> bool:
    from pathlib import Path

    return ":" in target and not target.endswith((".pt", ".pt2", ".pth")) and not Path(target).is_file()


def load_members(targets: list[str], input_shape: tuple[int, ...] | None = None) -> tuple[list[Any], Any]:
    """`qgen merge`'s models: [file.py:factory] then state dicts (.pt, loaded into fresh factory models) and/or
    saved programs (.pt2). Returns (models, example input or None)."""
    from pathlib import Path

    import torch

    from ..frontend import load_model

    factory = targets[0] if targets and _is_factory(targets[0]) else None
    files = targets[1:] if factory else list(targets)
    if len(files) < 2:
        raise UserError(f"merge needs at least 2 models, got {len(files)}: give state dicts (a factory first: "
                        "qgen merge model.py:make a.pt b.pt) or saved programs (qgen merge a.pt2 b.pt2)")
    models, example = [], None
    for path in files:
        if path.endswith(".pt2"):
            program, _ = load_model(path, None)
            models.append(program)
            if example is None:
                from ..frontend.torch_export import _program_input_shape

                shape = _program_input_shape(program)
                example = torch.zeros(shape) if shape is not None else None
            continue
        if factory is None:
            raise UserError(f"'{path}' is not a saved program (.pt2); state dicts need the model's factory first: "
                            f"qgen merge model.py:make {path} ...")
        if not Path(path).is_file():
            raise UserError(f"model file '{path}' does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle and zip errors of many types
            raise UserError(f"cannot read '{path}' as a state dict ({type(exc).__name__}); save it with "
                            "torch.save(model.state_dict(), 'a.pt')") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"'{path}' holds a {type(state).__name__}, not a state dict; save it with "
                            "torch.save(model.state_dict(), 'a.pt')")
        module, made_example = load_model(factory, input_shape)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).replace("\n\t", " ").splitlines()
            raise UserError(f"'{path}' does not fit {factory}(): {first[1] if len(first) > 1 else first[0]}") \
                from None
        models.append(module.eval())
        example = made_example if example is None else example
    if example is None and input_shape is not None:
        example = torch.zeros(input_shape)
    return models, example


def save_merged(model, example, path: str) -> None:
    """merged.pt2 (torch.export program: `qgen compile merged.pt2`) or merged.pt (state dict), atomically."""
    import io

    import torch

    from ..output import write_file_atomic

    buffer = io.BytesIO()
    if path.endswith(".pt2"):
        if example is None:
            raise UserError("a .pt2 output needs the input shape: give --input-shape (e.g. 1,1,8,8)")
        was_training = model.training
        model.eval()
        try:
            program = torch.export.export(model, (example[:1],))
        finally:
            model.train(was_training)
        torch.export.save(program, buffer)
    elif path.endswith((".pt", ".pth")):
        torch.save(model.state_dict(), buffer)
    else:
        raise UserError(f"-o {path}: give merged.pt2 (a program qgen compile takes) or merged.pt (a state dict "
                        "for the factory)")
    write_file_atomic(path, buffer.getvalue())


def load_samples(path: str, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples of a .npy array, or arrays x (and y, labels) of an .npz archive."""
    from pathlib import Path

    if not Path(path).is_file():
        raise UserError(f"{what} file '{path}' does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read {what} '{path}' ({type(exc).__name__}); give a .npy array or an .npz with "
                        "arrays x and y") from None
    if isinstance(data, np.ndarray):
        return data, None
    with data:
        if "x" not in data.files:
            raise UserError(f"{what} '{path}' has arrays {', '.join(data.files)}; give x (samples) and y (labels)")
        return data["x"], (data["y"] if "y" in data.files else None)

