import re
import warnings

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
    calib = np.random.default_rng(0).uniform(-1, 1, (20000, 6))
    calib[0, 0] = 100.0  # a fifth of the signal energy: clipping it costs no more SQNR than min/max's coarse steps
    mm = calibrate.run(_linear_graph(), calib).ranges["input"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", calibrate.CalibrationWarning)  # the guard lets it through
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


# ------------------------------------------------------------------ kl's zero spike, the SQNR guard (issue 14)


def _relu_values(zeros: float, n: int = 100000, seed: int = 0) -> np.ndarray:
    """A ReLU output: `zeros` of the values exactly 0, the rest half-normal."""
    rng = np.random.default_rng(seed)
    v = np.abs(rng.standard_normal(n)) * 2.0
    v[rng.random(n) < zeros] = 0.0
    return v


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.7, 0.9])
def test_kl_is_not_pulled_to_fine_formats_by_exact_zeros(zeros):
    """A spike of exact zeros in bin 0 dominated the divergence: a conv+ReLU with 68 % zeros got s8.f11
    where min/max gives s8.f3 (30 % of the values clipped). Zeros are exact at every frac: the choice must
    not depend on how many there are, and stay within 2 bits of min/max."""
    v = _relu_values(zeros)
    top = float(v.max())
    base = frac_for_range(top)
    f = calibrate.kl_frac(v, top)
    assert base <= f <= base + 2
    assert f == calibrate.kl_frac(v[v > 0], top)
    fmt = QFormat(8, f)
    assert calibrate.sqnr_db(v, fmt) >= calibrate.sqnr_db(v, QFormat(8, base))  # clips only the thin tail


def _relu_linear_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    return fuse_activation.run(fold_bn.run(from_module(model, torch.zeros(1, 6))))


def test_guard_falls_back_to_minmax_and_says_so():
    calib = np.random.default_rng(0).uniform(0, 1, (200, 6))
    g = _relu_linear_graph()
    with pytest.warns(calibrate.CalibrationWarning) as record:
        g = calibrate.run(g, calib, method="percentile", percentile=75)  # clips a quarter of every tensor
    maxima = calibrate.run(_relu_linear_graph(), calib).ranges
    messages = [str(w.message) for w in record]
    assert len(messages) == 2 and messages[0].startswith("linear '0': calibration 'percentile' would give %relu")
    assert all(re.search(r"SQNR -?[\d.]+ dB on the calibration data \(\d+\.\d% of the values saturate\) vs "
                         r"[\d.]+ dB with minmax's s8\.f-?\d+; using minmax for this tensor$", m) for m in messages)
    for name in ("relu", "linear_1"):  # the ReLU output (fused into linear '0') and the logits fall back ...
        assert g.ranges[name] == maxima[name]
        assert g.calibration[name].startswith("minmax (percentile fell back: SQNR ")
    assert g.calibration["input"] == "percentile" and g.ranges["input"] < maxima["input"]  # ... the input keeps it


def test_guard_keeps_a_method_within_the_margin():
    calib = np.random.default_rng(0).uniform(0, 1, (200, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", calibrate.CalibrationWarning)
        g = calibrate.run(_relu_linear_graph(), calib, method="mse")
    assert set(g.calibration.values()) == {"mse"}
    assert calibrate.guard(np.linspace(-1, 1, 1000), 1.0, 0.25) is not None  # clips half the values
    assert calibrate.guard(np.linspace(-1, 1, 1000), 1.0, 1.0) is None


def test_guard_refuses_clipping_an_outlier_that_carries_most_of_the_signal():
    calib = np.random.default_rng(0).uniform(-1, 1, (200, 6))
    calib[0, 0] = 100.0  # 80 % of the energy: clipping it to 2 loses more than min/max's rounding
    with pytest.warns(calibrate.CalibrationWarning, match="input %input: calibration 'percentile'"):
        g = calibrate.run(_linear_graph(), calib, method="percentile", percentile=99.9)
    assert g.ranges["input"] == 100.0


def _tiny_1d_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes: a class's 8-sample pattern at a random place in 32 samples of noise (separable)."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(123).standard_normal((10, 8)) * 2.0
    y = rng.integers(0, 10, n)
    x = 0.3 * rng.standard_normal((n, 32))
    where = rng.integers(0, 32 - 8, n)
    for i in range(n):
        x[i, where[i]:where[i] + 8] += patterns[y[i]]
    return x[:, None, :].astype(np.float32), y


@pytest.fixture(scope="module")
def trained_conv1d():
    """Conv1d+BN+ReLU (75 % exact zeros after training) - MaxPool - Linear, trained to ~95 % in seconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(4),
                          nn.Flatten(), nn.Linear(16 * 8, 10))
    x, y = _tiny_1d_task(1000, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    gen = torch.Generator().manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(5):
        for idx in torch.randperm(len(xt), generator=gen).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval(), x, _tiny_1d_task(500, 1)


def test_kl_keeps_a_trained_conv1d_relu_model_accurate(trained_conv1d):
    """Issue 14: --calibration kl took this kind of model from 95 % to chance (10 %), silently."""
    import codegen

    model, x_cal, (x_te, y_te) = trained_conv1d
    with torch.no_grad():
        float_acc = float((model(torch.from_numpy(x_te)).numpy().argmax(1) == y_te).mean())
        zeros = float((model[:3](torch.from_numpy(x_cal)).numpy() == 0).mean())
    assert float_acc > 0.85 and zeros > 0.6
    acc = {}
    for method in ("minmax", "kl"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", calibrate.CalibrationWarning)  # kl itself is right: no fallback
            result = codegen.compile(model, torch.from_numpy(x_cal[:1]), x_cal, calibration=method)
        acc[method] = float((result.predict(x_te).argmax(1) == y_te).mean())
        fracs = [int(layer["q_out"].split(".f")[1]) for layer in result.report["layers"]]
        if method == "minmax":
            minmax_fracs = fracs
            assert "calibration" not in result.report and "calibration_fallbacks" not in result.report
    assert all(f <= m + 2 for f, m in zip(fracs, minmax_fracs)), (fracs, minmax_fracs)
    assert acc["kl"] >= acc["minmax"] - 0.02 and acc["kl"] >= float_acc - 0.03, (acc, float_acc)


def test_report_and_cli_show_a_fallback(trained_conv1d, tmp_path, capsys):
    import codegen
    from codegen import cli

    model, x_cal, _ = trained_conv1d
    with pytest.warns(calibrate.CalibrationWarning):
        result = codegen.compile(model, torch.from_numpy(x_cal[:1]), x_cal, calibration="percentile", percentile=90)
    rep = result.report
    assert rep["calibration"] == "percentile"
    fallbacks = {fb["layer"]: fb["calibration"] for fb in rep["calibration_fallbacks"]}
    assert fallbacks["0"].startswith("minmax (percentile fell back: SQNR ")
    by_name = {layer["name"]: layer["calibration"] for layer in rep["layers"]}
    assert by_name["0"] == fallbacks["0"] and by_name["3"] == fallbacks["0"]  # the max pool keeps conv's format
    assert "calibration: layer 0 (%relu) uses minmax (percentile fell back" in result.files["report.md"]

    torch.save(model, tmp_path / "m.pt")  # the CLI prints it as one line on stderr and exits 0
    (tmp_path / "load.py").write_text(f"import torch\n\ndef make():\n    return torch.load({str(tmp_path / 'm.pt')!r}, "
                                      "weights_only=False)\n")
    np.save(tmp_path / "calib.npy", x_cal[:200])
    status = cli.main(["compile", f"{tmp_path / 'load.py'}:make", "--input-shape", "1,1,32", "--calib",
                       str(tmp_path / "calib.npy"), "--out", str(tmp_path / "out"), "--calibration", "percentile",
                       "--percentile", "90"])
    err = capsys.readouterr().err
    assert status == 0
    assert re.search(r"^warning: conv2d '0'.*calibration 'percentile' would give %relu .*using minmax", err, re.M), err
