"""nn.GRU / nn.LSTM / nn.RNN through torch.export -> one GRU / LSTM / RNN node per layer and direction.

torch.export gives `aten.gru.input(x, h0, params, has_biases, num_layers, dropout, train, bidirectional,
batch_first)` (lstm: `hx = [h0, c0]`; rnn_tanh / rnn_relu like gru) with the flat weight list of every layer and
direction, and an `aten.zeros` for an implicit initial state. The handler reads the layer's users (the
`getitem`s of output, h_n, c_n and what reads them) and builds only what they use
(codegen/ops/recurrent.py has the node schema):

- layer l > 0 reads layer l-1's int8 output (both directions concatenated along the features);
- a bidirectional layer is a forward node, a node with attrs reverse=True and a CONCAT along the features;
- when only the final state of the top layer is read (`h_n`, `h_n[-1]`, `out[:, -1]`, seq-first `out[-1]`) its
  node gets attrs last=True (output (1, 1, H): no T*H arena); the backward half of `out[:, -1]` of a
  bidirectional layer is its state after reading only the last frame: a one-step node on that frame;
- the final state of a lower layer (`h_n[0]` of two layers) is a slice of its output (forward: position T-1,
  reverse: position 0).
Values read ahead of their own fx node (a `select` of h_n or of the last time step) go to `lw.ready`.
"""
from __future__ import annotations

import operator

import numpy as np
import torch

from ..ir import Node, Op
from ..ops.recurrent import GATES
from . import layout
from .torch_export import _err, _torch_sizes, source_of

aten = torch.ops.aten

KINDS = {aten.gru.input: (Op.GRU, None), aten.lstm.input: (Op.LSTM, None),
         aten.rnn_tanh.input: (Op.RNN, "tanh"), aten.rnn_relu.input: (Op.RNN, "relu")}


def _row_major(sizes: tuple[int, ...]) -> layout.Layout:
    return layout.from_order(sizes, tuple(range(len(sizes))))


def _is_last_step(u, dim: int, steps: int) -> bool:
    """u reads only the last time step of the output: x[:, -1] / x[-1] (select) or x[:, -1:] (slice)."""
    rank = len(_torch_sizes(u) or ()) + (1 if u.target is aten.select.int else 0)
    if u.target is aten.select.int and len(u.args) == 3:
        return int(u.args[1]) % rank == dim and int(u.args[2]) % steps == steps - 1
    if u.target is aten.slice.Tensor:
        a = list(u.args) + [None] * (5 - len(u.args))
        if int(a[1] if a[1] is not None else 0) % rank != dim:
            return False
        return list(range(steps))[slice(a[2], a[3], a[4] or 1)] == [steps - 1]
    return False


def _used(node) -> bool:
    """Some chain of users of `node` reaches the model's output (torch's unbatched RNN squeezes h_n and c_n even
    when nothing reads them)."""
    return any(u.op == "output" or _used(u) for u in node.users)


def _skip(lw, node) -> None:
    lw.ready[node.name] = (None, None)
    for u in node.users:
        _skip(lw, u)


def _select_index(u, count: int) -> int | None:
    """k of h_n[k] (a select along dim 0), or None."""
    if u.target is aten.select.int and len(u.args) == 3 and int(u.args[1]) == 0:
        return int(u.args[2]) % count
    return None


class _Builder:
    """The nodes of one recurrent fx node, made on demand (each at most once)."""

    def __init__(self, lw, n, op: Op, nonlinearity: str | None, x: str, weights: list, h0: np.ndarray,
                 c0: np.ndarray | None, layers: int, dirs: int, hidden: int, steps: int):
        self.lw, self.n, self.op, self.nonlinearity = lw, n, op, nonlinearity
        self.weights, self.h0, self.c0 = weights, h0, c0
        self.layers, self.dirs, self.hidden, self.steps = layers, dirs, hidden, steps
        self.source = source_of(n)
        self.base = lw.node_name(n)  # the layer's path ('rnn'); its nodes take it or 'rnn.l1_reverse'
        lw.used_names.discard(self.base)
        self.memo: dict = {}
        self.x = x
        self.top_full: set[int] = set()  # directions of the top layer computed over the whole output

    def _name(self, layer: int, d: int) -> str:
        name = self.base
        if self.layers > 1 or self.dirs > 1:
            name += f".l{layer}{'_reverse' if d else ''}"
        while name in self.lw.used_names:
            name += "_"
        self.lw.used_names.add(name)
        return name

    def node(self, layer: int, d: int, x: str, last: bool) -> str:
        lw, k, h = self.lw, layer * self.dirs + d, self.hidden
        w_ih, w_hh, b_ih, b_hh = self.weights[k]
        tag = self.n.name if self.layers == self.dirs == 1 else f"{self.n.name}_l{layer}{'_reverse' if d else ''}"
        inputs = [x, lw.const(f"{tag}_w_ih", w_ih), lw.const(f"{tag}_w_hh", w_hh), lw.const(f"{tag}_b_ih", b_ih),
                  lw.const(f"{tag}_b_hh", b_hh), lw.const(f"{tag}_h0", self.h0[k])]
        if self.op is Op.LSTM:
            inputs.append(lw.const(f"{tag}_c0", self.c0[k]))
        attrs = {"hidden": h, "last": bool(last), "reverse": bool(d)}
        if self.op is Op.RNN:
            attrs["nonlinearity"] = self.nonlinearity
        t = lw.shape_of(x)[1]
        out = lw.act(tag, (1, 1 if last else t, h))
        lw.graph.nodes.append(Node(self._name(layer, d), self.op, inputs, [out], attrs, self.source))
        return out

    def _concat(self, parts: list[str], shape: tuple[int, ...], name: str, **attrs) -> str:
        out = self.lw.act(f"{self.n.name}_cat", shape)
        while name in self.lw.used_names:
            name += "_"
        self.lw.used_names.add(name)
        self.lw.graph.nodes.append(Node(name, Op.CONCAT, parts, [out], attrs, self.source))
        return out

    def slice_time(self, x: str, start: int) -> str:
        _, _, c = self.lw.shape_of(x)
        out = self.lw.act(f"{x}_at{start}", (1, 1, c))
        name = f"{self.lw.graph.producer(x).name}_at{start}"
        while name in self.lw.used_names:
            name += "_"
        self.lw.used_names.add(name)
        self.lw.graph.nodes.append(Node(name, Op.SLICE, [x], [out], {"axis": 1, "start": int(start), "length": 1},
                                        self.source))
        return out

    def concat(self, parts: list[str], axis: int, name: str) -> str:
        if len(parts) == 1:
            return parts[0]
        shape = list(self.lw.shape_of(parts[0]))
        shape[axis] = sum(self.lw.shape_of(p)[axis] for p in parts)
        return self._concat(parts, tuple(shape), name, axis=axis)

    # -- what the users read
    def layer_input(self, layer: int) -> str:
        return self.x if layer == 0 else self.full(layer - 1)

    def direction(self, layer: int, d: int) -> str:
        """The full output (1, T, H) of one layer and direction."""
        key = ("dir", layer, d)
        if key not in self.memo:
            self.memo[key] = self.node(layer, d, self.layer_input(layer), last=False)
        return self.memo[key]

    def full(self, layer: int) -> str:
        """(1, T, D*H): both directions side by side, PyTorch's output of the layer."""
        key = ("full", layer)
        if key not in self.memo:
            self.memo[key] = self.concat([self.direction(layer, d) for d in range(self.dirs)], 2,
                                         f"{self.base}.l{layer}_cat")
        return self.memo[key]

    def final(self, layer: int, d: int) -> str:
        """(1, 1, H): the state after the whole sequence (h_n[layer * D + d])."""
        key = ("final", layer, d)
        if key not in self.memo:
            if layer < self.layers - 1 or d in self.top_full:
                self.memo[key] = self.slice_time(self.direction(layer, d), 0 if d else self.steps - 1)
            else:
                self.memo[key] = self.node(layer, d, self.layer_input(layer), last=True)
        return self.memo[key]

    def out_last(self) -> str:
        """(1, 1, D*H): the top layer's output at the last time step (out[:, -1]): the forward final state and
        the backward state at T-1 (a slice of that direction's full output: a node of its own would duplicate
        the weights)."""
        key = ("out_last",)
        if key not in self.memo:
            top = self.layers - 1
            parts = [self.final(top, 0)]
            if self.dirs == 2:
                parts.append(self.slice_time(self.direction(top, 1), self.steps - 1))
            self.memo[key] = self.concat(parts, 2, f"{self.base}.l{top}_last_cat")
        return self.memo[key]


def _initial_state(lw, n, arg, count: int, hidden: int, what: str) -> np.ndarray:
    """(count, H) from a constant initial state of PyTorch shape (L*D, 1, H) or (L*D, H)."""
    value = lw.env.get(arg.name) if isinstance(arg, torch.fx.Node) else None
    if not isinstance(value, np.ndarray):
        raise _err(lw, n, f"its initial state {what} is computed from the input; qgen supports a constant "
                          f"initial state (implicit zeros, torch.zeros(...) in forward, or a registered buffer or "
                          "parameter). Pass a constant, or leave the state out.")
    sizes = _torch_sizes(arg) or tuple(value.shape)
    value = np.broadcast_to(value, sizes)
    if value.ndim == 3 and value.shape[1] != 1:
        raise _err(lw, n, f"initial state {what} of shape {list(value.shape)}; qgen runs batch size 1")
    return np.asarray(value, dtype=np.float64).reshape(count, hidden)


def _recurrent(lw, n):
    op, nonlinearity = KINDS[n.target]
    a = list(n.args) + [None] * (9 - len(n.args))
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = a[:9]
    layers, dirs = int(layers), 2 if bidirectional else 1
    kind = {Op.GRU: "GRU", Op.LSTM: "LSTM", Op.RNN: "RNN"}[op]
    if train and dropout:
        raise _err(lw, n, f"the {kind} is in training mode with dropout={dropout}; call model.eval() before "
                          "exporting")
    per = 4 if has_biases else 2
    if len(params) != layers * dirs * per:
        raise _err(lw, n, f"{kind} with {len(params) // (layers * dirs)} weight tensors per layer and direction "
                          "(proj_size > 0: a projected LSTM state); qgen supports proj_size=0")
    sizes = lw.lay[x.name].sizes if x.name in lw.lay else None
    if sizes is None:
        raise _err(lw, n, f"the {kind}'s input is a constant; qgen runs recurrent layers on activations")
    rank = len(sizes)
    if rank == 3 and sizes[0 if batch_first else 1] != 1:
        raise _err(lw, n, f"input of shape {list(sizes)}; qgen runs batch size 1")
    tdim = (1 if batch_first else 0) if rank == 3 else 0
    steps, features = sizes[tdim], sizes[-1]
    weights, hidden = [], None
    for k in range(layers * dirs):
        w = [np.asarray(lw.param(n, p), dtype=np.float64) for p in params[k * per:(k + 1) * per]]
        hidden = w[1].shape[1]
        if not has_biases:
            w += [np.zeros(w[0].shape[0]), np.zeros(w[0].shape[0])]
        weights.append(w)
    if weights[0][0].shape[0] != GATES[op] * hidden:
        raise _err(lw, n, f"{kind} weight of shape {list(weights[0][0].shape)}; expected {GATES[op]} x {hidden} rows")
    count = layers * dirs
    if op is Op.LSTM:
        h0 = _initial_state(lw, n, hx[0], count, hidden, "h_0")
        c0 = _initial_state(lw, n, hx[1], count, hidden, "c_0")
    else:
        h0, c0 = _initial_state(lw, n, hx, count, hidden, "h_0"), None
    xin = lw.value_in(x, _row_major(sizes), (1, steps, features))
    b = _Builder(lw, n, op, nonlinearity, xin, weights, h0, c0, layers, dirs, hidden, steps)

    getitems = {int(u.args[1]): u for u in n.users if u.target is operator.getitem}
    out_g, hn_g, cn_g = getitems.get(0), getitems.get(1), getitems.get(2)
    if cn_g is not None and _used(cn_g):
        raise _err(lw, n, "reads the LSTM's final cell state c_n; qgen returns the output and h_n (the cell state "
                          "stays inside the layer). Use the output or h_n.")
    out_users = [u for u in out_g.users if u.op == "output" or _used(u)] if out_g is not None else []
    last_reads = [u for u in out_users if _is_last_step(u, tdim, steps)]
    top_full = len(last_reads) != len(out_users)
    hn_users = [u for u in hn_g.users if u.op == "output" or _used(u)] if hn_g is not None else []
    hn_selects = [u for u in hn_users if _select_index(u, count) is not None]
    hn_other = len(hn_selects) != len(hn_users)

    b.top_full = set(range(dirs)) if top_full else ({1} if last_reads and dirs == 2 else set())
    for g in getitems.values():
        lw.ready[g.name] = (None, None)
        for u in g.users:  # reads that lead nowhere (the unbatched layer's squeeze of c_n): not lowered
            if u.op != "output" and not _used(u):
                _skip(lw, u)
    if top_full:
        lw.ready[out_g.name] = (b.full(layers - 1), _row_major(_torch_sizes(out_g)))
    else:
        for u in last_reads:
            lw.ready[u.name] = (b.out_last(), _row_major(_torch_sizes(u)))
    for u in hn_selects:
        layer, d = divmod(_select_index(u, count), dirs)
        lw.ready[u.name] = (b.final(layer, d), _row_major(_torch_sizes(u)))
    if hn_other:
        finals = [b.final(layer, d) for layer in range(layers) for d in range(dirs)]
        lw.ready[hn_g.name] = (b.concat(finals, 1, f"{b.base}.h_n"), _row_major(_torch_sizes(hn_g)))
    return None


def _zeros(lw, n):
    """torch.zeros(...) / zeros_like / new_zeros / full / ones written in forward: a constant (an initial state)."""
    sizes = _torch_sizes(n)
    if sizes is None:
        raise _err(lw, n, f"dynamic shape {n.meta.get('val')}; qgen compiles fixed shapes")
    value = 0.0
    if n.target is aten.full.default:
        value = float(n.args[1])
    elif n.target is aten.ones.default:
        value = 1.0
    return np.full(sizes, value, dtype=np.float64)


HANDLERS = {**{t: _recurrent for t in KINDS},
            aten.zeros.default: _zeros, aten.zeros_like.default: _zeros, aten.new_zeros.default: _zeros,
            aten.full.default: _zeros, aten.ones.default: _zeros}
