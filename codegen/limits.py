"""Refuse early what cannot fit: flash for the weights, RAM for the activations.

Each check is a lower bound (it never refuses a model that would fit) and runs as soon as its numbers
are known, before the expensive steps (allocating calibration data, running the model, formatting
millions of weights as C text):

1. the example input's shape, before the input is allocated (`--input-shape 1,1,100000,100000`);
2. the float IR after the front end and the compression passes, before calibration: the largest
   activation tensor at 1 byte per value against RAM, the dense weights at 1 byte each against flash;
3. the quantised IR after memory planning, before the C is rendered: the exact bytes of the constant
   arrays (`<PREFIX>_FLASH_BYTES`) against flash, the arena (`<PREFIX>_ARENA_SIZE`) against RAM.

`qgen firmware` / `qgen run` check the same two macros against the chosen board before cross-compiling.
The default limits are the largest flash and RAM among the known boards (boards/*.toml); raise them
with `max_flash=` / `max_ram=` in codegen.compile (`--max-flash` / `--max-ram` on `qgen compile`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from numbers import Integral

from .errors import UserError
from .ir import Graph, Node
from .ops import Trait, with_trait

WEIGHTED = with_trait(Trait.WEIGHTED)  # inputs[1]: int8 weights, one byte each

SHRINK_HINT = "make the model smaller (--prune, --cluster, --rank, --channels; or fewer/narrower layers)"


@dataclass(frozen=True)
class Limits:
    flash: int  # bytes of flash for the constant arrays (weights, biases, shifts)
    ram: int  # bytes of RAM for one activation tensor / the arena
    flash_source: str  # for messages: "the largest known board's flash (mps2-an505)", "the limit"
    ram_source: str
    board: str | None = None  # the limits are this board's: the way out is a bigger board, not a higher limit
    stack_kb: int = 0  # the board's stack reserve, already taken from `ram`


@cache
def largest_board() -> tuple[tuple[int, str], tuple[int, str]]:
    """((flash bytes, board), (RAM bytes, board)) of the largest known boards."""
    from .target import list_boards, load_board

    boards = [load_board(name) for name in list_boards()]
    flash = max(boards, key=lambda b: (b.flash_kb, b.name))
    ram = max(boards, key=lambda b: (b.ram_kb, b.name))
    return (flash.flash_kb * 1024, flash.name), (ram.ram_kb * 1024, ram.name)


def limits(max_flash: int | None = None, max_ram: int | None = None, board: str | None = None) -> Limits:
    """The limits to check against: the given byte counts, else `board`'s flash and RAM (less its stack
    reserve), else the largest flash and RAM among the known boards."""
    for value, name in ((max_flash, "max_flash"), (max_ram, "max_ram")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value <= 0):
            raise UserError(f"{name} must be a positive number of bytes, not {value!r}")
    if board is not None:
        from .target import load_board

        b = load_board(board)
        return Limits(flash=int(max_flash or b.flash_kb * 1024), ram=int(max_ram or (b.ram_kb - b.stack_kb) * 1024),
                      flash_source=f"{b.name}'s flash", ram_source=f"{b.name}'s RAM", board=b.name,
                      stack_kb=b.stack_kb)
    (flash, flash_board), (ram, ram_board) = largest_board()
    return Limits(flash=int(max_flash or flash), ram=int(max_ram or ram),
                  flash_source="the limit" if max_flash else f"the largest known board's flash ({flash_board})",
                  ram_source="the limit" if max_ram else f"the largest known board's RAM ({ram_board})")


def _size(n: int) -> str:
    """A byte count for people: '4,194,304 bytes (4.0 MB)'."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"


def _refuse(kind: str, need: int, what: str, lim: Limits) -> None:
    """UserError: `what` (a subject and its verb: "the model's activation arena needs") at least `need`
    bytes of flash or RAM, more than the limit."""
    have, source = (lim.flash, lim.flash_source) if kind == "flash" else (lim.ram, lim.ram_source)
    if lim.board:  # worded as the fit check after linking (target.FitReport), which it anticipates
        stack = f" after its {lim.stack_kb} KB stack" if kind == "RAM" else ""
        raise UserError(f"model needs {need / 1024:.1f} KB {kind}; {lim.board} has {have / 1024:.0f} KB{stack} "
                        f"({what} at least {_size(need)}). Pick a board with more memory or make the model "
                        "smaller (--prune, --cluster, --rank, --channels).")
    flag = "flash" if kind == "flash" else "ram"
    raise UserError(f"{what} at least {_size(need)} of {kind}, more than {source} of {_size(have)}; "
                    f"{'use a smaller input or ' if kind == 'RAM' else ''}{SHRINK_HINT}, or raise the limit with "
                    f"--max-{flag} BYTES (max_{flag}= in codegen.compile)")


def check_input_shape(shape: tuple[int, ...], lim: Limits) -> None:
    """Before the example input is allocated: its values at 1 byte each must fit in RAM."""
    values = math.prod(int(s) for s in shape)
    if values > lim.ram:
        _refuse("RAM", values, f"an input of shape {','.join(str(s) for s in shape)} ({values:,} int8 values) "
                "needs", lim)


def check_float_graph(g: Graph, lim: Limits, int4: Callable[[Node], bool] | None = None) -> Graph:
    """The float IR (before calibration): each activation and the dense weights at 1 byte per value.

    Compressed layers (weight_format sparse/cluster) store fewer bytes and are counted after
    quantisation only. `int4(node)`: the layers that will get int4 weights (QuantOptions.weights /
    precision LAYER=w4, assigned later in the pipeline), counted at half a byte per weight.
    Returns the graph unchanged, so that it runs as a pipeline pass.
    """
    activations = [t for t in g.tensors.values() if not t.is_const]
    if activations:
        big = max(activations, key=lambda t: t.size)
        if big.size > lim.ram:
            producer = next((n.where() for n in g.nodes if big.name in n.outputs), "the model input")
            _refuse("RAM", big.size, f"activation '{big.name}' {list(big.shape)} of {producer} ({big.size:,} "
                    "int8 values) needs", lim)
    dense = [(n, g.tensors[n.inputs[1]].size) for n in g.nodes
             if n.op in WEIGHTED and n.attrs.get("weight_format", "dense") == "dense"]
    dense = [(n, -(-size // 2) if int4 is not None and int4(n) else size) for n, size in dense]
    total = sum(size for _, size in dense)
    if total > lim.flash:
        node, size = max(dense, key=lambda item: item[1])
        what = ("bytes of int8 and packed int4 weights" if int4 is not None and any(int4(n) for n, _ in dense)
                else "int8 weights")
        _refuse("flash", total, f"the model's {total:,} {what} (largest: {node.where()}, {size:,}) need", lim)
    return g


def check_compiled(flash_bytes: int, arena_bytes: int, lim: Limits) -> None:
    """The quantised, planned model, before its C is rendered."""
    if flash_bytes > lim.flash:
        _refuse("flash", flash_bytes, "the model's constant arrays (weights, biases, shifts) need", lim)
    if arena_bytes > lim.ram:
        _refuse("RAM", arena_bytes, "the model's activation arena needs", lim)
