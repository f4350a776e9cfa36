"""Generated models on Cortex-M cores under QEMU: byte-identical to the reference; fit checks; CLI."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from models import MLP, GlobalPoolNet, make_residual

from codegen import compile as qcompile
from codegen import deploy
from codegen.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="needs arm-none-eabi-gcc and qemu-system-arm (scripts/setup.sh installs them)")

BOARD_PER_CORE = {"cortex-m0plus": "rp2040", "cortex-m3": "mps2-an385", "cortex-m4": "stm32f446",
                  "cortex-m7": "stm32h743", "cortex-m33": "mps2-an505", "cortex-m55": "mps3-an547",
                  "cortex-m85": "ra8m1"}  # ra8m1: the M85 runs under QEMU's M55 machine (mps3-an547)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    from codegen import demo

    model, _ = demo.trained_model()
    x_tr, _, x_te, _ = demo.digits_data()
    out = tmp_path_factory.mktemp("fw") / "digits"
    r = qcompile(model, torch.from_numpy(x_tr[:1]), x_tr, prefix="digits", out_dir=out)
    return out, r.quantize_input(x_te[:48])


@pytest.mark.parametrize("core", list(BOARD_PER_CORE))
def test_digits_bit_exact_on_every_core(core, digits_dir):
    out, x = digits_dir
    result = deploy.run(out, BOARD_PER_CORE[core], x)
    assert result.board.core == core
    assert result.exact, "\n".join(result.summary())
    assert result.instructions_per_inference and result.instructions_per_inference > result.macs * 0.3


@pytest.fixture(scope="module")
def op_models(tmp_path_factory):
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("ops")
    rng = np.random.default_rng(0)
    made = {}
    model, x = make_residual()
    for name, (m, shape) in {"residual": (model, (3, 16, 16)), "gpool": (GlobalPoolNet().eval(), (2, 9, 9)),
                             "mlp": (MLP().eval(), (20,))}.items():
        calib = rng.standard_normal((16, *shape)).astype(np.float32)
        r = qcompile(m, torch.from_numpy(calib[:1]), calib, prefix=name, out_dir=base / name)
        extremes = np.stack([np.full(r.quantize_input(calib[:1]).shape[1:], v) for v in (-128, 127)]).astype(np.int8)
        made[name] = (base / name, np.concatenate([r.quantize_input(calib * 4), extremes]))
    return made


@pytest.mark.parametrize("core", ["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55"])
@pytest.mark.parametrize("model", ["residual", "gpool", "mlp"])
def test_op_models_bit_exact(op_models, model, core):
    out, x = op_models[model]
    result = deploy.run(out, BOARD_PER_CORE[core], x)
    assert result.exact, "\n".join(result.summary())


def test_model_too_big_for_board_is_refused(tmp_path):
    big = torch.nn.Sequential(torch.nn.Linear(1024, 600)).eval()
    qcompile(big, torch.zeros(1, 1024), np.random.default_rng(0).standard_normal((4, 1024)), prefix="big",
             out_dir=tmp_path / "big")
    with pytest.raises(UserError, match=r"model needs .* KB flash; stm32f446 has 512 KB"):
        deploy.build(tmp_path / "big", "stm32f446", tmp_path / "build")


def test_cli_firmware_project_builds_with_make(digits_dir, tmp_path):
    out, _ = digits_dir
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "firmware", str(out), "--board", "nrf52840",
                        "--out", str(tmp_path / "fw")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "KB of 1024 KB" in r.stdout and ".rodata" in r.stdout
    assert (tmp_path / "fw" / "Makefile").is_file() and (tmp_path / "fw" / "qg_input.bin").is_file()
    made = subprocess.run(["make", "-s", "run"], cwd=tmp_path / "fw", capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr


def test_cli_run_and_unknown_board(digits_dir):
    out, _ = digits_dir
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "run", str(out), "--board", "rp2040", "--qemu", "-n", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "bit-exact on cortex-m0plus: yes (8/8 samples)" in r.stdout and "instructions/MAC" in r.stdout
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "run", str(out), "--board", "stm32f446", "--qemu",
                        "-n", "2", "--per-layer"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "conv2d '3'" in r.stdout and "/MAC)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "run", str(out), "--board", "esp32", "--qemu"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "esp32" in r.stderr and "stm32f446" in r.stderr and "Traceback" not in r.stderr
