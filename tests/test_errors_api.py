"""Bad-input catalogue, continued: the Python API's inputs (compile, verify, reference), model loading (sibling
imports, sys.exit, shape mismatches), prefixes, output paths and CLI argument spelling. Each case gets a
UserError (CLI: exit 1, one line naming the problem and the fix) or is accepted and does the expected thing."""
from __future__ import annotations

import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_errors import FACTORIES, assert_user_error, run_cli
from torch import nn

import codegen
from codegen.emit.c import check_prefix
from codegen.errors import UserError
from codegen.frontend.torch_export import InputShapeWarning, load_model


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


@pytest.fixture(scope="module")
def compiled():
    calib = np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32)
    return codegen.compile(small_model().eval(), torch.zeros(1, 1, 8, 8), calib, prefix="net")


@pytest.fixture
def work(tmp_path):
    (tmp_path / "models.py").write_text(FACTORIES)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((8, 1, 8, 8)).astype(np.float32))
    return tmp_path


# ------------------------------------------------------------------------------ compile(): inputs


def test_calibration_tensor_that_requires_grad_is_accepted():
    calib = torch.rand(8, 1, 8, 8, requires_grad=True)
    r = codegen.compile(small_model().eval(), torch.zeros(1, 1, 8, 8), calib)
    ref = codegen.compile(small_model().eval(), torch.zeros(1, 1, 8, 8), calib.detach().numpy())
    assert r.files["model_weights.c"] == ref.files["model_weights.c"]


def test_eval_data_of_the_wrong_shape():
    with pytest.raises(UserError, match=r"eval_data has shape \[4, 8, 8, 1\].*\[N, 1, 8, 8\]"):
        codegen.compile(small_model().eval(), torch.zeros(1, 1, 8, 8), eval_data=np.zeros((4, 8, 8, 1), np.float32))


@pytest.mark.parametrize("prefix, problem", [
    (5, r"prefix must be a string.*not int 5"),
    ("NET", r"uppercase.*use 'net'"),
    ("Net", r"uppercase.*use 'net'"),
    ("__x", r"starts with '_'.*use 'x'"),
    ("_Bool", r"starts with '_'"),
    ("_model", r"starts with '_'"),
    ("int", r"not a valid C identifier"),
    ("qg", r"kernel library"),
    ("qg_conv2d", r"kernel library"),
])
def test_bad_prefixes(prefix, problem):
    with pytest.raises(UserError, match=problem):
        check_prefix(prefix)
    with pytest.raises(UserError, match=problem):  # refused before any work
        codegen.compile(small_model().eval(), torch.zeros(1, 1, 8, 8), prefix=prefix)


def test_prefixes_differing_only_in_case_cannot_share_macros():
    """'net' and 'NET' would both define NET_MODEL_H / NET_INPUT_SIZE: the second header silently skipped."""
    check_prefix("net")
    with pytest.raises(UserError, match=r"'NET' has uppercase letters.*NET_INPUT_SIZE"):
        check_prefix("NET")


def test_shape_tuple_as_example_input_is_a_shape():
    model = small_model().eval()
    r = codegen.compile(model, (1, 1, 8, 8), prefix="net")
    assert r.graph.tensors[r.graph.inputs[0]].shape == (8, 8, 1)
    assert r.files["net_model.c"] == codegen.compile(model, torch.zeros(1, 1, 8, 8), prefix="net").files["net_model.c"]
    with pytest.raises(UserError, match=r"dimensions must be positive"):
        codegen.compile(model, (1, 0, 8, 8))


def test_compile_keeps_the_callers_training_flags():
    model = small_model()
    model.train()
    model[0].eval()  # e.g. a frozen first layer while the rest trains
    before = {name: m.training for name, m in model.named_modules()}
    codegen.compile(model, torch.zeros(1, 1, 8, 8))
    assert {name: m.training for name, m in model.named_modules()} == before


def test_qat_prepare_keeps_the_callers_training_flags():
    from codegen import qat

    model = small_model()
    model[3].eval()
    before = {name: m.training for name, m in model.named_modules()}
    qat.prepare(model, torch.zeros(1, 1, 8, 8), np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32))
    assert {name: m.training for name, m in model.named_modules()} == before


# ------------------------------------------------------------------------------ verify() / reference()


def test_verify_accepts_one_sample_without_batch_axis(compiled):
    x = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)
    one = compiled.verify(x)
    assert one.exact and one.samples == 1 if hasattr(one, "samples") else one.exact
    np.testing.assert_array_equal(compiled.quantize_input(x), compiled.quantize_input(x[None]))


@pytest.mark.parametrize("data, problem", [
    (np.zeros((2, 8, 8, 1), np.float32), r"verification data has shape \[2, 8, 8, 1\].*\[N, 1, 8, 8\]"),
    (np.zeros((0, 1, 8, 8), np.float32), r"verification data is empty"),
    (np.full((2, 1, 8, 8), np.nan, np.float32), r"verification data contains NaN.*sample 0"),
    (np.zeros((2, 1, 8, 8), bool), r"dtype bool"),
], ids=["shape", "empty", "nan", "bool"])
def test_verify_refuses_bad_data(compiled, data, problem):
    with pytest.raises(UserError, match=problem):
        compiled.verify(data)


@pytest.mark.parametrize("data, problem", [
    (np.full((1, 8, 8, 1), 1000, np.int32), r"values in \[1000, 1000\], outside int8's \[-128, 127\]"),
    (np.zeros((1, 8, 8, 1), np.float32), r"dtype float32; give int8 values"),
    (np.zeros((1, 1, 8, 8), np.int8), r"shape \[1, 1, 8, 8\].*\[N, 8, 8, 1\]"),
], ids=["range", "float", "layout"])
def test_reference_refuses_values_outside_the_input_type(compiled, data, problem):
    with pytest.raises(UserError, match=problem):
        compiled.reference(data)


def test_reference_accepts_int32_in_range(compiled):
    x = compiled.quantize_input(np.random.default_rng(2).random((3, 1, 8, 8)).astype(np.float32))
    np.testing.assert_array_equal(compiled.reference(x.astype(np.int32)), compiled.reference(x))


# ------------------------------------------------------------------------------ loading user code


def test_model_file_importing_its_sibling(tmp_path, monkeypatch):
    (tmp_path / "layers.py").write_text("import torch.nn as nn\n\ndef block():\n    return nn.Linear(6, 3)\n")
    (tmp_path / "model.py").write_text(textwrap.dedent("""
        import torch
        from layers import block

        def make():
            return block(), torch.zeros(1, 6)
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path_before = list(os.sys.path)
    r = codegen.compile(f"{tmp_path / 'model.py'}:make")
    assert r.graph.tensors[r.graph.inputs[0]].shape == (6,)
    assert os.sys.path == path_before
    assert "layers" not in os.sys.modules  # another model's layers.py is not taken for this one's


@pytest.mark.parametrize("where, problem", [
    ("factory", r"calling .*:make_exit\(\) called sys.exit\(7\)"),
    ("import", r"importing .*exits.py' called sys.exit\(7\).*__main__"),
])
def test_user_code_calling_sys_exit(tmp_path, capsys, where, problem):
    body = "import sys\n"
    body += "def make_exit():\n    sys.exit(7)\n" if where == "factory" else "sys.exit(7)\ndef make_exit():\n    pass\n"
    (tmp_path / "exits.py").write_text(body)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "compile", f"{tmp_path / 'exits.py'}:make_exit", "--input-shape", "1,8", "--out", out)
    assert_user_error(code, err, problem, r"sys.exit|__main__", tmp_path, out)


def test_forward_calling_sys_exit():
    class Exits(nn.Module):
        def forward(self, x):
            raise SystemExit(3)

    with pytest.raises(UserError, match=r"Exits.forward called sys.exit\(3\)"):
        codegen.compile(Exits(), torch.zeros(1, 4))


@pytest.mark.parametrize("shape, problem", [
    ("1,3,8,8", r"the model's first layer '0' \(Conv2d\) expects 1 input channel \(dim 1\) but gets .*\[1, 3, 8, 8\]"),
    ("1,1,4,4", r"layer '3' \(Linear\) expects 256 input features \(last dim\) but gets .*\[1, 64\]"),
])
def test_input_shape_that_does_not_fit_the_model(work, capsys, shape, problem):
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", shape, "--out", out)
    assert_user_error(code, err, problem, r"Give --input-shape", work, out)
    assert "data-dependent" not in err and "E1" not in err  # no torch log lines, no misleading hint


def test_input_shape_ignored_for_a_factory_example_is_warned(work):
    (work / "with_example.py").write_text(
        "import torch\nimport torch.nn as nn\n\ndef make():\n    return nn.Linear(8, 2), torch.zeros(1, 8)\n")
    with pytest.warns(InputShapeWarning, match=r"--input-shape 1,4 is ignored: .*make\(\) returns its own example "
                      r"input \(shape 1,8\)"):
        load_model(f"{work / 'with_example.py'}:make", (1, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing: nothing to say
        load_model(f"{work / 'with_example.py'}:make", (1, 8))


def test_input_shape_ignored_for_a_pt2_is_warned(work):
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 6),)), work / "m.pt2")
    with pytest.warns(InputShapeWarning, match=r"--input-shape 1,1,8,8 is ignored: .*m\.pt2' was exported with "
                      r"input shape 1,6"):
        load_model(str(work / "m.pt2"), (1, 1, 8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(str(work / "m.pt2"), (1, 6))


def test_empty_onnx_file(work, capsys):
    pytest.importorskip("onnx")
    (work / "empty.onnx").write_bytes(b"")
    out = work / "out"
    code, err = run_cli(capsys, "compile", work / "empty.onnx", "--out", out)
    assert_user_error(code, err, r"'.*empty\.onnx' is empty \(0 bytes\), not an ONNX model", r"torch\.onnx\.export",
                      work, out)


# ------------------------------------------------------------------------------ CLI arguments and paths


def test_negative_input_shape_is_read_as_a_value(work, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "-1,1,4,4")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "dimensions must be positive" in err and "expected one argument" not in err, err


def test_calibration_path_that_is_a_directory(work, capsys):
    out = work / "out"
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work, "--out", out)
    assert_user_error(code, err, r"calibration data '.*' is a directory", r"give a \.npy file", work, out)


@pytest.mark.parametrize("out, what", [(".", "the current directory"), ("..", "a parent of the current directory"),
                                       ("/", "the filesystem root")])
def test_out_that_is_the_current_directory_or_above(work, capsys, monkeypatch, out, what):
    cwd = work / "empty"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", out)
    assert code == 1 and "Traceback" not in err, err
    assert f"is {what}" in err and "Choose a subdirectory" in err, err
    assert sorted(p.name for p in work.iterdir()) == ["calib.npy", "empty", "models.py"]


def test_out_that_is_a_symlink_to_a_directory(work, capsys):
    real = work / "real"
    real.mkdir()
    link = work / "link"
    link.symlink_to(real)
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", link, "--prefix", "net")
    assert code == 0, err
    assert link.is_symlink() and (link / "net_model.c").is_file() and (real / "net_model.c").is_file()
    dangling = work / "dangling"
    dangling.symlink_to(work / "missing")
    code, err = run_cli(capsys, "compile", f"{work / 'models.py'}:make_model", "--input-shape", "1,1,8,8",
                        "--calib", work / "calib.npy", "--out", dangling)
    assert code == 1 and "is a symlink to" in err and "does not exist" in err, err
    assert not (work / "missing").exists()


def test_check_out_dir_accepts_ordinary_paths(tmp_path, monkeypatch):
    from codegen.api import check_out_dir

    monkeypatch.chdir(tmp_path)
    assert check_out_dir("build/model") == Path("build/model")
    assert check_out_dir(tmp_path / "x") == tmp_path / "x"
