"""Refuse early what cannot work: models too big for flash or RAM, oversized inputs, bad data, Ctrl-C.

Small limits (max_flash / --max-flash) keep these tests fast; only one test builds a model that is
really too big (Linear(7000, 7000), 49 MB of weights), and it is refused before calibration.
"""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import codegen
from codegen import cli
from codegen import limits as limits_mod
from codegen.emit import c as emit_c
from codegen.errors import UserError
from codegen.target import check_model_fits, list_boards, load_board

FACTORIES = textwrap.dedent("""
    import torch

    def conv():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())

    def linear_600k():
        torch.manual_seed(0)
        return torch.nn.Linear(1000, 600), torch.randn(1, 1000)
""")


def _linear(n_in: int = 64, n_out: int = 64):
    torch.manual_seed(0)
    return torch.nn.Linear(n_in, n_out).eval(), torch.randn(1, n_in)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Linear(64, 64): 4,096 weight bytes + 256 bias + 64 shift = 4,416 bytes of constant arrays."""
    out = tmp_path_factory.mktemp("limits") / "model"
    model, x = _linear()
    return codegen.compile(model, x, prefix="model", out_dir=out)


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "factories.py"
    path.write_text(FACTORIES)
    return path


def _run_cli(capsys, *argv) -> tuple[int, str]:
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


# ----------------------------------------------------------------------------------------- flash

def test_default_limits_are_the_largest_known_board():
    boards = [load_board(name) for name in list_boards()]
    lim = limits_mod.limits()
    assert lim.flash == max(b.flash_kb for b in boards) * 1024
    assert lim.ram == max(b.ram_kb for b in boards) * 1024
    board = load_board("rp2040")
    lim = limits_mod.limits(board="rp2040")
    assert (lim.flash, lim.ram) == (board.flash_kb * 1024, (board.ram_kb - board.stack_kb) * 1024)
    assert limits_mod.limits(max_flash=1000).flash == 1000


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1M", True])
def test_limit_must_be_a_positive_byte_count(bad):
    with pytest.raises(UserError, match="max_flash must be a positive number of bytes"):
        limits_mod.limits(max_flash=bad)


def test_dense_weights_over_flash_refused_before_calibration(monkeypatch):
    from codegen.passes import calibrate

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran for a model that cannot fit")

    monkeypatch.setattr(calibrate, "run", no_calibration)
    model, x = _linear()
    with pytest.raises(UserError) as err:
        codegen.compile(model, x, max_flash=4000)
    message = str(err.value)
    assert "4,096 int8 weights (largest: linear 'linear', 4,096)" in message
    assert "need at least 4,096 bytes (4.0 KB) of flash, more than the limit of 4,000 bytes" in message
    assert "--max-flash" in message and "--prune" in message


def test_exact_constant_bytes_checked_before_rendering(monkeypatch):
    """4,096 weights pass the float lower bound of 4,200 bytes; with bias and shifts the arrays need 4,416."""
    import codegen.driver as driver

    def no_render(*args, **kwargs):
        raise AssertionError("C rendered for a model that cannot fit")

    monkeypatch.setattr(driver, "render", no_render)  # the back half every compile shares
    model, x = _linear()
    with pytest.raises(UserError, match=r"constant arrays .* need at least 4,416 bytes \(4.3 KB\) of flash, more "
                       r"than the limit of 4,200 bytes"):
        codegen.compile(model, x, max_flash=4200)


def test_model_that_fits_compiles(compiled):
    assert compiled.report["flash_bytes"] == 4416
    again = codegen.compile(*_linear(), max_flash=4416)
    assert again.files["model_weights.c"] == compiled.files["model_weights.c"]


def test_linear_7000_refused_in_seconds():
    """49 MB of weights: refused after export and folding, not after minutes of emitting a 228 MB weights.c."""
    model = torch.nn.Linear(7000, 7000).eval()
    start = time.perf_counter()
    with pytest.raises(UserError, match="49,000,000 int8 weights"):
        codegen.compile(model, torch.zeros(1, 7000))
    assert time.perf_counter() - start < 60


def test_cli_max_flash(capsys, factories, tmp_path):
    status, err = _run_cli(capsys, "compile", f"{factories}:linear_600k", "--max-flash", "500K",
                           "--out", tmp_path / "out")
    assert status == 1 and "more than the limit of 512,000 bytes" in err
    assert not (tmp_path / "out").exists()
    assert cli._bytes("2M") == 2 << 20 and cli._bytes("4096k") == 4 << 20 and cli._bytes("123") == 123
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["compile", "m.pt2", "--max-flash", "lots"])


# ------------------------------------------------------------------------------------------- RAM

def test_huge_input_shape_refused_before_allocating(capsys, factories, tmp_path):
    start = time.perf_counter()
    status, err = _run_cli(capsys, "compile", f"{factories}:conv", "--input-shape", "1,1,100000,100000",
                           "--out", tmp_path / "out")
    assert status == 1
    assert "an input of shape 1,1,100000,100000 (10,000,000,000 int8 values) needs" in err and "--max-ram" in err
    assert time.perf_counter() - start < 30


def test_activation_over_ram_refused_before_calibration(capsys, factories, tmp_path):
    status, err = _run_cli(capsys, "compile", f"{factories}:conv", "--input-shape", "1,1,64,64",
                           "--max-ram", "10000", "--out", tmp_path / "out")
    assert status == 1
    assert "activation 'relu' [62, 62, 4] of conv2d '0' (15,376 int8 values) needs at least 15,376 bytes" in err


def test_arena_over_ram_refused_after_planning():
    """Each activation (64x64x4 = 16,384 bytes) fits 16,500 bytes; the arena (the first conv's output
    overlapping the second's, and a scratch buffer: 16,936 bytes) does not."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, padding=1)).eval()
    with pytest.raises(UserError, match=r"activation arena needs at least 16,\d{3} bytes .* of RAM, more than the "
                       r"limit of 16,500 bytes"):
        codegen.compile(model, torch.zeros(1, 1, 64, 64), max_ram=16500)


def test_random_calibration_is_bounded():
    from codegen.api import RANDOM_CALIB_BYTES, _random_samples

    assert _random_samples((1, 8, 8)) == 64  # every normal model: unchanged
    n = _random_samples((3, 1024, 1024))
    assert 1 <= n < 64 and n * 8 * 3 * 1024 * 1024 <= RANDOM_CALIB_BYTES
    assert _random_samples((1, 100000, 100000)) == 1


# -------------------------------------------------------------------------------------- firmware

def test_firmware_checks_the_header_before_building(compiled, capsys, monkeypatch, tmp_path):
    import codegen.deploy as deploy

    def no_build(*args, **kwargs):
        raise AssertionError("cross-compiled a model that cannot fit")

    monkeypatch.setattr(deploy, "build_elf", no_build)
    header = compiled.out_dir / "model_model.h"
    small = dataclasses.replace(load_board("stm32f446"), flash_kb=4)  # 4,096 bytes < the model's 4,416
    with pytest.raises(UserError, match="model needs 4.3 KB flash; stm32f446 has 4 KB"):
        check_model_fits(small, header, "model")
    check_model_fits(load_board("stm32f446"), header, "model")  # fits: no error

    model_dir = tmp_path / "big"  # the same model claiming 600 KB of weights and a 200 KB arena
    model_dir.mkdir()
    for path in compiled.out_dir.iterdir():
        if path.is_file():
            (model_dir / path.name).write_bytes(path.read_bytes())
    text = header.read_text()
    text = text.replace("#define MODEL_FLASH_BYTES 4416", "#define MODEL_FLASH_BYTES 614400")
    text = text.replace(f"#define MODEL_ARENA_SIZE {compiled.graph.arena_size}", "#define MODEL_ARENA_SIZE 204800")
    (model_dir / "model_model.h").write_text(text)
    status, err = _run_cli(capsys, "firmware", model_dir, "--board", "stm32f446", "--out", tmp_path / "fw")
    assert status == 1
    assert "model needs 600 KB flash; stm32f446 has 512 KB" in err and "model needs 208 KB RAM" in err


def test_firmware_of_a_model_target_uses_the_boards_limits(capsys, factories, tmp_path):
    """Linear(1000, 600) fits the largest board but not the 512 KB of an STM32F446: refused while compiling."""
    status, err = _run_cli(capsys, "firmware", f"{factories}:linear_600k", "--board", "stm32f446",
                           "--out", tmp_path / "fw")
    assert status == 1
    assert "model needs 585.9 KB flash; stm32f446 has 512 KB (the model's 600,000 int8 weights" in err
    assert "Pick a board with more memory" in err


# -------------------------------------------------------------------------------------- emission

def _old_rows(values, per_row=16):
    """The list-of-strings formatting emit/c.py used before rows were streamed."""
    flat = [emit_c._fmt_int(v) for v in np.asarray(values).reshape(-1)]
    return [", ".join(flat[i:i + per_row]) for i in range(0, len(flat), per_row)]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.float64, bool])
def test_rows_format_as_before(dtype, monkeypatch):
    monkeypatch.setattr(emit_c._Rows, "CHUNK_ROWS", 3)  # several chunks, a partial last row
    values = np.random.default_rng(0).integers(-128, 128, size=(7, 11)).astype(dtype)
    if dtype in (np.int32, np.int64):
        values[0, 0], values[6, 10] = -(1 << 31), (1 << 31) - 1
    rows = emit_c._rows(values)
    assert list(rows) == _old_rows(values) and list(rows) == _old_rows(values)  # re-iterable
    assert len(rows) == len(_old_rows(values))
    assert list(emit_c._rows(np.zeros(0, np.int8))) == []


def test_weights_c_byte_identical_and_lazy(compiled, monkeypatch):
    """The streamed rows render the same bytes; building the C model no longer formats every weight."""
    banner = ["test"]
    new = emit_c.render(compiled.graph, "model", banner)
    tracemalloc.start()
    emit_c.model_data(compiled.graph, "model")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 1024  # 4,416 values as Python strings would take several times this
    monkeypatch.setattr(emit_c, "_rows", _old_rows)
    assert emit_c.render(compiled.graph, "model", banner) == new


# ----------------------------------------------------------------------------- data and Ctrl-C

@pytest.mark.parametrize("bad", ["shape", "nan"])
def test_verify_bad_data_is_one_line(compiled, capsys, tmp_path, bad):
    data = np.zeros((3, 7) if bad == "shape" else (3, 64), np.float32)
    if bad == "nan":
        data[1, 5] = np.nan
    np.save(tmp_path / "x.npy", data)
    status, err = _run_cli(capsys, "verify", compiled.out_dir, "--data", tmp_path / "x.npy")
    assert status == 1 and len(err.strip().splitlines()) == 1
    assert ("shape [3, 7]" in err) if bad == "shape" else ("NaN" in err)


def test_import_codegen_does_not_load_torch():
    code = "import sys, codegen, codegen.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch loading")
def test_ctrl_c_while_importing_torch(factories, tmp_path):
    """SIGINT while the CLI is still importing torch: 'interrupted', exit 130, no traceback."""
    process = subprocess.Popen([sys.executable, "-m", "codegen.cli", "compile", f"{factories}:conv",
                                "--input-shape", "1,1,8,8", "--out", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if "torch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
