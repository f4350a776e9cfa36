"""The four MLPerf Tiny networks compile, their C equals the reference, and the plan is sound."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen import compile as qcompile  # noqa: E402
from codegen.passes.plan_memory import check_overlap, lifetimes  # noqa: E402
from examples.mlperf_tiny.models import MODELS  # noqa: E402

# published sizes: parameters and MACs of the reference networks
EXPECTED = {"kws_ds_cnn": (22_600, 2.66e6), "vww_mobilenet_v1_025": (210_900, 7.49e6),
            "ic_resnet8": (77_700, 12.5e6), "ad_fc_autoencoder": (265_900, 0.26e6)}
# naive ping-pong int8 activation floors (bytes)
FLOOR = {"kws_ds_cnn": 16000, "vww_mobilenet_v1_025": 55296, "ic_resnet8": 49152, "ad_fc_autoencoder": 768}
# TFLite Micro's arenas for the same models (bench/MLPERF_TINY.md); the target is at most 0.6x each
TFLM_ARENA = {"kws_ds_cnn": 24512, "vww_mobilenet_v1_025": 107456, "ic_resnet8": 58368, "ad_fc_autoencoder": 22080}


@pytest.mark.parametrize("name", list(MODELS))
def test_mlperf_tiny_model(name):
    model, example = MODELS[name]()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, *example.shape[1:])).astype(np.float32)
    r = qcompile(model, example, calib, prefix=name.split("_")[0])
    params, macs = EXPECTED[name]
    assert abs(r.report["macs"] - macs) / macs < 0.02  # published figures are rounded to 3 digits
    weights = sum(t.data.size for t in r.graph.tensors.values() if t.is_const and t.dtype == "int8")
    assert abs(weights - params) / params < 0.03  # biases aside, every weight ships once, as int8
    bufs = [b for b in lifetimes(r.graph) if all(r.graph.memory[t][0] == "arena" for t in b.tensors)]
    for b in bufs:
        b.offset = r.graph.memory[b.tensors[0]][1]
    check_overlap(bufs)  # deliberate overlaps (outputs over their dying inputs) included
    assert r.report["arena_bytes"] <= min(FLOOR[name], 0.6 * TFLM_ARENA[name])
    x = np.concatenate([calib[:3], 5 * calib[3:5]])
    check = r.verify(x)
    assert check.exact, str(check)
