"""--stream in the pure MicroPython module: reset() / predict_step() equal the streaming spec (codegen/stream.py)
byte for byte, under CPython and under real MicroPython (the WebAssembly port via Node, tests/mpy_runner.mjs):
a TCN (histories of causal dilated dense and depthwise Conv1d), a keyword-spotting shaped model with a GRU (its
state kept between steps) and poolings over the whole window."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from stream_models import KWS, TCN, ValidPool
from test_micropython import RUNNER, load_cpython, mpy_available

import codegen
from codegen.emit.micropython import render_micropython

FRAMES = 30
MODELS = {"tcn": (lambda: TCN(c=8, dilations=(1, 2), depthwise=(False, True)), 10, 16),
          "kws": (lambda: KWS(f=6, c=8, h=8, classes=4), 6, 12),
          "pool": (ValidPool, 4, 12)}  # valid convs, then the mean and the max over the window
# reset, a step, reset again (the stream restarts), then every frame: one hex line per step
SCRIPT = """
import {module} as m
f = open('/frames.bin', 'rb'); data = f.read(); f.close()
n = m.INPUT_SIZE
m.reset()
m.predict_step(data[n:2 * n])
m.reset()
for i in range(len(data) // n):
    print(m.predict_step(data[i * n:(i + 1) * n]).hex())
"""


@pytest.fixture(scope="module", params=list(MODELS))
def module(request):
    make, features, length = MODELS[request.param]
    torch.manual_seed(4)
    result = codegen.compile(make().eval(), torch.randn(1, features, length), torch.randn(32, features, length),
                             prefix=request.param, stream=True)
    frames = np.random.default_rng(6).integers(-128, 128, (1, 1, FRAMES, features)).astype(np.int8)
    frames[0, 0, 2] = 127
    src = render_micropython(result.graph, request.param, ["test"])
    return request.param, src, frames, result.stream().run(frames)[0], result.graph


def test_cpython_predict_step_equals_the_spec(module, tmp_path):
    name, src, frames, expect, _ = module
    mod = load_cpython(src, name, tmp_path)
    mod.reset()
    mod.predict_step(frames[0, 0, 1].tobytes())
    mod.reset()
    got = np.array([np.frombuffer(mod.predict_step(frames[0, 0, t].tobytes()), np.int8) for t in range(FRAMES)])
    np.testing.assert_array_equal(got, expect)


def test_micropython_predict_step_equals_the_spec(module, tmp_path):
    reason = mpy_available()
    if reason:
        pytest.skip(reason)
    name, src, frames, expect, _ = module
    for file, text in src.items():
        (tmp_path / file).write_text(text)
    (tmp_path / "frames.bin").write_bytes(frames[0, 0].tobytes())
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(module=name))
    proc = subprocess.run(["node", str(RUNNER), str(tmp_path), str(script)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    got = np.array([np.frombuffer(bytes.fromhex(line), np.int8) for line in proc.stdout.split()])
    np.testing.assert_array_equal(got, expect)


def test_native_modes_refuse_a_stream(module):
    from codegen.emit.mpy_native import render_native
    from codegen.errors import UserError

    name, graph = module[0], module[4]
    with pytest.raises(UserError, match="--mode pure"):
        render_native(graph, name, ["test"], "usercmod")
