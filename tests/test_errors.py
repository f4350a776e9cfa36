"""Bad-input catalogue: every user mistake exits 1 with a message naming the problem and the fix,
no traceback, and no output (or temporary) directory left behind; interrupted runs keep the old output.

tests/test_cli.py covers the first entries (unsupported op, NaN weights, failing factory, bad prefix,
missing/wrong-shape/empty calibration, corrupt .pt2, unknown format, uncreatable output directory);
this file covers the rest of the catalogue. The CLI runs in-process (`codegen.cli.main`) to keep the
suite fast; tests/test_cli.py checks the same entry point as a subprocess.
"""
from __future__ import annotations

import re
import shutil
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import codegen
import codegen.driver
from codegen.cli import main

FACTORIES = textwrap.dedent("""
    import torch
    import torch.nn as nn

    def make_model():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    def make_inf_weight():
        m = make_model()
        m[0].weight.data[1, 0, 2, 2] = float("inf")
        return m

    def make_neg_inf_bias():
        m = make_model()
        m[3].bias.data[7] = float("-inf")
        return m

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return self.fc(x)
            return -self.fc(x)

    def make_data_dependent():
        return DataDependent()

    class Raises(nn.Module):
        def forward(self, x):
            raise ValueError("forward is broken")

    def make_forward_raises():
        return Raises()

    def make_big():
        return nn.Sequential(nn.Linear(1024, 600))
""")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "models.py").write_text(FACTORIES)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.random((8, 1, 8, 8)).astype(np.float32))
    return tmp_path


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def assert_user_error(code: int, err: str, problem: str, fix: str, work: Path, out: Path) -> None:
    flat = " ".join(err.split())
    assert code == 1, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err
    assert re.search(problem, flat), f"message does not name the problem ({problem!r}): {err}"
    assert re.search(fix, flat), f"message does not name the fix ({fix!r}): {err}"
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in work.rglob(".*") if p.name.startswith(f".{out.name}")]
    assert not leftovers, f"temporary output left behind: {leftovers}"


# ------------------------------------------------------------------------------ the catalogue


def test_dynamic_shapes_in_saved_program(work, capsys):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch", min=1, max=16)}})
    torch.export.save(program, work / "dynamic.pt2")
    out = work / "out"
    code, err = run_cli(capsys, "compile", work / "dynamic.pt2", "--calib", work / "calib.npy", "--out", out)
    assert_user_error(code, err, r"dynamic shape", r"Export again without dynamic_shapes", work, out)


@pytest.mark.parametrize("factory, problem", [("make_inf_weight", r"contains inf at index \(1, 2, 2, 0\)"),
                                              ("make_neg_inf_bias", r"contains -inf at index \(7,\)")])
def test_infinite_parameters(work, capsys, factory, problem):
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:{factory}", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", out)
    assert_user_error(code, err, problem, r"Fix the trained weights", work, out)


@pytest.mark.parametrize("data, problem", [
    (np.ones((8, 1, 8, 8), dtype=bool), r"dtype bool"),
    (np.ones((8, 1, 8, 8), dtype=np.complex64), r"dtype complex64"),
    (np.full((8, 1, 8, 8), "0.5"), r"dtype <U3"),
], ids=["bool", "complex", "strings"])
def test_calibration_of_wrong_dtype(work, capsys, data, problem):
    np.save(work / "bad.npy", data)
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "bad.npy", "--out", out)
    assert_user_error(code, err, problem, r"give float samples", work, out)


def test_calibration_pickled_objects_are_not_loaded(work, capsys):
    np.save(work / "objects.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "objects.npy", "--out", out)
    assert_user_error(code, err, r"cannot read calibration data", r"numpy\.save", work, out)


def test_calibration_in_channels_last_layout(work, capsys):
    np.save(work / "nhwc.npy", np.zeros((8, 8, 8, 1), np.float32))  # (N, H, W, C) instead of (N, C, H, W)
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "nhwc.npy", "--out", out)
    assert_user_error(code, err, r"shape \[8, 8, 8, 1\]", r"give an array of shape \[N, 1, 8, 8\]", work, out)


def test_calibration_with_nan(work, capsys):
    x = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.save(work / "nan.npy", x)
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "nan.npy", "--out", out)
    assert_user_error(code, err, r"NaN", r"sample 3|remove|replace|drop", work, out)


@pytest.mark.parametrize("factory, problem, fix", [
    ("make_data_dependent", r"torch\.export failed on DataDependent", r"fixed input shape \(no data-dependent"),
    ("make_forward_raises", r"torch\.export failed on Raises: ValueError: forward is broken", r"torch\.export can trace"),
])
def test_model_that_raises_during_export(work, capsys, factory, problem, fix):
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:{factory}", "--input-shape", "1,8",
                        "--out", out)
    assert_user_error(code, err, problem, fix, work, out)


def test_corrupted_pt2_zip_that_is_not_a_program(work, capsys):
    with zipfile.ZipFile(work / "model.pt2", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x04 not a pickle")
    out = work / "out"
    code, err = run_cli(capsys, "compile", work / "model.pt2", "--out", out)
    assert_user_error(code, err, r"cannot read .*model\.pt2. as a torch\.export program",
                      r"torch\.export\.save\(torch\.export\.export\(model", work, out)


def test_truncated_pt2(work, capsys):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 6),)), work / "good.pt2")
    data = (work / "good.pt2").read_bytes()
    (work / "truncated.pt2").write_bytes(data[: len(data) // 2])
    out = work / "out"
    code, err = run_cli(capsys, "compile", work / "truncated.pt2", "--out", out)
    assert_user_error(code, err, r"cannot read .*truncated\.pt2", r"torch\.export\.save", work, out)


def test_unknown_board(work, capsys):
    out = work / "fw"
    code, err = run_cli(capsys, "firmware", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--board", "esp32", "--out", out)
    assert_user_error(code, err, r"unknown board 'esp32'", r"known boards: .*stm32f446", work, out)


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_model_too_big_for_board(work, capsys):
    np.save(work / "calib_big.npy", np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32))
    out = work / "fw"
    code, err = run_cli(capsys, "firmware", f"{work / 'models.py'}:make_big", "--input-shape", "1,1024",
                        "--calib", work / "calib_big.npy", "--board", "stm32f446", "--out", out)
    assert_user_error(code, err, r"model needs [\d.]+ KB flash; stm32f446 has 512 KB",
                      r"Pick a board with more memory or make the model smaller", work, out)


def test_output_path_not_writable(work, capsys):
    # /proc accepts no new directories, even for root (chmod-based tests pass silently as root)
    out = Path("/proc") / f"qgen-test-{work.name}"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", out)
    assert code == 1 and "Traceback" not in err, err
    assert re.search(r"output path '/proc/qgen-test-[^']+' is not writable", err), err
    assert not out.exists()


def test_output_path_errors_name_the_fix(work, capsys):
    blocker = work / "file"
    blocker.write_text("not a directory")
    for out in (Path("/proc") / f"qgen-test-{work.name}", blocker / "sub" / "m"):
        code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                            "--calib", work / "calib.npy", "--out", out)
        assert code == 1 and re.search(r"--out|another (output )?directory", err), err


def test_existing_foreign_output_directory_is_not_deleted(work, capsys):
    out = work / "src"
    out.mkdir()
    (out / "main.c").write_text("int main(void) { return 0; }\n")
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", out)
    assert (out / "main.c").is_file(), "the user's file in --out was deleted"
    assert code == 1 and "not a qgen output directory" in err


# ------------------------------------------------------------------------------ interrupted runs


@pytest.fixture
def compiled_once(work):
    """An output directory from a first successful compile, and a snapshot of its bytes."""
    out = work / "model"
    code = main(["compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8", "--calib",
                 str(work / "calib.npy"), "--out", str(out), "--prefix", "first"])
    assert code == 0
    return out, snapshot(out)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def second_compile_args(work: Path, out: Path) -> list[str]:
    return ["compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8", "--calib",
            str(work / "calib.npy"), "--out", str(out), "--prefix", "second"]


def assert_old_output_intact(work: Path, out: Path, before: dict[str, bytes]) -> None:
    assert snapshot(out) == before, "the previous output changed"
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == [], "temporary directory left"


@pytest.mark.parametrize("fail_at", [1, 5, 9])
def test_interrupt_mid_write_keeps_old_output(work, compiled_once, monkeypatch, capsys, fail_at):
    """Ctrl-C after `fail_at` files of the new output were written."""
    out, before = compiled_once
    writes = {"n": 0}
    real_text, real_bytes = Path.write_text, Path.write_bytes

    def counting(real):
        def write(self, *args, **kwargs):
            writes["n"] += 1
            if writes["n"] > fail_at:
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)
        return write

    monkeypatch.setattr(Path, "write_text", counting(real_text))
    monkeypatch.setattr(Path, "write_bytes", counting(real_bytes))
    code = main(second_compile_args(work, out))
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert writes["n"] == fail_at + 1  # it did fail in the middle of writing
    assert_old_output_intact(work, out, before)


def test_failure_while_rendering_keeps_old_output(work, compiled_once, monkeypatch, capsys):
    out, before = compiled_once

    def broken_render(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(codegen.driver, "render", broken_render)
    code = main(second_compile_args(work, out))
    err = capsys.readouterr().err
    assert code == 2 and "template exploded" in err and "please report" in err
    assert_old_output_intact(work, out, before)


def test_disk_full_mid_write_keeps_old_output(work, compiled_once, monkeypatch, capsys):
    out, before = compiled_once
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        if self.name.endswith("_weights.c"):
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    code = main(second_compile_args(work, out))
    assert code in (1, 2)
    assert_old_output_intact(work, out, before)


def test_failure_swapping_directories_keeps_old_output(work, compiled_once, monkeypatch):
    out, before = compiled_once
    # the two-rename fallback; the atomic exchange is covered in tests/test_output.py
    monkeypatch.setattr("codegen.output._exchange_supported", False)
    real = Path.rename

    def rename(self, target):
        if self.name.startswith(f".{out.name}.tmp-"):  # the new output moving into place
            raise OSError(28, "No space left on device")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    main(second_compile_args(work, out))
    assert_old_output_intact(work, out, before)
