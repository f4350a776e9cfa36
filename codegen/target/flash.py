"""`qgen flash`: the command that programs a flashable image (codegen/target/image.py) into a board.

The tools and their names for each part are data (boards/*.toml [flash]: probes, pyocd_target,
openocd_configs, ...); this module only knows how each tool's command line is shaped. Every plan has the
command that programs the image and, for tools that can, the command that runs the harness with
semihosting: the firmware then reads qg_input.bin and writes qg_output.bin in the directory the tool runs
in (the image directory), and prints its messages on the tool's console.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from codegen.errors import UserError
from codegen.target.boards import Board, FlashTools
from codegen.target.image import IMAGE_INFO

INSTALL = {  # how to get each tool
    "pyocd": "pip install pyocd",
    "openocd": "apt-get install openocd",
    "picotool": "apt-get install picotool (Debian 13, Ubuntu 24.04; else build it from "
                "https://github.com/raspberrypi/picotool)",
    "nrfjprog": "install Nordic's nRF Command Line Tools (https://www.nordicsemi.com), which need SEGGER J-Link",
    "avrdude": "apt-get install avrdude (Debian package avrdude)",
}


@dataclass(frozen=True)
class FlashPlan:
    """How one tool programs the image and, if it can, runs the harness with semihosting."""

    probe: str
    setup: tuple[tuple[str, ...], ...]  # once per machine (e.g. a CMSIS pack)
    flash: tuple[str, ...] | None        # None: a manual step (see notes)
    run: tuple[str, ...] | None          # the harness with semihosting (None: this tool cannot)
    notes: tuple[str, ...] = ()


def _pyocd(t: FlashTools) -> FlashPlan:
    target = _need(t, "pyocd_target")
    return FlashPlan(
        "pyocd", ((("pyocd", "pack", "install", target),) if t.pyocd_pack else ()),
        ("pyocd", "flash", "-t", target, "firmware.hex"),
        ("pyocd", "run", "-t", target, "--timelimit", "60"),
        ("`pyocd run` resets the board and serves semihosting until the time limit or Ctrl-C (pyOCD does not "
         "implement the harness's exit call: it logs 'unimplemented request' and the core parks)",))


def _openocd(t: FlashTools) -> FlashPlan:
    if not t.openocd_configs:
        raise UserError("the board's [flash] table lists openocd but no openocd_configs")
    base = ["openocd", *(arg for cfg in t.openocd_configs for arg in ("-f", cfg))]
    base += [arg for command in t.openocd_commands for arg in ("-c", command)]
    return FlashPlan(
        "openocd", (), (*base, "-c", "program firmware.elf verify reset exit"),
        (*base, "-c", "init", "-c", "arm semihosting enable", "-c", "reset run"),
        ("OpenOCD prints the harness's messages and '*** application exited with 0 ***'; stop it with Ctrl-C",))


def _picotool(t: FlashTools) -> FlashPlan:
    return FlashPlan(
        "picotool", (), ("picotool", "load", "-x", "firmware.uf2"), None,
        ("hold BOOTSEL while plugging the board in (or copy firmware.uf2 to the RPI-RP2 drive instead)",
         "the harness talks over semihosting: without a debugger attached its first message stops the core; "
         "to see output, use a debug probe on the SWD pins (--probe openocd)"))


def _nrfjprog(t: FlashTools) -> FlashPlan:
    family = _need(t, "nrfjprog_family")
    return FlashPlan(
        "nrfjprog", (), ("nrfjprog", "-f", family, "--program", "firmware.hex", "--sectorerase", "--verify",
                         "--reset"), None,
        ("nrfjprog has no semihosting: to see the harness's output use --probe pyocd or --probe openocd",))


def _mcc(t: FlashTools, origin: int = 0) -> FlashPlan:
    note = _need(t, "mcc_application_note")
    return FlashPlan(
        "mcc", (), None, None,
        (f"copy firmware.bin to the board's USB drive as SOFTWARE/QGEN.BIN; in MB/<board revision>/{note}/images.txt "
         f"set IMAGE0FILE: \\SOFTWARE\\QGEN.BIN and IMAGE0ADDRESS: 0x{origin:08X}; press the board's reset button",
         "the harness talks over semihosting: attach an Arm debugger with semihosting enabled to see its output"))


PROBES = {"pyocd": _pyocd, "openocd": _openocd, "picotool": _picotool, "nrfjprog": _nrfjprog, "mcc": _mcc}


def _need(t: FlashTools, field: str) -> str:
    value = getattr(t, field)
    if not value:
        raise UserError(f"the board's [flash] table has no {field}")
    return value


def flash_plans(board: Board, probe: str | None = None) -> tuple[FlashPlan, FlashPlan | None]:
    """(the plan that programs the image, the plan that runs it with semihosting or None). The first probe
    listed for the board is the default; the run plan is the chosen probe's, else the board's first probe
    that has one."""
    tools = board.flash
    if tools is None or not tools.probes:
        raise UserError(f"board '{board.name}' has no [flash] table in its TOML: qgen does not know how to "
                        "program it")
    chosen = probe or tools.probes[0]
    if chosen not in tools.probes:
        raise UserError(f"--probe {chosen}: board '{board.name}' is programmed with {', '.join(tools.probes)}")
    unknown = [p for p in tools.probes if p not in PROBES]
    if unknown:
        raise UserError(f"board '{board.name}' lists unknown probes {unknown}; qgen knows {', '.join(PROBES)}")
    plan = _plan(board, chosen)
    runner = plan if plan.run else next((q for q in (_plan(board, p) for p in tools.probes) if q.run), None)
    return plan, runner


def _plan(board: Board, probe: str) -> FlashPlan:
    if probe == "mcc":  # the MCC loads firmware.bin at the address written in images.txt
        return _mcc(board.flash, board.image.flash_origin if board.image else 0)
    return PROBES[probe](board.flash)


def read_image_info(image_dir: Path, board: Board) -> dict:
    """image.json of a `qgen firmware --image` output directory, checked against `board`."""
    path = image_dir / IMAGE_INFO
    if not path.is_file():
        raise UserError(f"'{image_dir}' holds no flashable image ({IMAGE_INFO} missing); build one with "
                        f"`qgen firmware MODEL --board {board.name} --image --out {image_dir}`")
    info = json.loads(path.read_text())
    if info.get("board") != board.name:
        raise UserError(f"'{image_dir}' holds an image for board '{info.get('board')}', not '{board.name}'; "
                        f"rebuild it with --board {board.name}")
    return info


def flash_text(board: Board, image_dir: Path, probe: str | None = None) -> list[str]:
    """The lines `qgen flash` prints: the commands to program the image and to run it with semihosting."""
    info = read_image_info(image_dir, board)
    plan, runner = flash_plans(board, probe)
    cd = f"cd {shlex.quote(str(image_dir))} && "
    lines = [f"board {board.name} ({board.description}): image in {image_dir}/ "
             f"(flash at 0x{info['flash_origin']:08x}, RAM at 0x{info['ram_origin']:08x})"]
    lines += [f"once: {shlex.join(step)}" for step in plan.setup]
    if plan.flash is not None:
        lines += [f"flash with {plan.probe}:", "  " + cd + shlex.join(plan.flash)]
    if runner is not None:
        lines += [f"run the harness with semihosting ({runner.probe}; it reads qg_input.bin and writes "
                  f"qg_output.bin in {image_dir}/):"]
        lines += [f"  once: {shlex.join(step)}" for step in runner.setup if runner is not plan]
        lines += ["  " + cd + shlex.join(runner.run)]
    lines += [f"note: {note}" for note in plan.notes + (runner.notes if runner not in (None, plan) else ())]
    return lines


def run_flash(board: Board, image_dir: Path, probe: str | None = None) -> int:
    """Execute the programming command in `image_dir`; UserError if the tool is missing or fails."""
    read_image_info(image_dir, board)
    plan, _ = flash_plans(board, probe)
    if plan.flash is None:
        raise UserError(f"board '{board.name}' is programmed by hand ({plan.notes[0]}); --run cannot do that")
    tool = plan.flash[0]
    if shutil.which(tool) is None:
        raise UserError(f"{tool} not found on PATH; install it: {INSTALL[tool]}")
    for step in plan.setup:
        _call(step, image_dir)
    _call(plan.flash, image_dir)
    return 0


# ------------------------------------------------------------------- AVR: avrdude and the serial bootloader


def avrdude_command(board, port: str | None = None) -> tuple[str, ...]:
    """avrdude writing firmware.hex through the board's serial bootloader (an AvrBoard's [flash]): -D as the
    Arduino IDE does (the bootloader erases the pages it writes)."""
    tools = board.flash
    if tools is None:
        raise UserError(f"board '{board.name}' has no [flash] table in its TOML: qgen does not know how to program it")
    return ("avrdude", "-p", tools.avrdude_part, "-c", tools.avrdude_programmer, "-P", port or tools.port,
            "-b", str(tools.baud), "-D", "-U", "flash:w:firmware.hex:i")


def avr_flash_text(board, image_dir: Path, port: str | None = None) -> list[str]:
    """The lines `qgen flash --board atmega328p|atmega2560` prints: avrdude, then how to read the harness's
    serial output and what it should be."""
    from codegen.target.avr import EXPECTED_FILE

    info = read_image_info(image_dir, board)
    port = port or board.flash.port
    cd = f"cd {shlex.quote(str(image_dir))} && "
    baud = info.get("serial_baud", 115200)
    return [f"board {board.name} ({board.description}): image in {image_dir}/ ({info.get('samples', '?')} sample "
            f"inputs in flash)",
            f"flash with avrdude ({board.flash.avrdude_programmer} protocol, the board's bootloader at "
            f"{board.flash.baud} baud on {port}):",
            "  " + cd + shlex.join(avrdude_command(board, port)),
            f"read the harness's output on the serial port ({baud} baud; opening the port resets the board and the "
            "harness runs again):",
            f"  stty -F {shlex.quote(port)} {baud} raw -echo && cat {shlex.quote(port)}",
            f"note: per sample it prints 'O <output bytes in hex>' lines and 'C <cycles in hex>', then "
            f"'S <stack peak>' and 'E'; the O lines must equal {image_dir}/{EXPECTED_FILE} (the reference's outputs)",
            "note: other port names: /dev/ttyUSB0 (CH340/FTDI clones), COM3 (Windows); pass --port"]


def run_avr_flash(board, image_dir: Path, port: str | None = None) -> int:
    """Execute avrdude in `image_dir`; UserError if it is missing or fails."""
    read_image_info(image_dir, board)
    command = avrdude_command(board, port)
    if shutil.which(command[0]) is None:
        raise UserError(f"avrdude not found on PATH; install it: {INSTALL['avrdude']}")
    _call(command, image_dir)
    return 0


def _call(command: tuple[str, ...], cwd: Path) -> None:
    print("$ " + shlex.join(command), flush=True)
    status = subprocess.run(list(command), cwd=cwd, check=False).returncode
    if status != 0:
        raise UserError(f"{command[0]} failed (exit {status}); is the board connected and powered?")
