"""Model fuzzer on an 8-bit AVR (16-bit `int`), opt-in: random graphs of fuzzgen.py compiled, built with avr-gcc
(-Wconversion -Werror) and run on an ATmega2560 under simavr must equal the integer reference byte for byte; with
`wide`, the same model with every eligible layer at int16 too. A model too big for the chip's 8 KB is skipped.

    QGEN_AVR_FUZZ=40 [QGEN_FUZZ_SEED=0] python -m pytest tests/fuzz/test_fuzz_avr.py -p no:cacheprovider

(~5 s per graph on one core; the one-off sweep of 38 int8 + 30 int16 graphs was all bit-exact.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzzgen import EXPECTED_REFUSALS, PREFIX, QUICK, build_model, calib_data, int8_inputs, specs
from hypothesis import HealthCheck, given, seed, settings

from codegen.api import compile as qcompile
from codegen.errors import UserError
from codegen.target.avr import avr_missing_tools, run_avr

EXAMPLES = int(os.environ.get("QGEN_AVR_FUZZ", "0"))
pytestmark = [pytest.mark.skipif(EXAMPLES <= 0, reason="opt-in: QGEN_AVR_FUZZ=N runs N random graphs on AVR"),
              pytest.mark.skipif(bool(avr_missing_tools()), reason=f"missing tools: {avr_missing_tools()}")]


def _compile(spec: dict, calib: np.ndarray, out: Path, **options):
    try:
        return qcompile(build_model(spec), torch.from_numpy(calib[:1]), calib, prefix=PREFIX, out_dir=out, **options)
    except UserError as exc:
        assert any(m in str(exc) for m in EXPECTED_REFUSALS), f"unexpected refusal: {exc}\nspec = {spec}"
        return None


def _check_on_avr(spec: dict, result, calib: np.ndarray, work: Path) -> None:
    g = result.graph
    x = int8_inputs(spec, g.tensors[g.inputs[0]].shape, result.quantize_input(calib), n_random=2)
    expect = result.reference(x)
    try:
        run = run_avr("atmega2560", work / "model", PREFIX, x, work / "avr", expect.shape[1])
    except UserError as exc:  # too big for 8 KB of SRAM: not a bug
        assert "does not fit the atmega2560" in str(exc)
        return
    bad = np.argwhere(run.outputs != expect)
    assert not len(bad), f"AVR != reference at (sample, byte) {bad[:3].tolist()}\nspec = {spec}\n{g}"


@seed(int(os.environ.get("QGEN_FUZZ_SEED", "0")))
@settings(max_examples=max(EXAMPLES, 1), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(spec=specs(QUICK))
def test_random_models_bit_exact_on_atmega2560(spec):
    from codegen.passes.assign_precision import candidates

    calib = calib_data(spec)
    with tempfile.TemporaryDirectory(prefix="qgen-avr-fuzz-") as tmp:
        work = Path(tmp)
        result = _compile(spec, calib, work / "int8" / "model")
        if result is None:
            return
        _check_on_avr(spec, result, calib, work / "int8")
        wide = {name: 16 for name in sorted(set(candidates(result.float_graph)))}
        if spec.get("wide") is not None and wide:
            result16 = _compile(spec, calib, work / "int16" / "model", precision=wide)
            if result16 is not None:
                _check_on_avr(spec, result16, calib, work / "int16")
