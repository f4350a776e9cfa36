"""history: the state op of streaming models (`qgen compile --stream`, codegen/passes/stream.py).

IR node: inputs [frame (1, 1, C)] -> output taps (1, k, C); attrs["frames"] = K, attrs["dilation"] = d, k = (K - 1)
// d + 1. The node keeps the window of the last K frames of its input, oldest first, as its state (plan_memory's
"state" region at passes/stream.state_key(step), kept between steps, zeroed by `<prefix>_reset()`); each step
shifts the new frame in and writes the k frames a causal convolution over time reads (kernel k, dilation d:
frames t - (k-1)d, ..., t - d, t) to its output, contiguous: the convolution then runs as one output frame on them
(a dense one as a fully connected layer over the k*C values, passes/stream.py).

A graph holding history nodes is one step of a stream. Run as a plain graph (reference.run_int, a batch of
independent frames) every node is at its first step after a reset: the window is K - 1 zero frames and the frame
— a causal zero padding, exactly what the whole-window model's padding holds before the first frame. The stateful
run (each step's window from the previous one) is codegen/stream.py's StreamRunner. No arithmetic: the output
keeps the input's Q-format and integers.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _no_check, _zero_macs  # noqa: F401
from .window import pad_hw


def frames(n) -> int:
    return int(n.attrs["frames"])


def dilation(n) -> int:
    return int(n.attrs.get("dilation", 1))


def taps(n) -> int:
    return (frames(n) - 1) // dilation(n) + 1


def history_shape(g, n) -> tuple[int, ...]:
    _, _, c = g.tensors[n.inputs[0]].shape
    return (1, taps(n), c)


def check_history(g, n) -> None:
    x = g.tensors[n.inputs[0]].shape
    if len(x) != 3 or x[:2] != (1, 1) or frames(n) < 2 or dilation(n) < 1 or (frames(n) - 1) % dilation(n):
        raise VerifyError(f"{n.where()}: history of {frames(n)} frames, dilation {dilation(n)} over {x}; expects "
                          "one frame (1, 1, C), at least 2 frames, (frames - 1) a multiple of the dilation")


def ref_history(g, n, xs):
    """The first step after a reset: the taps of K - 1 zero frames, then the frame (shape (N, 1, k, C))."""
    return window_taps(n, pad_hw(xs[0], (0, frames(n) - 1, 0, 0), 0))


def shift_in(window: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """One step of the state (the C kernel qg_history_s8): drop the oldest frame, append `frame` (N, 1, 1, C)."""
    return np.concatenate([window[:, :, 1:], frame], axis=2)


def window_taps(n, window: np.ndarray) -> np.ndarray:
    """The output of a step: frames 0, d, 2d, ..., K - 1 of the window (N, 1, K, C)."""
    return window[:, :, ::dilation(n)]


def q_history(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))


def torch_history(node, xs, const):
    import torch.nn.functional as F

    return F.pad(xs[0], (0, 0, frames(node) - 1, 0))[:, :, ::dilation(node)]


def kernel_history(variant: str) -> tuple[str, str]:
    if variant not in ("s8", "s16"):
        raise ValueError(f"no history kernel for variant {variant}")
    return "qg_history_s8", "qg_history_params_t"  # byte-wise: int16 frames are twice the bytes


def c_history(b, index: int, n):
    from ..passes.stream import state_key

    io = b.io(index, n)
    x = b.g.tensors[io.xs[0]]
    fields = [("frame_bytes", x.nbytes), ("frames", frames(n)), ("dilation", dilation(n))]
    state = b.buffer(state_key(index))
    return "qg_history_params_t", fields, f"qg_history_s8(&{io.struct}, {io.ins[0]}, {state}, {io.out_expr});"


def py_history(b, n, index: int):
    """MicroPython: _history(frame, taps, (frame_bytes, frames, dilation, window)); the window is a view of the
    state memory."""
    from ..passes.stream import state_key

    fb = b.g.tensors[n.inputs[0]].nbytes
    _, at = b.g.memory[state_key(index)]
    return "_history", [("frame_bytes", fb), ("frames", frames(n)), ("dilation", dilation(n)),
                        ("window (state)", f"_STATE_MV[{at}:{at + frames(n) * fb}]")], ""


def qat_history(q, i: int, n, xs, s):
    return torch_history(n, xs, None)


SPECS = [
    OpSpec(Op.HISTORY, "stream", Trait.KEEPS_FORMAT | Trait.CHANNELWISE | Trait.HOLDS_STATE,
           history_shape, check_history, ref_history, ref_history, q_history, _zero_macs, torch_history,
           "", (), ("qg_history_s8",),
           "streaming only (qgen compile --stream): the last K input frames of a causal convolution kept in "
           "state memory, its taps out", kernel=kernel_history,
           emit_py=py_history, emit_c=c_history, emit_c_wide=c_history,
           qat=qat_history),
]
