"""Board descriptions (boards/*.toml): they load, agree with their compiler flags, cover every core."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from codegen.errors import UserError
from codegen.target import (
    CORES,
    MARCH_FOR_CORE,
    board_problems,
    harness_config_text,
    linker_script_text,
    list_boards,
    load_board,
    parse_board,
)

REQUIRED_BOARDS = ("rp2040", "stm32f446", "nrf52840", "stm32h743", "mps2-an385", "mps2-an386",
                   "mps2-an500", "mps2-an505", "mps3-an547")


def test_required_boards_are_listed():
    assert set(REQUIRED_BOARDS) <= set(list_boards())


@pytest.mark.parametrize("name", list_boards())
def test_every_board_loads_and_is_consistent(name):
    board = load_board(name)
    assert board.name == name
    assert board_problems(board) == []
    assert board.flash_kb > 0 and board.ram_kb > 0 and board.clock_mhz > 0


def test_every_core_has_a_board():
    assert {load_board(name).core for name in list_boards()} == set(CORES)


@pytest.mark.parametrize("name, flash_kb, ram_kb, clock_mhz, core", [
    ("rp2040", 2048, 264, 133, "cortex-m0plus"),
    ("atsamd21g18a", 256, 32, 48, "cortex-m0plus"),
    ("stm32f446", 512, 128, 180, "cortex-m4"),
    ("nrf52840", 1024, 256, 64, "cortex-m4"),
    ("stm32h743", 2048, 512, 480, "cortex-m7"),
    ("ra8m1", 2048, 896, 480, "cortex-m85"),
])
def test_real_board_sizes(name, flash_kb, ram_kb, clock_mhz, core):
    board = load_board(name)
    assert (board.flash_kb, board.ram_kb, board.clock_mhz, board.core) == (flash_kb, ram_kb, clock_mhz, core)


@pytest.mark.parametrize("core, machine", [
    ("cortex-m0plus", "mps2-an385"), ("cortex-m3", "mps2-an385"), ("cortex-m4", "mps2-an386"),
    ("cortex-m7", "mps2-an500"), ("cortex-m33", "mps2-an505"), ("cortex-m55", "mps3-an547"),
    ("cortex-m85", "mps3-an547"),  # QEMU has no M85: the M55 machine executes the same instructions
])
def test_each_core_runs_on_its_qemu_machine(core, machine):
    boards = [load_board(name) for name in list_boards()]
    assert {b.qemu.machine for b in boards if b.core == core} == {machine}


def test_qemu_memory_maps_match_the_machines():
    an505, an547 = load_board("mps2-an505").qemu, load_board("mps3-an547").qemu
    assert (an505.flash_origin, an505.ram_origin) == (0x10000000, 0x38000000)
    # A stack beyond the AN547's 512 KB DTCM locks the core up.
    assert (an547.flash_origin, an547.ram_origin, an547.ram_kb) == (0, 0x20000000, 512)


def test_unknown_board_names_the_known_ones():
    with pytest.raises(UserError, match=r"unknown board 'stm32f999'; known boards: .*stm32f446"):
        load_board("stm32f999")


def test_inconsistent_flags_are_reported():
    board = dataclasses.replace(load_board("stm32f446"), cflags=("-mcpu=cortex-m3", "-mthumb"))
    problems = board_problems(board)
    assert "cflags lack '-mcpu=cortex-m4'" in problems
    assert "cflags lack '-mfpu=fpv4-sp-d16'" in problems
    assert "cflags lack '-mfloat-abi=hard'" in problems


def test_m85_board_names_its_architecture():
    """GCC 12 has no -mcpu=cortex-m85: the board gives the architecture (MARCH_FOR_CORE), and a board of that core
    without it is reported."""
    board = load_board("ra8m1")
    assert f"-march={MARCH_FOR_CORE['cortex-m85']}" in board.cflags
    assert not any(flag.startswith("-mcpu=") for flag in board.cflags)
    wrong = dataclasses.replace(board, cflags=("-mcpu=cortex-m55", "-mthumb", "-mfpu=auto", "-mfloat-abi=hard"))
    assert board_problems(wrong) == [f"cflags lack '-march={MARCH_FOR_CORE['cortex-m85']}'"]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_m85_flags_give_the_helium_kernels():
    """The M85 board's flags define what the kernels test for their Helium / DSP paths, as the M55's do (and GCC
    accepts them: a GCC that knew no such architecture would fail here)."""
    def macros(board: str) -> set[str]:
        out = subprocess.run(["arm-none-eabi-gcc", *load_board(board).cflags, "-dM", "-E", "-x", "c", "-"],
                             input="", capture_output=True, text=True, check=True).stdout
        return {line for line in out.splitlines() if "__ARM_FEATURE_MVE" in line or "__ARM_FEATURE_DSP" in line
                or "__ARM_FP " in line or "__ARM_ARCH_8_1M_MAIN__" in line}

    assert {"#define __ARM_FEATURE_MVE 3", "#define __ARM_FEATURE_DSP 1"} <= macros("ra8m1")
    assert macros("ra8m1") == macros("mps3-an547")


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
def test_m85_kernels_are_the_m55_instructions(tmp_path):
    """The M85 board compiles the Helium kernels to the very instructions of the M55 board (which QEMU runs and
    tests/test_kernels_mve.py checks): a kernel file using qg_mve.h gives the same disassembly."""
    from codegen.resources import kernel_dir

    def disassembly(board: str) -> str:
        obj = tmp_path / f"{board}.o"
        subprocess.run(["arm-none-eabi-gcc", *load_board(board).cflags, "-O2", "-std=c99", "-c",
                        str(kernel_dir() / "qg_binary_s8.c"), "-o", str(obj)], check=True)
        text = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], capture_output=True, text=True, check=True)
        return text.stdout.split("\n", 3)[3]  # without the file name line

    m85 = disassembly("ra8m1")
    assert "vqrshl" in m85 and m85 == disassembly("mps3-an547")


def test_malformed_board_is_a_user_error():
    with pytest.raises(UserError, match="malformed board"):
        parse_board({"name": "x", "core": "cortex-m4"}, source="x.toml")


def test_linker_script_is_filled_from_the_qemu_map():
    text = linker_script_text(load_board("mps2-an505"))
    assert "${" not in text
    assert "ORIGIN = 0x10000000, LENGTH = 4096K" in text
    assert "ORIGIN = 0x38000000, LENGTH = 2048K" in text


def test_harness_config_binds_the_prefix():
    text = harness_config_text("kws")
    assert '#include "kws_model.h"' in text
    assert "#define HARNESS_RUN kws_run" in text
    assert "#define HARNESS_INPUT_SIZE KWS_INPUT_SIZE" in text
    assert "#define HARNESS_OUTPUT_SIZE KWS_OUTPUT_SIZE" in text


@pytest.mark.parametrize("prefix", ["1abc", "my-model", "int", ""])
def test_bad_prefix_is_rejected(prefix):
    with pytest.raises(UserError, match="not a valid C identifier"):
        harness_config_text(prefix)
