"""Determinism and linkability of the generated output.

tests/test_emit.py checks two compiles in one process (different out_dir) and links two different
models; this file checks what that cannot see: separate processes with different PYTHONHASHSEED,
working directories and times; module registration (dict) order; no dates in any file; and two
models of the same architecture in one firmware, every global symbol carrying its model's prefix.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codegen import compile as qcompile

NET = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, order):
            super().__init__()
            make = {"c1": lambda: nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2)),
                    "bn": lambda: nn.BatchNorm2d(8),
                    "dw": lambda: nn.Conv2d(8, 16, 3, padding=1, groups=8),
                    "fc": lambda: nn.Linear(16 * 4 * 4, 10)}
            for name in order:  # registration order is the order of the state dict
                setattr(self, name, make[name]())
            g = torch.Generator().manual_seed(0)
            for name in sorted(make):  # same values whatever the order
                for p in sorted(getattr(self, name).state_dict()):
                    t = getattr(self, name).state_dict()[p]
                    if t.dtype.is_floating_point:
                        t.copy_(torch.rand(t.shape, generator=g) * (0.5 if p != "running_var" else 1) + 0.25)

        def forward(self, x):
            y = torch.relu(self.bn(self.c1(x)))
            y = torch.clamp(self.dw(y), 0.0, 4.0)
            y = torch.nn.functional.max_pool2d(y, 2)
            return self.fc(torch.flatten(y, 1))

    def make():
        return Net(["c1", "bn", "dw", "fc"]).eval(), torch.zeros(1, 3, 16, 16)

    def make_reordered():
        return Net(["fc", "dw", "bn", "c1"]).eval(), torch.zeros(1, 3, 16, 16)
""")


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_files(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ: {different}"


def test_separate_processes_hash_seeds_and_directories_give_identical_bytes(tmp_path):
    """Same command line, run in two directories by two processes with different hash seeds."""
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    results = []
    for where, hash_seed in (("first/checkout", "0"), ("second", "4242")):
        cwd = tmp_path / where
        cwd.mkdir(parents=True)
        (cwd / "net.py").write_text(NET)
        np.save(cwd / "calib.npy", calib)
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-m", "codegen.cli", "compile", "net.py:make", "--calib", "calib.npy",
                               "--out", "build/net", "--prefix", "net"], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
        results.append(files_of(cwd / "build" / "net"))
    assert_same_files(*results)
    assert any(name.endswith("net_weights.c") for name in results[0])


def test_module_registration_order_does_not_change_the_output(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "ordered_net.py").write_text(NET)
        import ordered_net
    finally:
        sys.path.remove(str(tmp_path))
    calib = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    a_model, x = ordered_net.make()
    b_model, _ = ordered_net.make_reordered()
    assert list(a_model.state_dict()) != list(b_model.state_dict())  # really another dict order
    a = qcompile(a_model, x, calib, prefix="net", command="qgen compile net.py:make")
    b = qcompile(b_model, x, calib, prefix="net", command="qgen compile net.py:make")
    assert_same_files({k: v.encode() if isinstance(v, str) else v for k, v in a.files.items()},
                      {k: v.encode() if isinstance(v, str) else v for k, v in b.files.items()})


def test_no_dates_or_times_in_any_file():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    result = qcompile(model, torch.zeros(1, 6), np.ones((4, 6), np.float32), prefix="m")
    stamp = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b|\b\d\d:\d\d:\d\d\b|compile_seconds")
    for name, content in result.files.items():
        if isinstance(content, str):
            assert not stamp.search(content), f"{name} carries a date, time or duration"


# ------------------------------------------------------------------------------ two models, one firmware


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same architecture compiled twice (different weights) with prefixes 'left' and 'right'."""
    base = tmp_path_factory.mktemp("twins")
    made = []
    for seed, prefix in ((0, "left"), (1, "right")):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 3 * 3, 5)).eval()
        calib = np.random.default_rng(seed).standard_normal((16, 2, 6, 6)).astype(np.float32)
        made.append(qcompile(model, torch.zeros(1, 2, 6, 6), calib, prefix=prefix, out_dir=base / prefix))
    return base, made


def test_twin_models_link_and_each_computes_its_own_reference(twins, tmp_path):
    base, (left, right) = twins
    main = tmp_path / "main.c"
    main.write_text(textwrap.dedent("""
        #include <stdio.h>
        #include "left_model.h"
        #include "right_model.h"
        /* reads one LEFT input then one RIGHT input from stdin, writes both outputs to stdout */
        int main(void)
        {
            static int8_t a[LEFT_INPUT_SIZE], b[RIGHT_INPUT_SIZE], oa[LEFT_OUTPUT_SIZE], ob[RIGHT_OUTPUT_SIZE];
            if (fread(a, 1, sizeof a, stdin) != sizeof a || fread(b, 1, sizeof b, stdin) != sizeof b) { return 3; }
            if (left_run(a, oa) != 0 || right_run(b, ob) != 0) { return 4; }
            fwrite(oa, 1, sizeof oa, stdout);
            fwrite(ob, 1, sizeof ob, stdout);
            return 0;
        }
    """))
    kernels = sorted((base / "left" / "kernels").glob("*.c"))
    exe = tmp_path / "both"
    cmd = ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-fno-common", "-I", str(base / "left"), "-I",
           str(base / "right"), "-I", str(base / "left" / "kernels"), str(main),
           *(str(base / p / f"{p}_{f}.c") for p in ("left", "right") for f in ("model", "weights")),
           *map(str, kernels), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(7)
    for _ in range(3):
        xa = rng.integers(-128, 128, (1, 6, 6, 2)).astype(np.int8)
        xb = rng.integers(-128, 128, (1, 6, 6, 2)).astype(np.int8)
        run = subprocess.run([str(exe)], input=xa.tobytes() + xb.tobytes(), capture_output=True, check=False)
        assert run.returncode == 0
        got = np.frombuffer(run.stdout, dtype=np.int8)
        np.testing.assert_array_equal(got[:5], left.reference(xa)[0])
        np.testing.assert_array_equal(got[5:], right.reference(xb)[0])
    assert not np.array_equal(left.reference(xa), right.reference(xa))  # really two different models


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils nm")
def test_every_global_symbol_carries_the_prefix(twins, tmp_path):
    base, _ = twins
    for prefix in ("left", "right"):
        for part in ("model", "weights"):
            obj = tmp_path / f"{prefix}_{part}.o"
            subprocess.run(["gcc", "-std=c99", "-c", "-I", str(base / prefix), "-I", str(base / prefix / "kernels"),
                            "-DLEFT_ENABLE_TRACE=1", "-DRIGHT_ENABLE_TRACE=1",
                            str(base / prefix / f"{prefix}_{part}.c"), "-o", str(obj)], check=True)
            listing = subprocess.run(["nm", "-g", "--defined-only", str(obj)], capture_output=True, text=True,
                                     check=True).stdout
            symbols = [line.split()[-1] for line in listing.splitlines() if line.strip()]
            assert symbols, f"{obj.name} defines no global symbol"
            assert all(s.startswith(f"{prefix}_") for s in symbols), (obj.name, symbols)
    for kernel in sorted((base / "left" / "kernels").glob("*.c")):
        obj = tmp_path / f"{kernel.stem}.o"
        subprocess.run(["gcc", "-std=c99", "-c", "-I", str(kernel.parent), str(kernel), "-o", str(obj)], check=True)
        listing = subprocess.run(["nm", "-g", "--defined-only", str(obj)], capture_output=True, text=True,
                                 check=True).stdout
        symbols = [line.split()[-1] for line in listing.splitlines() if line.strip()]
        assert all(s.startswith("qg_") for s in symbols), (kernel.name, symbols)
