"""Recurrent layers: GRU, LSTM and Elman RNN (tanh / relu), one node per layer and direction.

IR node (all three ops):
  inputs  [x (1, T, I) sequence, w_ih (G*H, I), w_hh (G*H, H), b_ih (G*H,), b_hh (G*H,), h0 (H,)] + [c0 (H,)] for
          LSTM. The gate rows are in PyTorch's order (GRU r, z, n; LSTM i, f, g, o; RNN one gate), G = GATES[op].
          h0 / c0 are constants (zeros for an implicit initial state).
  output  (1, T, H): the hidden state after each time step, or (1, 1, H) with attrs["last"]: the final state only
          (PyTorch's h_n). attrs["reverse"]: time runs from T-1 down to 0 (the backward half of a bidirectional
          layer); output position t is still the state after reading input t.
  attrs   hidden H, nonlinearity ("tanh" | "relu", RNN only), last, reverse, state_bits (8 | 16, default 16).

Integer design (the spec; codegen/fixed.py's one rounding rule `round_shift` and one saturation rule):
  - x int8 at frac fx; weights int8 with one frac per gate row for w_ih (fwi[r]) and for w_hh (fwh[r]); biases
    int32 folded into each accumulator: ax[r] = sum w_ih[r] x + b_ih[r] at frac fx + fwi[r], ah[r] = sum w_hh[r] h +
    b_hh[r] at frac fh + fwh[r], both exact in int32 (the quantiser proves the bound).
  - the state h is int16 at frac fh: fh = 15 for the bounded cells (|h| < 1) with state_bits 16; with state_bits 8
    the state is the int8 output itself (fh = fo); a relu RNN's state takes its calibrated range (int16 or int8).
  - gate pre-activations are int16 at frac P = GATE_FRAC (11: range +-16) — the relu RNN's at P = fh:
    pre[r] = sat16(align(ax[r], x_shift[r]) + align(ah[r], h_shift[r])), x_shift = fx + fwi - P, h_shift = fh + fwh - P,
    align = requantize to +-2^24 (round_shift, then clamp: |sum| < 2^25 cannot overflow int32; a term beyond
    +-2^24 is 512x the int16 range, so the sum saturates unless the other term nearly cancels it).
  - sigmoid and tanh: int16 Q11 in, Q15 out through ONE table (`TANH_TABLE`: tanh at 513 points of [-8, 8), Q15,
    linear interpolation with the rounding rule): tanh(x) = T(sat16(2x)), sigmoid(x) = sat(round_shift(T(x) + 2^15, 1))
    (sigmoid(x) = (1 + tanh(x/2)) / 2: the Q11 value read as Q12 is x/2). Max error 3 LSB of Q15.
  - GRU: r, z = sigmoid(pre); hn = requantize(ah_n, h_shift_n) to int16 (Q11); n = tanh(sat16(align(ax_n) +
    round_shift(r * hn, 15))); h' = sat16(n + round_shift(z * (h15 - n), 15)), h15 = h << (15 - fh).
  - LSTM: i, f, o = sigmoid, g = tanh; the cell c is int16 at frac fc (calibrated, with one bit of headroom);
    c' = sat16(round_shift(f * c, 15) + round_shift(i * g, 30 - fc)); h' = sat16(round_shift(o * tanh_c, 15)) with
    tanh_c = T(requantize(c', fc - 12)) (c' read at Q12).
  - RNN: h' = tanh(pre) (Q15), or relu: h' = max(pre, 0) at frac fh.
  - output: out = requantize(h', out_shift, act_min, act_max), out_shift = hf - fo (hf = 15, or fh for relu);
    with state_bits 8 the next state is that output.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError

GATES = {Op.GRU: 3, Op.LSTM: 4, Op.RNN: 1}
GATE_FRAC = 11  # gate pre-activations: int16 Q4.11, range [-16, 16)
TANH_IN_FRAC = 12  # the table's input: int16 Q3.12, [-8, 8)
TABLE_SHIFT = 7  # 2^7 input steps per table interval: 513 entries, step 1/32
STATE_FRAC = 15  # int16 state of the bounded cells, |h| < 1
ALIGN_LIMIT = 1 << 24  # the aligned accumulators are clamped here before they are summed (no int32 overflow)
OUT_FRAC = 7  # bounded cells' int8 output: s8.f7


def tanh_table() -> np.ndarray:
    """T[k] = tanh((k * 2^7 - 2^15) * 2^-12) in Q15 (fixed.quantize: round half up, saturate), k = 0..512."""
    from ..fixed import QFormat, quantize

    u = (np.arange(513, dtype=np.float64) * (1 << TABLE_SHIFT) - 32768.0) * 2.0 ** -TANH_IN_FRAC
    return quantize(np.tanh(u), QFormat(16, 15))


TANH_TABLE = tanh_table()


def tanh_q12(u: np.ndarray) -> np.ndarray:
    """tanh of int16 Q12 input -> Q15: T[i] + round_shift((T[i+1] - T[i]) * f, 7), i = (u + 2^15) >> 7, f the rest."""
    from ..fixed import round_shift

    v = np.asarray(u, dtype=np.int64) + 32768
    i, f = v >> TABLE_SHIFT, v & ((1 << TABLE_SHIFT) - 1)
    lo = TANH_TABLE[i]
    return lo + round_shift((TANH_TABLE[np.minimum(i + 1, 512)] - lo) * f, TABLE_SHIFT)


def tanh_q11(x: np.ndarray) -> np.ndarray:
    """tanh of an int16 Q11 pre-activation -> Q15."""
    from ..fixed import saturate

    return tanh_q12(saturate(np.asarray(x, dtype=np.int64) * 2, 16))


def sigmoid_q11(x: np.ndarray) -> np.ndarray:
    """sigmoid of an int16 Q11 pre-activation -> Q15 in [0, 32767]: (1 + tanh(x / 2)) / 2."""
    from ..fixed import round_shift

    return np.minimum(round_shift(tanh_q12(x) + 32768, 1), 32767)


# ---------------------------------------------------------------- shapes and checks


def rnn_shape(g, n) -> tuple[int, ...]:
    _, t, _ = g.tensors[n.inputs[0]].shape
    return (1, 1 if n.attrs.get("last") else t, n.attrs["hidden"])


def check_rnn(g, n) -> None:
    x = g.tensors[n.inputs[0]].shape
    h, gates = n.attrs["hidden"], GATES[n.op]
    want = [(gates * h, x[-1]), (gates * h, h), (gates * h,), (gates * h,), (h,)] + ([(h,)] if n.op is Op.LSTM else [])
    got = [tuple(g.tensors[t].shape) for t in n.inputs[1:]]
    if len(x) != 3 or x[0] != 1 or got != want or not all(g.tensors[t].is_const for t in n.inputs[1:]):
        raise VerifyError(f"{n.where()}: {n.op.value} of x {x} with constants {got}, expected (1, T, I) and {want}")
    if n.op is Op.RNN and n.attrs.get("nonlinearity", "tanh") not in ("tanh", "relu"):
        raise VerifyError(f"{n.where()}: nonlinearity {n.attrs.get('nonlinearity')}")


def _consts(g, n) -> list[np.ndarray]:
    return [g.tensors[t].data for t in n.inputs[1:]]


def _steps(n, length: int) -> range:
    return range(length - 1, -1, -1) if n.attrs.get("reverse") else range(length)


def _collect(n, outs: list[np.ndarray], length: int) -> np.ndarray:
    """(N, 1, T or 1, H) from the per-step states in processing order."""
    if n.attrs.get("last"):
        return outs[-1][:, None, None, :]
    seq = outs[::-1] if n.attrs.get("reverse") else outs
    return np.stack(seq, axis=1)[:, None]


# ---------------------------------------------------------------- float semantics (PyTorch's)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def float_run(g, n, x: np.ndarray) -> tuple[np.ndarray, float]:
    """(output (N, 1, T|1, H), max |c| of an LSTM cell over the run, else 0)."""
    w_ih, w_hh, b_ih, b_hh, h0, *c0 = _consts(g, n)
    hid = n.attrs["hidden"]
    seq = x[:, 0]  # (N, T, I)
    batch, length = seq.shape[0], seq.shape[1]
    h = np.broadcast_to(h0, (batch, hid)).astype(np.float64)
    c = np.broadcast_to(c0[0], (batch, hid)).astype(np.float64) if c0 else None
    cmax, outs = float(np.max(np.abs(c))) if c is not None and c.size else 0.0, []
    for t in _steps(n, length):
        gx = seq[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if n.op is Op.GRU:
            r = _sig(gx[:, :hid] + gh[:, :hid])
            z = _sig(gx[:, hid:2 * hid] + gh[:, hid:2 * hid])
            nn = np.tanh(gx[:, 2 * hid:] + r * gh[:, 2 * hid:])
            h = (1.0 - z) * nn + z * h
        elif n.op is Op.LSTM:
            pre = gx + gh
            i, f = _sig(pre[:, :hid]), _sig(pre[:, hid:2 * hid])
            gg, o = np.tanh(pre[:, 2 * hid:3 * hid]), _sig(pre[:, 3 * hid:])
            c = f * c + i * gg
            cmax = max(cmax, float(np.max(np.abs(c))) if c.size else 0.0)
            h = o * np.tanh(c)
        else:
            pre = gx + gh
            h = np.maximum(pre, 0.0) if n.attrs.get("nonlinearity") == "relu" else np.tanh(pre)
        outs.append(h)
    return _collect(n, outs, length), cmax


def f_rnn(g, n, xs):
    return float_run(g, n, xs[0])[0]


def state_ranges(g, n, xs) -> dict[str, float]:
    """Ranges calibration records besides the output's: an LSTM's cell state (key '<output>#cell')."""
    if n.op is not Op.LSTM:
        return {}
    return {f"{n.outputs[0]}#cell": float_run(g, n, xs[0])[1]}


def torch_rnn(node, xs, const):
    """The float cell in torch ops (differentiable: QAT and compression fine-tuning)."""
    import torch

    x = xs[0][:, 0]
    w_ih, w_hh, b_ih, b_hh, h0 = (const(t) for t in node.inputs[1:6])
    hid = node.attrs["hidden"]
    h = h0.expand(x.shape[0], hid)
    c = const(node.inputs[6]).expand(x.shape[0], hid) if node.op is Op.LSTM else None
    outs = []
    for t in _steps(node, x.shape[1]):
        gx = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if node.op is Op.GRU:
            r = torch.sigmoid(gx[:, :hid] + gh[:, :hid])
            z = torch.sigmoid(gx[:, hid:2 * hid] + gh[:, hid:2 * hid])
            nn = torch.tanh(gx[:, 2 * hid:] + r * gh[:, 2 * hid:])
            h = (1.0 - z) * nn + z * h
        elif node.op is Op.LSTM:
            pre = gx + gh
            i, f = torch.sigmoid(pre[:, :hid]), torch.sigmoid(pre[:, hid:2 * hid])
            gg, o = torch.tanh(pre[:, 2 * hid:3 * hid]), torch.sigmoid(pre[:, 3 * hid:])
            c = f * c + i * gg
            h = o * torch.tanh(c)
        else:
            pre = gx + gh
            h = torch.relu(pre) if node.attrs.get("nonlinearity") == "relu" else torch.tanh(pre)
        outs.append(h)
    if node.attrs.get("last"):
        return outs[-1][:, None, None, :]
    if node.attrs.get("reverse"):
        outs = outs[::-1]
    return torch.stack(outs, dim=1)[:, None]


# ---------------------------------------------------------------- integer semantics (the spec)


def bounded(n) -> bool:
    """The cell's new state is a tanh/sigmoid product in (-1, 1): Q15 state, fixed s8.f7 output."""
    return not (n.op is Op.RNN and n.attrs.get("nonlinearity") == "relu")


def _align(acc: np.ndarray, shift) -> np.ndarray:
    from ..fixed import requantize

    return requantize(acc, shift, -ALIGN_LIMIT, ALIGN_LIMIT)


def initial_state(g, n, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(h, c or None), each (batch, H) int64: the quantised h0 / c0 (what `<prefix>_reset()` loads)."""
    h0, *c0 = (np.asarray(g.tensors[t].data, dtype=np.int64) for t in n.inputs[5:])
    hid = n.attrs["hidden"]
    return np.broadcast_to(h0, (batch, hid)).copy(), (np.broadcast_to(c0[0], (batch, hid)).copy() if c0 else None)


def int_run(g, n, x: np.ndarray, state: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """The integer recurrence on int8 x (N, 1, T, I) from `state` (default: h0, c0); every intermediate exact
    in int64 (C: int32). Returns (output, final (h, c)); streaming calls it one frame at a time."""
    from ..fixed import requantize, round_shift, saturate

    w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=np.int64) for a in _consts(g, n)[:4])
    a = n.attrs
    hid, fh = a["hidden"], a["state_frac"]
    xsh, hsh = np.asarray(a["x_shift"], dtype=np.int64), np.asarray(a["h_shift"], dtype=np.int64)
    seq = np.asarray(x, dtype=np.int64)[:, 0]
    batch, length = seq.shape[0], seq.shape[1]
    state, cell = initial_state(g, n, batch) if state is None else (state[0].copy(), state[1])
    hf = STATE_FRAC if bounded(n) else fh
    outs = []
    for t in _steps(n, length):
        ax = seq[:, t] @ w_ih.T + b_ih
        ah = state @ w_hh.T + b_hh
        if n.op is Op.GRU:
            pre = saturate(_align(ax[:, :2 * hid], xsh[:2 * hid]) + _align(ah[:, :2 * hid], hsh[:2 * hid]), 16)
            r, z = sigmoid_q11(pre[:, :hid]), sigmoid_q11(pre[:, hid:])
            hn = requantize(ah[:, 2 * hid:], hsh[2 * hid:], -32768, 32767)
            nn = tanh_q11(saturate(_align(ax[:, 2 * hid:], xsh[2 * hid:]) + round_shift(r * hn, 15), 16))
            h15 = state << (STATE_FRAC - fh)
            new = saturate(nn + round_shift(z * (h15 - nn), 15), 16)
        else:
            pre = saturate(_align(ax, xsh) + _align(ah, hsh), 16)
            if n.op is Op.LSTM:
                fc = a["cell_frac"]
                i, f = sigmoid_q11(pre[:, :hid]), sigmoid_q11(pre[:, hid:2 * hid])
                gg, o = tanh_q11(pre[:, 2 * hid:3 * hid]), sigmoid_q11(pre[:, 3 * hid:])
                cell = saturate(round_shift(f * cell, 15) + round_shift(i * gg, 30 - fc), 16)
                tc = tanh_q12(requantize(cell, fc - TANH_IN_FRAC, -32768, 32767))
                new = saturate(round_shift(o * tc, 15), 16)
            elif bounded(n):
                new = tanh_q11(pre)
            else:
                new = np.maximum(pre, 0)
        out = requantize(new, hf - g.tensors[n.outputs[0]].qformat.frac, a["act_min"], a["act_max"])
        state = out if a["state_bits"] == 8 else new
        outs.append(out)
    return _collect(n, outs, length), (state, cell)


def i_rnn(g, n, xs):
    return int_run(g, n, xs[0])[0]


# ---------------------------------------------------------------- quantisation


def row_formats(w: np.ndarray, b: np.ndarray, fin: int, in_max: int, pre: int, where: str):
    """Per-row int8 weight fracs of one recurrent matrix and its int32 bias at fin + fw: (fw, w_q, b_q, shift).

    Finest format per row that holds its weights, then lowered until the accumulator bound
    sum|w_q| * in_max + |b_q| fits int32 and the alignment shift fin + fw - pre fits [-31, 31]."""
    from ..errors import UserError
    from ..fixed import MAX_SHIFT, QFormat, frac_for_range, quantize

    rows = w.shape[0]
    wmax = np.abs(w).max(axis=1) if w.size else np.zeros(rows)
    fw = np.array([frac_for_range(float(m), 8) for m in wmax], dtype=np.int64)
    fw = np.minimum(fw, MAX_SHIFT + pre - fin)
    for _ in range(64):
        w_q = quantize(w, QFormat(8, tuple(int(f) for f in fw)))
        b_q = quantize(b, QFormat(32, tuple(int(fin + f) for f in fw)))
        bound = np.abs(w_q).sum(axis=1) * in_max + np.abs(b_q)
        bad = bound > (1 << 31) - 1
        if not bad.any():
            break
        fw = np.where(bad, fw - 1, fw)
    shift = fin + fw - pre
    if np.any(shift < -MAX_SHIFT) or bad.any():
        raise UserError(f"{where}: recurrent weights too large for int8 with a power-of-two format (max |w| = "
                        f"{float(wmax.max()):.3g}); check the trained model or rescale the layer.")
    return fw, w_q, b_q, shift


def q_rnn(g, n, act) -> None:
    from ..fixed import QFormat, frac_for_range, quantize
    from ..passes import quantize as q

    x, out = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    a = n.attrs
    bits = int(a.get("state_bits", 16))
    q._set_act(out, act(out.name, OUT_FRAC if bounded(n) else None))
    fx, fo = x.qformat.frac, out.qformat.frac
    if bounded(n):
        fh, pre = (STATE_FRAC if bits == 16 else fo), GATE_FRAC
        lo, hi = -128, 127
    else:
        fh = frac_for_range(g.ranges.get(out.name, 1.0), 16) if bits == 16 else fo
        pre = fh
        lo, hi = q._act_bounds(a.get("act", (0.0, None)), out.qformat)
    w_ih, w_hh, b_ih, b_hh, h0 = (g.tensors[t] for t in n.inputs[1:6])
    fwi, wi_q, bi_q, xsh = row_formats(w_ih.data, b_ih.data, fx, 128, pre, n.where())
    fwh, wh_q, bh_q, hsh = row_formats(w_hh.data, b_hh.data, fh, 1 << (bits - 1), pre, n.where())
    for t, data, fw in ((w_ih, wi_q, fwi), (w_hh, wh_q, fwh)):
        t.data, t.dtype, t.qformat = data.astype(np.int8), "int8", QFormat(8, tuple(int(f) for f in fw))
    for t, data, fw, fin in ((b_ih, bi_q, fwi, fx), (b_hh, bh_q, fwh, fh)):
        t.data, t.dtype, t.qformat = data.astype(np.int32), "int32", QFormat(32, tuple(int(fin + f) for f in fw))
    h0.data, h0.dtype, h0.qformat = quantize(h0.data, QFormat(bits, fh)).astype(np.int16), "int16", QFormat(16, fh)
    a.update(x_shift=[int(s) for s in xsh], h_shift=[int(s) for s in hsh], state_frac=int(fh), state_bits=bits,
             act_min=int(lo), act_max=int(hi), out_shift=int((STATE_FRAC if bounded(n) else fh) - fo))
    if n.op is Op.LSTM:
        c0 = g.tensors[n.inputs[6]]
        seen = g.ranges.get(f"{out.name}#cell")
        if seen is None:  # no calibration record: |c_t| <= |c_0| + t
            seen = float(np.max(np.abs(c0.data), initial=0.0)) + x.shape[1]
        # one bit of headroom (streams run longer than calibration windows); at least -1 so that the i*g shift
        # 30 - fc stays <= 31 (a cell beyond +-2^16 saturates: tanh(c) is +-1 there anyway)
        fc = max(-1, min(STATE_FRAC, frac_for_range(2.0 * seen, 16)))
        c0.data, c0.dtype, c0.qformat = quantize(c0.data, QFormat(16, fc)).astype(np.int16), "int16", QFormat(16, fc)
        a["cell_frac"] = int(fc)


# ---------------------------------------------------------------- QAT's fake-quantised twin


QAT_PARAMS = (1, 2, 3, 4)  # w_ih, w_hh, b_ih, b_hh are trained; h0 / c0 stay the graph's constants


def _qat_rows(w, b, fin: int, in_max: int, pre: int, n, s):
    """row_formats on the live float weights -> (integer weights, integer bias, 2^-shift per row): straight-through
    in training (forward on the integers, gradient to the float weights), the integers themselves when exact."""
    import torch

    fw, w_q, b_q, shift = row_formats(w.detach().double().numpy(), b.detach().double().numpy(), fin, in_max, pre,
                                      n.where())
    w_int, b_int = torch.tensor(w_q, dtype=s.dtype), torch.tensor(b_q, dtype=s.dtype)
    if s.ste:
        ws = w * torch.tensor(np.exp2(fw.astype(np.float64)), dtype=s.dtype)[:, None]
        bs = b * torch.tensor(np.exp2((fin + fw).astype(np.float64)), dtype=s.dtype)
        w_int, b_int = ws + (w_int - ws).detach(), bs + (b_int - bs).detach()
    return w_int, b_int, torch.tensor(np.exp2(-shift.astype(np.float64)), dtype=s.dtype)


def _qat_table(u, s, float_fn, int_fn):
    """A table activation on an integer-valued tensor: int_fn(u) exactly; in training its value with the gradient
    of the float function it approximates (straight-through)."""
    y = int_fn(u.detach())
    if not s.ste:
        return y
    y_f = float_fn(u)
    return y_f + (y - y_f).detach()


def _qat_tanh_q12(u):
    """tanh_q12 in torch on integer-valued u (float64 exact; the same table and interpolation)."""
    import torch

    from ..qat import requant

    table = torch.tensor(TANH_TABLE.astype(np.float64), dtype=u.dtype)
    v = u + 32768.0
    i = torch.floor(v * 2.0 ** -TABLE_SHIFT)
    f = v - i * (1 << TABLE_SHIFT)
    lo = table[i.long()]
    hi = table[torch.clamp(i + 1, max=512).long()]
    return lo + requant((hi - lo) * f * 2.0 ** -TABLE_SHIFT, None, None, False)


def _qat_tanh_q11(x, s):
    import torch

    from ..qat import requant

    return _qat_table(x, s, lambda v: torch.tanh(v * 2.0 ** -GATE_FRAC) * 32768.0,
                      lambda v: _qat_tanh_q12(requant(v * 2.0, -32768, 32767, False)))


def _qat_sigmoid_q11(x, s):
    import torch

    from ..qat import requant

    return _qat_table(x, s, lambda v: torch.sigmoid(v * 2.0 ** -GATE_FRAC) * 32768.0,
                      lambda v: requant((_qat_tanh_q12(v) + 32768.0) * 0.5, None, 32767, False))


def qat_rnn(q, i: int, n, xs, s):
    """QAT: int_run in torch ops. Exact (float64): the same integers, step for step; training (float32): the same
    rounding and saturation with straight-through gradients, the tables with their float function's gradient."""
    import torch

    from ..fixed import QFormat, quantize
    from ..qat import requant

    a = s.attrs
    hid, fh, bits, ste = a["hidden"], a["state_frac"], a["state_bits"], s.ste
    pre_frac = GATE_FRAC if bounded(n) else fh
    w_ih, w_hh, b_ih, b_hh = (q.params[f"{i}_{k}"].to(s.dtype) for k in QAT_PARAMS)
    wi, bi, xsh = _qat_rows(w_ih, b_ih, s.fin, 128, pre_frac, n, s)
    wh, bh, hsh = _qat_rows(w_hh, b_hh, fh, 1 << (bits - 1), pre_frac, n, s)

    def sat16(v):
        return requant(v, -32768, 32767, ste)

    def shift(v, k: int):  # round_shift by k
        return requant(v * 2.0 ** -k, None, None, ste)

    def align(acc, scale):
        return requant(acc * scale, -ALIGN_LIMIT, ALIGN_LIMIT, ste)

    x = xs[0][:, 0]
    batch = x.shape[0]
    consts = [q._graph.tensors[t].data for t in n.inputs[5:]]
    h = torch.tensor(quantize(consts[0], QFormat(bits, fh)), dtype=s.dtype).expand(batch, hid)
    cell = None
    if n.op is Op.LSTM:
        fc = a["cell_frac"]
        cell = torch.tensor(quantize(consts[1], QFormat(16, fc)), dtype=s.dtype).expand(batch, hid)
    hf = STATE_FRAC if bounded(n) else fh
    outs = []
    for t in _steps(n, x.shape[1]):
        ax = x[:, t] @ wi.T + bi
        ah = h @ wh.T + bh
        if n.op is Op.GRU:
            pre = sat16(align(ax[:, :2 * hid], xsh[:2 * hid]) + align(ah[:, :2 * hid], hsh[:2 * hid]))
            r, z = _qat_sigmoid_q11(pre[:, :hid], s), _qat_sigmoid_q11(pre[:, hid:], s)
            hn = requant(ah[:, 2 * hid:] * hsh[2 * hid:], -32768, 32767, ste)
            nn = _qat_tanh_q11(sat16(align(ax[:, 2 * hid:], xsh[2 * hid:]) + shift(r * hn, 15)), s)
            new = sat16(nn + shift(z * (h * 2.0 ** (STATE_FRAC - fh) - nn), 15))
        else:
            pre = sat16(align(ax, xsh) + align(ah, hsh))
            if n.op is Op.LSTM:
                ig, fg = _qat_sigmoid_q11(pre[:, :hid], s), _qat_sigmoid_q11(pre[:, hid:2 * hid], s)
                gg, og = _qat_tanh_q11(pre[:, 2 * hid:3 * hid], s), _qat_sigmoid_q11(pre[:, 3 * hid:], s)
                cell = sat16(shift(fg * cell, 15) + shift(ig * gg, 30 - fc))
                tc = _qat_table(requant(cell * 2.0 ** (TANH_IN_FRAC - fc), -32768, 32767, ste), s,
                                lambda v: torch.tanh(v * 2.0 ** -TANH_IN_FRAC) * 32768.0, _qat_tanh_q12)
                new = sat16(shift(og * tc, 15))
            elif bounded(n):
                new = _qat_tanh_q11(pre, s)
            else:
                new = torch.relu(pre)
        out = requant(new * 2.0 ** (s.fout - hf), a["act_min"], a["act_max"], ste)
        h = out if bits == 8 else new
        outs.append(out)
    if n.attrs.get("last"):
        return outs[-1][:, None, None, :]
    return torch.stack(outs[::-1] if n.attrs.get("reverse") else outs, dim=1)[:, None]


# ---------------------------------------------------------------- pure MicroPython


def py_rnn(b, n, index: int):
    """MicroPython: _recurrent (templates/micropython/_kernels.py) with the shared Q15 tanh table as a constant
    array (the generator's integers, never recomputed with floats) and the layer's state buffers allocated once."""
    from ..emit.micropython import _int_lines

    g, a, sym = b.g, n.attrs, f"L{index}"
    _, steps, n_in = g.tensors[n.inputs[0]].shape
    hid, fh = a["hidden"], a["state_frac"]
    if not any(c.head.startswith("_TANH_Q15 =") for c in b.model.consts):
        b.const("_TANH_Q15", "tanh at 513 points of [-8, 8], Q15 (int16): the table of every recurrent layer's "
                "sigmoid and tanh (codegen/ops/recurrent.py TANH_TABLE)", "_TANH_Q15 = array('h', (",
                _int_lines(TANH_TABLE), "))", 2 * TANH_TABLE.size)
    w_ih, w_hh = b.weight_rows(f"{sym}i", n.inputs[1]), b.weight_rows(f"{sym}h", n.inputs[2])
    b_ih, b_hh = b.bias(f"{sym}i", n.inputs[3]), b.bias(f"{sym}h", n.inputs[4])
    xmul, xrnd, xshr = b.requant(f"{sym}x", a["x_shift"])
    hmul, hrnd, hshr = b.requant(f"{sym}h", a["h_shift"])
    init = []
    for k, t in enumerate(n.inputs[5:]):
        data = g.tensors[t].data
        name = f"_{sym}_{'HC'[k]}0"
        init.append(b.const(name, f"initial {'hc'[k]} [{data.size}] int16 {g.tensors[t].qformat}",
                            f"{name} = array('h', (", _int_lines(data), "))", 2 * data.size))
    lstm = n.op is Op.LSTM
    fc = a.get("cell_frac", TANH_IN_FRAC)
    (cmul,), (crnd,), (cshr,) = b.triples([fc - TANH_IN_FRAC])
    (omul,), (ornd,), (oshr,) = b.triples([a["out_shift"]])
    kind = {Op.GRU: 0, Op.LSTM: 1}.get(n.op, 2 if bounded(n) else 3)
    rows = GATES[n.op] * hid
    params = [("kind: 0 GRU, 1 LSTM, 2 RNN tanh, 3 RNN relu", kind), ("steps", steps), ("in_features", n_in),
              ("hidden", hid), ("reverse", int(bool(a.get("reverse")))), ("last", int(bool(a.get("last")))),
              ("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh),
              ("x mul", xmul), ("x rnd", xrnd), ("x shr", xshr), ("h mul", hmul), ("h rnd", hrnd), ("h shr", hshr),
              ("h0", init[0]), ("c0", init[1] if lstm else "None"),
              ("state to Q15: left shift", STATE_FRAC - fh if bounded(n) else 0),
              ("state is the int8 output (state_bits 8)", int(a["state_bits"] == 8)),
              ("cell: round shift of i * g", 30 - fc), ("cell to Q12 mul", cmul), ("cell to Q12 rnd", crnd),
              ("cell to Q12 shr", cshr), ("out mul", omul), ("out rnd", ornd), ("out shr", oshr),
              ("act_min", a["act_min"]), ("act_max", a["act_max"]), ("tanh table", "_TANH_Q15"),
              ("state h (scratch)", f"array('h', bytes({2 * hid}))"),
              ("cell c (scratch)", f"array('h', bytes({2 * hid}))" if lstm else "None"),
              ("x accumulators (scratch)", f"[0] * {rows}"), ("h accumulators (scratch)", f"[0] * {rows}")]
    if a.get("stream"):  # a streaming step (passes/stream.py): the state persists, reset() sets it from h0 / c0
        names = [k for k, _ in params]
        for k, (what, init_name) in enumerate(zip(("state h (scratch)", "cell c (scratch)"), init)):
            b.model.reset_lines.append(f"_set_state(_{sym}[{names.index(what)}], {init_name})")
            params[names.index("h0" if k == 0 else "c0")] = (f"{'hc'[k]}0 (streaming: set by reset())", "None")
    return "_recurrent", params, ""


def macs_rnn(g, n) -> int:
    _, t, i = g.tensors[n.inputs[0]].shape
    h = n.attrs["hidden"]
    return t * GATES[n.op] * h * (i + h)


def kernel_rnn(variant: str) -> tuple[str, str]:
    if variant != "s8":
        raise ValueError(f"recurrent layers have no {variant} kernel (int8 activations, int16 state)")
    return "qg_recurrent_s8", "qg_recurrent_params_t"


# ---------------------------------------------------------------- C (firmware/kernels/qg_recurrent_s8.c)

C_CELL = {Op.GRU: "QG_CELL_GRU", Op.LSTM: "QG_CELL_LSTM"}


def buffer_size(g, n) -> int:
    """qg_recurrent_s8_buffer_size: int32 gate slots (G*H, + H GRU candidates) and int16 copies of x_t and h."""
    _, _, i = g.tensors[n.inputs[0]].shape
    h = n.attrs["hidden"]
    slots = (GATES[n.op] + (1 if n.op is Op.GRU else 0)) * h
    return 4 * (slots + (i + 1) // 2 + (h + 1) // 2)


def state_bytes(g, n) -> int:
    """Bytes of the layer's scratch that hold its state (h, LSTM c: int16 each) during a whole-window run,
    rounded up to a word so the kernel's own scratch after it stays 4-byte aligned."""
    words = (2 if n.op is Op.LSTM else 1) * n.attrs["hidden"]
    return 4 * ((words + 1) // 2)


def rnn_scratch(g, n) -> int:
    """Scratch bytes of qg_recurrent_s8 (codegen/kernels.py): the state (not when streaming: it has its own
    memory), then the kernel's buffer."""
    return (0 if n.attrs.get("stream") else state_bytes(g, n)) + buffer_size(g, n)


def state_init_and_ptr(b, io, n) -> tuple[str, str, int]:
    """(C statements that set the initial state, the kernel's state pointer, bytes of the layer's scratch the
    state takes). Whole window: the state lives at the start of the layer's scratch and is set from the
    quantised h0 / c0 before every run. A streaming step (attrs["stream"], passes/stream.py) keeps it in the state
    memory between steps instead, set by <prefix>_reset()."""
    if n.attrs.get("stream"):
        from ..passes.stream import state_key

        state = f"QG_AS_S16({b.buffer(state_key(b.g.nodes.index(n)))})"
        b.model.reset_calls.append(f"qg_recurrent_state_init(&{io.struct}, {state});")
        return "", state, 0
    state = f"QG_AS_S16({io.scratch})"
    return f"qg_recurrent_state_init(&{io.struct}, {state}); ", state, state_bytes(b.g, n)


def c_cell(n) -> str:
    if n.op is Op.RNN:
        return "QG_CELL_RNN_TANH" if bounded(n) else "QG_CELL_RNN_RELU"
    return C_CELL[n.op]


def c_rnn(b, index: int, n):
    """C, int8 in and out: qg_recurrent_s8 over the whole window (state set by state_init_and_ptr)."""
    g, io = b.g, b.io(index, n)
    _, steps, inputs = g.tensors[io.xs[0]].shape
    a = n.attrs
    rows = GATES[n.op] * a["hidden"]
    arrays = [(name, b.const_tensor(io.sym, t, name)) for name, t in zip(("w_ih", "w_hh", "b_ih", "b_hh"),
                                                                          n.inputs[1:5])]
    shifts = [(k, b.array(f"{io.sym}_{k}", np.array(a[k]), "int8", f"{k} per gate row ({rows})"))
              for k in ("x_shift", "h_shift")]
    fields = [("cell", c_cell(n)), ("reverse", int(bool(a.get("reverse")))), ("last", int(bool(a.get("last")))),
              ("state_bits", a["state_bits"]), ("steps", steps), ("inputs", inputs), ("hidden", a["hidden"]),
              ("state_frac", a["state_frac"]), ("cell_frac", a.get("cell_frac", 0)), ("out_shift", a["out_shift"]),
              ("act_min", a["act_min"]), ("act_max", a["act_max"]), *shifts, *arrays]
    fields.append(("h0", b.const_tensor(io.sym, n.inputs[5], "h0")))
    if n.op is Op.LSTM:  # c0 is left out (NULL) otherwise
        fields.append(("c0", b.const_tensor(io.sym, n.inputs[6], "c0")))
    init, state, skip = state_init_and_ptr(b, io, n)
    b.check_scratch(index, n, rnn_scratch(g, n))
    scratch = f"(int32_t *)(void *)({io.scratch} + {skip})"
    return ("qg_recurrent_params_t", fields,
            f"{init}qg_recurrent_s8(&{io.struct}, {io.ins[0]}, {io.out_expr}, {state}, {scratch});")


_TRAITS = Trait.INT8_ONLY
_KERNELS = ("qg_recurrent_s8",)

SPECS = [
    OpSpec(Op.GRU, "recurrent", _TRAITS, rnn_shape, check_rnn, f_rnn, i_rnn, q_rnn, macs_rnn, torch_rnn,
           "GRU, GRUCell in a loop", ("GRU",), _KERNELS,
           "GRU layer (1 direction): int8 weights per gate row, int16 Q15 state, table sigmoid/tanh",
           kernel=kernel_rnn, emit_c=c_rnn, emit_py=py_rnn, state_ranges=state_ranges,
           qat=qat_rnn, qat_params=QAT_PARAMS),
    OpSpec(Op.LSTM, "recurrent", _TRAITS, rnn_shape, check_rnn, f_rnn, i_rnn, q_rnn, macs_rnn, torch_rnn,
           "LSTM, LSTMCell in a loop", ("LSTM",), _KERNELS,
           "LSTM layer (1 direction): int8 weights per gate row, int16 state and cell, table sigmoid/tanh",
           kernel=kernel_rnn, emit_c=c_rnn, emit_py=py_rnn, state_ranges=state_ranges,
           qat=qat_rnn, qat_params=QAT_PARAMS),
    OpSpec(Op.RNN, "recurrent", _TRAITS, rnn_shape, check_rnn, f_rnn, i_rnn, q_rnn, macs_rnn, torch_rnn,
           "RNN (tanh, relu), RNNCell in a loop", ("RNN",), _KERNELS,
           "Elman RNN layer (1 direction): int8 weights per row, int16 state",
           kernel=kernel_rnn, emit_c=c_rnn, emit_py=py_rnn, state_ranges=state_ranges,
           qat=qat_rnn, qat_params=QAT_PARAMS),
]
