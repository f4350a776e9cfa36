"""Streaming: turn a quantised whole-window model over a time axis into one step that reads one new frame.

`run(graph) -> graph` takes the quantised whole-window graph (input (1, L, C): IR axis 1 is time, as a Conv1d's
(N, C, L) input or a batch-first (N, T, F) sequence lies) and returns the step graph: input one frame (1, 1, C),
every op over time replaced by its one-frame form, the state it needs kept between steps:

- per-frame ops (their output at time t depends only on their input at time t) run unchanged on one frame:
  element-wise ops, LUTs, activations, pointwise convolutions (kernel 1 over time), norms and softmax over the
  channels, slices and concatenations of channels, reshapes within a frame;
- a convolution over time (kernel k > 1, stride 1, dilation d, no right padding: causal) reads a `history` node
  (codegen/ops/stream.py), the window of its last K = (k - 1) * d + 1 input frames kept in state memory, and runs
  unpadded on it: one output frame. Its left padding only decides how the whole-window model starts;
- a recurrent layer (GRU, LSTM, RNN) runs one time step, its hidden state kept between steps (attrs["stream"]);
- a mean / max pooling over the whole window (x.mean(2), AdaptiveMaxPool1d(1)) reads a history of the window, when
  nothing before it pads (valid convolutions): its frames then read only frames of the window;
- the slice of the last time step (x[:, :, -1], x[:, -1]) becomes a no-op: every step's frame is the last one.
  From there on the tensors hold no time axis. So does a TCN's chomp (Conv1d(padding=p) then x[:, :, :-p]: the
  conv's right padding only made the outputs the chomp drops).

The step's output at time t is the whole-window model's output for the window ending at t (its last frame when
the output is a sequence): for convolutions once t >= receptive_field(graph) - 1, for recurrent layers for the
window starting at frame 0 (with_time_length gives that model). What does not stream is refused naming the layer:
right (non-causal) padding or a stride over time, a pooling that decimates time or reads zero padding, a reduction,
a resampling, a linear layer or a flatten over the time axis, a backward recurrent layer.
"""
from __future__ import annotations

import copy

from ..errors import UserError
from ..ir import Graph, Node, Op, verify
from ..ops import SPEC, Trait, has

STREAMABLE = ("per-frame ops (element-wise, activations, pointwise conv, norms and softmax over channels), causal "
              "Conv1d / depthwise Conv1d (stride 1, any dilation, padding only on the left, or padding=p followed "
              "by a chomp x[:, :, :-p]), GRU / LSTM / RNN (forward), the slice of the last time step, and a "
              "mean / max over the whole window after unpadded convolutions")


def _refuse(n: Node, what: str, todo: str) -> UserError:
    return UserError(f"--stream: {n.where()} {what}, which does not stream one frame at a time. {todo} "
                     f"(streamable: {STREAMABLE}).")


def _conv_over_time(g: Graph, n: Node) -> tuple[int, int, int]:
    """(kernel k, dilation d, left padding) over time of a conv / depthwise node on a (1, L, C) input; refuses the
    non-causal and strided ones."""
    _, kh, k, _ = g.tensors[n.inputs[1]].shape
    top, left, bottom, right = n.attrs["padding"]
    d = int(n.attrs.get("dilation", (1, 1))[1])
    if kh != 1 or top or bottom:
        raise _refuse(n, f"has a kernel of height {kh} (padding top/bottom {top}/{bottom}) over a (1, L, C) sequence",
                      "Use Conv1d (a kernel over time only)")
    if n.attrs["stride"][1] != 1:
        raise _refuse(n, f"has stride {n.attrs['stride'][1]} over time",
                      "Use stride 1 (decimate after the model, or run the strided part on every k-th output)")
    if right and not _chomped(g, n):
        raise _refuse(n, f"pads {right} frame(s) on the right (future frames: non-causal padding, e.g. "
                         f"padding='same' or padding={right})",
                      f"Use causal padding: padding=0 and F.pad(x, ({(k - 1) * d}, 0)) before the conv")
    return int(k), d, int(left)


def _chomp_slice(g: Graph, conv: Node) -> Node | None:
    """The slice that chomps `conv`'s output (a TCN's Chomp1d: Conv1d(padding=p) then x[:, :, :-p]): its only reader
    (through reshapes that keep the time axis) keeps time steps [0, L - right padding) of it, exactly the outputs
    that read no padded future frame: together, a causal conv. None if there is no such slice."""
    t, axis, length = conv.outputs[0], 1, g.tensors[conv.outputs[0]].shape[1]
    while True:
        users = g.consumers(t)
        if len(users) != 1 or t in g.outputs:
            return None
        n = users[0]
        if n.op is Op.RESHAPE:
            x, y = g.tensors[t].shape, tuple(n.attrs["shape"])
            b = len(y) - (len(x) - axis)
            if b < 0 or y[b:] != tuple(x[axis:]) or any(d != 1 for d in y[:b]):
                return None
            t, axis = n.outputs[0], b
            continue
        ok = (n.op is Op.SLICE and n.attrs["axis"] == axis and n.attrs["start"] == 0
              and n.attrs["length"] == length - conv.attrs["padding"][3])
        return n if ok else None


def _chomped(g: Graph, conv: Node) -> bool:
    return _chomp_slice(g, conv) is not None


def _chomp_of(g: Graph, n: Node) -> Node | None:
    """The conv a slice node chomps (see _chomp_slice), or None."""
    conv = g.producer(n.inputs[0])
    while conv is not None and conv.op is Op.RESHAPE:
        conv = g.producer(conv.inputs[0])
    ok = conv is not None and _RULES.get(conv.op) is _conv and conv.attrs["padding"][3]
    chomp = _chomp_slice(g, conv) if ok else None
    return conv if chomp is not None and chomp.outputs == n.outputs else None


def _time_axis(g: Graph) -> int:
    x = g.tensors[g.inputs[0]]
    if len(g.inputs) != 1 or len(x.shape) != 3 or x.shape[0] != 1:
        raise UserError(f"--stream needs one sequence input, IR (1, L, C) (a Conv1d's (N, C, L) input or a "
                        f"batch-first (N, T, F) sequence); this model's input is {list(x.shape)}")
    return 1


def time_axes(g: Graph) -> dict[str, int]:
    """{activation tensor: its time axis} for the tensors that carry the time axis (the others hold one frame, after
    the slice of the last time step). Refuses (UserError, naming the layer) every node that does not stream."""
    timed = {g.inputs[0]: _time_axis(g)}
    for n in g.nodes:
        xs = [t for t in n.inputs if not g.tensors[t].is_const]
        axes = {timed[t] for t in xs if t in timed}
        if not axes:
            continue
        if len(axes) != 1 or any(t not in timed for t in xs):
            raise _refuse(n, "mixes a sequence with a tensor that has no time axis (or two time axes)",
                          "Combine tensors that both run over time, frame by frame")
        ax = axes.pop()
        rule = _RULES.get(n.op)
        if rule is None:
            rule = _per_frame if _is_per_frame_op(n) else _refused_op
        out_axis = rule(g, n, ax)
        if out_axis is not None:
            timed[n.outputs[0]] = out_axis
    return timed


def _is_per_frame_op(n: Node) -> bool:
    """Element i of the output depends only on element i (or its row of channels) of the inputs."""
    return has(n.op, Trait.IN_PLACE) or (has(n.op, Trait.CHANNELWISE) and not has(n.op, Trait.SLIDING_WINDOW))


def _refused_op(g, n, ax):
    raise _refuse(n, f"runs over the time axis (IR axis {ax} of {list(g.tensors[n.inputs[0]].shape)})",
                  "Keep the time axis to the ops listed, or take the last time step before this layer")


def _per_frame(g, n, ax):
    x = g.tensors[n.inputs[0]].shape
    if n.op is Op.GROUP_NORM:
        raise _refuse(n, "normalises over the whole window", "Use LayerNorm over the channels")
    if n.op is Op.LAYER_NORM and len(x) - n.attrs["axes"] <= ax:
        raise _refuse(n, "normalises over the time axis", "Normalise over the channels only (LayerNorm(C))")
    if (n.op is Op.SOFTMAX or n.op is Op.LOG_SOFTMAX) and ax == len(x) - 1:
        raise _refuse(n, f"takes its {n.op.value} over the time axis", "Take it over the channels")
    shapes = {tuple(g.tensors[t].shape) for t in n.inputs if not g.tensors[t].is_const}
    if len(shapes) > 1:
        raise _refuse(n, f"broadcasts operands {sorted(shapes)} over time", "Give both operands the full sequence")
    y = g.tensors[n.outputs[0]].shape
    if len(y) != len(x) or y[ax] != x[ax]:  # e.g. an upsampling over time: not one frame out per frame in
        raise _refuse(n, f"changes the time axis ({x[ax]} -> {y[ax] if len(y) == len(x) else '?'} frames)",
                      "Keep one output frame per input frame")
    return ax


def _conv(g, n, ax):
    _conv_over_time(g, n)
    return ax


def _slice(g, n, ax):
    length = g.tensors[n.inputs[0]].shape[ax]
    a = n.attrs
    if a["axis"] != ax:
        return ax if a["axis"] > ax else _refused_op(g, n, ax)
    if a["start"] + a["length"] == length and a["length"] == 1:
        return None  # the last time step: the frame of the step
    if _chomp_of(g, n) is not None:
        return ax  # Chomp1d after a conv padded on both sides: the causal part
    raise _refuse(n, f"keeps time steps [{a['start']}, {a['start'] + a['length']}) of {length}",
                  "Take the last time step only (x[:, :, -1] or x[:, -1])")


def _reshape(g, n, ax):
    x, y = g.tensors[n.inputs[0]].shape, tuple(n.attrs["shape"])
    frame = tuple(x[ax:])
    for b in range(len(y)):
        if y[b:] == frame and all(d == 1 for d in y[:b]):
            return b
    raise _refuse(n, f"reshapes {list(x)} to {list(y)}, mixing the time axis (IR axis {ax}) with the features "
                     "(a flatten over time sees the whole window)",
                  "Take the last time step (x[:, :, -1]) before flattening, or pool over channels only")


def _concat(g, n, ax):
    if n.attrs["axis"] == ax:
        raise _refuse(n, "concatenates along the time axis", "Concatenate channels")
    return _per_frame(g, n, ax)


def _recurrent(g, n, ax):
    if n.attrs.get("reverse"):
        raise _refuse(n, "runs backwards over time (bidirectional)", "Use a unidirectional layer")
    return None if n.attrs.get("last") else ax


def _pad(g, n, ax):
    top, left, bottom, right = n.attrs["padding"]
    if right or top or bottom:
        raise _refuse(n, f"pads (top {top}, left {left}, bottom {bottom}, right {right}): future frames or rows",
                      "Pad only on the left of the time axis (causal): F.pad(x, (p, 0))")
    return ax


def _pool(g, n, ax):
    kh, kw = n.attrs.get("kernel", (None, None))
    if (kh, kw) == (1, 1) and tuple(n.attrs["stride"]) == (1, 1):
        return ax
    length = g.tensors[n.inputs[0]].shape[ax]
    if kw == length and not any(n.attrs["padding"]):  # over the whole window: a history of it, one output
        span, window = _spans(g)[n.inputs[0]], g.tensors[g.inputs[0]].shape[1]
        if span is None or length + span - 1 > window:  # some of its frames read before the window: padding
            raise _refuse(n, f"pools over the whole window ({length} frames) of a layer that reads "
                             f"{'every earlier frame' if span is None else f'{span} frames'} (after causally padded "
                             "convolutions or a recurrent layer): the whole-window model reads zero padding at the "
                             "window's start where a stream reads the real earlier frames",
                          "Use padding=0 (valid) convolutions before a pooling over the window, or take the last "
                          "time step (x[:, :, -1]) instead of the pooling")
        return None
    if kw is not None and kw < length:  # a pooling inside the sequence: it decimates time
        raise _refuse(n, f"pools over time (kernel {kw}, stride {n.attrs['stride'][1]}): its output comes every "
                         f"{n.attrs['stride'][1]} frames, and --stream steps every layer once per frame",
                      f"Drop the pooling and multiply the dilation of the following convolutions by "
                      f"{n.attrs['stride'][1]} (the same receptive field), or run the whole window")
    raise _refuse(n, f"pools over time (kernel {kw}, stride {n.attrs['stride'][1]}, padding "
                     f"{n.attrs['padding']}) over {length} frames",
                  "Pool over the whole window without padding, or take the last time step (x[:, :, -1])")


def _reduce(g, n, ax):
    if ax == len(g.tensors[n.inputs[0]].shape) - 1:
        raise _refuse(n, "reduces over the time axis", "Take the last time step instead of the mean")
    return ax


_RULES = {Op.CONV2D: _conv, Op.DEPTHWISE_CONV2D: _conv, Op.SLICE: _slice, Op.RESHAPE: _reshape, Op.CONCAT: _concat,
          Op.GRU: _recurrent, Op.LSTM: _recurrent, Op.RNN: _recurrent, Op.PAD: _pad,
          Op.MAXPOOL2D: _pool, Op.AVGPOOL2D: _pool, Op.REDUCE: _reduce, Op.SOFTMAX: _per_frame,
          Op.LOG_SOFTMAX: _per_frame, Op.LAYER_NORM: _per_frame, Op.GROUP_NORM: _per_frame}


def _spans(g: Graph) -> dict[str, int | None]:
    """{tensor: frames of the model input its frame at time t reads} (None: every earlier frame, a recurrent layer);
    no checks (time_axes refuses)."""
    rf: dict[str, int | None] = {g.inputs[0]: 1}
    for n in g.nodes:
        got = [rf[t] for t in n.inputs if t in rf]
        if not got:
            continue
        span = None if None in got or _RULES.get(n.op) is _recurrent else max(got)
        if span is not None and _RULES.get(n.op) is _conv:
            span += (g.tensors[n.inputs[1]].shape[2] - 1) * int(n.attrs.get("dilation", (1, 1))[1])
        if span is not None and _RULES.get(n.op) is _pool:
            span += n.attrs["kernel"][1] - 1
        rf[n.outputs[0]] = span
    return rf


def receptive_field(g: Graph) -> int | None:
    """Frames the outputs at time t depend on (t - RF + 1 .. t); None when unbounded (a recurrent layer)."""
    time_axes(g)  # refuses what does not stream
    rf = _spans(g)
    spans = [rf.get(o, 1) for o in g.outputs]
    return None if None in spans else max(spans)


def with_time_length(g: Graph, length: int) -> Graph:
    """The same quantised model over `length` frames (the whole-window spec for any window: the reference the
    stream is compared with). Only the time axis changes: the slice of the last time step and a chomp follow it."""
    timed = time_axes(g)
    fixed = [n for n in g.nodes if _RULES.get(n.op) is _pool and n.inputs[0] in timed and n.outputs[0] not in timed]
    if fixed and length != g.tensors[g.inputs[0]].shape[timed[g.inputs[0]]]:
        raise ValueError(f"{fixed[0].where()} pools over the whole window: the model has one window length")
    out = copy.deepcopy(g)
    _set_axis(out, g.inputs[0], timed[g.inputs[0]], length)
    for n in out.nodes:
        if n.op is Op.RESHAPE and n.inputs[0] in timed:
            shape = list(n.attrs["shape"])
            shape[timed[n.outputs[0]]] = out.tensors[n.inputs[0]].shape[timed[n.inputs[0]]]
            n.attrs["shape"] = tuple(shape)
        if n.op is Op.SLICE and n.inputs[0] in timed and n.outputs[0] not in timed:
            n.attrs["start"] = out.tensors[n.inputs[0]].shape[n.attrs["axis"]] - 1
        conv = _chomp_of(g, n) if n.op is Op.SLICE else None
        if conv is not None:
            n.attrs["length"] = out.tensors[n.inputs[0]].shape[n.attrs["axis"]] - conv.attrs["padding"][3]
        out.tensors[n.outputs[0]].shape = tuple(SPEC[n.op].shape(out, n))
    out.memory, out.arena_size = {}, 0
    verify(out, quantized=True)
    return out


def _set_axis(g: Graph, name: str, axis: int, length: int) -> None:
    shape = list(g.tensors[name].shape)
    shape[axis] = length
    g.tensors[name].shape = tuple(shape)


def run(graph: Graph) -> Graph:
    """The step graph of the quantised whole-window `graph` (see the module docstring); refuses what cannot stream."""
    timed = time_axes(graph)
    g = copy.deepcopy(graph)
    nodes: list[Node] = []
    dense: list[Node] = []
    for n in g.nodes:
        xs = [t for t in n.inputs if not g.tensors[t].is_const]
        if not any(t in timed for t in xs):
            nodes.append(n)
            continue
        rule = _RULES.get(n.op)
        if rule is _conv:
            k, d, _ = _conv_over_time(graph, n)
            n.attrs["padding"] = (0, 0, 0, 0)
            if (k - 1) * d:
                nodes.append(_history(g, n, (k - 1) * d + 1, d))
                if "dilation" in n.attrs:
                    n.attrs["dilation"] = (1, 1)  # the history wrote the taps next to each other
            wide_input = n.inputs[0] in g.inputs and g.tensors[n.inputs[0]].dtype == "int16"  # see _as_linear
            if n.op is Op.CONV2D and n.attrs.get("groups", 1) == 1 and "out_stride" not in n.attrs and not wide_input:
                dense.append(n)  # one output frame: a fully connected layer over the k*C taps (below)
        elif rule is _slice and (n.outputs[0] not in timed or n.attrs["axis"] == timed[n.inputs[0]]):
            # the last time step (the step's frame itself) or a chomp (its frame is the conv's only frame)
            n = Node(n.name, Op.RESHAPE, [n.inputs[0]], n.outputs, {"shape": None}, n.source)
        elif rule is _pool and n.outputs[0] not in timed:  # over the whole window: its history is the window
            nodes.append(_history(g, n, n.attrs["kernel"][1], 1))
        elif rule is _recurrent:
            n.attrs["stream"] = True  # its state persists between steps (plan_memory, the C emitter)
        elif rule is _pad:
            n = Node(n.name, Op.RESHAPE, [n.inputs[0]], n.outputs, {"shape": None}, n.source)
        nodes.append(n)
    g.nodes = nodes
    for name, axis in timed.items():
        _set_axis(g, name, axis, 1)
    linear = {id(n) for n in dense}
    g.nodes = [m for n in g.nodes for m in (_as_linear(g, n) if id(n) in linear else [n])]
    for n in g.nodes:
        if n.op is Op.RESHAPE:
            n.attrs["shape"] = tuple(g.tensors[n.outputs[0]].shape)
    for name in [t for t in g.tensors if g.tensors[t].is_const and not any(t in n.inputs for n in g.nodes)]:
        del g.tensors[name]  # the conv weights a linear layer took over (reshaped)
    g.memory, g.arena_size = {}, 0
    verify(g, quantized=True)
    return g


def _history(g: Graph, conv: Node, frames: int, dilation: int) -> Node:
    """A history node before `conv`: it keeps its input's last `frames` frames and gives the conv its taps."""
    x = g.tensors[conv.inputs[0]]
    name = g.fresh_name(f"{conv.inputs[0]}_taps")
    g.tensors[name] = _like(x, name, (1, (frames - 1) // dilation + 1, x.shape[2]))
    node = Node(f"{conv.name}.history", Op.HISTORY, [conv.inputs[0]], [name],
                {"frames": frames, "dilation": dilation}, conv.source)
    conv.inputs[0] = name
    return node


def _like(t, name: str, shape: tuple[int, ...]):
    out = copy.deepcopy(t)
    out.name, out.shape, out.data = name, shape, None
    return out


def _as_linear(g: Graph, conv: Node) -> list[Node]:
    """A dense conv giving one output frame (1, 1, Cout) from its taps (1, k, Cin) is a linear layer over the k*Cin
    values: the weights (Cout, 1, k, Cin) read as (Cout, k*Cin) in the same order, the same bias, shifts and clamp,
    so the same integers (and the fully connected kernel, which suits one output pixel). Not on an int16 model
    input: a reshape of `in` as a model's first layer passes an int16_t pointer to the int8 trace hook."""
    x, w, y = g.tensors[conv.inputs[0]], g.tensors[conv.inputs[1]], g.tensors[conv.outputs[0]]
    flat, vec, wname = (g.fresh_name(f"{conv.outputs[0]}_{s}") for s in ("in", "vec", "fc_w"))
    g.tensors[flat] = _like(x, flat, (x.size,))
    g.tensors[vec] = _like(y, vec, (y.shape[2],))
    g.tensors[wname] = copy.deepcopy(w)
    g.tensors[wname].name, g.tensors[wname].shape = wname, (w.shape[0], w.size // w.shape[0])
    g.tensors[wname].data = w.data.reshape(g.tensors[wname].shape)
    attrs = {k: v for k, v in conv.attrs.items() if k not in ("stride", "padding", "dilation", "groups")}
    return [Node(f"{conv.name}.in", Op.RESHAPE, [conv.inputs[0]], [flat], {"shape": (x.size,)}, conv.source),
            Node(conv.name, Op.LINEAR, [flat, wname, conv.inputs[2]], [vec], attrs, conv.source),
            Node(f"{conv.name}.out", Op.RESHAPE, [vec], [conv.outputs[0]], {"shape": y.shape}, conv.source)]


def is_step(g: Graph) -> bool:
    """A step graph of a streaming model (it holds state: a history node or a streaming recurrent layer)."""
    return any(has(n.op, Trait.HOLDS_STATE) or n.attrs.get("stream") for n in g.nodes)


# ---------------------------------------------------------------- state memory (plan_memory's "state" region)

STATE = "state:"


def state_key(step: int) -> str:
    """graph.memory key of the state of node `step`: a history's window, a streaming recurrent layer's h (c)."""
    return f"{STATE}{step}"


def state_buffers(g: Graph) -> list[tuple[str, int]]:
    """(memory key state_key(step), bytes) of every state of a step graph, in node order: the window of each history
    node (attrs["frames"] input frames) and the (h, c) of each streaming recurrent layer."""
    found = []
    for step, n in enumerate(g.nodes):
        if has(n.op, Trait.HOLDS_STATE):
            found.append((state_key(step), n.attrs["frames"] * g.tensors[n.inputs[0]].nbytes))
        elif n.attrs.get("stream"):
            from ..ops.recurrent import state_bytes

            found.append((state_key(step), state_bytes(g, n)))
    return found


def plan_state(g: Graph) -> dict[str, tuple[str, int]]:
    """{key: ("state", offset)}: every state one after the other, 4-byte aligned (all live for the whole stream)."""
    memory, offset = {}, 0
    for key, size in state_buffers(g):
        memory[key] = ("state", offset)
        offset += -(-size // 4) * 4
    return memory


def state_size(g: Graph) -> int:
    """Bytes of the state region (`<PREFIX>_STATE_SIZE`): 0 for a model that does not stream."""
    return sum(-(-size // 4) * 4 for _, size in state_buffers(g))


def stream_report(window: Graph, step: Graph) -> dict:
    """report.json's "stream": receptive field, state and arena bytes of the step vs the whole-window arena."""
    from ..ops import SPEC as _SPEC

    macs_window = sum(_SPEC[n.op].macs(window, n) for n in window.nodes)
    macs_step = sum(_SPEC[n.op].macs(step, n) for n in step.nodes)
    return {"receptive_field": receptive_field(window), "window_frames": window.tensors[window.inputs[0]].shape[1],
            "state_bytes": state_size(step), "step_arena_bytes": step.arena_size,
            "window_arena_bytes": window.arena_size, "step_macs": macs_step, "window_macs": macs_window}


def summary_line(rep: dict, prefix: str) -> str:
    """`qgen compile --stream`'s line about the stream (rep: report.json's "stream")."""
    rf = rep["receptive_field"]
    field = f"receptive field {rf} frames" if rf is not None else "recurrent: every frame since the reset"
    return (f"stream: {prefix}_step(frame, out) + {prefix}_reset(); {field}; state {rep['state_bytes']} B + arena "
            f"{rep['step_arena_bytes']} B (whole window: arena {rep['window_arena_bytes']} B); "
            f"{rep['step_macs']:,} MACs per frame (whole window: {rep['window_macs']:,})")
