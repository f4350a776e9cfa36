"""Kernel header hygiene: only the kernel sources a model calls are copied next to it (every header is), and
the generated model.c refuses a kernel header of another interface version (QG_KERNELS_ABI)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from qgen_testing import finish, safe_bias, weighted_graph

from codegen.emit.c import kernels_abi, render
from codegen.hostcheck import STRICT_CFLAGS
from codegen.ir import Op
from codegen.resources import kernel_dir


def _linear(rng):
    w = rng.integers(-128, 128, (5, 12))
    return finish(weighted_graph(Op.LINEAR, (12,), w, safe_bias(rng, w), 6))


def _conv(rng):
    w = rng.integers(-128, 128, (4, 3, 3, 2))
    return finish(weighted_graph(Op.CONV2D, (6, 6, 2), w, safe_bias(rng, w), 7, padding=(1, 1, 1, 1)))


def test_only_called_kernel_sources_every_header(rng):
    files = render(_linear(rng), "lin", ["test"])
    copied = {name.split("/", 1)[1] for name in files if name.startswith("kernels/")}
    headers = {p.name for p in kernel_dir().glob("*.h")}
    assert headers <= copied
    assert "qg_fully_connected_s8.c" in copied
    assert not {"qg_conv2d_s8.c", "qg_pool2d_s8.c", "qg_sparse_s8.c", "qg_cluster_s8.c", "qg_wide.c"} & copied
    conv = {n.split("/", 1)[1] for n in render(_conv(rng), "cv", ["test"]) if n.startswith("kernels/")}
    assert "qg_conv2d_s8.c" in conv and "qg_fully_connected_s8.c" not in conv


def test_bundle_copies_the_union_of_its_models_kernels(rng, tmp_path):
    from codegen.api import CompileResult
    from codegen.bundle import bundle

    results = []
    for prefix, g in (("lin", _linear(rng)), ("cv", _conv(rng))):
        results.append(CompileResult(g, g, prefix, dict(render(g, prefix, ["test"])), {}))
    b = bundle(results, out_dir=tmp_path / "b", name="both")
    kernels = {n.split("/", 1)[1] for n in b.files if n.startswith("kernels/")}
    assert {"qg_conv2d_s8.c", "qg_fully_connected_s8.c"} <= kernels and "qg_pool2d_s8.c" not in kernels
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path / "b"
    sources = sorted(map(str, out.glob("*.c"))) + sorted(map(str, (out / "kernels").glob("*.c")))
    proc = subprocess.run(["gcc", *STRICT_CFLAGS, "-c", "-I", str(out), "-I", str(out / "kernels"), *sources],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_model_refuses_another_kernel_abi(rng, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    files = render(_linear(rng), "lin", ["test"])
    abi = kernels_abi()
    assert f"QG_KERNELS_ABI != {abi}" in files["lin_model.c"]
    out = tmp_path / "m"
    (out / "kernels").mkdir(parents=True)
    for name, text in files.items():
        (out / name).write_text(text)

    def build():
        return subprocess.run(["gcc", *STRICT_CFLAGS, "-c", "-I", str(out), "-I", str(out / "kernels"),
                               str(out / "lin_model.c"), "-o", str(tmp_path / "m.o")], capture_output=True, text=True)

    assert build().returncode == 0
    header = out / "kernels" / "qg_kernels.h"
    header.write_text(re.sub(r"#define QG_KERNELS_ABI \d+", f"#define QG_KERNELS_ABI {abi + 1}", header.read_text()))
    proc = build()
    assert proc.returncode != 0
    assert "qg_kernels.h is not the kernel library this model was generated for" in proc.stderr
    header.write_text(re.sub(r"#define QG_KERNELS_ABI \d+\n", "", header.read_text()))  # an older header
    assert build().returncode != 0


def test_int16_model_is_clean_under_strict_aliasing(tmp_path):
    """A mixed-precision model (int16 input, int16 layers, an add of int8 and int16 operands) and every kernel
    source compile with -fstrict-aliasing -Wstrict-aliasing=1 -Werror; int16 elements of untyped arena bytes
    go through qg_load_s16_at/qg_store_s16_at (memcpy), as the int8 word loads do (qg_simd.h)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    import torch
    import torch.nn as nn

    import codegen

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 1)
            self.fc = nn.Linear(64, 3)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.a(x)) + self.b(x), 1))

    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((8, 2, 4, 4)).astype(np.float32)
    out = tmp_path / "m"
    result = codegen.compile(Net().eval(), (1, 2, 4, 4), calib, prefix="wide", out_dir=out,
                             precision={"input": 16, "a": 16})
    assert "QG_AS_S16" in result.files["wide_model.c"]
    for src in (kernel_dir() / "qg_wide.c", kernel_dir() / "qg_eltwise_s8.c"):  # the int16-activation paths
        assert not re.search(r"\(\s*(const\s+)?int16_t\s*\*\s*\)", src.read_text()), src.name  # no int16 cast
    kernels = [str(p) for p in sorted(kernel_dir().glob("*.c"))]
    flags = [*STRICT_CFLAGS, "-O2", "-fstrict-aliasing", "-Wstrict-aliasing=1"]
    proc = subprocess.run(["gcc", *flags, "-c", "-I", str(out), "-I", str(kernel_dir()),
                           str(out / "wide_model.c"), str(out / "wide_weights.c"), *kernels],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    check = result.verify()
    assert check.exact, check
