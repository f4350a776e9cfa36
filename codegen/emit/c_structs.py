"""The kernel parameter structs as declared in firmware/kernels/qg_kernels.h, and the check that every
struct initialiser the emitter writes fits them.

Field ranges come from each field's declared C type (uint16_t in_c -> 0..65535), read from the header
once, so a new struct or a changed field type needs no second table here: a value that does not fit
its field is refused (UserError) instead of being silently truncated by the C compiler, and a field the
header does not declare is a bug in the emitter (AssertionError).
"""
from __future__ import annotations

import functools
import re

import numpy as np

from ..errors import UserError
from ..ir import Node
from ..resources import kernel_dir

HEADER = "qg_kernels.h"
INT_RANGES = {f"{u}int{b}_t": ((0, (1 << b) - 1) if u else (-(1 << (b - 1)), (1 << (b - 1)) - 1))
              for u in ("", "u") for b in (8, 16, 32)}
_STRUCT = re.compile(r"typedef\s+struct\s*\{(?P<body>[^{}]*)\}\s*(?P<name>\w+)\s*;")


def parse_structs(text: str) -> dict[str, dict[str, str]]:
    """{struct typedef name: {field: C type}} of the `typedef struct { ... } name;` in C source `text`.
    Pointer and array fields have a type ending in '*' ("const int8_t *")."""
    text = re.sub(r"//[^\n]*", " ", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))
    structs = {}
    for m in _STRUCT.finditer(text):
        fields = {}
        for decl in m["body"].split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            base = re.match(r"(?:const\s+)?\w+", decl)
            assert base, f"{m['name']}: cannot read the declaration '{decl}'"
            for item in decl[base.end():].split(","):
                name = re.findall(r"[A-Za-z_]\w*", item.split("[")[0])
                assert name, f"{m['name']}: cannot read the declaration '{decl}'"
                pointer = "*" in item or "[" in item
                fields[name[-1]] = base.group(0) + (" *" if pointer else "")
        structs[m["name"]] = fields
    return structs


@functools.cache
def kernel_structs() -> dict[str, dict[str, str]]:
    """The structs of the kernel library's header (read once)."""
    return parse_structs((kernel_dir() / HEADER).read_text())


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
