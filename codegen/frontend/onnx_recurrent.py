"""ONNX GRU / LSTM / RNN -> the recurrent IR nodes (codegen/ops/recurrent.py), as the PyTorch front end builds them.

ONNX moves a sequence through Transpose / Reshape / Gather / Squeeze / Slice around each recurrent node (torch.onnx
writes `Transpose(1, 0, 2) -> GRU -> Transpose(0, 2, 1, 3) -> Reshape -> Transpose(1, 0, 2) -> Gather` for a
batch_first GRU read at its last step). Such values are `_Seq`: one IR tensor (1, T, D*C) (time-major, the
directions side by side in the features, as the recurrent nodes write them) plus the names of the ONNX axes
('t' time, 'b' batch of 1, 'd' direction, 'c' features); those ops only rename axes or make one SLICE, so no layout
copy is made. Where a `_Seq` meets any other op it becomes an ordinary activation (`to_act`). Y_h is a `_Seq`
without a time axis over the directions' final states (forward: the state at T-1, reverse: at 0); `finish`
turns a node whose output is only read at its final position into a last=True node (no T*H output).

Supported: direction forward / reverse / bidirectional, layout 0 and 1, constant initial_h / initial_c (absent:
zeros), B absent (zeros), GRU with linear_before_reset=1 (PyTorch's GRU), RNN Tanh / Relu. Refused, naming the
node: linear_before_reset=0, clip, other activations, peepholes (P), input_forget=1, sequence_lens other than
all T, a computed initial state, Y_c.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Node, Op, Tensor
from ..ops.recurrent import GATES

KINDS = {"GRU": Op.GRU, "LSTM": Op.LSTM, "RNN": Op.RNN}
# ONNX gate order -> PyTorch's: GRU z r h -> r z n; LSTM i o f c -> i f g o
GATE_ORDER = {Op.GRU: (1, 0, 2), Op.LSTM: (0, 2, 3, 1), Op.RNN: (0,)}
SEQ_OPS = ("Transpose", "Reshape", "Flatten", "Gather", "Squeeze", "Unsqueeze", "Slice", "Shape", "Identity", "Concat")


class _Seq:
    """A sequence value: IR tensor (1, T, D*C) and the ONNX axes ('t', 'b', 'd', 'c') in ONNX order."""

    def __init__(self, name: str, dims: tuple[str, ...], dirs: int, steps: int | None):
        self.name, self.dims, self.dirs, self.steps = name, tuple(dims), dirs, steps

    def sizes(self, imp) -> dict[str, int]:
        _, t, f = imp.shape_of(self.name)
        d = self.dirs if "d" in self.dims else 1
        return {"t": t, "b": 1, "d": d, "c": f // d}

    def onnx_shape(self, imp) -> tuple[int, ...]:
        s = self.sizes(imp)
        return tuple(s[a] for a in self.dims)


def wants_sequence(imp, name: str) -> bool:
    """An ONNX (1, T, F) input read only by recurrent nodes, directly (layout=1) or through Transpose(1, 0, 2)."""
    users = imp.users.get(name, [])
    ok = []
    for u in users:
        if u.op_type in KINDS:
            ok.append(u.input[0] == name and int(imp.attr(u, "layout", 0)) == 1)
        elif u.op_type == "Transpose" and list(imp.attr(u, "perm") or []) == [1, 0, 2]:
            later = imp.users.get(u.output[0], [])
            ok.append(any(v.op_type in KINDS for v in later) and all(  # (Shape: the exporter's batch size)
                v.op_type == "Shape" or (v.op_type in KINDS and v.input[0] == u.output[0]
                                         and int(imp.attr(v, "layout", 0)) == 0) for v in later))
        else:
            ok.append(False)
    return bool(users) and all(ok)


def input_sequence(imp, name: str, shape: tuple[int, ...]) -> _Seq:
    return _Seq(name, ("b", "t", "c"), 1, shape[1])


def from_act(imp, node, act) -> _Seq:
    """An ordinary activation read as a sequence: ONNX (1, C, L) is IR (1, L, C): axes ('b', 'c', 't')."""
    if act.rank != 3:
        raise imp.err(node, f"a recurrent layer over a rank-{act.rank} tensor; qgen reads (T, 1, F) / (1, T, F) "
                            "sequences")
    return _Seq(act.name, ("b", "c", "t"), 1, imp.shape_of(act.name)[1])


def to_act(imp, node, seq: _Seq):
    """A sequence value where an ordinary op reads it: (1, F) a vector, (1, C, T) the canonical sequence (no
    copy), (1, T, C) a sequence copied into the canonical layout (one TRANSPOSE)."""
    from .onnx_import import _Act

    shape = seq.onnx_shape(imp)
    sizes = seq.sizes(imp)
    if len(shape) == 2 and shape[0] == 1 and [a for a in seq.dims if sizes[a] > 1] in (["c"], ["d", "c"], []):
        f = shape[1]
        return _Act(_alias(imp, node, seq.name, (f,)), 2)
    if len(shape) == 3 and shape[0] == 1 and seq.dims[1:] == ("c", "t"):
        return _Act(seq.name, 3)
    if len(shape) == 3 and shape[0] == 1 and seq.dims[1:] == ("t", "c"):
        _, t, c = imp.shape_of(seq.name)
        out = imp.act(node, (1, c, t), name=f"{seq.name}_t")
        imp.graph.nodes.append(Node(_unique(imp, f"{seq.name}_t"), Op.TRANSPOSE, [seq.name], [out],
                                    {"perm": (0, 2, 1)}, ""))
        return _Act(out, 3)
    raise imp.err(node, f"reads a recurrent layer's output as ONNX shape {list(shape)} (axes {''.join(seq.dims)}); "
                        "qgen supports (1, F), (1, C, T) and (1, T, C) there")


def _unique(imp, base: str) -> str:
    name, i = base, 1
    while name in imp.used_names:
        name, i = f"{base}_{i}", i + 1
    imp.used_names.add(name)
    return name


def _alias(imp, node, name: str, shape: tuple[int, ...]) -> str:
    if imp.shape_of(name) == tuple(shape):
        return name
    out = imp.graph.fresh_name(f"{name}_as")
    imp.graph.tensors[out] = Tensor(out, tuple(shape))
    imp.graph.nodes.append(Node(_unique(imp, f"{name}_as"), Op.RESHAPE, [name], [out], {"shape": tuple(shape)}, ""))
    return out


def _slice(imp, node, x: str, axis: int, start: int, length: int) -> str:
    shape = list(imp.shape_of(x))
    if start == 0 and length == shape[axis]:
        return x
    shape[axis] = length
    out = imp.act(node, tuple(shape), name=f"{x}_at{start}")
    imp.graph.nodes.append(Node(_unique(imp, imp.names(node)[0] or imp.names(node)[1]), Op.SLICE, [x], [out],
                                {"axis": axis, "start": int(start), "length": int(length)}, imp.names(node)[2]))
    return out


def _concat(imp, node, parts: list[str], axis: int, name: str) -> str:
    if len(parts) == 1:
        return parts[0]
    shape = list(imp.shape_of(parts[0]))
    shape[axis] = sum(imp.shape_of(p)[axis] for p in parts)
    out = imp.act(node, tuple(shape), name=f"{name}_cat")
    imp.graph.nodes.append(Node(_unique(imp, f"{name}_cat"), Op.CONCAT, parts, [out], {"axis": axis},
                                imp.names(node)[2]))
    return out


# ---------------------------------------------------------------- the recurrent nodes


def recurrent(imp, node):
    op = KINDS[node.op_type]
    kind = node.op_type
    hidden = int(imp.attr(node, "hidden_size", 0))
    direction = imp.attr(node, "direction", "forward")
    layout = int(imp.attr(node, "layout", 0))
    dirs = 2 if direction == "bidirectional" else 1
    if direction not in ("forward", "reverse", "bidirectional"):
        raise imp.err(node, f"direction '{direction}'")
    if op is Op.GRU and int(imp.attr(node, "linear_before_reset", 0)) != 1:
        raise imp.err(node, "GRU with linear_before_reset=0 (ONNX's default; the reset gate applied before the "
                            "recurrent matrix); qgen implements linear_before_reset=1, PyTorch's nn.GRU. Export from "
                            "PyTorch or retrain with linear_before_reset=1.")
    if imp.attr(node, "clip") is not None:
        raise imp.err(node, f"{kind} with clip={imp.attr(node, 'clip')}; qgen supports unclipped cells")
    if int(imp.attr(node, "input_forget", 0)):
        raise imp.err(node, "LSTM with input_forget=1 (coupled gates); qgen supports PyTorch's LSTM")
    acts = [a.decode() if isinstance(a, bytes) else a for a in (imp.attr(node, "activations") or [])]
    default = {Op.GRU: ["Sigmoid", "Tanh"], Op.LSTM: ["Sigmoid", "Tanh", "Tanh"], Op.RNN: ["Tanh"]}[op]
    nonlinearity = None
    if op is Op.RNN:
        if acts and any(a != acts[0] for a in acts) or (acts and acts[0] not in ("Tanh", "Relu")):
            raise imp.err(node, f"RNN activations {acts}; qgen supports Tanh or Relu")
        nonlinearity = (acts[0] if acts else "Tanh").lower()
    elif acts and acts != default * dirs and acts != default:
        raise imp.err(node, f"{kind} activations {acts}; qgen supports the defaults {default}")
    if len(node.input) > 7 and node.input[7]:
        raise imp.err(node, "LSTM with peepholes (input P); qgen supports PyTorch's LSTM (no peepholes)")
    x = _sequence_input(imp, node, layout)
    _, steps, features = imp.shape_of(x.name)
    lens = imp.input_const(node, 4, "sequence_lens")
    if lens is not None and np.any(np.asarray(lens) != steps):
        raise imp.err(node, f"sequence_lens {np.asarray(lens).tolist()} shorter than the sequence ({steps}); qgen "
                            "runs every step")
    w, r = imp.input_const(node, 1, "W"), imp.input_const(node, 2, "R")
    b = imp.input_const(node, 3, "B")
    gates = GATES[op]
    if w is None or w.shape != (dirs, gates * hidden, features):
        raise imp.err(node, f"W of shape {None if w is None else list(w.shape)}; expected "
                            f"{[dirs, gates * hidden, features]}")
    b = np.zeros((dirs, 2 * gates * hidden)) if b is None else np.asarray(b, np.float64)
    h0 = _state(imp, node, 5, "initial_h", dirs, hidden, layout)
    c0 = _state(imp, node, 6, "initial_c", dirs, hidden, layout) if op is Op.LSTM else None
    order = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in GATE_ORDER[op]])
    base, source = imp.node_name(node), imp.names(node)[2]
    imp.used_names.discard(base)
    outs = []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        tag = f"{imp.base_name(node)}{'_reverse' if reverse else ''}"
        inputs = [x.name, imp.const(f"{tag}_w_ih", np.asarray(w[d], np.float64)[order]),
                  imp.const(f"{tag}_w_hh", np.asarray(r[d], np.float64)[order]),
                  imp.const(f"{tag}_b_ih", b[d, :gates * hidden][order]),
                  imp.const(f"{tag}_b_hh", b[d, gates * hidden:][order]), imp.const(f"{tag}_h0", h0[d])]
        if op is Op.LSTM:
            inputs.append(imp.const(f"{tag}_c0", c0[d]))
        attrs = {"hidden": hidden, "last": False, "reverse": reverse}
        if op is Op.RNN:
            attrs["nonlinearity"] = nonlinearity
        out = imp.act(node, (1, steps, hidden), name=tag)
        name = _unique(imp, base + ("_reverse" if dirs == 2 and reverse else ""))
        imp.graph.nodes.append(Node(name, op, inputs, [out], attrs, source))
        outs.append(out)
    def used(k: int) -> bool:
        out = node.output[k] if len(node.output) > k else ""
        return bool(out) and (bool(imp.users.get(out)) or out in {o.name for o in imp.model.graph.output})

    y = (_concat(imp, node, outs, 2, base) if dirs == 2 else outs[0]) if used(0) else outs[0]
    dims_y = ("t", "d", "b", "c") if layout == 0 else ("b", "t", "d", "c")
    finals = [_slice(imp, node, o, 1, 0 if (direction == "reverse" or d == 1) else steps - 1, 1)
              for d, o in enumerate(outs)] if used(1) else []
    values = [_Seq(y, dims_y, dirs, steps)]
    if finals:
        values.append(_Seq(_concat(imp, node, finals, 2, f"{base}_h_n"), ("d", "b", "c") if layout == 0
                           else ("b", "d", "c"), dirs, 1))
    if op is Op.LSTM and len(node.output) > 2 and node.output[2] and imp.users.get(node.output[2]):
        raise imp.err(node, "reads the LSTM's final cell state Y_c; qgen returns Y and Y_h")
    for name, value in zip(node.output[1:], values[1:]):
        imp.values[name] = value
    return values[0]


def _sequence_input(imp, node, layout: int) -> _Seq:
    from .onnx_import import _Act

    x = imp.values.get(node.input[0])
    if isinstance(x, _Act):
        x = from_act(imp, node, x)
    if not isinstance(x, _Seq):
        raise imp.err(node, "its input X must be a computed tensor")
    want = ("t", "b", "c") if layout == 0 else ("b", "t", "c")
    if x.dims != want and not ("d" not in want and tuple(a for a in x.dims if a != "d") == want and x.dirs >= 1
                               and x.dims.index("d") == x.dims.index("c") - 1):
        raise imp.err(node, f"input X with axes {''.join(x.dims)}; expected {''.join(want)} (layout={layout})")
    return x


def _state(imp, node, index: int, what: str, dirs: int, hidden: int, layout: int) -> np.ndarray:
    from .onnx_import import _Act

    if index < len(node.input) and node.input[index] and isinstance(imp.values.get(node.input[index]), (_Act, _Seq)):
        raise imp.err(node, f"its {what} is computed from the input; qgen supports a constant initial state "
                            "(an initializer, or absent: zeros)")
    value = imp.input_const(node, index, what)
    if value is None:
        return np.zeros((dirs, hidden))
    value = np.asarray(value, np.float64)
    if value.size != dirs * hidden:
        raise imp.err(node, f"{what} of shape {list(value.shape)}; qgen runs batch size 1")
    return value.reshape(dirs, hidden)


# ---------------------------------------------------------------- ops on sequence values


def sequence_op(imp, node):
    """Transpose / Reshape / Gather / Squeeze / Unsqueeze / Slice / Shape / Identity of a `_Seq`."""
    seq = imp.values[node.input[0]]
    sizes = seq.sizes(imp)
    op = node.op_type
    if op == "Identity":
        return seq
    if op == "Concat":  # the Y_h of stacked layers (along the directions), or sequences along time
        parts = [imp.values.get(i) for i in node.input]
        axis = int(imp.attr(node, "axis")) % len(seq.dims)
        if not all(isinstance(p, _Seq) and p.dims == seq.dims for p in parts) or seq.dims[axis] not in "dt":
            raise imp.err(node, "concatenates a recurrent layer's output with another tensor; qgen concatenates "
                                "the final states of recurrent layers (Y_h) or their outputs along time")
        if seq.dims[axis] == "t":
            out = _concat(imp, node, [p.name for p in parts], 1, imp.base_name(node))
            return _Seq(out, seq.dims, seq.dirs, sum(imp.shape_of(p.name)[1] for p in parts))
        out = _concat(imp, node, [p.name for p in parts], 2, imp.base_name(node))
        return _Seq(out, seq.dims, sum(p.sizes(imp)["d"] for p in parts), seq.steps)
    if op == "Shape":
        return np.array(seq.onnx_shape(imp), np.int64)
    if op == "Transpose":
        perm = imp.attr(node, "perm") or list(range(len(seq.dims)))[::-1]
        return _Seq(seq.name, tuple(seq.dims[p] for p in perm), seq.dirs, seq.steps)
    if op in ("Squeeze", "Unsqueeze"):
        axes = imp.input_const(node, 1, "axes") if len(node.input) > 1 else imp.attr(node, "axes")
        rank = len(seq.dims) + (len(np.atleast_1d(axes)) if op == "Unsqueeze" else 0)
        axes = sorted(int(a) % rank for a in np.atleast_1d(axes)) if axes is not None else \
            [i for i, a in enumerate(seq.dims) if sizes[a] == 1]
        if op == "Squeeze":
            if any(sizes[seq.dims[a]] != 1 for a in axes):
                raise imp.err(node, "squeezes an axis that is not 1")
            return _Seq(seq.name, tuple(a for i, a in enumerate(seq.dims) if i not in axes), seq.dirs, seq.steps)
        dims = list(seq.dims)
        for a in axes:
            if "b" in dims:
                raise imp.err(node, "adds a second unit axis to a recurrent layer's output")
            dims.insert(a, "b")
        return _Seq(seq.name, tuple(dims), seq.dirs, seq.steps)
    if op == "Reshape":
        target = [int(v) for v in np.asarray(imp.input_const(node, 1, "shape")).reshape(-1)]
        return _reshape(imp, node, seq, sizes, target)
    if op == "Flatten":
        shape, axis = seq.onnx_shape(imp), int(imp.attr(node, "axis", 1)) % (len(seq.dims) + 1)
        return _reshape(imp, node, seq, sizes, [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))])
    if op == "Gather":
        axis = int(imp.attr(node, "axis", 0)) % len(seq.dims)
        index = np.asarray(imp.input_const(node, 1, "indices"))
        if index.size != 1:
            raise imp.err(node, "gathers several positions of a recurrent layer's output; qgen takes one")
        k = int(index.reshape(-1)[0]) % sizes[seq.dims[axis]]
        out = _take(imp, node, seq, seq.dims[axis], k, 1)
        if index.ndim:  # a 1-element index array keeps the axis
            return out
        return _Seq(out.name, tuple(a for i, a in enumerate(seq.dims) if i != axis), out.dirs, out.steps)
    if op == "Slice":
        def get(i):
            if len(node.input) <= i or not node.input[i]:
                return None
            return [int(v) for v in np.asarray(imp.input_const(node, i, "slice bound")).reshape(-1)]
        starts, ends, axes, steps = get(1), get(2), get(3), get(4)
        axes = axes or list(range(len(starts)))
        out = seq
        for a, s0, e, st in zip(axes, starts, ends, steps or [1] * len(starts)):
            axis = out.dims[a % len(out.dims)]
            picked = list(range(out.sizes(imp)[axis]))[slice(s0, e, st)]
            if st != 1 or not picked:
                raise imp.err(node, f"slice with step {st} or empty; qgen takes a contiguous slice")
            out = _take(imp, node, out, axis, picked[0], len(picked))
        return out
    raise imp.err(node, f"{op} of a recurrent layer's output")


def _take(imp, node, seq: _Seq, axis: str, start: int, length: int) -> _Seq:
    """Positions start..start+length-1 of one axis: a SLICE of the IR's time axis or of its features."""
    sizes = seq.sizes(imp)
    if axis == "b":
        return seq
    if axis == "t":
        return _Seq(_slice(imp, node, seq.name, 1, start, length), seq.dims, seq.dirs, length)
    if axis == "d":
        h = sizes["c"]
        out = _slice(imp, node, seq.name, 2, start * h, length * h)
        return _Seq(out, seq.dims, length, seq.steps)
    if "d" in seq.dims and sizes["d"] > 1:
        raise imp.err(node, "slices the features of both directions at once")
    return _Seq(_slice(imp, node, seq.name, 2, start, length), seq.dims, 1, seq.steps)


def _reshape(imp, node, seq: _Seq, sizes: dict[str, int], target: list[int]) -> _Seq:
    """A reshape that only merges the direction axis into the features (d before c), or adds / drops unit axes."""
    shape = list(seq.onnx_shape(imp))
    target = [shape[i] if v == 0 else v for i, v in enumerate(target)]
    if -1 in target:
        rest = int(np.prod([v for v in target if v != -1]))
        target[target.index(-1)] = int(np.prod(shape)) // max(rest, 1)
    real = [a for a in seq.dims if sizes[a] > 1]
    if real.count("d") and real.index("d") + 1 < len(real) and real[real.index("d") + 1] != "c":
        raise imp.err(node, "reshapes a recurrent layer's output with the directions apart from the features")
    groups = [(a, sizes[a]) for a in real if a != "d"]
    groups = [(a, s * (sizes["d"] if a == "c" and "d" in real else 1)) for a, s in groups]
    dims, g = [], 0
    for v in target:
        if v == 1:
            dims.append("b" if "b" not in dims else ("d" if "d" not in dims else "x"))
            continue
        if g >= len(groups) or groups[g][1] != v:
            raise imp.err(node, f"reshape {shape} -> {target} of a recurrent layer's output; qgen supports merging "
                                "the directions into the features and unit axes")
        dims.append(groups[g][0])
        g += 1
    if "x" in dims or g != len(groups):
        raise imp.err(node, f"reshape {shape} -> {target} of a recurrent layer's output")
    dirs = seq.dirs if "d" in dims else seq.dirs  # merged: the features hold the directions side by side
    if "d" in dims and "d" not in real:
        dims[dims.index("d")] = "b" if "b" not in dims else "d"
    return _Seq(seq.name, tuple(dims), dirs if "d" in dims else seq.dirs, seq.steps)


def finish(graph) -> None:
    """A recurrent node read only at its final position (SLICE of T-1, or of 0 when reversed) becomes last=True."""
    users: dict[str, list] = {}
    for n in graph.nodes:
        for t in n.inputs:
            users.setdefault(t, []).append(n)
    for n in list(graph.nodes):
        if n.op not in KINDS.values() or n.outputs[0] in graph.outputs:
            continue
        steps = graph.tensors[n.outputs[0]].shape[1]
        end = 0 if n.attrs.get("reverse") else steps - 1
        reads = users.get(n.outputs[0], [])
        if steps == 1 or not reads or not all(
                r.op is Op.SLICE and r.attrs["axis"] == 1 and r.attrs["start"] == end and r.attrs["length"] == 1
                for r in reads):
            continue
        n.attrs["last"] = True
        out = graph.tensors[n.outputs[0]]
        out.shape = (1, 1, out.shape[2])
        for r in reads:
            graph.nodes.remove(r)
            for m in users.get(r.outputs[0], []):
                m.inputs = [n.outputs[0] if t == r.outputs[0] else t for t in m.inputs]
            if r.outputs[0] in graph.outputs:
                graph.outputs = [n.outputs[0] if t == r.outputs[0] else t for t in graph.outputs]
                graph.io_layout[n.outputs[0]] = graph.io_layout.pop(r.outputs[0], "nf")
            del graph.tensors[r.outputs[0]]


def route(imp, node, handler):
    """The handler for a node that reads a `_Seq` (or makes one): sequence ops on it, the recurrent nodes, and for
    any other op the sequence converted into an ordinary activation first."""
    from .onnx_import import _Act

    first = imp.values.get(node.input[0]) if node.input else None
    if node.op_type in KINDS:
        return handler
    if isinstance(first, _Seq) and node.op_type in SEQ_OPS:
        return sequence_op
    if node.op_type == "Transpose" and isinstance(first, _Act) and first.rank == 3 and _feeds_recurrent(
            imp, node.output[0]):
        imp.values[node.input[0]] = from_act(imp, node, first)  # (1, C, T) -> (T, 1, C) into a GRU: no copy
        return sequence_op
    for name in node.input:
        if isinstance(imp.values.get(name), _Seq):
            imp.values[name] = to_act(imp, node, imp.values[name])
    return handler


def _feeds_recurrent(imp, name: str, depth: int = 3) -> bool:
    """Value `name` is read as a recurrent node's X, directly or through Transposes (Shape reads aside)."""
    users = [u for u in imp.users.get(name, []) if u.op_type != "Shape"]
    return bool(users) and depth > 0 and all(
        (u.op_type in KINDS and u.input[0] == name)
        or (u.op_type == "Transpose" and _feeds_recurrent(imp, u.output[0], depth - 1)) for u in users)


def output_value(imp, name: str, seq: _Seq):
    """A model output that is a sequence value: (1, T, C) lying time-major is returned as it lies ('nlc');
    anything else goes through `to_act` (returned for the ordinary output path)."""
    sizes = seq.sizes(imp)
    shape = seq.onnx_shape(imp)
    real = [a for a in seq.dims if sizes[a] > 1]
    if len(shape) == 3 and shape[0] == 1 and real == [a for a in "tdc" if a in real]:  # IR order = ONNX order
        out = _alias(imp, None, seq.name, (1, shape[1], shape[2]))
        if out in imp.graph.outputs:
            raise UserError(f"ONNX output '{name}' is listed twice")
        imp.graph.outputs.append(out)
        imp.graph.io_layout[out] = "nlc"
        return out
    from onnx import helper  # a placeholder node for error messages
    return to_act(imp, helper.make_node("Identity", [name], [name], name=name), seq)
