"""The int32 accumulator proof against adversarial weights, checked by running the worst case.

quantize proves sum|w_q| * 128 + |b_q| <= 2^31 - 1 per output channel and lowers a channel's weight
precision where it would not hold. Here the weights are chosen to make that bound *reachable*: every
weight quantises to +127 and the input is all -128, so the real accumulator equals -(127*128*F) - b.
The generated C runs under UBSan (-fno-sanitize-recover), which aborts on any signed int32 overflow,
so a wrong proof fails loudly instead of wrapping silently.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzgen import PREFIX, build_sanitized
from torch import nn

from codegen import compile as qcompile
from codegen.hostcheck import run_native

INT32_MAX = 2**31 - 1
THRESHOLD = INT32_MAX // (127 * 128)  # largest fan-in whose worst case fits at full precision: 132104


def _compile_worst_case(cin: int, kernel: tuple[int, int], bias: float, tmp: Path):
    """Conv2d(cin, 2, kernel) on a (cin, *kernel) input: one output pixel with fan-in cin*kh*kw.

    (A conv, because qg_fully_connected_params_t holds in_features in 16 bits: see test_regressions.)"""
    model = nn.Conv2d(cin, 2, kernel).eval()
    with torch.no_grad():
        model.weight.fill_(127 / 64)  # quantises to exactly 127 at the finest format (frac 6)
        model.weight[1] *= -1  # second channel: all -127 (the same input is its worst case, other sign)
        model.bias.fill_(bias)
    calib = np.ones((2, cin, *kernel), np.float32)
    return qcompile(model, torch.zeros(1, cin, *kernel), calib, prefix=PREFIX, out_dir=tmp / "model")


@pytest.mark.slow
@pytest.mark.parametrize("cin, kernel, bias, lowered", [
    (2696, (7, 7), 0.0, False),  # fan-in 132104 = THRESHOLD: the bound is reached and fits, full precision
    (8807, (5, 3), 0.0, True),  # fan-in 132105: one more input would overflow at full precision
    (1348, (7, 7), -3e6, True),  # fan-in 66052 with a large bias of the products' sign eating the headroom
], ids=["at-threshold", "one-over", "huge-bias"])
def test_worst_case_accumulator_runs_clean(cin, kernel, bias, lowered):
    fan_in = cin * kernel[0] * kernel[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        result = _compile_worst_case(cin, kernel, bias, tmp)
        node = result.graph.nodes[0]
        w = result.graph.tensors[node.inputs[1]].data.astype(np.int64).reshape(2, -1)
        b = result.graph.tensors[node.inputs[2]].data.astype(np.int64)
        bound = np.abs(w).sum(axis=1) * 128 + np.abs(b)
        assert bound.max() == node.attrs["acc_bound"] <= INT32_MAX
        assert (np.abs(w).max() < 127) == lowered, f"weights max {np.abs(w).max()} (lowered expected: {lowered})"
        assert fan_in != THRESHOLD or bound.max() == 127 * 128 * THRESHOLD  # no headroom wasted
        x = np.stack([np.full(fan_in, -128), np.full(fan_in, 127), np.where(np.arange(fan_in) % 2, 127, -128)])
        x = x.astype(np.int8)
        # the worst case is reached: |acc| of channel 0 on all -128 equals the proven bound
        acc = (x.astype(np.int64) @ w.T) + b
        assert abs(acc[0, 0]) == bound[0]
        exe = build_sanitized(tmp / "model", tmp / "acc_asan")
        shape = result.graph.tensors[result.graph.inputs[0]].shape  # (H, W, C): every element is the same
        got = run_native(exe, x, 2)
        np.testing.assert_array_equal(got, result.reference(x.reshape(-1, *shape)))
