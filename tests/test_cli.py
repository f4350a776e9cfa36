"""The qgen command line as a user runs it: exit codes, messages, no half-written output."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

QGEN = [sys.executable, "-m", "codegen.cli"]


def qgen(*args, cwd=None):
    return subprocess.run([*QGEN, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mymodel.py"
    path.write_text(textwrap.dedent("""
        import torch.nn as nn

        def make_model():
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

        def make_bad():
            class Bad(nn.Module):
                def forward(self, x):
                    return x.cumsum(1)
            return Bad()

        def make_nan():
            m = make_model()
            m[0].weight.data[0, 0, 0, 0] = float("nan")
            return m

        def make_raises():
            raise RuntimeError("broken factory")
    """))
    np.save(tmp_path / "data.npy", np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32))
    return path


def test_compile_factory_then_verify(model_file, tmp_path):
    out = tmp_path / "build" / "m"
    r = qgen("compile", f"{model_file}:make_model", "--input-shape", "1,1,8,8", "--calib", tmp_path / "data.npy",
             "--out", out, "--prefix", "mymodel", "--verify")
    assert r.returncode == 0, r.stderr
    assert "bit-exact: yes (20/20 samples)" in r.stdout
    assert (out / "mymodel_model.h").is_file() and (out / "kernels" / "qg_kernels.h").is_file()
    r = qgen("verify", out, "--data", tmp_path / "data.npy")
    assert r.returncode == 0 and "bit-exact: yes (20/20 samples)" in r.stdout
    r = qgen("report", out)
    assert r.returncode == 0 and "arena" in r.stdout


def test_compile_saved_pt2(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 6),)), tmp_path / "m.pt2")
    r = qgen("compile", tmp_path / "m.pt2", "--out", tmp_path / "m", "--verify")
    assert r.returncode == 0, r.stderr
    assert "no --calib given" in r.stderr and "bit-exact: yes" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["{f}:make_bad", "--input-shape", "1,1,8,8"], "cumsum"),
    (["{f}:make_nan", "--input-shape", "1,1,8,8"], "contains nan"),
    (["{f}:make_raises", "--input-shape", "1,1,8,8"], "broken factory"),
    (["{f}:nope", "--input-shape", "1,1,8,8"], "has no callable 'nope'"),
    (["{f}:make_model"], "--input-shape"),
    (["{f}:make_model", "--input-shape", "1,1,8,8", "--prefix", "9lives"], "not a valid C identifier"),
    (["{f}:make_model", "--input-shape", "1,1,8,8", "--calib", "{d}/missing.npy"], "does not exist"),
    (["{f}:make_model", "--input-shape", "1,1,8,8", "--calib", "{d}/wrong.npy"], r"shape \[5, 3\]"),
    (["{f}:make_model", "--input-shape", "1,1,8,8", "--calib", "{d}/empty.npy"], "empty"),
    (["{d}/corrupt.pt2"], "cannot read"),
    (["{d}/model.tflite"], "give a saved program"),
])
def test_user_errors_exit_1_without_output(model_file, tmp_path, args, message):
    d = tmp_path
    np.save(d / "wrong.npy", np.zeros((5, 3), np.float32))
    np.save(d / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    (d / "corrupt.pt2").write_bytes(b"PK\x03\x04 definitely not a zip")
    out = d / "out"
    r = qgen("compile", *[a.format(f=model_file, d=d) for a in args], "--out", out)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr.replace("\n", " ") if not message.startswith("shape") else True
    import re

    assert re.search(message, r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in d.iterdir())


def test_unwritable_output_path(model_file, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = qgen("compile", f"{model_file}:make_model", "--input-shape", "1,1,8,8", "--out", blocker / "sub" / "m")
    assert r.returncode == 1 and "cannot create output directory" in r.stderr


def test_verify_on_non_output_dir(tmp_path):
    r = qgen("verify", tmp_path)
    assert r.returncode == 1 and "not a qgen output directory" in r.stderr


def test_compile_with_quantisation_options(model_file, tmp_path):
    out = tmp_path / "q"
    r = qgen("compile", f"{model_file}:make_model", "--input-shape", "1,1,8,8", "--calib", tmp_path / "data.npy",
             "--out", out, "--calibration", "mse", "--bias-correction", "--equalize", "--verify")
    assert r.returncode == 0, r.stderr
    assert "bit-exact: yes (20/20 samples)" in r.stdout
