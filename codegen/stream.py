"""The streaming spec: a stateful runner over a step graph (codegen/passes/stream.py) built on the ops' integer
specs, what `<prefix>_reset()` / `<prefix>_step()` in C (and the firmware) must equal byte for byte.

    runner = StreamRunner(result.graph)      # a step graph
    runner.reset()                           # histories zeroed, recurrent layers at h0 / c0
    out = runner.step(frame_i8)              # (N, C) or (N, 1, 1, C) frames -> (N, OUTPUT_SIZE) int8

Each node runs its `ref_int` (reference.run_int's rule) on one frame, except the stateful ones: a history node
shifts its window by the new frame and gives its taps (ops/stream.py shift_in, window_taps), a streaming
recurrent layer runs one time step of ops/recurrent.int_run from its kept (h, c). N frames are N independent
streams.
"""
from __future__ import annotations

import numpy as np

from .ir import Graph
from .ops import SPEC, Op, Trait, has


class StreamRunner:
    def __init__(self, graph: Graph, batch: int = 1):
        self.g = graph
        self.state: dict[str, object] = {}
        self.reset(batch)

    def reset(self, batch: int = 1) -> None:
        """Every state back to its start: history windows zero, recurrent layers at their h0 / c0."""
        from .ops.recurrent import initial_state

        self.batch = batch
        self.state = {}
        for n in self.g.nodes:
            if has(n.op, Trait.HOLDS_STATE):  # a history: its window of attrs["frames"] input frames
                _, _, c = self.g.tensors[n.inputs[0]].shape
                self.state[n.name] = np.zeros((batch, 1, n.attrs["frames"], c), dtype=np.int64)
            elif n.attrs.get("stream"):
                self.state[n.name] = initial_state(self.g, n, batch)

    def step(self, frame: np.ndarray) -> np.ndarray:
        """One new frame per stream (N frames of the input's shape, or of C values) -> the int8 outputs
        (N, OUTPUT_SIZE), the outputs concatenated as `<prefix>_step` writes them."""
        values = self.values(frame)
        n = self.batch
        return np.concatenate([values[o].reshape(n, -1) for o in self.g.outputs], axis=1).astype(np.int8)

    def values(self, frame: np.ndarray) -> dict[str, np.ndarray]:
        """One step; every activation of the step graph by name (int64), as reference.run_int gives them."""
        from .ops.recurrent import int_run
        from .ops.stream import shift_in, window_taps

        g = self.g
        x = np.asarray(frame, dtype=np.int64).reshape(self.batch, *g.tensors[g.inputs[0]].shape)
        values = {g.inputs[0]: x}
        for n in g.nodes:
            xs = [values[t] for t in n.inputs if not g.tensors[t].is_const]
            if has(n.op, Trait.HOLDS_STATE):
                self.state[n.name] = shift_in(self.state[n.name], xs[0])
                out = window_taps(n, self.state[n.name])
            elif n.attrs.get("stream"):
                out, self.state[n.name] = int_run(g, n, xs[0], self.state[n.name])
            else:
                out = SPEC[n.op].ref_int(g, n, xs)
                out = out if xs else np.repeat(out, self.batch, axis=0)  # const: batch 1
            values[n.outputs[0]] = np.asarray(out).astype(np.int64)
        return values

    def run(self, frames: np.ndarray) -> np.ndarray:
        """reset(), then every frame of a sequence (N, 1, L, C) in turn -> outputs (N, L, OUTPUT_SIZE)."""
        frames = np.asarray(frames)
        self.reset(frames.shape[0])
        return np.stack([self.step(frames[:, :, t:t + 1]) for t in range(frames.shape[2])], axis=1)


def last_frame_outputs(g: Graph, values: dict[str, np.ndarray]) -> np.ndarray:
    """The whole-window model's outputs (N, OUTPUT_SIZE of the step) for the window's last frame: a sequence output
    gives its last time step, an output without a time axis is whole."""
    from .passes.stream import time_axes

    timed = time_axes(g)
    parts = []
    for o in g.outputs:
        v = values[o]
        if o in timed:
            v = np.take(v, [v.shape[timed[o] + 1] - 1], axis=timed[o] + 1)
        parts.append(v.reshape(v.shape[0], -1))
    return np.concatenate(parts, axis=1).astype(np.int8)


def window_reference(whole: Graph, frames: np.ndarray, t: int, window: int | None = None) -> np.ndarray:
    """What the stream must give at step t: the whole-window spec (reference.run_int) on the frames (N, 1, L, C) of
    the window ending at t — its last `window` frames, or all frames from 0 when window is None (recurrent
    layers), on the model re-sized to that length (passes/stream.with_time_length)."""
    from .passes.stream import with_time_length
    from .reference import run_int

    start = 0 if window is None else t - window + 1
    if start < 0:
        raise ValueError(f"the window of {window} frames ending at step {t} starts before frame 0")
    x = np.asarray(frames)[:, :, start:t + 1]
    g = whole if whole.tensors[whole.inputs[0]].shape[1] == x.shape[2] else with_time_length(whole, x.shape[2])
    return last_frame_outputs(g, run_int(g, x))


def verify_stream(step: Graph, host, sequences: np.ndarray):
    """`qgen verify` of a streaming model: for each int sequence (N, 1, L, C), reset the C (a hostcheck.HostModel
    built with stream=True) and the spec, step both through the L frames and compare every step's bytes.
    Returns a hostcheck.VerifyResult over the sequences (its outputs: each sequence's last step)."""
    from . import progress
    from .hostcheck import Mismatch, VerifyResult

    sequences = np.asarray(sequences)
    matching, mismatch, last = 0, None, []
    expects = StreamRunner(step).run(sequences)  # (N, L, OUTPUT_SIZE): the N streams side by side
    with progress.task("verify streams C == reference", total=len(sequences)) as bar:  # a step per stream
        for i, (seq, expect) in enumerate(zip(sequences, expects)):
            host.reset()
            got = host.run(seq[0])
            last.append(got[-1])
            if np.array_equal(got, expect):
                matching += 1
            elif mismatch is None:
                t, j = (int(v) for v in np.argwhere(got != expect)[0])
                mismatch = Mismatch(i, -1, f"step {t} (frame {t} of the stream)", j, int(got[t, j]),
                                    int(expect[t, j]))
            bar.advance()
    return VerifyResult(len(sequences), matching, mismatch, np.array(last))


__all__ = ["StreamRunner", "last_frame_outputs", "window_reference", "verify_stream", "Op"]
