"""Flashable images: the harness linked for the real part's memory map (boards/*.toml [image]).

`qgen firmware --image` links the same firmware as for QEMU, but at the part's own flash and RAM origins
(build_elf(..., image=True)): the vector table at the start of flash (after the RP2040's boot2), .data
stored in flash and copied to RAM by qg_startup.c, .bss zeroed there. This module turns that ELF into the
files programming tools take:

- firmware.bin: the flash contents from the flash origin (`objcopy -O binary`: every loadable byte at its
  load address, gaps filled with zeros),
- firmware.hex: Intel HEX (`objcopy -O ihex`), with absolute addresses,
- firmware.uf2: where the board's boot ROM takes UF2 ([image] uf2_family: the RP2040): 256-byte payloads at
  256-byte aligned flash addresses, numbered blocks, the family id,
- image.json: the board and the map the image was linked for (`qgen flash` checks it).

The RP2040 boots from external flash through a 256-byte second-stage boot loader (boot2) whose last 4 bytes
are a CRC-32 the boot ROM checks: boot2_object() assembles qgen's own (firmware/image/qg_rp2040_boot2.S),
pads it to 252 bytes, appends the CRC and hands the linker a `.boot2` section for the start of flash.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from codegen.resources import data_dir
from codegen.target.boards import Board
from codegen.target.common import CROSS_CC, CROSS_PREFIX, TargetError
from codegen.target.toolchain import _run_tool, image_map

BOOT2_SIZE = 256  # bytes the RP2040 boot ROM loads and checks; the vector table follows at flash + 0x100
UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
UF2_FLAG_FAMILY_ID = 0x00002000
UF2_PAYLOAD = 256  # bytes of data per 512-byte block (the RP2040 boot ROM takes only 256)
IMAGE_FILES = ("firmware.elf", "firmware.bin", "firmware.hex")  # + firmware.uf2 where the ROM takes UF2
IMAGE_INFO = "image.json"


# ------------------------------------------------------------------------------------- ELF32

@dataclass(frozen=True)
class Segment:
    """One PT_LOAD program header of an ELF32 file: its bytes in the file and where they go."""

    paddr: int   # load address (LMA): where the bytes are stored in flash
    vaddr: int   # run address (VMA): .data runs in RAM, stored in flash
    data: bytes  # p_filesz bytes from the file
    memsz: int   # p_memsz >= len(data): the rest (.bss) is zeroed at start-up, not stored


def load_segments(elf: bytes) -> tuple[int, list[Segment]]:
    """(entry, PT_LOAD segments) of a little-endian ELF32 image, segments with no file bytes left out."""
    if elf[:4] != b"\x7fELF" or elf[4] != 1 or elf[5] != 1:
        raise TargetError("not a little-endian ELF32 file")
    entry, phoff = struct.unpack_from("<II", elf, 24)
    phentsize, phnum = struct.unpack_from("<HH", elf, 42)
    segments = []
    for i in range(phnum):
        p_type, offset, vaddr, paddr, filesz, memsz = struct.unpack_from("<6I", elf, phoff + i * phentsize)
        if p_type == 1 and filesz > 0:  # PT_LOAD with contents
            segments.append(Segment(paddr, vaddr, elf[offset:offset + filesz], memsz))
    return entry, segments


# ------------------------------------------------------------------------------------- boot2

def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (polynomial 0x04C11DB7, initial 0xFFFFFFFF, not reflected, no final xor): the RP2040
    boot ROM's check of boot2. Check value: crc32_mpeg2(b"123456789") == 0x0376E6E7."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def boot2_bytes(board: Board, work_dir: Path) -> bytes:
    """qgen's RP2040 boot2: the assembled code padded with zeros to 252 bytes, then its CRC-32 (little endian)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir("firmware") / "image" / "qg_rp2040_boot2.S"
    obj, raw = work_dir / "qg_rp2040_boot2_code.o", work_dir / "qg_rp2040_boot2_code.bin"
    _run_tool([CROSS_CC, *board.cflags, "-c", str(source), "-o", str(obj)], "assembling the RP2040 boot2")
    _run_tool([CROSS_PREFIX + "objcopy", "-O", "binary", "-j", ".text.qg_boot2", str(obj), str(raw)],
              "extracting the RP2040 boot2")
    code = raw.read_bytes()
    if len(code) > BOOT2_SIZE - 4:
        raise TargetError(f"the RP2040 boot2 is {len(code)} bytes; at most {BOOT2_SIZE - 4} fit before its CRC")
    padded = code.ljust(BOOT2_SIZE - 4, b"\0")
    return padded + crc32_mpeg2(padded).to_bytes(4, "little")


def boot2_object(board: Board, obj_dir: Path) -> Path:
    """An object file whose `.boot2` section holds boot2_bytes(); qg_link.ld.j2 places it first in flash."""
    data = boot2_bytes(board, obj_dir)
    source, obj = obj_dir / "qg_rp2040_boot2.s", obj_dir / "qg_rp2040_boot2.o"
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16)]
    source.write_text("/* Generated by qgen (codegen/target/image.py): RP2040 boot2 with its CRC-32. */\n"
                      "    .section .boot2, \"a\"\n" + "".join(f"    .byte {row}\n" for row in rows))
    _run_tool([CROSS_CC, *board.cflags, "-c", str(source), "-o", str(obj)], "assembling the RP2040 boot2 section")
    return obj


# --------------------------------------------------------------------------------------- UF2

def uf2_blocks(payload: bytes, base: int, family: int) -> bytes:
    """UF2 file of `payload` stored from flash address `base` (256-aligned): 512-byte blocks of 256 bytes each
    (the last one zero-padded), numbered 0..n-1, each carrying the total and the family id."""
    if base % UF2_PAYLOAD:
        raise TargetError(f"UF2 base address 0x{base:08x} is not {UF2_PAYLOAD}-byte aligned")
    chunks = [payload[i:i + UF2_PAYLOAD].ljust(UF2_PAYLOAD, b"\0") for i in range(0, len(payload), UF2_PAYLOAD)]
    blocks = []
    for number, chunk in enumerate(chunks):
        header = struct.pack("<8I", UF2_MAGIC_START0, UF2_MAGIC_START1, UF2_FLAG_FAMILY_ID, base + number * UF2_PAYLOAD,
                             UF2_PAYLOAD, number, len(chunks), family)
        blocks.append(header + chunk.ljust(476, b"\0") + struct.pack("<I", UF2_MAGIC_END))
    return b"".join(blocks)


# ------------------------------------------------------------------------------------ images

def image_files(board: Board, elf: Path, work_dir: Path) -> dict[str, bytes]:
    """The flashable files of an ELF linked with build_elf(..., image=True), checked against the map."""
    memory = image_map(board)
    elf_bytes = elf.read_bytes()
    entry, segments = load_segments(elf_bytes)
    flash_end = memory.flash_origin + memory.flash_kb * 1024
    outside = [s for s in segments if not memory.flash_origin <= s.paddr <= s.paddr + len(s.data) <= flash_end]
    if not segments or outside:
        raise TargetError(f"{elf}: loadable bytes outside {board.name}'s flash (0x{memory.flash_origin:08x}.."
                          f"0x{flash_end:08x}): {[hex(s.paddr) for s in outside]}")
    vectors = memory.flash_origin + (BOOT2_SIZE if memory.boot2 else 0)
    check_vector_table(board, _read(segments, vectors, 8))
    work_dir.mkdir(parents=True, exist_ok=True)
    binary, ihex = work_dir / "firmware.bin", work_dir / "firmware.hex"
    _run_tool([CROSS_PREFIX + "objcopy", "-O", "binary", str(elf), str(binary)], "objcopy -O binary")
    _run_tool([CROSS_PREFIX + "objcopy", "-O", "ihex", str(elf), str(ihex)], "objcopy -O ihex")
    files = {"firmware.elf": elf_bytes, "firmware.bin": binary.read_bytes(), "firmware.hex": ihex.read_bytes()}
    if min(s.paddr for s in segments) != memory.flash_origin:
        raise TargetError(f"{elf}: the image does not start at the flash origin 0x{memory.flash_origin:08x}")
    if memory.uf2_family is not None:
        files["firmware.uf2"] = uf2_blocks(files["firmware.bin"], memory.flash_origin, memory.uf2_family)
    info = {"board": board.name, "flash_origin": memory.flash_origin, "ram_origin": memory.ram_origin,
            "entry": entry, "vector_table": vectors, "files": sorted(files)}
    files[IMAGE_INFO] = (json.dumps(info, indent=1, sort_keys=True) + "\n").encode()
    return files


def check_vector_table(board: Board, words: bytes) -> None:
    """The initial stack pointer must lie in (or at the top of) the real RAM, the reset vector in flash (Thumb)."""
    memory = image_map(board)
    stack, reset = struct.unpack("<II", words)
    ram_end = memory.ram_origin + memory.ram_kb * 1024
    flash_end = memory.flash_origin + memory.flash_kb * 1024
    if not (memory.ram_origin < stack <= ram_end and memory.flash_origin <= reset < flash_end and reset & 1):
        raise TargetError(f"{board.name} image: initial SP 0x{stack:08x} / reset vector 0x{reset:08x} do not point "
                          "into its RAM / flash")


def _read(segments: list[Segment], address: int, size: int) -> bytes:
    for s in segments:
        if s.paddr <= address and address + size <= s.paddr + len(s.data):
            return s.data[address - s.paddr:address - s.paddr + size]
    raise TargetError(f"no loadable bytes at 0x{address:08x} (the vector table)")


@dataclass
class ImageBuild:
    """A flashable image written by build_image(): the firmware build and the files in `out_dir`."""

    firmware: object  # deploy.FirmwareBuild (ELF sizes and fit against the real board)
    out_dir: Path
    files: tuple[str, ...]


def build_image(model_dir: Path | str, board: Board | str, out_dir: Path | str, opt: str = "-O2") -> ImageBuild:
    """Build the harness for a qgen output directory, linked for the board's real memory map, and write
    firmware.elf/.bin/.hex (+ .uf2), image.json and the saved sample inputs qg_input.bin (read by the harness
    over semihosting) atomically into `out_dir`."""
    import tempfile

    from codegen import deploy
    from codegen.output import write_atomic
    from codegen.target.boards import _as_board
    from codegen.target.common import INPUT_FILE

    board = _as_board(board)
    image_map(board)  # a QEMU-only board: say so before the cross build
    with tempfile.TemporaryDirectory(prefix="qgen-image-") as tmp:
        firmware = deploy.build(model_dir, board, Path(tmp) / "build", opt, image=True)
        files = image_files(board, firmware.elf.path, Path(tmp) / "image")
        files[INPUT_FILE] = firmware.compiled.saved_inputs().tobytes()
        write_atomic(files, Path(out_dir))
    return ImageBuild(firmware, Path(out_dir), tuple(sorted(files)))
