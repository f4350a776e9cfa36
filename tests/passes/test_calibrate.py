import numpy as np
import pytest
import torch
from torch import nn

from codegen.errors import UserError
from codegen.fixed import QFormat, dequantize, frac_for_range, quantize
from codegen.frontend import from_module
from codegen.ir import verify
from codegen.passes import calibrate, fold_bn, fuse_activation
from codegen.passes import quantize as quantize_pass


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


# ------------------------------------------------------------------ calibration methods (issue 8)


METHODS = ["minmax", "percentile", "mse", "kl"]


def _linear_graph():
    torch.manual_seed(0)
    return fuse_activation.run(fold_bn.run(from_module(nn.Sequential(nn.Linear(6, 3)).eval(), torch.zeros(1, 6))))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("calib", [np.zeros((4, 6)), np.full((4, 6), 3.0), np.full((4, 6), 1e6),
                                   np.concatenate([np.full((1, 6), 5e4), np.full((99, 6), 1e-3)])],
                         ids=["zeros", "const", "huge", "huge-range"])
def test_every_method_gives_valid_formats_for_degenerate_tensors(method, calib):
    g = calibrate.run(_linear_graph(), calib, method=method)
    assert all(np.isfinite(r) and r >= 0 for r in g.ranges.values())
    g = quantize_pass.run(g)
    verify(g, quantized=True)
    x = g.tensors[g.inputs[0]]
    assert x.qformat.bits == 8 and isinstance(x.qformat.frac, int)
    assert all(-31 <= s <= 31 for s in g.nodes[0].attrs["shift"])
    if method == "minmax":  # the documented min/max promise: nothing seen in calibration saturates
        assert np.max(np.abs(calib)) * 2.0**x.qformat.frac <= 127


def test_percentile_lets_a_rare_outlier_saturate():
    calib = np.random.default_rng(0).uniform(-1, 1, (2000, 6))
    calib[0, 0] = 100.0
    mm = calibrate.run(_linear_graph(), calib).ranges["input"]
    pc = calibrate.run(_linear_graph(), calib, method="percentile", percentile=99.9).ranges["input"]
    assert mm == 100.0 and pc < 1.0
    assert frac_for_range(pc) >= frac_for_range(mm) + 6


def test_mse_picks_the_frac_with_least_squared_error():
    values = np.random.default_rng(1).standard_normal(20000) * 2.0
    values[:3] = [40.0, -35.0, 30.0]  # outliers: min/max would waste 4 bits on them
    best = calibrate.mse_frac(values, float(np.abs(values).max()))

    def err(f):
        fmt = QFormat(8, f)
        return float(np.sum((values - dequantize(quantize(values, fmt), fmt)) ** 2))

    base = frac_for_range(float(np.abs(values).max()))
    errors = {f: err(f) for f in range(base, base + 9)}
    assert best == min(errors, key=errors.get) and best > base
    # stored as an effective max that quantize maps back to exactly the chosen frac
    assert frac_for_range(calibrate.effective_max(values, float(np.abs(values).max()), "mse")) == best


def test_mse_is_exact_for_values_already_on_a_grid():
    values = np.arange(-8, 8) / 16.0  # representable at frac 4 (and coarser max 0.5 -> frac 7 saturates)
    assert calibrate.mse_frac(values, 0.5) == frac_for_range(0.5)  # finest non-saturating: error 0


def test_methods_are_deterministic_on_large_tensors(monkeypatch):
    monkeypatch.setattr(calibrate, "SAMPLE_SIZE", 500)  # force sub-sampling
    calib = np.random.default_rng(2).standard_normal((300, 1, 5, 5))
    a = calibrate.run(_graph(), calib, method="mse").ranges
    b = calibrate.run(_graph(), calib, method="mse").ranges
    assert a == b


def test_kl_clips_a_lone_outlier_but_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    heavy = np.concatenate([rng.laplace(size=50000), [40.0]])
    top = float(np.abs(heavy).max())
    assert calibrate.kl_frac(heavy, top) >= frac_for_range(top) + 2  # the outlier saturates
    uniform = rng.uniform(-1, 1, 50000)
    assert calibrate.kl_frac(uniform, 1.0) == frac_for_range(1.0)  # every level is used: no clipping
    relu = np.maximum(rng.standard_normal(50000), 0.0)  # half exact zeros must not pull it to tiny ranges
    assert calibrate.kl_frac(relu, float(relu.max())) <= frac_for_range(float(relu.max())) + 2
    assert frac_for_range(calibrate.effective_max(heavy, top, "kl")) == calibrate.kl_frac(heavy, top)


@pytest.mark.filterwarnings("ignore:overflow")
def test_nan_inside_the_model_is_a_clear_error():
    model = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e38)  # finite weights and data whose products overflow float64
    g = from_module(model.eval(), torch.zeros(1, 6))
    for method in METHODS:
        with pytest.raises(UserError, match=r"linear '0'.*NaN or Inf"):
            calibrate.run(g, np.full((2, 6), 1e300), method=method)


def test_unknown_method_and_bad_percentile():
    with pytest.raises(UserError, match="minmax, percentile, mse, kl"):
        calibrate.run(_graph(), np.zeros((1, 1, 5, 5)), method="entropy")
    with pytest.raises(UserError, match="percentile 0"):
        calibrate.run(_graph(), np.zeros((1, 1, 5, 5)), method="percentile", percentile=0)
