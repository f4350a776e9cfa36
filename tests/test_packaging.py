"""The wheel ships templates/, firmware/ and boards/, and an installed qgen works outside the checkout."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return next(out.glob("qgen-*.whl"))


def test_wheel_contains_data_directories(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("codegen/templates/c/model.c.j2", "codegen/templates/c/weights.c.j2",
                     "codegen/templates/micropython/_kernels.py",
                     "codegen/firmware/kernels/qg_kernels.h", "codegen/firmware/kernels/qg_fixed.h",
                     "codegen/firmware/startup/qg_harness_main.c", "codegen/firmware/qemu_plugin/qg_count.c",
                     "codegen/boards/stm32f446.toml", "codegen/templates/micropython/model.py.j2"):
        assert required in names, required
    kernels = {n for n in names if n.startswith("codegen/firmware/kernels/")}
    assert {f"codegen/firmware/kernels/{p.name}" for p in (ROOT / "firmware" / "kernels").iterdir()} <= kernels


@pytest.mark.slow
def test_installed_wheel_compiles_and_verifies(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The new venv reuses this interpreter's installed dependencies (torch...) by a .pth file naming our
    # site-packages: `venv --system-site-packages` would give the *base* interpreter's packages when the
    # suite itself runs in a venv (the README's way). Paths from a .pth come after the venv's own
    # site-packages, and .pth files inside them are not run, so the editable qgen of this checkout stays out.
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))]
    (Path(purelib) / "_qgen_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "m.py").write_text("import torch.nn as nn\n"
                                   "def make():\n    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),"
                                   " nn.Linear(18, 3))\n")
    work = tmp_path / "elsewhere"  # not the checkout: data must come from the installed package
    work.mkdir()
    r = subprocess.run([str(venv / "bin" / "qgen"), "compile", f"{tmp_path / 'm.py'}:make", "--input-shape",
                        "1,1,5,5", "--out", "out", "--verify"], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-exact: yes" in r.stdout
    where = subprocess.run([str(py), "-c", "import codegen.resources as r; print(r.data_dir('templates'))"],
                           cwd=work, capture_output=True, text=True).stdout
    assert str(venv) in where
