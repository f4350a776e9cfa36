"""The MicroPython C targets (natmod / user C module) of a recurrent model: the model C with the arena passed in
builds under the strict flags and ASan/UBSan and equals run_int; the natmod sources hold no writable static data
(the tanh table is const). With QGEN_MICROPYTHON_SRC (test_natmod.py): the x64 natmod and the pure module (viper
path) on the unix port equal run_int too."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from qgen_testing import assert_no_writable_static_data
from test_micropython import assert_same, expected
from test_natmod import BANNER, Case, _host_build, _make, micropython_src, run_unix, unix_port
from test_recurrent_mpy import _graph, _inputs

from codegen.emit.c import write_atomic
from codegen.emit.micropython import render_micropython
from codegen.emit.mpy_native import render_native
from codegen.hostcheck import STRICT_CFLAGS

pytestmark = pytest.mark.hostc


@pytest.mark.parametrize("case", [("gru", 16, False, False, True), ("lstm", 8, True, True, False)],
                         ids=lambda c: "-".join(map(str, c)))
def test_usercmod_c_with_arena_argument_is_bit_exact(case, tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    g = _graph(*case)
    files = render_native(g, "rnn", BANNER, "usercmod")
    assert "static int8_t rnn_arena" not in files["rnn_model.c"]
    exe = _host_build(files, "rnn", tmp_path, [*STRICT_CFLAGS, "-fsanitize=address,undefined",
                                               "-fno-sanitize-recover=all", "-O1"])
    x = _inputs(g, 12)
    proc = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert_same(np.frombuffer(proc.stdout, np.int8).reshape(len(x), -1), expected(g, x), "C (arena argument)", g)


def test_natmod_sources_hold_no_writable_static_data(tmp_path):
    if shutil.which("gcc") is None or shutil.which("size") is None:
        pytest.skip("gcc/binutils are not installed")
    files = render_native(_graph("lstm", 16, False, False, False), "rnn", BANNER, "natmod")
    assert "qg_recurrent_s8.c" in files
    assert_no_writable_static_data(files, tmp_path, "modrnn.c")


@pytest.mark.slow
def test_natmod_x64_and_pure_module_on_unix_port_bit_exact(tmp_path):
    src = micropython_src()
    pytest.importorskip("elftools", reason="MicroPython's natmod linker needs pyelftools (pip install pyelftools)")
    micropython = unix_port(src)
    for prefix, case in (("gru", ("gru", 16, False, False, True)), ("lstm", ("lstm", 8, False, True, False))):
        g = _graph(*case)
        x = _inputs(g, 8)
        run = Case(prefix, g, x, None, expected(g, x), None)
        out = tmp_path / prefix
        write_atomic(render_native(g, prefix, BANNER, "natmod", "x64"), out)
        _make(["-j2", f"MPY_DIR={src}"], cwd=out, timeout=600)
        run_unix(micropython, out, run, tmp_path)
        pure = tmp_path / f"pure_{prefix}"
        pure.mkdir()
        for name, text in render_micropython(g, prefix, BANNER).items():
            (pure / name).write_text(text)
        run_unix(micropython, pure, run, tmp_path)
