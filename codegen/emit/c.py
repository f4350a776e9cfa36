"""Emit C for a quantised, memory-planned graph: <prefix>_model.h/.c, <prefix>_weights.h/.c, kernels.

All decisions are made here, in Python; the templates only loop over the prepared data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import jinja2
import numpy as np

from ..errors import UserError
from ..ir import Graph, Node, signature
from ..kernel_abi import scratch_bytes
from ..kernels import boundary_functions, model_sources, select
from ..ops import SPEC
from ..output import OUTPUT_MARKER, banner_lines, option_text, write_atomic  # noqa: F401 (re-exported)
from ..passes.plan_memory import scratch_key
from ..passes.stream import is_step, state_size
from ..reference import boundary_hwc
from ..resources import data_dir, kernel_dir
from ..weight_storage import is_int4
from . import escape
from .c_structs import check_fields

C_KEYWORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum", "extern",
    "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return", "short", "signed",
    "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void", "volatile", "while",
}
CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t"}
# Kernels that read their layer's constant arrays through qg_w8/qg_w16/qg_w32 (qg_kernels.h): those arrays are
# QG_CONST (in flash on AVR, read with LPM). Every other kernel's arrays stay plain `const` (SRAM on AVR). The
# parameter structs of every layer are QG_CONST: model.c copies one into RAM before its call (<PREFIX>_PARAMS).
FLASH_READERS = frozenset({
    *(f"qg_{op}_{v}" for op in ("conv2d", "depthwise_conv2d", "fully_connected", "conv_transpose2d")
      for v in ("s8", "s8_to_s16", "s16_to_s8", "s16")),
    "qg_maxpool2d_windows_s8", "qg_avgpool2d_windows_s8", "qg_maxpool2d_windows_s16", "qg_avgpool2d_windows_s16",
    "qg_lut_s8", "qg_softmax_s8", "qg_resize_s8", "qg_resize_s16", "qg_prelu_s8", "qg_prelu_wide", "qg_norm_s8",
    "qg_norm_wide", "qg_channel_affine_s8", "qg_conv2d_sparse_s8", "qg_fully_connected_sparse_s8",
    "qg_conv2d_cluster_s8", "qg_depthwise_conv2d_cluster_s8", "qg_fully_connected_cluster_s8", "qg_recurrent_s8",
    "qg_conv2d_s4", "qg_fully_connected_s4", "qg_depthwise_conv2d_s4", "qg_log_softmax_s8", "qg_const_s8", "qg_const_s16",
    "qg_conv_transpose2d_pointwise_s8",  # through qg_conv2d_s8
    "qg_masked_softmax_s8",
})


def check_prefix(prefix: str) -> str:
    """A prefix names every symbol (`<prefix>_run`) and, upper-cased, every macro (`<PREFIX>_INPUT_SIZE`) and
    header guard, so it must be a lowercase C identifier that is not reserved: 'net' and 'NET' would share
    NET_* macros (the second header silently skipped in a firmware holding both), and C reserves names
    starting with '_' at file scope; 'qg' is the kernel library's namespace."""
    if not isinstance(prefix, str):
        raise UserError(f"prefix must be a string (a C identifier such as 'digits'), not {type(prefix).__name__} "
                        f"{prefix!r}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix) or prefix in C_KEYWORDS or len(prefix) > 40:
        raise UserError(f"prefix '{prefix}' is not a valid C identifier; use letters, digits and '_' "
                        "(not starting with a digit, at most 40 characters), e.g. 'digits'")
    if prefix.startswith("_"):
        raise UserError(f"prefix '{prefix}' starts with '_': C reserves such names at file scope (and '__x', "
                        f"'_Bool' everywhere); use '{prefix.lstrip('_') or 'model'}'")
    if prefix != prefix.lower():
        raise UserError(f"prefix '{prefix}' has uppercase letters; its macros are upper-cased "
                        f"({prefix.upper()}_INPUT_SIZE), so prefixes differing only in case would clash in one "
                        f"firmware; use '{prefix.lower()}'")
    if prefix == "qg" or prefix.startswith("qg_"):
        raise UserError(f"prefix '{prefix}' is in the kernel library's namespace (qg_*, QG_*); "
                        f"choose another, e.g. 'net'")
    return prefix


@dataclass
class CArray:
    name: str
    ctype: str
    values: _Rows  # formatted rows, produced while the template iterates them
    count: int
    comment: str
    nbytes: int
    flash: bool = False  # QG_CONST: its kernel reads it through qg_w* (FLASH_READERS)


@dataclass
class Layer:
    index: int
    title: str  # "conv2d 'features.0' (model.py:12)"
    shapes: str  # "[8,8,1] s8.f6 -> [8,8,8] s8.f4"
    struct_type: str | None
    struct_name: str | None
    fields: list[tuple[str, str]]  # (field, C expression)
    call: str | None  # the full call statement, or None (reshape: no code)
    out_expr: str
    out_size: int
    macs: int


@dataclass
class CModel:
    prefix: str
    PREFIX: str
    banner: list[str]
    arrays: list[CArray] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    input: dict = field(default_factory=dict)
    outputs: list[dict] = field(default_factory=list)
    output_size: int = 0
    arena_size: int = 0
    weight_bytes: int = 0
    macs: int = 0
    arena_symbol: str | None = None  # external shared arena instead of the model's own
    arena_argument: bool = False  # the caller passes the arena to <prefix>_run (no static storage)
    kernels_abi: int = 0  # QG_KERNELS_ABI of the kernel header, checked by the generated model.c
    stream: bool = False  # a streaming step graph (passes/stream.py): <prefix>_step + <prefix>_reset, no _run
    state_size: int = 0  # bytes of the stream's state memory (<prefix>_state), kept between steps
    reset_calls: list[str] = field(default_factory=list)  # statements of <prefix>_reset after the state is zeroed
    param_types: list[str] = field(default_factory=list)  # the layers' parameter struct types (model.c's RAM copy)


def layer_macs(g: Graph, n: Node) -> int:
    return SPEC[n.op].macs(g, n)  # the op's rule: codegen/ops/<family>.py


def _fmt_int(v: int) -> str:
    return "(-2147483647 - 1)" if v == -(1 << 31) else str(int(v))


class _Rows:
    """The C initialiser rows of an integer array, `per_row` values each, formatted only while a template
    iterates them and a chunk at a time: a large array is never held as millions of Python strings."""

    CHUNK_ROWS = 4096

    def __init__(self, values: np.ndarray, per_row: int = 16):
        flat = np.asarray(values).reshape(-1)
        self.flat = flat if flat.dtype.kind in "iu" else flat.astype(np.int64)
        self.per_row = per_row

    def __len__(self) -> int:
        return -(-self.flat.size // self.per_row)

    def __iter__(self):
        step = self.per_row * self.CHUNK_ROWS
        for start in range(0, self.flat.size, step):
            chunk = self.flat[start:start + step]
            if chunk.dtype.itemsize >= 4 and (chunk == -(1 << 31)).any():
                text = [_fmt_int(v) for v in chunk.tolist()]
            else:
                text = list(map(str, chunk.tolist()))
            for i in range(0, len(text), self.per_row):
                yield ", ".join(text[i:i + self.per_row])


def _rows(values: np.ndarray, per_row: int = 16) -> _Rows:
    return _Rows(values, per_row)


def _symbol(prefix: str, text: str) -> str:
    return f"{prefix}_" + re.sub(r"[^A-Za-z0-9_]", "_", text)


@dataclass
class LayerIO:
    """One layer's names, as _Builder.io gives them to the ops' emit_c / emit_c_wide."""
    sym: str  # l<index>_<op>: the prefix of its constant arrays
    struct: str  # its parameter struct's C symbol
    xs: list[str]  # activation inputs
    out: str
    ins: list[str]  # C expressions of the inputs (int16_t pointers when wide)
    out_expr: str
    scratch: str  # its scratch buffer, or NULL
    raw: list[str]  # the inputs' untyped (int8_t *) expressions
    out_raw: str
    bits: dict[str, int]  # activation -> 8 or 16
    suffix: str | None  # kernel suffix for the widths: s8_to_s16, s16_to_s8, s16 (None: int8 both sides)
    act: list[tuple[str, object]]  # act_min/act_max fields


class _Builder:
    def __init__(self, g: Graph, prefix: str, banner: list[str]):
        self.g, self.prefix = g, prefix
        self.model = CModel(prefix, prefix.upper(), banner)

    def array(self, base: str, data: np.ndarray, dtype: str, comment: str) -> str:
        name = _symbol(self.prefix, base)
        assert all(a.name != name for a in self.model.arrays), name
        arr = np.asarray(data)
        nbytes = arr.size * {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "int32_t": 4}[CTYPES[dtype]]
        self.model.arrays.append(CArray(name, CTYPES[dtype], _rows(arr), arr.size, comment, nbytes))
        self.model.weight_bytes += nbytes
        return name

    def buffer(self, tensor: str) -> str:
        region, offset = self.g.memory[tensor]
        base = {"input": "in", "output": "out", "arena": f"{self.prefix}_arena",
                "state": f"{self.prefix}_state"}[region]  # see model.c.j2
        return base if offset == 0 else f"{base} + {offset}"

    def const_tensor(self, node_sym: str, tensor: str, role: str) -> str:
        t = self.g.tensors[tensor]
        data = t.data
        comment = (f"{role} {list(t.shape)} {t.dtype} {t.qformat}, values [{int(data.min()) if data.size else 0}, "
                   f"{int(data.max()) if data.size else 0}]")
        return self.array(f"{node_sym}_{role}", data, t.dtype, comment)

    def build(self) -> CModel:
        g, m = self.g, self.model
        x = g.tensors[g.inputs[0]]
        shape = boundary_hwc(g, x.name)  # PyTorch's CHW floats <-> qgen's HWC (an 'nlc' sequence: a copy)
        m.input = {"name": x.name, "shape": list(x.shape), "size": x.size, "frac": x.qformat.frac,
                   "dtype": x.dtype, "ctype": CTYPES[x.dtype],
                   "quantize_fn": boundary_functions(g)[0],
                   "h": shape[0], "w": shape[1], "c": shape[2], "scale": _pow2_literal(x.qformat.frac)}
        for name in g.outputs:
            t = g.tensors[name]
            shape = boundary_hwc(g, name)
            m.outputs.append({"name": name, "shape": list(t.shape), "size": t.size, "frac": t.qformat.frac,
                              "offset": g.memory[name][1], "h": shape[0], "w": shape[1], "c": shape[2],
                              "inv_scale": _pow2_literal(-t.qformat.frac)})
        m.output_size = sum(o["size"] for o in m.outputs)
        m.arena_size = g.arena_size
        m.stream, m.state_size = is_step(g), state_size(g)  # passes/stream.py
        for index, node in enumerate(g.nodes):
            m.layers.append(self.layer(index, node))
        m.macs = sum(layer.macs for layer in m.layers)
        m.param_types = sorted({layer.struct_type for layer in m.layers if layer.struct_type})
        return m

    def layer(self, index: int, n: Node) -> Layer:
        g = self.g
        sym = f"l{index}_{n.op.value}"
        xs = [t for t in n.inputs if not g.tensors[t].is_const]
        out = n.outputs[0]
        shapes = signature(g, n)
        title = n.where()
        ins = [self.buffer(t) for t in xs]
        out_expr = self.buffer(out)
        scratch = self.buffer(scratch_key(index)) if scratch_key(index) in g.memory else "NULL"
        struct_name = _symbol(self.prefix, sym)
        n_arrays, n_resets = len(self.model.arrays), len(self.model.reset_calls)
        weight_format = n.attrs.get("weight_format", "dense")
        if weight_format != "dense" or is_int4(g, n):
            # compressed weight storage (sparse, clustered, packed int4): same integers, another encoding and kernel
            from .weight_formats import layer_parts

            struct_type, fields, call = layer_parts(self, index, n, sym, struct_name, ins, out_expr, scratch)
        elif any(g.tensors[t].dtype == "int16" for t in xs + [out]):
            emit = SPEC[n.op].emit_c_wide  # codegen/ops: the op's qg_wide.c call
            if emit is None:
                raise UserError(f"{n.where()}: no int16 kernel for op {n.op.value}; keep its input int8")
            struct_type, fields, call = emit(self, index, n)
        else:
            emit = SPEC[n.op].emit_c  # codegen/ops: the op's int8 call
            if emit is None:
                raise UserError(f"{n.where()}: no C kernel for op {n.op.value}")
            struct_type, fields, call = emit(self, index, n)
        check_fields(n, struct_type, fields)
        chosen = select(g, n).fn  # the planner sized this layer's scratch and overlap for that kernel
        assert (call is None) == (chosen is None) and (call is None or f"{chosen}(" in call), \
            f"{n.where()}: emitting {call} but codegen.kernels.select chose {chosen}"
        for array in self.model.arrays[n_arrays:]:
            array.flash = chosen in FLASH_READERS
        if struct_type:  # the struct is QG_CONST: every use goes through model.c's RAM copy
            by_address = re.compile(rf"(?<!_PARAMS\()&{struct_name}\b")  # once: a dense fallback's call is wrapped
            wrap = f"{self.model.PREFIX}_PARAMS(&{struct_name})"
            call = by_address.sub(wrap, call) if call else call
            self.model.reset_calls[n_resets:] = [by_address.sub(wrap, c) for c in self.model.reset_calls[n_resets:]]
        return Layer(index, title, shapes, struct_type, struct_name if struct_type else None,
                     [(k, str(v)) for k, v in fields], call, out_expr, g.tensors[out].nbytes, layer_macs(g, n))

    def check_scratch(self, index: int, n: Node, need: int) -> None:
        """The dense kernel about to be called for step `index` needs `need` bytes of scratch: the memory plan
        must hold at least that (a kernel given NULL scratch writes through it: a crash, not an error)."""
        if not need:
            return
        planned = scratch_bytes(self.g, n) if scratch_key(index) in self.g.memory else 0
        if planned < need:
            raise AssertionError(f"{n.where()}: its kernel needs {need} B of scratch but the memory plan gave it "
                                 f"{planned} B: the planner (kernel_abi.scratch_bytes) and the emitter chose "
                                 "different kernels (weight_formats.storage_choice decides)")

    def typed(self, tensor: str) -> str:
        """The buffer of `tensor` as a pointer of its element type (int16 tensors live in byte memory)."""
        expr = self.buffer(tensor)
        if self.g.memory[tensor][0] == "input":  # `in` already has the input's type
            return expr
        return f"QG_AS_S16({expr})" if self.g.tensors[tensor].dtype == "int16" else expr

    def io(self, index: int, n: Node, wide: bool = False) -> LayerIO:
        """What an op's emit_c / emit_c_wide (codegen/ops) names: its symbols and its buffers' C expressions;
        wide: int16 buffers as int16_t pointers, `raw` the untyped ones (add/concat take operand widths)."""
        g = self.g
        sym = f"l{index}_{n.op.value}"
        xs = [t for t in n.inputs if not g.tensors[t].is_const]
        out = n.outputs[0]
        bits = {t: 16 if g.tensors[t].dtype == "int16" else 8 for t in xs + [out]}
        expr = self.typed if wide else self.buffer
        return LayerIO(sym, _symbol(self.prefix, sym), xs, out, [expr(t) for t in xs], expr(out),
                       self.buffer(scratch_key(index)) if scratch_key(index) in g.memory else "NULL",
                       [self.buffer(t) for t in xs], self.buffer(out), bits,
                       {(8, 16): "s8_to_s16", (16, 8): "s16_to_s8", (16, 16): "s16"}.get((bits[xs[0]], bits[out]))
                       if xs else None,
                       [("act_min", n.attrs.get("act_min")), ("act_max", n.attrs.get("act_max"))])


def _pow2_literal(exp: int) -> str:
    """2**exp as an exact C float literal."""
    return f"{float(2.0 ** exp)!r}f" if -126 <= exp <= 127 else "0.0f"


def template_environment() -> jinja2.Environment:
    """The Jinja environment over templates/ (strict: an undefined name is an error), with the escaping
    filters of emit/escape.py (`{{ name | c_comment }}`: user text never becomes code)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(escape.FILTERS)
    return env


def render(g: Graph, prefix: str, banner: list[str], arena_symbol: str | None = None,
           arena_argument: bool = False, stream: bool = False) -> dict[str, str]:
    """Render the model's C files in memory: {relative path: text}. Deterministic.

    arena_symbol: use this external `int8_t[]` (e.g. an arena shared by several models that never run
    at the same time, sized to the largest) instead of defining the model's own static arena.
    arena_argument: `<prefix>_run(in, out, arena)` takes the arena from the caller (e.g. a MicroPython
    native module, which may hold no static data) instead of defining a static one.
    """
    check_prefix(prefix)
    model = _Builder(g, prefix, banner).build()
    if arena_symbol is not None and arena_argument:
        raise ValueError("arena_symbol and arena_argument are exclusive")
    if arena_symbol is not None:
        check_prefix(arena_symbol)
        model.arena_symbol = arena_symbol
    model.arena_argument = arena_argument
    model.stream = model.stream or stream  # --stream: _step/_reset even when no layer keeps state
    model.kernels_abi = kernels_abi()
    env = template_environment()
    files = {}
    for template, name in (("c/model.h.j2", f"{prefix}_model.h"), ("c/model.c.j2", f"{prefix}_model.c"),
                           ("c/weights.h.j2", f"{prefix}_weights.h"), ("c/weights.c.j2", f"{prefix}_weights.c")):
        files[name] = env.get_template(template).render(m=model)
    kernels = {path.name: path.read_text() for path in sorted(kernel_dir().iterdir()) if path.suffix in (".c", ".h")}
    used = set(model_sources(g))
    for name, text in kernels.items():  # every header; only the kernel sources the model calls
        if name.endswith(".h") or name in used:
            files[f"kernels/{name}"] = text
    return files


def kernels_abi() -> int:
    """QG_KERNELS_ABI as qg_kernels.h defines it (the generated model.c refuses any other header)."""
    found = re.search(r"^#define QG_KERNELS_ABI (\d+)$", (kernel_dir() / "qg_kernels.h").read_text(), re.M)
    if found is None:
        raise RuntimeError("qg_kernels.h defines no QG_KERNELS_ABI")
    return int(found.group(1))


def model_data(g: Graph, prefix: str) -> CModel:
    return _Builder(g, prefix, []).build()
