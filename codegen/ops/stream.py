"""history: the state op of streaming models (`qgen compile --stream`, codegen/passes/stream.py).

IR node: inputs [frame (1, 1, C)] -> output window (1, K, C), attrs["frames"] = K. The window holds the last K
frames of the input, oldest first: the input of a causal convolution over time (K = (kernel - 1) * dilation + 1),
which then runs unpadded on it and gives one output frame. The window is the op's state: it lives in the state
memory (plan_memory's "state" region), is kept between steps and is zeroed by `<prefix>_reset()`.

A graph holding history nodes is one step of a stream. Run as a plain graph (reference.run_int, a batch of
independent frames) every node is at its first step after a reset: the window is K - 1 zero frames and the
frame — a causal zero padding, exactly what the whole-window model's padding holds before the first frame.
The stateful run (each step's window from the previous one) is codegen/stream.py's StreamRunner.
No arithmetic: the output keeps the input's Q-format and integers.
"""
from __future__ import annotations

import numpy as np

from . import Op, OpSpec, Trait, VerifyError, _no_check, _zero_macs  # noqa: F401
from .window import pad_hw


def frames(n) -> int:
    return int(n.attrs["frames"])


def history_shape(g, n) -> tuple[int, ...]:
    _, _, c = g.tensors[n.inputs[0]].shape
    return (1, frames(n), c)


def check_history(g, n) -> None:
    x = g.tensors[n.inputs[0]].shape
    if len(x) != 3 or x[:2] != (1, 1) or frames(n) < 2:
        raise VerifyError(f"{n.where()}: history of {frames(n)} frames over {x}; expects one frame (1, 1, C) and "
                          "at least 2 frames")


def ref_history(g, n, xs):
    """The first step after a reset: K - 1 zero frames, then the frame (shape (N, 1, K, C))."""
    return pad_hw(xs[0], (0, frames(n) - 1, 0, 0), 0)


def shift_in(window: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """One step of the state (the C kernel qg_history_s8): drop the oldest frame, append `frame` (N, 1, 1, C)."""
    return np.concatenate([window[:, :, 1:], frame], axis=2)


def q_history(g, n, act) -> None:
    from ..passes import quantize as q

    out = g.tensors[n.outputs[0]]
    q._set_act(out, act(out.name, g.tensors[n.inputs[0]].qformat.frac))


def torch_history(node, xs, const):
    import torch.nn.functional as F

    return F.pad(xs[0], (0, 0, frames(node) - 1, 0))


def kernel_history(variant: str) -> tuple[str, str]:
    if variant not in ("s8", "s16"):
        raise ValueError(f"no history kernel for variant {variant}")
    return "qg_history_s8", "qg_history_params_t"  # byte-wise: int16 frames are twice the bytes


def c_history(b, index: int, n):
    io = b.io(index, n)
    x = b.g.tensors[io.xs[0]]
    fields = [("frame_bytes", x.nbytes), ("frames", frames(n))]
    return "qg_history_params_t", fields, f"qg_history_s8(&{io.struct}, {io.ins[0]}, {io.out_expr});"


def py_history(b, n, index: int):
    """MicroPython: _history(frame, window, (frame_bytes, frames)); the window is a view of the state memory."""
    return "_history", [("frame_bytes", b.g.tensors[n.inputs[0]].nbytes), ("frames", frames(n))], ""


def qat_history(q, i: int, n, xs, s):
    return torch_history(n, xs, None)


SPECS = [
    OpSpec(Op.HISTORY, "stream", Trait.KEEPS_FORMAT | Trait.CHANNELWISE | Trait.HOLDS_STATE,
           history_shape, check_history, ref_history, ref_history, q_history, _zero_macs, torch_history,
           "", (), ("qg_history_s8",),
           "streaming only (qgen compile --stream): the last K input frames of a causal convolution, kept "
           "in state memory", kernel=kernel_history,
           emit_py=py_history, emit_c=c_history, emit_c_wide=c_history,
           qat=qat_history),
]
