"""The architecture acceptance zoo (issue 16, item 5): every network of examples/zoo/models.py compiles with
default options, its C equals the integer reference on the host, and its Cortex-M4 firmware equals it under
QEMU. Definitions are written from the papers' layer lists (random weights, randomised BatchNorm and
LayerNorm statistics, no downloads); bench/zoo.py measures them side by side with TFLite Micro
(bench/ZOO.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from codegen import compile as qcompile  # noqa: E402
from codegen import deploy  # noqa: E402
from codegen.target import missing_tools  # noqa: E402
from examples.zoo.models import MODELS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def calibration(example, n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *example.shape[1:])).astype(np.float32)


@pytest.fixture(scope="module", params=list(MODELS))
def compiled(request, tmp_path_factory):
    model, example = MODELS[request.param]()
    calib = calibration(example)
    out = tmp_path_factory.mktemp(request.param)
    return request.param, qcompile(model, example, calib, out_dir=out / "model"), calib


def test_compiles_and_the_host_c_is_bit_exact(compiled):
    name, r, calib = compiled
    x = np.concatenate([calib[:2], 4 * calib[2:3]])  # saturating activations too
    check = r.verify(x)
    assert check.exact, f"{name}: {check}"


@pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")
def test_cortex_m4_firmware_is_bit_exact(compiled):
    name, r, calib = compiled
    run = deploy.run(r.out_dir, "mps2-an386", r.quantize_input(calib[:2]))
    assert run.exact, f"{name}: {run.first_mismatch}"
