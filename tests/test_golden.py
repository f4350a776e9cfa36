"""Golden generated files: a few small, fully deterministic models whose generated C, MicroPython and
report are checked in under tests/golden/<case>/ and compared byte for byte.

A refactor that claims "behaviour and generated C stay byte-identical" is held to it here; a change that
is meant to alter the output shows up as a reviewable diff of the golden files. To accept new output:

    QGEN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py -p no:cacheprovider

then review `git diff tests/golden/` and commit it with the change that caused it.

Models use seeded weights and seeded calibration data, no training. Kernel sources copied next to the
model are not stored (they are the package's firmware/kernels/); their file names are, in MANIFEST.txt,
so the set of copied kernels is still checked.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from golden_models import BranchNet, DepthwiseNet

import codegen
from codegen import compress
from codegen.emit.c import banner_lines, option_text
from codegen.emit.micropython import render_micropython

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("QGEN_UPDATE_GOLDEN") == "1"
# Generated files stored verbatim (the binary qgen_graph.npz / qgen_verify_inputs.npy and report.json,
# which repeats report.md, are left out to keep the set small).
STORED = ("_model.h", "_model.c", "_weights.h", "_weights.c", ".py", "report.md", "qgen_graph.json")


def _seeded_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _calib(shape: tuple[int, ...], n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _digits():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 10))
    return _seeded_bn(m, 1), (1, 8, 8), {}


def _branch():
    torch.manual_seed(1)
    return BranchNet().eval(), (2, 8, 8), {"micropython": False}  # pure MicroPython has no LUT kernel


def _depthwise_int16():
    torch.manual_seed(2)
    # the first conv (fused with BN + relu6) and the depthwise conv produce int16 activations; the pure
    # MicroPython module refuses int16 activations
    return _seeded_bn(DepthwiseNet(), 3), (3, 8, 8), {"precision": {"c": 16, "dw": 16}, "micropython": False}


def _sparse():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                      nn.Linear(16, 4))
    return m.eval(), (1, 6, 6), {"extra_passes": compress.passes(compress.parse_cli(prune=0.8))}


def _clustered():
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 6))
    return m.eval(), (24,), {"extra_passes": compress.passes(compress.parse_cli(cluster=4))}


CASES = {"digits_cnn": _digits, "branch_lut": _branch, "depthwise_int16": _depthwise_int16,
         "sparse": _sparse, "clustered": _clustered}


def generate(case: str) -> dict[str, str]:
    """The stored files of one golden case, as text, plus MANIFEST.txt (every generated file's name)."""
    model, shape, kwargs = CASES[case]()
    micropython = kwargs.pop("micropython", True)
    result = codegen.compile(model, torch.zeros(1, *shape), _calib(shape), prefix=case, **kwargs)
    files = dict(result.files)
    if micropython:
        banner = banner_lines(result.graph.source, option_text(prefix=case, mode="pure"))
        files.update(render_micropython(result.graph, case, banner))
    out = {name: (text if isinstance(text, str) else text.decode())
           for name, text in files.items() if name.endswith(STORED) and "/" not in name}
    out["MANIFEST.txt"] = "".join(f"{name}\n" for name in sorted(files))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_files_match_golden(case):
    files = generate(case)
    folder = GOLDEN / case
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if old.name not in files:
                old.unlink()
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8", newline="\n")
        return
    if not folder.is_dir():
        pytest.fail(f"no golden files for '{case}'; create them with QGEN_UPDATE_GOLDEN=1 pytest tests/test_golden.py")
    stored = {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir() if p.is_file()}
    problems = []
    for name in sorted(set(stored) | set(files)):
        if name not in files:
            problems.append(f"{case}/{name}: golden file is no longer generated")
        elif name not in stored:
            problems.append(f"{case}/{name}: generated but has no golden file")
        elif files[name] != stored[name]:
            diff = difflib.unified_diff(stored[name].splitlines(), files[name].splitlines(),
                                        f"golden/{case}/{name}", f"generated/{case}/{name}", lineterm="", n=2)
            lines = list(diff)
            more = f"\n... ({len(lines) - 60} more diff lines)" if len(lines) > 60 else ""
            problems.append("\n".join(lines[:60]) + more)
    if problems:
        pytest.fail("generated files differ from tests/golden (if intended: QGEN_UPDATE_GOLDEN=1 pytest "
                    "tests/test_golden.py, then review git diff tests/golden/):\n" + "\n\n".join(problems),
                    pytrace=False)
