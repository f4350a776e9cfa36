"""Flashable images (qgen firmware --image, codegen/target/image.py) and `qgen flash` (codegen/target/flash.py).

The .bin/.hex/.uf2 files are checked against the ELF's PT_LOAD program headers, read here by a parser of the
test's own: every loadable byte at its load address and nothing else, Intel HEX checksums, UF2 blocks. The
STM32F446 image also runs: QEMU's netduinoplus2 (an STM32F405: Cortex-M4F, flash at 0x08000000 aliased at 0,
128 KB SRAM at 0x20000000, the F446's map) boots the .hex as a board would and the harness's outputs must equal
the integer reference.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codegen.cli import main as qgen_main
from codegen.errors import UserError
from codegen.target import build_elf, linker_script_text, list_boards, load_board, parse_board
from codegen.target.flash import PROBES, flash_plans, flash_text, run_flash
from codegen.target.image import BOOT2_SIZE, crc32_mpeg2, image_files, uf2_blocks

needs_cross = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                 reason="needs arm-none-eabi-gcc and qemu-system-arm (scripts/setup.sh installs them)")

TINY_H = """#ifndef TINY_MODEL_H
#define TINY_MODEL_H
#include <stdint.h>
#define TINY_INPUT_SIZE 8
#define TINY_OUTPUT_SIZE 8
int tiny_run(const int8_t *in, int8_t *out);
#endif
"""
# Initialised writable data (.data: stored in flash, copied to RAM at reset) and a counter that changes it.
TINY_C = """#include "tiny_model.h"
int8_t tiny_offsets[TINY_OUTPUT_SIZE] = {1, -2, 3, -4, 5, -6, 7, -8};
int32_t tiny_calls = 100;
int tiny_run(const int8_t *in, int8_t *out)
{
    for (int i = 0; i < TINY_OUTPUT_SIZE - 1; ++i) {
        out[i] = (int8_t)(in[i] + tiny_offsets[i]);
    }
    out[TINY_OUTPUT_SIZE - 1] = (int8_t)tiny_calls++;
    return 0;
}
"""


# ------------------------------------------------------------------------- the test's own readers

def elf_loads(elf: bytes) -> list[tuple[int, int, bytes]]:
    """(paddr, vaddr, file bytes) of every PT_LOAD program header with contents (ELF32 little endian)."""
    assert elf[:6] == b"\x7fELF\x01\x01"
    phoff, = struct.unpack_from("<I", elf, 28)
    phentsize, phnum = struct.unpack_from("<HH", elf, 42)
    loads = []
    for i in range(phnum):
        kind, offset, vaddr, paddr, filesz, _ = struct.unpack_from("<6I", elf, phoff + i * phentsize)
        if kind == 1 and filesz:
            loads.append((paddr, vaddr, elf[offset:offset + filesz]))
    return loads


def hex_bytes(text: str) -> dict[int, int]:
    """address -> byte of an Intel HEX file; every record's checksum checked."""
    memory, upper = {}, 0
    lines = text.splitlines()
    assert lines[-1] == ":00000001FF"
    for line in lines:
        raw = bytes.fromhex(line[1:])
        assert line[0] == ":" and raw[0] == len(raw) - 5 and sum(raw) % 256 == 0, line
        address, kind, data = int.from_bytes(raw[1:3], "big"), raw[3], raw[4:-1]
        if kind == 0:
            for i, b in enumerate(data):
                assert upper + address + i not in memory
                memory[upper + address + i] = b
        elif kind == 4:
            upper = int.from_bytes(data, "big") << 16
        elif kind == 2:
            upper = int.from_bytes(data, "big") << 4
    return memory


def uf2_bytes(uf2: bytes, family: int) -> dict[int, int]:
    """address -> byte of a UF2 file, every block's framing checked."""
    assert len(uf2) % 512 == 0
    n = len(uf2) // 512
    memory = {}
    for index in range(n):
        block = uf2[index * 512:(index + 1) * 512]
        m0, m1, flags, address, size, number, total, fam = struct.unpack_from("<8I", block)
        assert (m0, m1, struct.unpack_from("<I", block, 508)[0]) == (0x0A324655, 0x9E5D5157, 0x0AB16F30)
        assert flags == 0x2000 and fam == family and size == 256 and address % 256 == 0
        assert (number, total) == (index, n)
        memory.update({address + i: b for i, b in enumerate(block[32:32 + size])})
    return memory


def loadable_map(loads) -> dict[int, int]:
    return {paddr + i: b for paddr, _, data in loads for i, b in enumerate(data)}


# -------------------------------------------------------------------------------------- pure

def test_crc32_is_the_rp2040_boot_rom_crc():
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7  # the CRC-32/MPEG-2 check value
    assert crc32_mpeg2(b"") == 0xFFFFFFFF


def test_uf2_blocks_number_pad_and_place_the_payload():
    payload = bytes(range(256)) * 2 + b"\x01\x02\x03"
    uf2 = uf2_blocks(payload, 0x10000000, 0xE48BFF56)
    assert len(uf2) == 3 * 512
    memory = uf2_bytes(uf2, 0xE48BFF56)
    assert bytes(memory[0x10000000 + i] for i in range(len(payload))) == payload
    assert memory[0x10000000 + len(payload)] == 0 and max(memory) == 0x10000000 + 3 * 256 - 1


def test_every_board_has_a_real_map_and_known_probes():
    for name in list_boards():
        board = load_board(name)
        assert board.image is not None and board.flash is not None, name
        assert set(board.flash.probes) <= set(PROBES), name
        assert board.image.flash_kb == board.flash_kb, name  # the fit check counts the same memories


@pytest.mark.parametrize("name, flash, ram, ram_kb", [
    ("stm32f446", 0x08000000, 0x20000000, 128), ("stm32h743", 0x08000000, 0x24000000, 512),
    ("nrf52840", 0x00000000, 0x20000000, 256), ("rp2040", 0x10000000, 0x20000000, 264),
    ("atsamd21g18a", 0x00000000, 0x20000000, 32),
    ("mps2-an505", 0x10000000, 0x38000000, 2048), ("mps3-an547", 0x00000000, 0x20000000, 512),
    ("ra8m1", 0x02000000, 0x22000000, 896)])
def test_real_memory_maps(name, flash, ram, ram_kb):
    image = load_board(name).image
    assert (image.flash_origin, image.ram_origin, image.ram_kb) == (flash, ram, ram_kb)
    assert image.uf2_family == (0xE48BFF56 if name == "rp2040" else None)
    assert image.boot2 == (name == "rp2040")


def test_a_board_without_image_tables_still_loads_and_refuses_images():
    data = {"name": "old", "description": "d", "core": "cortex-m4", "fpu": "none", "float_abi": "soft",
            "flash_kb": 64, "ram_kb": 32, "clock_mhz": 1, "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"],
            "qemu": {"machine": "mps2-an386", "flash_origin": 0, "flash_kb": 4096, "ram_origin": 0x20000000,
                     "ram_kb": 4096}}
    board = parse_board(data)
    assert board.image is None and board.flash is None
    assert "0x00000000" in linker_script_text(board)
    with pytest.raises(UserError, match="no \\[image\\] memory map"):
        linker_script_text(board, image=True)
    with pytest.raises(UserError, match="no \\[flash\\] table"):
        flash_plans(board)


def test_qemu_linker_script_is_unchanged_by_the_image_map():
    text = linker_script_text(load_board("stm32f446"))
    assert "ORIGIN = 0x00000000, LENGTH = 4096K" in text and "the QEMU mps2-an386 memory map" in text
    assert ".boot2" not in linker_script_text(load_board("rp2040"))
    image = linker_script_text(load_board("stm32f446"), image=True)
    assert "ORIGIN = 0x08000000, LENGTH = 512K" in image and "ORIGIN = 0x20000000, LENGTH = 128K" in image


def fake_image(directory: Path, board: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    b = load_board(board).image
    (directory / "image.json").write_text(json.dumps({"board": board, "flash_origin": b.flash_origin,
                                                      "ram_origin": b.ram_origin}))
    return directory


EXPECTED_COMMANDS = {
    ("stm32f446", None): ["pyocd pack install stm32f446re", "pyocd flash -t stm32f446re firmware.hex",
                          "pyocd run -t stm32f446re --timelimit 60"],
    ("stm32f446", "openocd"): [
        "openocd -f interface/stlink.cfg -f target/stm32f4x.cfg -c 'program firmware.elf verify reset exit'",
        "openocd -f interface/stlink.cfg -f target/stm32f4x.cfg -c init -c 'arm semihosting enable' -c 'reset run'"],
    ("stm32h743", None): ["pyocd flash -t stm32h743xx firmware.hex", "pyocd run -t stm32h743xx --timelimit 60"],
    ("rp2040", None): ["picotool load -x firmware.uf2",
                       "openocd -f interface/cmsis-dap.cfg -f target/rp2040.cfg -c 'adapter speed 5000' -c init "
                       "-c 'arm semihosting enable' -c 'reset run'"],
    ("nrf52840", None): ["nrfjprog -f NRF52 --program firmware.hex --sectorerase --verify --reset",
                         "pyocd run -t nrf52840 --timelimit 60"],
    ("nrf52840", "openocd"): ["openocd -f interface/jlink.cfg -f target/nrf52.cfg -c 'program firmware.elf verify "
                              "reset exit'"],
    ("mps2-an386", None): ["IMAGE0FILE: \\SOFTWARE\\QGEN.BIN", "AN386/images.txt"],
    ("mps2-an505", None): ["AN505/images.txt set IMAGE0FILE: \\SOFTWARE\\QGEN.BIN and IMAGE0ADDRESS: 0x10000000"],
}


@pytest.mark.parametrize("board, probe", list(EXPECTED_COMMANDS))
def test_flash_prints_the_commands_for_each_board(board, probe, tmp_path, capsys):
    directory = fake_image(tmp_path / "img", board)
    text = "\n".join(flash_text(load_board(board), directory, probe))
    for command in EXPECTED_COMMANDS[board, probe]:
        assert command in text, text
    assert qgen_main(["flash", "--board", board, "--dir", str(directory)] + (["--probe", probe] if probe else [])) == 0
    assert EXPECTED_COMMANDS[board, probe][-1] in capsys.readouterr().out


def test_flash_run_names_the_missing_tool(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for board, tool, hint in [("stm32f446", "pyocd", "pip install pyocd"),
                              ("stm32f446", "openocd", "apt-get install openocd"),
                              ("rp2040", "picotool", "picotool")]:
        directory = fake_image(tmp_path / board, board)
        with pytest.raises(UserError, match=f"{tool} not found on PATH; install it: .*{hint}"):
            run_flash(load_board(board), directory, tool)
    assert qgen_main(["flash", "--board", "stm32f446", "--dir", str(tmp_path / "stm32f446"), "--run"]) == 1
    assert "pyocd not found on PATH" in capsys.readouterr().err


def test_flash_checks_the_image_directory(tmp_path):
    with pytest.raises(UserError, match="holds no flashable image"):
        flash_text(load_board("rp2040"), tmp_path)
    with pytest.raises(UserError, match="image for board 'stm32f446', not 'rp2040'"):
        flash_text(load_board("rp2040"), fake_image(tmp_path / "x", "stm32f446"))
    with pytest.raises(UserError, match="--probe nrfjprog: board 'rp2040' is programmed with picotool"):
        flash_plans(load_board("rp2040"), "nrfjprog")
    with pytest.raises(UserError, match="programmed by hand"):
        run_flash(load_board("mps2-an385"), fake_image(tmp_path / "m", "mps2-an385"))


# ------------------------------------------------------------------------------- cross builds

@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """The tiny hand-written model linked for the real maps (and once for QEMU), with the image files."""
    base = tmp_path_factory.mktemp("images")
    model = base / "model"
    model.mkdir()
    (model / "tiny_model.h").write_text(TINY_H)
    (model / "tiny_model.c").write_text(TINY_C)
    built = {}
    for name in ("rp2040", "stm32f446", "stm32h743", "mps2-an386"):
        board = load_board(name)
        elf = build_elf(board, [model / "tiny_model.c"], [model], "tiny", base / name, image=True)
        built[name] = (elf, image_files(board, elf.path, base / name / "out"))
    qemu_elf = build_elf(load_board("mps2-an386"), [model / "tiny_model.c"], [model], "tiny", base / "qemu")
    return built, qemu_elf


@needs_cross
@pytest.mark.parametrize("name", ["rp2040", "stm32f446", "stm32h743"])
def test_image_files_hold_exactly_the_loadable_bytes(name, tiny_images):
    board = load_board(name)
    _, files = tiny_images[0][name]
    loads = elf_loads(files["firmware.elf"])
    expected = loadable_map(loads)
    origin = board.image.flash_origin
    assert min(expected) == origin and max(expected) < origin + board.image.flash_kb * 1024
    # .data is stored in flash (LMA) and runs in RAM (VMA)
    data = [(p, v) for p, v, _ in loads if v != p]
    assert data and all(p < origin + board.image.flash_kb * 1024 and v >= board.image.ram_origin for p, v in data)
    assert hex_bytes(files["firmware.hex"].decode()) == expected
    binary = files["firmware.bin"]
    assert len(binary) == max(expected) + 1 - origin
    assert all(binary[a - origin] == b for a, b in expected.items())
    assert not any(binary[i] for i in range(len(binary)) if origin + i not in expected)  # gaps are zero fill
    if board.image.uf2_family is not None:
        uf2 = uf2_bytes(files["firmware.uf2"], board.image.uf2_family)
        assert {a: b for a, b in uf2.items() if a in expected} == expected
        assert not any(b for a, b in uf2.items() if a not in expected)
        assert min(uf2) == origin
    else:
        assert "firmware.uf2" not in files
    info = json.loads(files["image.json"])
    assert info["board"] == name and info["flash_origin"] == origin


@needs_cross
@pytest.mark.parametrize("name", ["rp2040", "stm32f446", "stm32h743"])
def test_vector_table_points_into_the_real_ram_and_flash(name, tiny_images):
    image = load_board(name).image
    _, files = tiny_images[0][name]
    memory = loadable_map(elf_loads(files["firmware.elf"]))
    table = image.flash_origin + (256 if image.boot2 else 0)
    stack, reset = struct.unpack("<II", bytes(memory[table + i] for i in range(8)))
    assert stack == image.ram_origin + image.ram_kb * 1024  # the top of the real RAM
    assert reset & 1 and image.flash_origin < reset < image.flash_origin + image.flash_kb * 1024


@needs_cross
def test_rp2040_boot2_layout_and_crc(tiny_images):
    _, files = tiny_images[0]["rp2040"]
    binary = files["firmware.bin"]
    boot2 = binary[:BOOT2_SIZE]
    assert int.from_bytes(boot2[252:], "little") == crc32_mpeg2(boot2[:252])
    assert boot2[:2] == bytes.fromhex("00b5")  # push {lr}: the code starts at 0x10000000
    uf2 = files["firmware.uf2"]
    assert uf2[32:32 + 256] == boot2  # the first UF2 block is boot2 at 0x10000000
    assert struct.unpack_from("<I", uf2, 12)[0] == 0x10000000
    # one flipped bit anywhere in boot2 changes the CRC (the boot ROM would then refuse to boot)
    broken = bytearray(boot2[:252])
    broken[40] ^= 0x10
    assert crc32_mpeg2(bytes(broken)) != int.from_bytes(boot2[252:], "little")


@needs_cross
def test_fpga_board_image_equals_its_qemu_build(tiny_images):
    """MPS2 boards' real map is the one QEMU models: the image has the same loadable bytes as the QEMU ELF."""
    built, qemu_elf = tiny_images
    _, files = built["mps2-an386"]
    assert elf_loads(files["firmware.elf"]) == elf_loads(qemu_elf.path.read_bytes())


@needs_cross
def test_stm32f446_image_runs_from_its_hex_on_an_stm32f4_machine(tiny_images, tmp_path):
    elf, files = tiny_images[0]["stm32f446"]
    for name in ("firmware.hex", "firmware.bin"):
        (tmp_path / name).write_bytes(files[name])
    x = np.arange(-12, 12, dtype=np.int8).reshape(3, 8)
    (tmp_path / "qg_input.bin").write_bytes(x.tobytes())
    subprocess.run(["qemu-system-arm", "-M", "netduinoplus2", "-nographic", "-monitor", "none", "-serial", "null",
                    "-semihosting-config", "enable=on,target=native", "-device", "loader,file=firmware.hex"],
                   cwd=tmp_path, check=True, timeout=60)
    out = np.frombuffer((tmp_path / "qg_output.bin").read_bytes(), dtype=np.int8).reshape(3, 8)
    offsets = np.array([1, -2, 3, -4, 5, -6, 7], dtype=np.int8)
    assert (out[:, :7] == x[:, :7] + offsets).all()
    assert out[:, 7].tolist() == [100, 101, 102]  # .data was copied from flash: the counter starts at 100


@needs_cross
def test_cli_model_image_runs_bit_exact_on_an_stm32f4_machine(tmp_path, capsys):
    """A generated model (an MLP: no training needed) through `qgen firmware --image`, booted from its .hex."""
    import torch
    from models import MLP

    from codegen import compile as qcompile
    from codegen.api import load_compiled
    from codegen.hostcheck import reference_outputs
    from codegen.reference import run_int

    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((32, 20)).astype(np.float32)
    qcompile(MLP().eval(), torch.from_numpy(calib[:1]), calib, prefix="mlp", out_dir=tmp_path / "mlp")
    out = tmp_path / "image"
    assert qgen_main(["firmware", str(tmp_path / "mlp"), "--board", "stm32f446", "--image", "--out", str(out)]) == 0
    assert "firmware.bin, firmware.elf, firmware.hex" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "firmware.bin", "firmware.elf", "firmware.hex", "image.json", "qg_input.bin"]
    subprocess.run(["qemu-system-arm", "-M", "netduinoplus2", "-nographic", "-monitor", "none", "-serial", "null",
                    "-semihosting-config", "enable=on,target=native", "-device", "loader,file=firmware.hex"],
                   cwd=out, check=True, timeout=120)
    compiled = load_compiled(tmp_path / "mlp")
    x = compiled.saved_inputs()
    expect = reference_outputs(compiled.graph, run_int(compiled.graph, x))
    got = np.frombuffer((out / "qg_output.bin").read_bytes(), dtype=np.int8).reshape(expect.shape)
    assert (got == expect).all()
    assert qgen_main(["flash", "--board", "stm32f446", "--dir", str(out)]) == 0
    assert "pyocd flash -t stm32f446re firmware.hex" in capsys.readouterr().out
