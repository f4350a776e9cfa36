"""nn.LSTMCell / nn.GRUCell / nn.RNNCell unrolled over time in forward -> one LSTM / GRU / RNN node.

torch.export keeps each step of `for t in range(T): h, c = self.cell(x[:, t], (h, c))` as its own
`aten.lstm_cell(x_t, [h, c], w_ih, w_hh, b_ih, b_hh)` (`gru_cell` / `rnn_tanh_cell` / `rnn_relu_cell(x_t, h, ...)`),
every step reading the same weight tensors. A cell has nn.LSTM's (nn.GRU's, nn.RNN's) gate order and weights, so
the T steps of one module, each taking the previous step's state unchanged, are one recurrent layer over the
sequence the steps read: the same float function and the same integer spec (codegen/ops/recurrent.py).

- a chain: the steps of one module (same op, same weight tensors) where step k + 1's state is step k's (h, c) as
  it came out; it starts at a step whose state is a constant (None: the zeros torch makes, torch.zeros(...),
  .to(x.device), a buffer): the node's h0 / c0;
- its input: x_t = X[..., t, ...] (select or unbind) at consecutive t, ascending (a forward node) or descending
  (reverse=True), X read in place as (T, F) (a batch-first input, x.transpose(0, 1), a Conv1d's output read as
  x[:, :, t] or after a permute: no copy); or each step of another chain (two stacked cells: cell2 reads cell1's h
  at every step); or, for a single step, any (1, F) activation;
- its outputs, built as nn.LSTM's are (torch_recurrent.py): only the last step's h read -> last=True (no T x H
  buffer); torch.stack of every step's h in time order (or torch.cat of their unsqueeze) -> the node's output as
  it lies; any other step's h read -> a SLICE of the output.

`prepare` finds the chains before lowering starts, so that the per-step selects and the later steps are never
lowered (lw.ready); the handler of a chain's first step builds it. A step that is no part of such a chain is
refused naming the module, its call site and why (and says to use nn.LSTM).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..ir import Node, Op
from ..ops.recurrent import GATES
from . import layout
from .torch_export import _err, _torch_sizes, source_of

aten = torch.ops.aten

CELLS = {aten.lstm_cell.default: (Op.LSTM, None, "nn.LSTM"), aten.gru_cell.default: (Op.GRU, None, "nn.GRU"),
         aten.rnn_tanh_cell.default: (Op.RNN, "tanh", "nn.RNN"),
         aten.rnn_relu_cell.default: (Op.RNN, "relu", "nn.RNN(nonlinearity='relu')")}


@dataclass(eq=False)
class Chain:
    """The steps of one cell module, state threaded from each to the next, in time order."""
    cells: list
    error: str | None = None  # why it cannot be one recurrent layer (raised at its first step)
    source: tuple = ()  # ("seq", X, dim, first index) | ("chain", Chain) | ("one", x)
    reverse: bool = False  # the steps read the sequence from its end (a reverse node)
    full: str | None = None  # the IR output (1, T, H), once built, for a chain that reads it
    readers: list = field(default_factory=list)  # chains that read this one's steps as their input


def is_cell(u) -> bool:
    return getattr(u, "op", None) == "call_function" and u.target in CELLS


def _weights(cell) -> tuple:
    a = list(cell.args) + [None] * (6 - len(cell.args))
    biases = tuple(a[i] if a[i] is not None else cell.kwargs.get(k) for i, k in ((4, "b_ih"), (5, "b_hh")))
    return tuple(a[2:4]) + biases


def _call(v, target) -> bool:
    return getattr(v, "op", None) == "call_function" and v.target is target


def _squeeze0(v) -> bool:
    """v is y.squeeze(0)."""
    if _call(v, aten.squeeze.dim):
        return int(v.args[1]) == 0
    return _call(v, aten.squeeze.dims) and [int(d) for d in v.args[1]] == [0]


def _unsqueeze0(v) -> bool:
    """v is y.unsqueeze(0): how a cell called on unbatched (F,) / (H,) tensors batches its input and state."""
    return _call(v, aten.unsqueeze.default) and int(v.args[1]) == 0


def _unview(v):
    """An unbatched step's input or state: unsqueeze(0) of the previous step's squeeze(0) is that squeeze."""
    return v.args[0] if _unsqueeze0(v) and _squeeze0(v.args[0]) else v


def _state(cell) -> list:
    """The state arguments: [h, c] of an LSTM step, [h] of the others (as the previous step gave them)."""
    hx = cell.args[1] if len(cell.args) > 1 else cell.kwargs.get("hx")
    return [_unview(v) for v in (hx if isinstance(hx, (list, tuple)) else [hx])]


def _raw_outs(cell) -> list:
    """The fx nodes of a step's new state: [h, c] (the getitems, None where absent) of an LSTM step, [the step]."""
    if CELLS[cell.target][0] is not Op.LSTM:
        return [cell]
    got = {int(u.args[1]): u for u in cell.users if u.target is operator.getitem}
    return [got.get(0), got.get(1)]


def _outs(cell) -> list:
    """A step's new state as the model sees it: [h, c] / [h], the squeeze(0) of an unbatched step's."""
    return [next(iter(o.users)) if o is not None and len(o.users) == 1 and _squeeze0(next(iter(o.users))) else o
            for o in _raw_outs(cell)]


def _takes_state(u, cell, value) -> bool:
    """u passes `value` to `cell` as its state only: u is the step itself, or the unsqueeze(0) of an unbatched step."""
    if u is cell:
        return cell.args[0] is not value
    return _unsqueeze0(u) and all(v is cell and v.args[0] is not u for v in u.users)


def _follows(cell, prev) -> bool:
    """cell is the next step of prev's module taking prev's state unchanged."""
    if cell.target is not prev.target or any(a is not b for a, b in zip(_weights(cell), _weights(prev))):
        return False
    return all(s is not None and s is o for s, o in zip(_state(cell), _outs(prev)))


def _reaching_output(graph) -> set[str]:
    """Names of the fx nodes some chain of users of which reaches the model's output (one pass, last node first)."""
    reach: set[str] = set()
    for v in reversed(list(graph.nodes)):
        if any(u.op == "output" or u.name in reach for u in v.users):
            reach.add(v.name)
    return reach


def _skip(lw, node) -> None:
    stack = [node]
    while stack:
        v = stack.pop()
        lw.ready[v.name] = (None, None)
        stack.extend(u for u in v.users if u.op != "output")


def _step_parts(x):
    """(X, dim, t) if x is X[..., t, ...] (aten.select) or the t-th part of X.unbind(dim) (unsqueeze(0) of it for
    an unbatched step), else None."""
    if getattr(x, "op", None) != "call_function":
        return None
    if _unsqueeze0(x) and len(x.args[0].users) == 1:
        x = x.args[0]
    if x.target is aten.select.int and isinstance(x.args[0], torch.fx.Node):
        sizes = _torch_sizes(x.args[0])
        if sizes is None:
            return None
        dim = int(x.args[1]) % len(sizes)
        return x.args[0], dim, int(x.args[2]) % sizes[dim]
    if x.target is operator.getitem and getattr(x.args[0], "target", None) is aten.unbind.int:
        src = x.args[0]
        sizes = _torch_sizes(src.args[0])
        if sizes is None:
            return None
        dim = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim", 0)
        return src.args[0], int(dim) % len(sizes), int(x.args[1])
    return None


def reads_steps(u, node, dim: int) -> bool:
    """u takes the time steps of `node` along `dim` for unrolled cells only (x[:, t] / x.unbind(1) whose parts are
    the input of cell steps): the torch front end then keeps a (1, T, F) model input time-major ('nlc')."""
    if u.target is aten.select.int and u.args[0] is node:
        parts = [u]
    elif u.target is aten.unbind.int and u.args[0] is node:
        parts = [p for p in u.users if p.users]
    else:
        return False
    return bool(parts) and all(_step_parts(p) is not None and _step_parts(p)[1] == dim % 3 and p.users
                               and all(is_cell(v) and v.args[0] is p for v in p.users) for p in parts)


def state_input_hint(placeholder, modules: dict) -> str:
    """For the refusal of a second model input: what to do when it is the state of a cell (one step per call)."""
    from .torch_export import describe

    steps = [u for u in placeholder.users if is_cell(u) and any(s is placeholder for s in _state(u))]
    if not steps:
        return ""
    return (f". '{placeholder.name}' is the state of {describe(steps[0], modules)}: qgen keeps a recurrent state "
            "inside the model. Loop the cell over the steps of a (1, T, F) input in forward (state None or "
            "torch.zeros) and compile with stream=True (qgen compile --stream): <prefix>_step() then runs one step per "
            "call and keeps the state between calls (<prefix>_reset() sets the initial state again)")


# ------------------------------------------------------------------------------ finding the chains


def prepare(lw) -> None:
    """Find every chain of cell steps before lowering (lw.cells: step name -> Chain); for the chains that can be
    one layer, mark the nodes nothing will read (the later steps, the per-step selects of the input) in lw.ready."""
    for n in lw.program.graph.nodes:
        if not is_cell(n) or n.name in lw.cells:
            continue
        chain = Chain([n])
        while True:
            prev = chain.cells[-1]
            readers = [v for o in _outs(prev) if o is not None for u in o.users
                       for v in ([u] + (list(u.users) if _unsqueeze0(u) else []))]
            nxt = list(dict.fromkeys(u for u in readers if is_cell(u) and _follows(u, prev)))
            if len(nxt) > 1:
                chain.error = (f"the state of step {len(chain.cells) - 1} of this cell feeds {len(nxt)} steps; qgen "
                               "maps a cell unrolled over time (each step taking the previous step's state) onto one "
                               "recurrent layer")
            if len(nxt) != 1:
                break
            chain.cells.append(nxt[0])
        for c in chain.cells:
            lw.cells[c.name] = chain
        _source(lw, chain)
    for chain in dict.fromkeys(lw.cells.values()):
        if chain.error is None:
            _mark(lw, chain)


def _source(lw, chain: Chain) -> None:
    """What the chain's steps read as their input (chain.source), or chain.error."""
    if chain.error:
        return
    xs = [c.args[0] for c in chain.cells]
    steps = len(xs)
    parts = [_step_parts(x) for x in xs]
    what = CELLS[chain.cells[0].target][2]
    if all(p is not None for p in parts) and len({(p[0], p[1]) for p in parts}) == 1:
        idx = [p[2] for p in parts]
        if idx == list(range(idx[0], idx[0] + steps)):
            chain.source = ("seq", parts[0][0], parts[0][1], idx[0])
        elif idx == list(range(idx[0], idx[0] - steps, -1)):
            chain.source, chain.reverse = ("seq", parts[0][0], parts[0][1], idx[-1]), True
        else:
            shown = ", ".join(map(str, idx[:8])) + (", ..." if steps > 8 else "")
            chain.error = (f"its {steps} steps read time steps {shown} of their input; qgen maps a cell unrolled "
                           "over consecutive steps (x[:, t] for t = 0, 1, ..., T-1, or T-1 down to 0) onto one "
                           f"recurrent layer. Loop over consecutive steps, or use {what}")
        return
    xs = [_unview(x) for x in xs]  # an unbatched step reads another's squeeze(0) through unsqueeze(0)
    producers = [lw.cells.get(_producer(x).name) if isinstance(x, torch.fx.Node) else None for x in xs]
    other = producers[0]
    if (other is not None and other is not chain and all(p is other for p in producers)
            and len(other.cells) == steps and all(_outs(c)[0] is x for c, x in zip(other.cells, xs))):
        chain.source, chain.reverse = ("chain", other), other.reverse
        other.readers.append(chain)
        return
    if steps == 1 and isinstance(xs[0], torch.fx.Node):
        chain.source = ("one", xs[0])
        return
    chain.error = (f"the input of its {steps} steps is not the time steps of one sequence (x[:, t] for consecutive "
                   "t, or the steps of another cell); qgen maps a cell unrolled over time onto one recurrent layer "
                   "over a sequence computed before the loop. Compute the inputs of all steps before the loop "
                   f"(e.g. one Linear over the whole sequence) and index it with x[:, t], or use {what}")


def _producer(x):
    """The cell step whose (visible) output x may be: x, getitem(x), squeeze(0) of either."""
    x = x.args[0] if _squeeze0(x) else x
    return x.args[0] if _call(x, operator.getitem) else x


def _mark(lw, chain: Chain) -> None:
    for c in chain.cells[1:]:
        lw.ready[c.name] = (None, None)
    if chain.source[0] == "seq":
        cells = set(chain.cells)
        for c in chain.cells:
            x = c.args[0]
            if all(u in cells for u in x.users):
                lw.ready[x.name] = (None, None)
                if _unsqueeze0(x) and len(x.args[0].users) == 1:  # the select under an unbatched step's unsqueeze
                    lw.ready[x.args[0].name] = (None, None)


# ------------------------------------------------------------------------------ lowering a chain


def _row_major(sizes: tuple[int, ...]) -> layout.Layout:
    return layout.from_order(sizes, tuple(range(len(sizes))))


def _time_major(sizes: tuple[int, ...], dim: int) -> layout.Layout:
    """The layout of a (T, F) buffer read with time along `dim` and the features along the last other dim."""
    rank = len(sizes)
    fdim = rank - 1 if dim != rank - 1 else rank - 2
    return layout.from_order(sizes, tuple(d for d in range(rank) if d != fdim) + (fdim,))


def _from_module_state(arg, weights: tuple) -> bool:
    """`arg` is computed from a step of the module with these weights (its state changed between steps)."""
    stack, seen = [arg], set()
    while stack:
        v = stack.pop()
        if not isinstance(v, torch.fx.Node) or v.name in seen:
            continue
        seen.add(v.name)
        if is_cell(v) and all(a is b for a, b in zip(_weights(v), weights)):
            return True
        stack.extend(v.all_input_nodes)
    return False


def _feeds_module(node, weights: tuple) -> bool:
    """A step of the module with these weights is computed from `node`."""
    stack, seen = [node], set()
    while stack:
        v = stack.pop()
        if v.name in seen:
            continue
        seen.add(v.name)
        if is_cell(v) and all(a is b for a, b in zip(_weights(v), weights)):
            return True
        stack.extend(v.users)
    return False


def _initial_state(lw, n, hidden: int, what: str) -> list[np.ndarray]:
    out = []
    for arg, name in zip(_state(n), ("h", "c")):
        value = lw.env.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(value, np.ndarray):
            if _from_module_state(arg, _weights(n)):
                raise _err(lw, n, f"the state {name} given to this step is the previous step's state changed in "
                                  "forward; qgen maps a cell unrolled over time onto one recurrent layer when each "
                                  f"step takes the previous step's state unchanged. Remove the change, or use {what}")
            raise _err(lw, n, f"its initial state {name} is computed from the input; qgen supports a constant initial "
                              "state (None, torch.zeros(...), a registered buffer). Pass a constant, or leave the "
                              "state out")
        value = np.broadcast_to(value, _torch_sizes(arg) or value.shape)
        if value.size != hidden:
            raise _err(lw, n, f"initial state {name} of shape {list(value.shape)}; qgen runs batch size 1")
        out.append(np.asarray(value, dtype=np.float64).reshape(hidden))
    return out


def _input(lw, n, chain: Chain) -> str:
    """The chain's input sequence as an IR tensor (1, T, F)."""
    steps, kind = len(chain.cells), chain.source[0]
    if kind == "chain":
        other = chain.source[1]
        assert other.full is not None, "a chain read by another is built over the whole sequence"
        return other.full
    if kind == "one":
        x = chain.source[1]
        if x.name not in lw.lay:
            raise _err(lw, n, "its input is a constant; qgen runs recurrent cells on activations")
        sizes = lw.lay[x.name].sizes
        if len(sizes) not in (1, 2) or (len(sizes) == 2 and sizes[0] != 1):
            raise _err(lw, n, f"input of shape {list(sizes)}; qgen runs batch size 1")
        return lw.value_in(x, _row_major(sizes), (1, 1, sizes[-1]))
    _, x, dim, start = chain.source
    if x.name not in lw.lay:
        raise _err(lw, n, "its input is a constant; qgen runs recurrent cells on activations")
    sizes = lw.lay[x.name].sizes
    fdim = len(sizes) - 1 if dim != len(sizes) - 1 else len(sizes) - 2
    if len(sizes) < 2 or any(s != 1 for d, s in enumerate(sizes) if d not in (dim, fdim)):
        raise _err(lw, n, f"input sequence of shape {list(sizes)} read along dim {dim}; qgen runs batch size 1")
    length, features = sizes[dim], sizes[fdim]
    xin = lw.value_in(x, _time_major(sizes, dim), (1, length, features))
    if steps != length:  # the loop covers part of the sequence
        xin = lw._inserted(f"{xin}_steps", Op.SLICE, xin, (1, steps, features), source_of(n), axis=1,
                           start=int(start), length=steps)
    return xin


def _unique(lw, name: str) -> str:
    while name in lw.used_names:
        name += "_"
    lw.used_names.add(name)
    return name


def _slice_step(lw, n, full: str, pos: int) -> str:
    _, _, h = lw.shape_of(full)
    out = lw.act(f"{full}_at{pos}", (1, 1, h))
    lw.graph.nodes.append(Node(_unique(lw, f"{lw.graph.producer(full).name}_at{pos}"), Op.SLICE, [full], [out],
                               {"axis": 1, "start": int(pos), "length": 1}, source_of(n)))
    return out


def _gatherer(u):
    """The node that may gather every step's h: u itself, or the torch.cat that reads u = h.unsqueeze(d)."""
    if u.target is aten.unsqueeze.default and len(u.users) == 1:
        return next(iter(u.users))
    return u


def _gathered(u, by_pos: list) -> tuple[list, layout.Layout] | None:
    """(nodes read by nobody else, layout) if u is torch.stack of every step's h in time order, or torch.cat of
    their unsqueeze along one dim: the recurrent node's (1, T, H) output as it lies; else None."""
    sizes = _torch_sizes(u)
    if sizes is None or u.target not in (aten.stack.default, aten.cat.default) or not u.args:
        return None
    items = list(u.args[0])
    dim = int(u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)) % len(sizes)
    if len(items) != len(by_pos):
        return None
    if u.target is aten.stack.default:
        hidden = [] if all(a is b for a, b in zip(items, by_pos)) else None
    else:
        ok = all(getattr(v, "target", None) is aten.unsqueeze.default and v.args[0] is h and len(v.users) == 1
                 and int(v.args[1]) % len(sizes) == dim for v, h in zip(items, by_pos))
        hidden = items if ok else None
    if hidden is None:
        return None
    return hidden, _time_major(sizes, dim)


def _cell(lw, n):
    chain = lw.cells[n.name]
    if chain.error:
        raise _err(lw, n, chain.error)
    assert n is chain.cells[0], "the later steps of a chain are never lowered (lw.ready)"
    op, nonlinearity, what = CELLS[n.target]
    steps, reverse = len(chain.cells), chain.reverse
    w_ih, w_hh, b_ih, b_hh = [None if p is None else np.asarray(lw.param(n, p), dtype=np.float64)
                              for p in _weights(n)]
    hidden = w_hh.shape[1]
    if w_ih.shape[0] != GATES[op] * hidden:
        raise _err(lw, n, f"weight of shape {list(w_ih.shape)}; expected {GATES[op]} x {hidden} rows")
    b_ih = np.zeros(w_ih.shape[0]) if b_ih is None else b_ih
    b_hh = np.zeros(w_ih.shape[0]) if b_hh is None else b_hh
    state = _initial_state(lw, n, hidden, what)

    # who reads what: step k's h lies at output position pos(k)
    pos = (lambda k: steps - 1 - k) if reverse else (lambda k: k)
    hs = [_outs(c)[0] for c in chain.cells]
    by_pos = [hs[steps - 1 - p] if reverse else hs[p] for p in range(steps)]
    reach = _reaching_output(lw.program.graph)
    followers = {r.cells[k].name for r in chain.readers for k in range(steps)}
    real: dict[int, list] = {}
    gathers: dict[str, tuple] = {}
    need_full = False
    for k, (c, h) in enumerate(zip(chain.cells, hs)):
        if op is Op.LSTM:
            cell_out = _outs(c)[1]
            for u in (cell_out.users if cell_out is not None else ()):
                if k + 1 < steps and _takes_state(u, chain.cells[k + 1], cell_out):
                    lw.ready[u.name] = (None, None)
                    continue
                if u.op != "output" and u.name not in reach:
                    _skip(lw, u)
                    continue
                if _feeds_module(u, _weights(n)):
                    raise _err(lw, n, f"the cell state c of step {k} is changed in forward before the next step; "
                                      "qgen maps a cell unrolled over time onto one recurrent layer when each step "
                                      f"takes the previous step's state unchanged. Remove the change, or use {what}")
                raise _err(lw, n, f"reads the cell state c of step {k}; qgen keeps an LSTM's cell state inside the "
                                  "layer and returns h. Use h")
            if cell_out is not None:
                lw.ready[cell_out.name] = (None, None)
        for u in (h.users if h is not None else ()):
            if k + 1 < steps and _takes_state(u, chain.cells[k + 1], h):
                lw.ready[u.name] = (None, None)  # the next step's state
                continue
            if u.op != "output" and u.name not in reach:
                _skip(lw, u)
            elif u.name in followers:
                need_full = True
            elif (v := _gatherer(u)).name in gathers or (got := _gathered(v, by_pos)) is not None:
                if v.name not in gathers:
                    gathers[v.name] = got
                need_full = True
            else:
                real.setdefault(k, []).append(u)
                need_full = need_full or k != steps - 1
    if not real and not need_full:  # nothing reads the chain
        for h in hs:
            if h is not None:
                lw.ready[h.name] = (None, None)
        return None

    xin = _input(lw, n, chain)
    last = not need_full
    tag = n.name
    inputs = [xin, lw.const(f"{tag}_w_ih", w_ih), lw.const(f"{tag}_w_hh", w_hh), lw.const(f"{tag}_b_ih", b_ih),
              lw.const(f"{tag}_b_hh", b_hh)] + [lw.const(f"{tag}_{s}0", v) for s, v in zip("hc", state)]
    attrs = {"hidden": hidden, "last": last, "reverse": reverse}
    if op is Op.RNN:
        attrs["nonlinearity"] = nonlinearity
    out = lw.act(tag, (1, 1 if last else steps, hidden))
    lw.graph.nodes.append(Node(lw.node_name(n), op, inputs, [out], attrs, source_of(n)))
    if need_full:
        chain.full = out

    for name, (hidden_nodes, lay) in gathers.items():
        for v in hidden_nodes:
            lw.ready[v.name] = (None, None)
        lw.ready[name] = (out, lay)
    for c in chain.cells:  # an unbatched step's raw outputs under the squeeze(0) the model reads
        for raw, seen in zip(_raw_outs(c), _outs(c)):
            if raw is not None and raw is not seen and raw is not n:
                lw.ready[raw.name] = (None, None)
    result = None
    for k, h in enumerate(hs):
        if h is None:
            continue
        value = None
        if k in real:
            value = (_slice_step(lw, n, out, pos(k)) if need_full else out, _row_major(_torch_sizes(h)))
        if h is n:
            if value is not None:
                result = lw.bind(n, *value)
        else:
            lw.ready[h.name] = value or (None, None)
    return result


HANDLERS = {t: _cell for t in CELLS}
