"""Boards are data (boards/<name>.toml): parsing, checks, listing.

Moved unchanged from codegen/target.py; `codegen.target` re-exports every name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

from codegen.errors import UserError
from codegen.resources import data_dir
from codegen.target.common import CORES, DEFAULT_STACK_KB, FLOAT_ABIS, MARCH_FOR_CORE

# ------------------------------------------------------------------------------------ boards

@dataclass(frozen=True)
class QemuMachine:
    """Where a board's firmware runs under qemu-system-arm and the memory map it is linked for."""

    machine: str
    flash_origin: int
    flash_kb: int
    ram_origin: int
    ram_kb: int


@dataclass(frozen=True)
class ImageMap:
    """The real part's memory map, which `qgen firmware --image` links a flashable image for ([image])."""

    flash_origin: int
    flash_kb: int
    ram_origin: int
    ram_kb: int
    boot2: bool = False            # RP2040: a 256-byte second-stage boot loader with its CRC-32 comes first
    uf2_family: int | None = None  # the boot ROM takes UF2 files with this family id


@dataclass(frozen=True)
class FlashTools:
    """How `qgen flash` programs the board ([flash]): the tools (first = default) and their names for the part."""

    probes: tuple[str, ...]
    pyocd_target: str | None = None
    pyocd_pack: bool = False       # the target comes from a CMSIS pack: `pyocd pack install <target>` once
    openocd_configs: tuple[str, ...] = ()
    openocd_commands: tuple[str, ...] = ()
    nrfjprog_family: str | None = None
    mcc_application_note: str | None = None  # Arm MPS2/MPS3: the images.txt folder on the board's USB drive


@dataclass(frozen=True)
class Board:
    """One target microcontroller (see boards/*.toml)."""

    name: str
    description: str
    core: str
    fpu: str          # "none", an -mfpu= value, or "auto" (let -mcpu choose, e.g. M55 + MVE)
    float_abi: str
    flash_kb: int     # the real part's memories, for the fit check
    ram_kb: int
    clock_mhz: int
    cflags: tuple[str, ...]
    qemu: QemuMachine
    stack_kb: int = DEFAULT_STACK_KB  # reserved at the top of RAM, counted in the fit check
    image: ImageMap | None = None     # the real memory map for flashable images (None: QEMU only)
    flash: FlashTools | None = None

    @property
    def has_fpu(self) -> bool:
        return self.fpu != "none"


def list_boards(arch: str = "arm") -> list[str]:
    """Names of the known boards of one architecture, sorted: "arm" (Cortex-M, QEMU; the default) or "avr"
    (8-bit AVR under simavr, codegen.target.avr)."""
    return sorted(path.stem for path in data_dir("boards").glob("*.toml") if _board_arch(path) == arch)


def _board_arch(path: Any) -> str:
    with path.open("rb") as file:
        return str(tomllib.load(file).get("arch", "arm"))


def load_board(name: str) -> Board:
    """Load boards/<name>.toml (a Cortex-M board); raise UserError naming the known boards if there is none."""
    path = data_dir("boards") / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown board '{name}'; known boards: {', '.join(list_boards())}")
    with path.open("rb") as file:
        data = tomllib.load(file)
    if data.get("arch", "arm") != "arm":
        raise UserError(f"board '{name}' is an 8-bit {data['arch'].upper()} board: it runs under simavr with "
                        f"`qgen run MODEL --board {name}` (Python: codegen.target.avr.run_avr), not under QEMU; "
                        f"`qgen firmware MODEL --board {name} --image` writes its flashable .hex; "
                        f"the Cortex-M boards are: {', '.join(list_boards())}")
    return parse_board(data, source=str(path))


def parse_board(data: dict[str, Any], source: str = "<board>") -> Board:
    """Build a Board from parsed TOML; raise UserError if fields are missing or disagree."""
    try:
        fields = {key: value for key, value in data.items() if key not in ("qemu", "image", "flash")}
        board = Board(**{**fields, "cflags": tuple(fields["cflags"]), "qemu": QemuMachine(**data["qemu"])},
                      image=ImageMap(**data["image"]) if "image" in data else None,
                      flash=_flash_tools(data["flash"]) if "flash" in data else None)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{source}: malformed board description ({exc})") from exc
    problems = board_problems(board)
    if problems:
        raise UserError(f"{source}: " + "; ".join(problems))
    return board


def _flash_tools(table: dict[str, Any]) -> FlashTools:
    return FlashTools(**{key: tuple(value) if isinstance(value, list) else value for key, value in table.items()})


def board_problems(board: Board) -> list[str]:
    """Disagreements between a board's core/fpu/float_abi fields and its compiler flags."""
    problems = []
    if board.core not in CORES:
        problems.append(f"core '{board.core}' is not one of {', '.join(CORES)}")
    if board.float_abi not in FLOAT_ABIS:
        problems.append(f"float_abi '{board.float_abi}' is not one of {', '.join(FLOAT_ABIS)}")
    if not board.has_fpu and board.float_abi != "soft":
        problems.append("a board without FPU must use float_abi 'soft'")
    cpu = f"-march={MARCH_FOR_CORE[board.core]}" if board.core in MARCH_FOR_CORE else f"-mcpu={board.core}"
    expected = [cpu, "-mthumb", f"-mfloat-abi={board.float_abi}"]
    expected += [f"-mfpu={board.fpu}"] if board.has_fpu else []
    problems += [f"cflags lack '{flag}'" for flag in expected if flag not in board.cflags]
    if board.stack_kb >= min(board.ram_kb, board.qemu.ram_kb):
        problems.append(f"stack_kb {board.stack_kb} leaves no RAM for data")
    if board.image is not None and board.stack_kb >= board.image.ram_kb:
        problems.append(f"stack_kb {board.stack_kb} leaves no RAM for data in the [image] map")
    return problems


def _as_board(board: Board | str) -> Board:
    return board if isinstance(board, Board) else load_board(board)
