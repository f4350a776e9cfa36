"""Flashable images for the AVR boards: `qgen firmware MODEL --board atmega328p|atmega2560 --image` writes
firmware.hex/.bin (avr-objcopy) holding exactly the ELF's loadable flash bytes, and `qgen flash` prints (with
--run: executes) the avrdude command for the board's serial bootloader. No hardware: the command text, the image
contents, and the .hex itself run under simavr, printing the reference's outputs.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest
import torch
from test_images import elf_loads, hex_bytes

import codegen
from codegen.cli import main as qgen_main
from codegen.errors import UserError
from codegen.target.avr import EXPECTED_FILE, avr_image_files, avr_missing_tools, load_avr_board
from codegen.target.flash import avrdude_command, run_avr_flash

needs_avr = pytest.mark.skipif(bool(avr_missing_tools()), reason=f"missing tools: {avr_missing_tools()}")


def fake_image(directory, board: str):
    directory.mkdir(parents=True)
    (directory / "image.json").write_text(json.dumps({"board": board, "flash_origin": 0, "serial_baud": 115200,
                                                      "samples": 2}))
    return directory


def test_avr_boards_flash_through_their_bootloaders_with_avrdude():
    uno, mega = load_avr_board("atmega328p"), load_avr_board("atmega2560")
    assert avrdude_command(uno) == ("avrdude", "-p", "m328p", "-c", "arduino", "-P", "/dev/ttyACM0", "-b", "115200",
                                    "-D", "-U", "flash:w:firmware.hex:i")
    assert avrdude_command(mega, "/dev/ttyUSB0") == ("avrdude", "-p", "m2560", "-c", "wiring", "-P", "/dev/ttyUSB0",
                                                     "-b", "115200", "-D", "-U", "flash:w:firmware.hex:i")
    assert (uno.flash.bootloader_bytes, mega.flash.bootloader_bytes) == (512, 8192)


def test_qgen_flash_prints_avrdude_and_the_serial_monitor(tmp_path, capsys):
    directory = fake_image(tmp_path / "img", "atmega2560")
    assert qgen_main(["flash", "--board", "atmega2560", "--dir", str(directory), "--port", "/dev/ttyUSB1"]) == 0
    printed = capsys.readouterr().out
    assert (f"cd {directory} && avrdude -p m2560 -c wiring -P /dev/ttyUSB1 -b 115200 -D -U flash:w:firmware.hex:i"
            in printed)
    assert "stty -F /dev/ttyUSB1 115200 raw -echo && cat /dev/ttyUSB1" in printed
    assert f"must equal {directory}/{EXPECTED_FILE}" in printed
    # an image built for the other AVR board, and --port on a Cortex-M board: refused
    assert qgen_main(["flash", "--board", "atmega328p", "--dir", str(directory)]) == 1
    assert "holds an image for board 'atmega2560', not 'atmega328p'" in capsys.readouterr().err
    assert qgen_main(["flash", "--board", "stm32f446", "--dir", str(directory), "--port", "/dev/ttyACM0"]) == 1
    assert "--port is for AVR boards" in capsys.readouterr().err


def test_a_qemu_command_on_an_avr_board_points_to_the_image(tmp_path, capsys):
    assert qgen_main(["firmware", str(tmp_path), "--board", "atmega328p"]) == 1
    assert "`qgen firmware MODEL --board atmega328p --image` writes its flashable .hex" in capsys.readouterr().err


def test_flash_run_without_avrdude_names_the_debian_package(tmp_path, monkeypatch, capsys):
    directory = fake_image(tmp_path / "img", "atmega328p")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"avrdude not found on PATH; install it: apt-get install avrdude \(Debian"):
        run_avr_flash(load_avr_board("atmega328p"), directory)
    assert qgen_main(["flash", "--board", "atmega328p", "--dir", str(directory), "--run"]) == 1
    assert "avrdude not found on PATH" in capsys.readouterr().err


@pytest.fixture(scope="module")
def uno_image(tmp_path_factory):
    """A small conv + linear model through `qgen firmware --image` for the atmega328p (one build per module)."""
    tmp = tmp_path_factory.mktemp("avr_image")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 4 * 4, 5)).eval()
    calib = np.random.default_rng(1).standard_normal((6, 1, 6, 6)).astype(np.float32)
    result = codegen.compile(model, torch.zeros(1, 1, 6, 6), calib, prefix="tiny", out_dir=tmp / "model")
    assert qgen_main(["firmware", str(tmp / "model"), "--board", "atmega328p", "--image", "--out",
                      str(tmp / "image")]) == 0
    return result, tmp / "image"


@needs_avr
def test_avr_image_holds_exactly_the_elf_flash_bytes(uno_image):
    _, image = uno_image
    info = json.loads((image / "image.json").read_text())
    assert info["board"] == "atmega328p" and info["flash_origin"] == 0 and info["serial_baud"] == 115200
    # flash: .text (vectors, weights in PROGMEM, code) and any .data's initial values (stored after .text, copied
    # to SRAM at start-up); .eeprom/.fuse would load at 0x81xxxx and up
    loads = [(paddr, vaddr, data) for paddr, vaddr, data in elf_loads((image / "firmware.elf").read_bytes())
             if paddr < 0x800000]
    assert min(paddr for paddr, _, _ in loads) == 0
    flash = {paddr + i: b for paddr, _, data in loads for i, b in enumerate(data)}
    assert hex_bytes((image / "firmware.hex").read_text()) == flash
    binary = (image / "firmware.bin").read_bytes()
    assert len(binary) == max(flash) + 1 and all(binary[a] == b for a, b in flash.items())
    assert binary[:2] == b"\x0c\x94"  # the reset vector: JMP (avr5)


@needs_avr
def test_avr_hex_runs_under_simavr_and_prints_the_reference_outputs(uno_image):
    result, image = uno_image
    process = subprocess.run(["simavr", "-m", "atmega328p", "-f", "16000000", str(image / "firmware.hex")],
                             capture_output=True, text=True, timeout=60)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip().rstrip(".") for line in
             (process.stdout + process.stderr).splitlines()]
    printed = [line for line in lines if line.startswith("O ")]
    assert printed == (image / EXPECTED_FILE).read_text().splitlines()
    x = result.saved_inputs()
    expect = result.reference(x).astype(np.int8)
    assert [f"O {row.tobytes().hex()}" for row in expect] == printed  # 5 outputs: one line per sample
    assert "E" in lines


@needs_avr
def test_avr_image_must_end_below_the_bootloader(uno_image, tmp_path):
    _, image = uno_image
    uno = load_avr_board("atmega328p")
    tight = dataclasses.replace(uno, flash=dataclasses.replace(uno.flash, bootloader_bytes=32 * 1024 - 1024))
    with pytest.raises(UserError, match=r"the atmega328p image needs [\d,]+ B of flash; 1,024 B are free below its "
                                        r"31,744 B bootloader"):
        avr_image_files(tight, image / "firmware.elf", tmp_path)
