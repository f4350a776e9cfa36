"""Model fuzzer: random small graphs of every supported op, compiled and run under ASan/UBSan.

Property: for every generated model, qgen either refuses it with an expected, actionable UserError
(EXPECTED_REFUSALS in fuzzgen.py), or its generated C -- built with -fsanitize=address,undefined
-fno-sanitize-recover -- runs clean and equals the integer reference byte for byte on extreme
(all -128, all 127, alternating), random and calibration-derived int8 inputs; and compiling the same
model twice gives identical files.

Profiles (env QGEN_FUZZ):
    quick (default, CI): derandomized, a fixed set of examples, about two minutes on two cores.
    long: QGEN_FUZZ=long [QGEN_FUZZ_EXAMPLES=2000] [QGEN_FUZZ_SEED=0] python -m pytest tests/fuzz -p no:cacheprovider
          larger shapes/deeper graphs, a seeded random run; see docs/RELIABILITY.md.
QGEN_FUZZ_STATS=path.json writes the counts (graphs, inputs, ops covered, refusals) at the end.
A failing example is printed as a `spec = {...}` literal: add it to test_regressions.py.
"""
from __future__ import annotations

import os

import pytest
from fuzzgen import LONG, QUICK, STATS, check_spec, dump_stats, specs
from hypothesis import HealthCheck, Phase, given, seed, settings

PROFILE = os.environ.get("QGEN_FUZZ", "quick")
if PROFILE not in ("quick", "long"):
    raise ValueError(f"QGEN_FUZZ={PROFILE!r}: use 'quick' or 'long'")
QUICK_EXAMPLES = 80
EXAMPLES = int(os.environ.get("QGEN_FUZZ_EXAMPLES", QUICK_EXAMPLES if PROFILE == "quick" else 2000))
SEED = int(os.environ.get("QGEN_FUZZ_SEED", "0"))

_COMMON = {"deadline": None, "database": None, "print_blob": True, "report_multiple_bugs": False,
           "phases": [Phase.explicit, Phase.generate, Phase.shrink],
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much, HealthCheck.large_base_example]}
settings.register_profile("qgen-fuzz-quick", max_examples=EXAMPLES, derandomize=True, **_COMMON)
settings.register_profile("qgen-fuzz-long", max_examples=EXAMPLES, derandomize=False, **_COMMON)
LIMITS = QUICK if PROFILE == "quick" else LONG


@pytest.fixture(scope="module", autouse=True)
def _report_stats():
    yield
    dump_stats()
    print(f"\nqgen fuzz ({PROFILE}): {STATS.to_dict()}")


@pytest.mark.slow
@seed(SEED)
@settings(settings.get_profile(f"qgen-fuzz-{PROFILE}"))
@given(spec=specs(LIMITS))
def test_random_models_compile_to_sanitizer_clean_bit_exact_c(spec):
    check_spec(spec)
