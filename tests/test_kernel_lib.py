"""The kernel library archive (codegen/kernel_lib.py): built once per (kernel sources, compiler, flags),
keyed by the model directory's own kernels/, linked by host, native and firmware builds."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from codegen import kernel_lib
from codegen.hostcheck import build_native, run_native
from codegen.resources import kernel_dir

FLAGS = ["gcc", "-std=c99", "-O0", "-fPIC"]  # -O0: these tests check caching, not code


def _copy_kernels(tmp_path):
    d = tmp_path / "kernels"
    shutil.copytree(kernel_dir(), d)
    return d


def test_archive_is_built_once_and_shared_by_identical_sources(tmp_path):
    cache = tmp_path / "cache"
    a = kernel_lib.archive(_copy_kernels(tmp_path / "a"), FLAGS, cache_dir=cache)
    stamp = a.path.stat().st_mtime_ns
    b = kernel_lib.archive(_copy_kernels(tmp_path / "b"), FLAGS, cache_dir=cache)  # same bytes, other folder
    assert b.path == a.path and b.path.stat().st_mtime_ns == stamp
    members = subprocess.run(["ar", "t", str(a.path)], capture_output=True, text=True, check=True).stdout.split()
    assert len(members) == len(list(kernel_dir().glob("*.c")))
    assert [p.name for p in cache.iterdir()] == [a.path.parent.name]  # no temporary directory left


def test_edited_kernels_or_other_flags_get_their_own_archive(tmp_path):
    cache = tmp_path / "cache"
    base = kernel_lib.archive(_copy_kernels(tmp_path / "a"), FLAGS, cache_dir=cache).path
    edited = _copy_kernels(tmp_path / "b")
    header = edited / "qg_fixed.h"
    header.write_text(header.read_text() + "\n/* edited */\n")  # a header counts, not only .c files
    assert kernel_lib.archive(edited, FLAGS, cache_dir=cache).path != base
    assert kernel_lib.archive(tmp_path / "a" / "kernels", [*FLAGS, "-DX=1"], cache_dir=cache).path != base


def test_a_lost_publish_race_uses_the_winners_archive(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kernels = _copy_kernels(tmp_path)
    winner = kernel_lib.archive(kernels, FLAGS, cache_dir=cache).path
    real_is_file = type(winner).is_file
    calls = []

    def first_miss(self):  # the first existence check misses, as if the other process had not finished yet
        if self == winner and not calls:
            calls.append(self)
            return False
        return real_is_file(self)

    monkeypatch.setattr(type(winner), "is_file", first_miss)
    again = kernel_lib.archive(kernels, FLAGS, cache_dir=cache)
    assert calls and again.path == winner
    assert [p.name for p in cache.iterdir()] == [winner.parent.name]


def test_split_sources_takes_only_whole_kernel_directories(tmp_path):
    kernels = _copy_kernels(tmp_path)
    model = tmp_path / "m_model.c"
    all_c = sorted(kernels.glob("*.c"))
    assert kernel_lib.split_sources([model, *all_c]) == ([model], [kernels.resolve()])
    assert kernel_lib.split_sources([model, all_c[0]]) == ([model, all_c[0]], [])  # a subset is compiled as is


def test_native_build_links_the_model_directorys_own_kernels(tmp_path, residual):
    """A model directory whose kernels were edited is built from its edited kernels, not a shared archive."""
    result, _ = residual
    x = result.saved_inputs()[:2]
    good = run_native(build_native(result.out_dir, "res", tmp_path / "good"), x, result.host().output_size)
    broken = tmp_path / "broken"
    shutil.copytree(result.out_dir, broken)
    dot = broken / "kernels" / "qg_fully_connected_s8.c"
    text = dot.read_text()
    marker = "p->act_min, p->act_max, out + rows4);\n"  # the end of the kernel's plain (every core) call: flip a bit
    assert marker in text, "the edit below needs this line of the fully connected kernel"
    dot.write_text(text.replace(marker, marker + "    out[0] = (int8_t)(out[0] ^ 1);\n", 1))
    bad = run_native(build_native(broken, "res", tmp_path / "bad"), x, result.host().output_size)
    assert not np.array_equal(good, bad)


@pytest.fixture
def residual(tmp_path):
    import torch
    from models import make_residual

    import codegen

    model, example = make_residual()
    calib = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    return codegen.compile(model, example, calib, prefix="res", out_dir=tmp_path / "res"), torch
