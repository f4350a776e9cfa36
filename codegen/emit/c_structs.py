"""The kernel parameter structs as declared in firmware/kernels/qg_kernels.h, and the check that every
struct initialiser the emitter writes fits them.

Field ranges come from each field's declared C type (uint16_t in_c -> 0..65535), read from the header
once, so a new struct or a changed field type needs no second table here: a value that does not fit
its field is refused (UserError) instead of being silently truncated by the C compiler, and a field the
header does not declare is a bug in the emitter (AssertionError).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..ir import Node
from ..kernels import HEADER, kernel_structs, parse_structs  # noqa: F401 (re-exported)

INT_RANGES = {f"{u}int{b}_t": ((0, (1 << b) - 1) if u else (-(1 << (b - 1)), (1 << (b - 1)) - 1))
              for u in ("", "u") for b in (8, 16, 32, 64)}


def field_type(struct_type: str, field: str, structs: dict[str, dict[str, str]] | None = None) -> str:
    """The declared C type of `field` of `struct_type`; a dotted field ("conv.in_c") goes into a member struct."""
    structs = kernel_structs() if structs is None else structs
    ctype = struct_type
    for part in field.split("."):
        members = structs.get(ctype)
        assert members is not None, f"{ctype} is not a struct declared in {HEADER} (field '{field}' of {struct_type})"
        assert part in members, f"{ctype} has no field '{part}' in {HEADER} (emitting {struct_type}.{field})"
        ctype = members[part]
    return ctype


def check_fields(n: Node, struct_type: str | None, fields: list[tuple[str, object]]) -> None:
    """Refuse a layer whose parameters do not fit the C types of the kernel's struct fields (no silent
    truncation); every field emitted must be declared in qg_kernels.h."""
    if struct_type is None:
        assert not fields, f"{n.where()}: fields {fields} without a struct"
        return
    for name, value in fields:
        ctype = field_type(struct_type, name)
        if ctype not in INT_RANGES or not isinstance(value, (int, np.integer)):
            continue  # pointers (array names), nested structs, macros (QG_SPARSE_BITMAP)
        lo, hi = INT_RANGES[ctype]
        if not lo <= int(value) <= hi:
            raise UserError(f"{n.where()}: {name} = {int(value)} does not fit the kernel's {ctype} field "
                            f"({struct_type}: {lo}..{hi}); split or shrink the layer (e.g. pool or "
                            "reshape before it).")
