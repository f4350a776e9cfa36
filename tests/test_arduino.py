"""The Arduino library of a model (codegen/arduino.py): built by Debian's arduino-builder with arduino-core-avr
for an Arduino Mega (the digits CNN) and an Uno (a small MLP; the digits CNN, whose weights are in flash), and the
example sketch run under simavr: the class it prints over Serial is the reference's.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
import torch
from test_golden import CASES, _calib

import codegen
from codegen.arduino import build_sketch, write_arduino_library
from codegen.cli import main

TOOLS = ("arduino-builder", "simavr", "avr-gcc", "stdbuf")
missing = [t for t in TOOLS if shutil.which(t) is None]
needs_arduino = pytest.mark.skipif(bool(missing) or not os.path.isdir("/usr/share/arduino/hardware"),
                                   reason=f"missing arduino-builder/arduino-core-avr/simavr: {missing}")


def _serial_lines(elf, mcu: str, until: str, timeout: float = 20.0) -> list[str]:
    """Run the sketch under simavr (its loop() never ends: stop once `until` was printed)."""
    process = subprocess.Popen(["stdbuf", "-oL", "simavr", "-m", mcu, "-f", "16000000", str(elf)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        for raw in process.stdout:
            line = raw.replace("\x1b[32m", "").replace("\x1b[0m", "").strip().rstrip(".")
            lines.append(line)
            if line.startswith(until):
                break
        timer.cancel()
    finally:
        process.kill()
        process.wait()
    return lines


def _sizes(elf) -> str:
    return subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout


@needs_arduino
@pytest.mark.parametrize("case, fqbn, mcu", [("digits_cnn", "arduino:avr:mega:cpu=atmega2560", "atmega2560"),
                                             ("clustered", "arduino:avr:uno", "atmega328p"),
                                             ("digits_cnn", "arduino:avr:uno", "atmega328p")],
                         ids=["mega", "uno", "digits-uno"])
def test_arduino_library_builds_and_its_sketch_prints_the_reference_class(case, fqbn, mcu, tmp_path):
    model, shape, kwargs = CASES[case]()
    kwargs.pop("micropython", None)
    calib = _calib(shape)
    result = codegen.compile(model, torch.zeros(1, *shape), calib, prefix=case, **kwargs)
    lib = write_arduino_library(result, tmp_path / "libraries" / case, sample=result.quantize_input(calib[5:6])[0])
    assert (lib / "library.properties").read_text().startswith(f"name={case}\n")
    assert {p.name for p in (lib / "src").iterdir()} >= {f"{case}_model.c", f"{case}_weights.c", "qg_kernels.h"}
    assert not [p for p in (lib / "src").glob("qg_*.c") if f"kernels/{p.name}" not in result.files]  # only its own
    elf = build_sketch(lib / "examples" / case / f"{case}.ino", tmp_path / "libraries", fqbn, tmp_path / "build")
    expect = int(np.argmax(result.reference(result.quantize_input(calib[5:6]))[0]))
    lines = _serial_lines(elf, mcu, "time us")
    assert f"class {expect}" in lines, lines
    if fqbn == "arduino:avr:uno":  # weights and layer parameters in flash (QG_CONST): globals = arena + buffers +
        # the Arduino core (Serial); with the weights in SRAM the digits CNN's globals were 2,760 B (> 2 KB)
        sizes = _sizes(elf)
        ram = sum(int(re.search(rf"\.{section}\s+(\d+)", sizes).group(1)) for section in ("data", "bss"))
        assert ram + 256 <= 2048, ram


MLP_FILE = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
"""


def test_qgen_compile_arduino_writes_the_library(tmp_path, capsys):
    (tmp_path / "mlp.py").write_text(MLP_FILE)
    lib = tmp_path / "mlp_lib"
    assert main(["compile", f"{tmp_path / 'mlp.py'}:make", "--input-shape", "1,6", "--prefix", "mlp",
                 "--out", str(tmp_path / "out"), "--arduino", str(lib)]) == 0
    assert f"wrote {lib}/ (Arduino library" in capsys.readouterr().out
    files = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    assert {"library.properties", "examples/mlp/mlp.ino", "src/mlp_model.c", "src/mlp_model.h",
            "src/qg_fully_connected_s8.c", "src/qg_kernels.h"} <= files
    sketch = (lib / "examples/mlp/mlp.ino").read_text()
    assert "mlp_run(input, output)" in sketch and "PROGMEM" in sketch and 'Serial.print(F("class "))' in sketch
