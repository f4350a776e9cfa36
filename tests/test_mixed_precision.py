"""Mixed precision from PyTorch: --precision / --auto-precision, bit-exact C, the accuracy bound."""
from __future__ import annotations

import inspect
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from models import MLP, GlobalPoolNet, SequenceNet, make_residual

from codegen import compile as qcompile
from codegen import deploy
from codegen.fixed import dequantize
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native, verify
from codegen.passes.assign_precision import candidates
from codegen.reference import run_float, run_int
from codegen.report import sqnr_db


def _every_candidate(model, calib):
    """{layer: 16} for every layer that can be raised (compiled once at int8 to find them)."""
    r = qcompile(model, torch.from_numpy(calib[:1]), calib)
    return {name: 16 for name in candidates(r.float_graph)}


def _inputs(r, calib):
    """Calibration-like and saturating inputs in the model's input type, plus both extremes."""
    sample = r.quantize_input(calib[:1])
    info = np.iinfo(sample.dtype)
    extremes = np.stack([np.full(sample.shape[1:], v) for v in (info.min, info.max)]).astype(sample.dtype)
    return np.concatenate([r.quantize_input(calib * 4), r.quantize_input(calib), extremes])


MODELS = {
    "residual": lambda: (make_residual()[0], (3, 16, 16)),
    "gpool": lambda: (GlobalPoolNet().eval(), (2, 9, 9)),
    "sequence": lambda: (SequenceNet().eval(), (3, 16)),  # concat of LUT outputs -> int16 -> linear
    "mlp": lambda: (MLP().eval(), (20,)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_layer_int16_is_bit_exact_and_sanitizer_clean(name, tmp_path):
    torch.manual_seed(0)
    model, shape = MODELS[name]()
    calib = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    spec = _every_candidate(model, calib)
    assert spec, "the model has layers that can be int16"
    r = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix="mx", out_dir=tmp_path / "mx", precision=spec)
    assert r.graph.tensors[r.graph.inputs[0]].dtype == "int16"  # every candidate includes the model input
    assert sum(t.dtype == "int16" for t in r.graph.tensors.values()) >= 2
    x = _inputs(r, calib)
    check = verify(r.graph, r.host(), x)
    assert check.exact, str(check)
    exe = build_native(tmp_path / "mx", "mx", tmp_path / "mx_asan", SANITIZE_FLAGS)
    assert np.array_equal(run_native(exe, x.reshape(len(x), -1), check.outputs.shape[1]), check.outputs)


def test_int16_layer_is_closer_to_float():
    model, _ = make_residual()
    calib = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    base = qcompile(model, torch.from_numpy(calib[:1]), calib)
    wide = qcompile(model, torch.from_numpy(calib[:1]), calib, precision={"c1": 16})
    sqnr = lambda r: {layer["name"]: layer["sqnr_db"] for layer in r.report["layers"]}  # noqa: E731
    assert sqnr(wide)["c1"] > sqnr(base)["c1"] + 3.0
    assert wide.report["arena_bytes"] > base.report["arena_bytes"]  # int16 costs RAM, not flash
    assert wide.report["flash_bytes"] == base.report["flash_bytes"]
    assert "int16 activations: c1" in "\n".join(wide.files["report.md"].splitlines())


def test_int16_input_keeps_small_signals():
    """A sensor signal with a large dynamic range: int8 input rounds the quiet samples away."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    rng = np.random.default_rng(0)
    calib = (rng.standard_normal((256, 16)) * np.exp(rng.uniform(-4, 1, (256, 1)))).astype(np.float32)
    r8 = qcompile(model, torch.from_numpy(calib[:1]), calib)
    r16 = qcompile(model, torch.from_numpy(calib[:1]), calib, precision={"input": 16, "0": 16})
    inp = r16.graph.tensors[r16.graph.inputs[0]]
    assert inp.dtype == "int16" and inp.qformat.frac == r8.graph.tensors[r8.graph.inputs[0]].qformat.frac + 8
    assert r16.quantize_input(calib).dtype == np.int16

    def quiet_sqnr(r):  # the hidden layer on the quietest quarter of the samples
        quiet = calib[np.argsort(np.abs(calib).max(axis=1))[:64]]
        hidden = r.graph.nodes[0].outputs[0]
        ref = run_float(r.float_graph, quiet.astype(np.float64))[hidden]
        got = dequantize(run_int(r.graph, r.quantize_input(quiet))[hidden], r.graph.tensors[hidden].qformat)
        return sqnr_db(ref, got)

    assert quiet_sqnr(r16) > quiet_sqnr(r8) + 20.0
    assert "#define MODEL_INPUT_TYPE int16_t\ntypedef MODEL_INPUT_TYPE model_input_t;" in r16.files["model_model.h"]
    assert "int model_run(const model_input_t *in, int8_t *out);" in r16.files["model_model.h"]
    host = r16.host()
    assert host.input_dtype == np.int16
    np.testing.assert_array_equal(host.quantize_input(calib[3]), r16.quantize_input(calib[3:4])[0])
    assert r16.verify(calib).exact


class OutlierNet(nn.Module):
    """Hidden channel 0 is 100x larger than the rest and ignored by the classifier: with one int8
    format per tensor the useful channels round to almost nothing; int16 keeps them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.hidden = nn.Linear(8, 24)
        self.head = nn.Linear(24, 6)
        with torch.no_grad():
            self.hidden.weight[0] *= 400.0
            self.head.weight[:, 0] = 0.0

    def forward(self, x):
        return self.head(self.hidden(x))


@pytest.mark.parametrize("with_labels", [True, False])
def test_auto_precision_meets_the_bound(with_labels):
    model = OutlierNet().eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((400, 8)).astype(np.float32)
    x_eval = rng.standard_normal((2000, 8)).astype(np.float32)
    with torch.no_grad():
        logits = np.sort(model(torch.from_numpy(x_eval)).numpy(), axis=1)
    x_eval = x_eval[logits[:, -1] - logits[:, -2] > 0.3][:600]  # no near-ties: int8 inputs/weights stay fine
    with torch.no_grad():
        float_pred = model(torch.from_numpy(x_eval)).numpy().argmax(1)
    labels = float_pred if with_labels else None
    base = qcompile(model, torch.from_numpy(calib[:1]), calib, eval_data=x_eval)
    base_drop = 100 * (1 - np.mean(base.predict(x_eval).argmax(1) == float_pred))
    assert base_drop > 5.0, "int8 must fail this model for the test to mean anything"
    r = qcompile(model, torch.from_numpy(calib[:1]), calib, eval_data=x_eval, labels=labels, auto_precision=0.5)
    auto = r.report["auto_precision"]
    assert auto["met"] and auto["int16_layers"] == ["hidden"]
    drop = 100 * (1 - np.mean(r.predict(x_eval).argmax(1) == float_pred))
    assert drop <= 0.5 and abs(drop - auto["steps"][-1]["drop"]) < 1e-9  # the search measured the compiled model
    assert auto["steps"][0]["drop"] == pytest.approx(base_drop)
    assert auto["arena_mixed"] > auto["arena_int8"]
    assert r.verify(x_eval[:64]).exact


def test_auto_precision_keeps_int8_when_it_is_good_enough():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    calib = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    r = qcompile(model, torch.from_numpy(calib[:1]), calib, auto_precision=5.0)
    assert r.report["auto_precision"]["int16_layers"] == []
    assert all(t.dtype != "int16" for t in r.graph.tensors.values())


def test_cli_precision_and_auto_precision(tmp_path):
    path = tmp_path / "outlier.py"
    path.write_text(inspect.getsource(OutlierNet).join(["import torch\nfrom torch import nn\n\n\n",
                                                        "\n\ndef make():\n    return OutlierNet().eval()\n"]))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal((300, 8)).astype(np.float32))
    cmd = [sys.executable, "-m", "codegen.cli", "compile", f"{path}:make", "--input-shape", "1,8",
           "--calib", str(tmp_path / "calib.npy")]
    r = subprocess.run(cmd + ["--out", str(tmp_path / "a"), "--precision", "hidden=int16", "--verify"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "int16 activations: hidden" in r.stdout and "bit-exact: yes" in r.stdout
    r = subprocess.run(cmd + ["--out", str(tmp_path / "b"), "--auto-precision", "--max-acc-drop", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "auto precision (top-1 agreement with the float model, bound 5.00 pt)" in r.stdout
    assert "+ hidden int16" in r.stdout and "met: 1 layer(s) int16" in r.stdout
    r = subprocess.run(cmd + ["--out", str(tmp_path / "c"), "--precision", "head=int16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "model outputs are int8" in r.stderr and "keep linear 'head'" in r.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                    reason="needs arm-none-eabi-gcc and qemu-system-arm (scripts/setup.sh installs them)")
@pytest.mark.parametrize("board", ["rp2040", "stm32f446"])
def test_mixed_model_bit_exact_on_cortex_m(board, tmp_path):
    model, _ = make_residual()
    calib = np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    spec = _every_candidate(model, calib)
    r = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix="mx", out_dir=tmp_path / "mx", precision=spec)
    result = deploy.run(tmp_path / "mx", board, _inputs(r, calib)[:12])
    assert result.exact, "\n".join(result.summary())
