"""Cases found by the model fuzzer, replayed as plain specs (no hypothesis needed).

FIXED: cases that once failed and must keep passing. OPEN: bugs not fixed yet, kept as strict xfails
so that the fix turns them into failures here ("XPASS(strict)"): then move the spec to FIXED and drop
the matching AVOID_*/KNOWN_BUGS entry in fuzzgen.py so the fuzzer covers the pattern again.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzzgen import check_spec
from torch import nn

from codegen import compile as qcompile


def linear(out: int, **kw) -> dict:
    return {"op": "linear", "out": out, "bias": True, "w": "normal", "wexp": 0, "b": "normal", "bexp": 0, **kw}


def conv(out: int, k=(1, 1), stride=(1, 1), pad=(0, 0), **kw) -> dict:
    return {"op": "conv", "out": out, "k": list(k), "stride": list(stride), "pad": list(pad), "bias": True,
            "w": "normal", "wexp": 0, "b": "normal", "bexp": 0, **kw}


CALIB = {"n": 4, "seed": 0, "kind": "normal", "exp": 0}

FIXED = {
    # fuzzer, live tree: depthwise (a BatchNorm after a pool became a 1x1 depthwise conv) wrote
    # through a NULL scratch pointer (UBSan: store to null pointer in qg_conv2d_s8.c)
    "bn-after-pool-as-depthwise": {
        "input": [2, 4, 8], "taps": [], "seed": 136, "calib": {"n": 4, "seed": 228, "kind": "zeros", "exp": -1},
        "layers": [{"op": "maxpool", "k": [1, 2], "stride": [2, 2], "pad": [0, 0]}, {"op": "bn", "kind": "normal"},
                   {"op": "flatten"}, linear(3, w="channels", wexp=-4)]},
    # edge shapes kept as regressions: padding larger than the kernel (border outputs are bias only),
    # stride larger than the kernel, depthwise multiplier 3 on a 1-pixel image, x + x
    "pad-beyond-kernel": {
        "input": [1, 1, 3], "taps": [], "seed": 3, "calib": CALIB,
        "layers": [conv(2, k=(1, 2), stride=(3, 1), pad=(2, 2), w="extreme", b="huge"), {"op": "relu6"}]},
    "depthwise-mult3-one-pixel": {
        "input": [2, 1, 1], "taps": [], "seed": 5, "calib": {"n": 1, "seed": 1, "kind": "const", "exp": 3},
        "layers": [{"op": "dw", "mult": 3, "k": [1, 1], "stride": [1, 1], "pad": [0, 0], "bias": True,
                    "w": "onehot", "wexp": 0, "b": "tiny", "bexp": 0}, {"op": "res", "body": [], "relu": True},
                   {"op": "gap", "how": "mean"}]},
    "all-zero-weights-and-calibration": {
        "input": [3, 5, 7], "taps": [1], "seed": 8, "calib": {"n": 2, "seed": 0, "kind": "zeros", "exp": 0},
        "layers": [conv(4, k=(3, 5), stride=(2, 3), pad=(1, 2), w="zero", b="zero"),
                   {"op": "avgpool", "k": [3, 1], "stride": [1, 1], "pad": [1, 0], "include_pad": True},
                   {"op": "flatten"}, linear(3, w="zero")]},
}

# Bugs found by the fuzzer and fixed since (each was a strict xfail here until its fix):
FIXED.update({
    # two outputs naming one tensor or one storage group: passes/separate_outputs.py inserts a copy
    "duplicate-output": {"input": [4], "taps": [0], "seed": 1, "calib": CALIB, "layers": [linear(3)]},
    "output-and-its-flatten": {"input": [3, 1, 1], "taps": [0], "seed": 1, "calib": CALIB,
                               "layers": [conv(3), {"op": "flatten"}]},
    # a residual add whose input fracs differ by > 53: alignment shifts are capped at 31 (same result)
    "add-align-shift-over-31": {"input": [4], "taps": [], "seed": 1, "calib": CALIB,
                                "layers": [{"op": "res", "body": [linear(4, wexp=-20, b="zero")], "relu": False}]},
    # concats written in place into concats, two levels (torch.cat([x, x]) twice): plan_memory kept the inner
    # one's storage group apart from the outer one's (found by the recurrent-layer draws)
    "nested-in-place-concats": {"input": [5], "taps": [], "seed": 12, "calib": {"n": 3, "seed": 5, "kind": "normal",
                                                                               "exp": 0},
                                "layers": [linear(7), {"op": "cat", "body": [linear(7, wexp=3)]},
                                           {"op": "cat", "body": []}, {"op": "cat", "body": []},
                                           {"op": "cat", "body": [{"op": "relu"}]}]},
    # a global mean over more than 255 values was refused (the pooling kernel's window field is 8 bits); long
    # global pools now sum in slices (a sequence model's mean over time), so this compiles bit-exact
    "global-pool-window-over-255": {"input": [2, 1, 300], "taps": [], "seed": 2, "calib": CALIB,
                                    "layers": [{"op": "gap", "how": "mean"}]},
})

# Sizes beyond the kernel struct fields (qg_kernels.h) are refused with a UserError, not truncated.
REFUSED = {
    "linear-in-features-over-65535": {"input": [70000], "taps": [], "seed": 2, "calib": CALIB, "layers": [linear(2)]},
    # a prime length over 255 has no a x b split with both <= 255 (frontend _long_pool)
    "global-pool-window-prime-over-255": {"input": [2, 1, 257], "taps": [], "seed": 2, "calib": CALIB,
                                          "layers": [{"op": "gap", "how": "mean"}]},
}

OPEN: dict = {}


@pytest.mark.parametrize("spec", list(FIXED.values()), ids=list(FIXED))
def test_fixed_case_stays_fixed(spec):
    assert check_spec(spec) == "ok"


def _raw_check(spec: dict) -> None:
    """check_spec without the KNOWN_BUGS allowance: the original exception propagates."""
    import fuzzgen

    saved = dict(fuzzgen.KNOWN_BUGS)
    fuzzgen.KNOWN_BUGS.clear()
    try:
        outcome = check_spec(spec)
        assert outcome == "ok" or outcome.startswith("refused: "), outcome
    except AssertionError as exc:
        if isinstance(exc.__cause__, Exception) and not isinstance(exc.__cause__, AssertionError):
            raise exc.__cause__ from None
        raise
    finally:
        fuzzgen.KNOWN_BUGS.update(saved)


@pytest.mark.parametrize("spec", list(REFUSED.values()), ids=list(REFUSED))
def test_oversized_layer_refused(spec):
    outcome = check_spec(spec)
    assert outcome.startswith("refused: ") and "does not fit the kernel's" in outcome, outcome


if OPEN:  # a new bug: add its spec to OPEN as a strict xfail, move it to FIXED with the fix
    @pytest.mark.parametrize("spec", list(OPEN.values()), ids=list(OPEN))
    def test_open_bug(spec):
        _raw_check(spec)


# fixed: the front end tracks the element order of flattened vectors through cat/relu/add/BatchNorm
def test_linear_after_concatenated_flattened_images_matches_torch():
    class FlatCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2 * 3 * 4 * 4, 5)

        def forward(self, x):
            f = torch.flatten(x, 1)
            return self.fc(torch.cat([f, torch.relu(f)], dim=1))

    torch.manual_seed(0)
    model = FlatCat().eval()
    calib = np.random.default_rng(0).standard_normal((64, 3, 4, 4)).astype(np.float32)
    result = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix="m")
    with torch.no_grad():
        expect = model(torch.from_numpy(calib)).numpy()
    # quantisation error is a few LSBs; a permutation bug gives errors the size of the outputs
    assert np.abs(result.predict(calib) - expect).max() < 0.1 * np.abs(expect).max()


def test_c_quantize_input_with_a_tiny_input_range():
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    calib = (np.random.default_rng(0).standard_normal((8, 4)) * 1e-42).astype(np.float32)
    result = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix="tiny")
    host = result.host()
    got = np.stack([host.quantize_input(x) for x in calib])
    np.testing.assert_array_equal(got, result.quantize_input(calib))
