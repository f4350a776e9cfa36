"""ARM natmods under a real MicroPython on emulated Cortex-M cores, byte for byte against the reference.

MicroPython's own QEMU port (ports/qemu of QGEN_MICROPYTHON_SRC) is built once per board into qgen's
cache, kept across sessions (keyed by the source tree, the board, the make flags and the compiler; the
natmods likewise by their files), and run under qemu-system-arm:

| board (ports/qemu) | QEMU machine | core                  | firmware accepts  | natmods run here    |
|--------------------|--------------|-----------------------|-------------------|---------------------|
| MICROBIT           | microbit     | Cortex-M0 (nRF51)     | armv6m            | armv6m              |
| MPS2_AN385         | mps2-an385   | Cortex-M3             | armv6m .. armv7em | armv7m              |
| MPS2_AN500         | mps2-an500   | Cortex-M7, double FPU | .. armv7emdp      | armv7emsp armv7emdp |

The upstream MICROBIT board leaves the native emitter off, and with it the loading of native code
(`sys.implementation._mpy` says arch None); it is built here with `-DMICROPY_EMIT_THUMB=1`, which makes
it an armv6m target. QEMU's Cortex-M0 traps unaligned word accesses like the chip (checked below), so
the armv6m run also shows that the kernels make none.

The .mpy and the input files go in over the raw REPL on the emulated UART (QEMU's `-serial stdio` on
pipes: QEMU only feeds the UART when it can take a byte, so nothing is lost) as hex chunks into
bytearrays, served by a small read-only filesystem object mounted at /qg, the way MicroPython's
tests/run-natmodtests.py injects natmods into its qemu target. Then test_natmod's RUN_SCRIPT runs
unchanged: predict on -128/127 and random inputs, predict_float, and the input-contract table.
"""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_natmod import BANNER, RUN_SCRIPT, Case, _cases, case_inputs, check_run_output, micropython_src

from codegen.emit.c import write_atomic
from codegen.emit.mpy_native import render_native
from codegen.hostcheck import cache_root


@dataclass(frozen=True)
class QemuBoard:
    name: str  # BOARD= of MicroPython's ports/qemu
    core: str
    machine: str  # qemu-system-arm -machine
    qemu_args: tuple[str, ...]
    make_args: tuple[str, ...]
    archs: tuple[str, ...]  # natmod architectures run on it
    mpy_arch: str  # what the firmware reports (tests/feature_check/target_info.py)
    sysclk_hz: int  # QEMU's core clock; the port's SysTick code (mcu/arm/ticks.c) assumes 25 MHz


BOARDS = {b.name: b for b in (
    QemuBoard("MICROBIT", "Cortex-M0", "microbit",
              ("-global", "nrf51-soc.flash-size=1048576", "-global", "nrf51-soc.sram-size=262144"),
              ("CFLAGS_EXTRA=-DMICROPY_EMIT_THUMB=1",), ("armv6m",), "armv6m", 16_000_000),
    QemuBoard("MPS2_AN385", "Cortex-M3", "mps2-an385", (), (), ("armv7m",), "armv7em", 25_000_000),
    QemuBoard("MPS2_AN500", "Cortex-M7", "mps2-an500", (), (), ("armv7emsp", "armv7emdp"), "armv7emdp", 25_000_000),
)}
MPY_ARCHS = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp"]
# firmware and natmods depend only on what is hashed into their folder names: keep them across test
# sessions (evaluated at collection, before conftest gives each session a fresh QGEN_CACHE for host builds)
BUILD_CACHE = cache_root()
CHUNK = 2048  # bytes of a file per raw-REPL command (4 KiB of hex): small next to the ~140 KiB heap

# a read-only filesystem over bytearrays (like run-natmodtests.py's injected one, with several files)
DEVICE_FS = """
import io, sys, vfs
class _QgFile(io.IOBase):
    def __init__(self, data):
        self.data = data
        self.off = 0
    def readinto(self, buf):
        n = min(len(buf), len(self.data) - self.off)
        buf[:n] = memoryview(self.data)[self.off:self.off + n]
        self.off += n
        return n
    def read(self, n=-1):
        end = len(self.data) if n < 0 else min(len(self.data), self.off + n)
        out = bytes(memoryview(self.data)[self.off:end])
        self.off = end
        return out
    def ioctl(self, req, arg):
        return 0
    def close(self):
        pass
class _QgFS:
    def mount(self, readonly, mkfs):
        pass
    def umount(self):
        pass
    def chdir(self, path):
        pass
    def stat(self, path):
        if path[1:] in _qg_files:
            return (0x8000, 0, 0, 0, 0, 0, len(_qg_files[path[1:]]), 0, 0, 0)
        raise OSError(2)
    def open(self, path, mode):
        if path[1:] not in _qg_files:
            raise OSError(2)
        return _QgFile(_qg_files[path[1:]])
vfs.mount(_QgFS(), '/qg')
"""


def require_tools() -> Path:
    src = micropython_src()
    for tool in ("qemu-system-arm", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the ARM natmods run under MicroPython's QEMU port "
                        "(apt install qemu-system-arm gcc-arm-none-eabi)")
    pytest.importorskip("elftools", reason="MicroPython's natmod linker needs pyelftools (pip install pyelftools)")
    pytest.importorskip("ar", reason="armv6m/armv7m natmods link libgcc with MicroPython's ar_util: pip install ar")
    return src


def _make(args: list[str], cwd: Path | None = None, timeout: int = 1800) -> None:
    proc = subprocess.run(["make", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"


def _source_digest(src: Path, *parts: str) -> str:
    """What a QEMU firmware or a natmod depends on besides its own inputs: the source tree (its path and
    the files that set the version and the port), the cross compiler."""
    h = hashlib.sha256(str(src.resolve()).encode())
    for rel in ("py/mpconfig.h", "py/persistentcode.h", "py/dynruntime.mk", "ports/qemu/Makefile",
                "ports/qemu/mpconfigport.h"):
        h.update(rel.encode() + b"\0" + (src / rel).read_bytes())
    gcc = subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout
    h.update(gcc.encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def qemu_firmware(src: Path, board: QemuBoard) -> Path:
    """ports/qemu's firmware.elf for the board, built once into qgen's cache (make -j2)."""
    digest = _source_digest(src, board.name, *board.make_args,
                            (src / f"ports/qemu/boards/{board.name}/mpconfigboard.mk").read_text())
    build = BUILD_CACHE / "micropython-qemu" / f"{board.name}-{digest}"
    elf = build / "firmware.elf"
    if not elf.is_file():
        # FROZEN_MANIFEST=: the default one freezes unittest from the micropython-lib submodule
        _make(["-C", str(src / "ports/qemu"), "-j2", f"BOARD={board.name}", "FROZEN_MANIFEST=", f"BUILD={build}",
               *board.make_args])
    return elf


def natmod(src: Path, graph, prefix: str, arch: str) -> Path:
    """The model's natmod .mpy for arch, built once per content into qgen's cache."""
    files = render_native(graph, prefix, BANNER, "natmod", arch)
    digest = _source_digest(src, arch, *(f"{n}\0{t}" for n, t in sorted(files.items())))
    out = BUILD_CACHE / "micropython-natmod" / f"{prefix}-{arch}-{digest}"
    mpy = out / f"{prefix}.mpy"
    if not mpy.is_file():
        shutil.rmtree(out, ignore_errors=True)
        write_atomic(files, out)
        # mpy_ld.py keeps its parsed libgcc/libm in ./.mpy_ld_cache: share it between the folders
        shared = BUILD_CACHE / "micropython-natmod" / "mpy_ld_cache"
        shared.mkdir(parents=True, exist_ok=True)
        (out / ".mpy_ld_cache").symlink_to(shared, target_is_directory=True)
        _make(["-j2", f"MPY_DIR={src}"], cwd=out, timeout=600)
    return mpy


class RawRepl:
    """MicroPython's raw REPL on an emulated board's UART (QEMU, serial on stdio pipes)."""

    def __init__(self, firmware: Path, board: QemuBoard, extra: tuple[str, ...] = ()):
        cmd = ["qemu-system-arm", "-machine", board.machine, "-nographic", "-monitor", "null", "-semihosting",
               "-serial", "stdio", *board.qemu_args, *extra, "-kernel", str(firmware)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.board = board
        self.pending = b""  # read from QEMU, not yet consumed
        self.write(b"\r\x03\x03\x01")  # interrupt, then Ctrl-A: raw REPL
        self.read_until(b"raw REPL; CTRL-B to exit\r\n>", 30)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_until(self, end: bytes, timeout: float) -> bytes:
        """Everything up to and including `end`."""
        deadline = time.monotonic() + timeout
        while end not in self.pending:
            if b" exception caught:" in self.pending:  # mcu/arm/errorhandler.c: a fault, the core stops
                deadline = min(deadline, time.monotonic() + 1)  # the register dump, then fail
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                why = ("the core faulted" if b" exception caught:" in self.pending else "timed out") if not ready \
                    else f"QEMU exited ({self.proc.poll()})"
                raise AssertionError(f"{self.board.name}: {why} waiting for {end!r}; got:\n"
                                     f"{self.pending[-3000:].decode(errors='replace')}")
            self.pending += chunk
        i = self.pending.index(end) + len(end)
        out, self.pending = self.pending[:i], self.pending[i:]
        return out

    def exec(self, code: str, timeout: float = 120) -> str:
        """Run code; its stdout. A Python exception on the board fails with its traceback."""
        self.write(code.encode() + b"\x04")
        self.read_until(b"OK", timeout)
        out = self.read_until(b"\x04", timeout)[:-1]
        err = self.read_until(b"\x04>", timeout)[:-2]
        assert not err, f"{self.board.name}: MicroPython raised:\n{err.decode(errors='replace')}\n" \
                        f"output:\n{out.decode(errors='replace')[-1500:]}"
        return out.decode().replace("\r\n", "\n")

    def put_files(self, files: dict[str, bytes]) -> None:
        """Files into the board's /qg (bytearrays on the heap, mounted once)."""
        self.exec(f"_qg_files = {{}}\n{DEVICE_FS}")
        for name, data in files.items():
            self.exec(f"_qg_files[{name!r}] = _b = bytearray({len(data)})")
            for off in range(0, len(data), CHUNK):
                chunk = data[off:off + CHUNK]
                self.exec(f"_b[{off}:{off + len(chunk)}] = bytes.fromhex('{chunk.hex()}')")
        self.exec("del _b\nimport gc\ngc.collect()")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def cases():
    require_tools()
    return _cases()


def _run_case(firmware: Path, board: QemuBoard, mpy: Path, case: Case) -> str:
    repl = RawRepl(firmware, board)
    try:
        repl.put_files({mpy.name: mpy.read_bytes(), **case_inputs(case)})
        return repl.exec(RUN_SCRIPT.format(mod_dir="/qg", module=case.prefix, data=f"/qg/{case.prefix}.in",
                                           floats=f"/qg/{case.prefix}.f32"), timeout=300)
    finally:
        repl.close()


@pytest.mark.slow
@pytest.mark.parametrize("board_name, arch", [(b.name, a) for b in BOARDS.values() for a in b.archs])
def test_natmod_arm_under_qemu_bit_exact(board_name, arch, cases):
    """Every case's natmod for arch, imported and run by MicroPython on the emulated core."""
    src = require_tools()
    board = BOARDS[board_name]
    firmware = qemu_firmware(src, board)
    repl = RawRepl(firmware, board)
    try:
        info = repl.exec("import sys\nprint(sys.implementation._mpy >> 10 & 15, sys.implementation._machine)")
    finally:
        repl.close()
    assert MPY_ARCHS[int(info.split()[0])] == board.mpy_arch and board.machine in info, info
    for case in cases:
        mpy = natmod(src, case.graph, case.prefix, arch)
        check_run_output(case, _run_case(firmware, board, mpy, case), f"{board.core}, {arch}")


@pytest.mark.slow
def test_m3_firmware_rejects_an_armv7emsp_natmod(cases):
    """A natmod for an FPU core does not load on a Cortex-M3 firmware (the loader checks the arch)."""
    src = require_tools()
    board = BOARDS["MPS2_AN385"]
    case = cases[0]
    repl = RawRepl(qemu_firmware(src, board), board)
    try:
        repl.put_files({f"{case.prefix}.mpy": natmod(src, case.graph, case.prefix, "armv7emsp").read_bytes()})
        out = repl.exec(f"import sys\nsys.path.insert(0, '/qg')\ntry:\n    import {case.prefix}\n    print('loaded')\n"
                        "except ValueError as e:\n    print('ValueError', e)")
    finally:
        repl.close()
    assert out.strip() == "ValueError incompatible .mpy arch", out


@pytest.mark.slow
def test_qemu_m0_traps_unaligned_loads():
    """The Cortex-M0 run can catch an alignment bug: an unaligned 32-bit load faults there, not on the M3."""
    src = require_tools()
    code = ("import micropython\n@micropython.viper\ndef f(b) -> int:\n    return ptr32(int(ptr8(b)) + 1)[0]\n"
            "print(hex(f(bytearray(b'\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08'))))")
    results = {}
    for name in ("MPS2_AN385", "MICROBIT"):
        board = BOARDS[name]
        repl = RawRepl(qemu_firmware(src, board), board)
        try:
            results[name] = repl.exec(code, timeout=20).strip()
        except AssertionError as e:
            results[name] = str(e)
        finally:
            repl.close()
    assert results["MPS2_AN385"] == "0x5040302", results
    assert "the core faulted" in results["MICROBIT"] and "HardFault" in results["MICROBIT"], results
