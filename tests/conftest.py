"""Shared test helpers: quantised single-op graphs built directly, emitted, compiled for the host."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep host builds of the tests in one per-session cache (the demo model cache is shared)."""
    import os

    if "QGEN_CACHE" not in os.environ:
        os.environ["QGEN_CACHE"] = str(tmp_path_factory.mktemp("qgen-cache"))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
