"""bench/kernels.py measures CMSIS-NN on every layer shape it benches (issue 14 item 7: FC 784->128 showed
CMSIS-NN's 256->64 figures, hand-copied); bench/cmsis_nn_peer.py's NumPy reference models CMSIS-NN exactly."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import cmsis_nn_peer as peer  # noqa: E402
import kernels  # noqa: E402


def _requantize_c(val: int, multiplier: int, shift: int) -> int:
    """arm_nn_requantize of CMSIS-NN's default build, transcribed statement by statement."""
    val = val * (1 << max(shift, 0))
    high = (val * multiplier + (1 << 30)) >> 31  # arm_nn_doubling_high_mult_no_sat
    exponent = max(-shift, 0)  # arm_nn_divide_by_power_of_two
    mask = (1 << exponent) - 1
    result, threshold = high >> exponent, mask >> 1
    if result < 0:
        threshold += 1
    return result + 1 if (high & mask) > threshold else result


def test_requantize_matches_cmsis_nn_arithmetic():
    rng = np.random.default_rng(3)
    acc = rng.integers(-2**24, 2**24, 4000)
    acc[:8] = [0, 1, -1, 2**24, -2**24, 3 << 10, -(3 << 10), -(1 << 11)]  # includes exact midpoints
    mult = rng.integers(2**30, 2**31, 4000)
    shift = rng.integers(-20, 2, 4000)
    got = peer.requantize(acc, mult, shift)
    assert [int(v) for v in got] == [_requantize_c(int(a), int(m), int(s)) for a, m, s in zip(acc, mult, shift)]


def test_quantize_multiplier_round_trips():
    for real in (0.5, 0.999999999, 1 / 3, 2.5e-4):
        m, s = peer.quantize_multiplier(real)
        assert 2**30 <= m < 2**31 and abs(m * 2.0**s / 2**31 - real) <= 2.0**(s - 31)


def test_every_layer_is_compared_with_cmsis_nn_on_its_own_shape():
    assert not hasattr(kernels, "CMSIS_NN")  # no hand-copied figures
    for lay in kernels.layers():
        g = lay.graph
        assert lay.peer.in_shape == g.tensors[g.inputs[0]].shape, lay.name
        assert lay.peer.out_shape == g.tensors[g.outputs[0]].shape, lay.name
        if lay.macs:
            assert lay.peer.w is g.tensors[g.nodes[0].inputs[1]].data or np.array_equal(
                lay.peer.w, g.tensors[g.nodes[0].inputs[1]].data)
    names = {lay.name for lay in kernels.layers()}
    assert {"fc_784_128", "avgpool2x2_16x16x32", "maxpool2x2_16x16x32"} <= names


def test_table_without_cmsis_nn_says_dash_and_how_to_get_it():
    counts = {(lay.name, "cortex-m55"): 1000.0 for lay in kernels.layers()}
    text = kernels.tables(["cortex-m55"], counts, {})
    rows = [r for r in text.splitlines() if r.startswith("| FC 784")]
    assert rows and rows[0].endswith("| - | - | - |")
    block = kernels.update_results("# x\n", text, "-O2", None)
    assert "git clone https://github.com/ARM-software/CMSIS-NN" in block and peer.COMMIT[:8] in block


def test_fc_reference_computes_the_layer():
    rng = np.random.default_rng(0)
    layer = peer.PeerLayer("fc", (4,), (2,), rng.integers(-128, 128, (2, 4)), np.array([5, -7]))
    x = rng.integers(-128, 128, (3, 4)).astype(np.int8)
    mult, shift = peer.quant_params(layer, x)
    acc = (x.astype(np.int64) + peer.INPUT_OFFSET) @ layer.w.T + layer.b
    expect = np.clip(np.round(acc * mult[0] * 2.0**shift[0] / 2**31) + peer.OUTPUT_OFFSET, -128, 127)
    got = peer.reference(layer, x, mult, shift)
    assert np.abs(got.astype(int) - expect).max() <= 1 and np.abs(got).max() >= 100  # uses the int8 range


@pytest.mark.skipif(not os.environ.get(peer.ENV_VAR) or shutil.which("qemu-system-arm") is None,
                    reason=f"needs a CMSIS-NN checkout in ${peer.ENV_VAR} and QEMU")
def test_cmsis_nn_fully_connected_under_qemu(tmp_path):
    lay = next(lay for lay in kernels.layers() if lay.name == "fc_256_64")
    checkout = peer.find_checkout(None)
    count = peer.measure(lay.peer, "mps2-an386", checkout, tmp_path, kernels.build_plugin())  # checks outputs
    assert 1.5 < count / lay.macs < 3.0
