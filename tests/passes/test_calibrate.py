import numpy as np
import pytest
import torch
import torch.nn as nn

from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.passes import calibrate


def _graph():
    return from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), torch.randn(1, 1, 5, 5))


def test_ranges_recorded_for_every_activation():
    g = calibrate.run(_graph(), np.random.default_rng(0).standard_normal((10, 1, 5, 5)))
    assert set(g.ranges) == {t for t, v in g.tensors.items() if not v.is_const}
    assert g.ranges[g.inputs[0]] > 0


@pytest.mark.parametrize("data,match", [
    (np.zeros((0, 1, 5, 5)), "empty"),
    (np.zeros((4, 1, 6, 5)), r"shape \[4, 1, 6, 5\].*\[N, 1, 5, 5\]"),
    (np.full((2, 1, 5, 5), np.nan), "NaN"),
    (np.array([["a"]]), "dtype"),
])
def test_bad_calibration_data(data, match):
    with pytest.raises(UserError, match=match):
        calibrate.run(_graph(), data)
