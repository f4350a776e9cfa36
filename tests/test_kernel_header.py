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
