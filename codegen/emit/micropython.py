"""Emit a pure-MicroPython module `<prefix>.py` for a quantised, memory-planned graph.

The module is data + calls, like the C: hand-written integer kernels (templates/micropython/
_kernels.py, the twin of firmware/kernels/), the weights as `bytes` literals (int8 two's complement)
and biases as `array('i')`, one parameter tuple per layer, and `predict()` calling the kernels in
graph order over memoryviews of one preallocated arena. It runs unchanged on MicroPython (any port,
no native emitter needed) and on CPython, and is bit-exact with codegen.reference.run_int.

Requantisation per output channel c with shift s (fixed.requantize) is prepared here as three
integers so the kernel has no branch: y = (acc * mul[c] + rnd[c]) >> shr[c], then clamp, with
mul = 2**-s, rnd = 0, shr = 0 for s <= 0 (exact left shift) and mul = 1, rnd = 2**(s-1), shr = s for
s > 0 (round half up). Python ints never overflow, so the result is the mathematical definition; on
32-bit ports intermediates beyond 2**30 become big ints (slower, still exact). quantize.py bounds
the conv/linear accumulator by 2**31 - 1, so that only happens for accumulators near that bound.

All decisions are made here; the templates only loop over the prepared data.
"""
from __future__ import annotations

import copy
import keyword
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..errors import UserError
from ..ir import Graph, Node, Op, signature
from ..ops import SPEC
from ..passes.stream import is_step, state_size
from ..reference import boundary_hwc
from .c import check_prefix, layer_macs, template_environment

BYTES_PER_LINE = 24  # bytes per `b'...'` source line (4 characters each: \xNN)
INTS_PER_LINE = 12


@dataclass
class PyConst:
    """A module-level constant, rendered as `head` + indented `lines` + `tail`."""

    comment: str
    head: str
    lines: list[str]
    tail: str
    nbytes: int


@dataclass
class PyView:
    name: str
    expr: str
    comment: str


@dataclass
class PyLayer:
    index: int
    title: str  # "conv2d 'features.0' (model.py:12)"
    shapes: str  # "[8, 8, 1] s8.f6 -> [8, 8, 8] s8.f4"
    params_name: str | None
    params: list[tuple[str, str]]  # (field, Python expression), in the kernel's unpacking order
    call: str | None  # None: reshape (same bytes, no code)


@dataclass
class PyModel:
    prefix: str
    banner: list[str]
    version: str
    input: dict = field(default_factory=dict)
    outputs: list[dict] = field(default_factory=list)
    output_size: int = 0
    output_frac: int = 0
    arena_size: int = 0
    weight_bytes: int = 0
    macs: int = 0
    patch_size: int = 0  # conv patch (int8; viper: im2col, Python: nonzero values), the largest KH*KW*Cin
    nonzero_size: int = 0  # Python conv/linear: nonzero positions, the largest KH*KW*Cin or in_features
    accs_size: int = 0  # viper conv/linear accumulators (int32), the largest Cout or out_features
    errors: dict[str, str] = field(default_factory=dict)  # input_contract()
    stream: bool = False  # a streaming step (passes/stream.py): predict_step() / reset(), state in _STATE_MV
    state_size: int = 0
    reset_lines: list[str] = field(default_factory=list)  # reset()'s statements after the state memory is zeroed
    consts: list[PyConst] = field(default_factory=list)
    views: list[PyView] = field(default_factory=list)
    layers: list[PyLayer] = field(default_factory=list)


def input_contract(prefix: str, input_size: int) -> dict[str, str]:
    """The error texts of predict()'s input contract, word for word the same in the three modes (pure,
    natmod, usercmod; each mode's template renders them from here).

    predict(x): x must be a bytes-like object (buffer protocol: bytes, bytearray, memoryview, array; not
    str) of exactly INPUT_SIZE bytes, read as int8 two's complement ((H, W, C) order). Anything else
    raises TypeError(type_error + type(x).__name__) or ValueError(size_error + str(number of bytes)).
    predict_float(xs) needs len(xs) == INPUT_SIZE: ValueError(float_size_error + str(len(xs))).
    """
    return {"type_error": f"{prefix}.predict() needs a bytes-like input of {input_size} bytes, got ",
            "size_error": f"{prefix}.predict() needs {input_size} bytes, got ",
            "float_size_error": f"{prefix}.predict_float() needs {input_size} values, got "}


def check_module_name(prefix: str) -> str:
    check_prefix(prefix)
    if keyword.iskeyword(prefix) or prefix in ("micropython", "array", "builtins"):
        raise UserError(f"prefix '{prefix}' cannot name a Python module (it is a keyword or shadows a "
                        "module the generated code imports); choose another, e.g. 'digits'")
    return prefix


def _bytes_lines(data: np.ndarray) -> list[str]:
    raw = np.asarray(data, dtype=np.int8).reshape(-1).tobytes()
    return ["b'" + "".join(f"\\x{b:02x}" for b in raw[i:i + BYTES_PER_LINE]) + "'"
            for i in range(0, len(raw), BYTES_PER_LINE)]


def _int_lines(values) -> list[str]:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    return [", ".join(flat[i:i + INTS_PER_LINE]) + "," for i in range(0, len(flat), INTS_PER_LINE)]


def _tuple_expr(values) -> str:
    items = [str(int(v)) for v in values]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _pow2_expr(exp: int) -> str:
    """2**exp as an exact float expression on any port (no float parsing, no libm)."""
    return f"{float(1 << exp)!r}" if exp >= 0 else f"(1.0 / {1 << -exp})"


def requant_triples(shifts) -> tuple[list[int], list[int], list[int]]:
    """Per-channel shift -> (mul, rnd, shr) with round_shift(x, s) == (x * mul + rnd) >> shr."""
    mul, rnd, shr = [], [], []
    for s in (int(v) for v in np.atleast_1d(shifts)):
        mul.append(1 << -s if s < 0 else 1)
        rnd.append(1 << (s - 1) if s > 0 else 0)
        shr.append(max(0, s))
    return mul, rnd, shr


class _Builder:
    def __init__(self, g: Graph, prefix: str, banner: list[str]):
        self.g = g
        self.model = PyModel(prefix, banner, __version__)
        self.view_names: dict[tuple[str, int, int], str] = {}

    # -- data
    def const(self, name: str, comment: str, head: str, lines: list[str], tail: str, nbytes: int) -> str:
        assert all(c.head != head for c in self.model.consts), head
        self.model.consts.append(PyConst(comment, head, lines, tail, nbytes))
        self.model.weight_bytes += nbytes
        return name

    def weight_rows(self, sym: str, tensor: str) -> str:
        """int8 weights (Cout, ...) as one bytes literal, split at import into one int8 row per channel."""
        t = self.g.tensors[tensor]
        data = t.data
        rows, row_len = data.shape[0], int(np.prod(data.shape[1:]))
        name = f"_{sym}_W"
        if t.qformat is not None and t.qformat.bits == 4:  # int4: packed two per byte, unpacked at import
            comment = (f"weights {list(t.shape)} int4 {t.qformat}, values [{int(data.min()) if data.size else 0}, "
                       f"{int(data.max()) if data.size else 0}]: {rows} rows of {row_len}, two per byte, low "
                       "nibble first")
            flat = np.asarray(data, np.int64).reshape(-1)
            nib = np.concatenate([flat, np.zeros(flat.size % 2, np.int64)]) & 0xF
            packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)
            return self.const(name, comment, f"{name} = _int4_rows((", _bytes_lines(packed.view(np.int8)),
                              f"), {flat.size}, {row_len})", packed.size)
        comment = (f"weights {list(t.shape)} int8 {t.qformat}, values [{int(data.min()) if data.size else 0}, "
                   f"{int(data.max()) if data.size else 0}]: {rows} rows of {row_len}")
        return self.const(name, comment, f"{name} = _int8_rows((", _bytes_lines(data), f"), {row_len})",
                          data.size)

    def bias(self, sym: str, tensor: str) -> str:
        t = self.g.tensors[tensor]
        data = t.data
        name = f"_{sym}_B"
        comment = (f"bias [{data.size}] int32 {t.qformat}, values [{int(data.min()) if data.size else 0}, "
                   f"{int(data.max()) if data.size else 0}]")
        return self.const(name, comment, f"{name} = array('i', (", _int_lines(data), "))", 4 * data.size)

    def requant(self, sym: str, shifts) -> tuple[str, str, str]:
        triples = requant_triples(shifts)
        comment = (f"requantisation per output channel, shift {[int(v) for v in np.atleast_1d(shifts)]}: "
                   "y = (acc * MUL + RND) >> SHR")
        names = []
        for part, values in zip(("MUL", "RND", "SHR"), triples):
            name = f"_{sym}_{part}"
            names.append(self.const(name, comment if not names else "", f"{name} = (", _int_lines(values), ")", 0))
        return names[0], names[1], names[2]

    triples = staticmethod(requant_triples)  # for the ops' emit_py (codegen/ops)

    # -- buffers
    def view(self, tensor: str) -> str:
        region, offset = self.g.memory[tensor]
        size = self.g.tensors[tensor].size
        if region == "input":
            return "x"  # the caller's input, converted to array('b') by predict
        key = (region, offset, size)
        if key not in self.view_names:
            base = {"output": ("_O", "_OUT_MV"), "arena": ("_A", "_ARENA_MV"), "state": ("_ST", "_STATE_MV")}[region]
            name = f"{base[0]}{offset}_{size}"
            self.view_names[key] = name
            self.model.views.append(PyView(name, f"{base[1]}[{offset}:{offset + size}]",
                                           f"%{tensor} {list(self.g.tensors[tensor].shape)}"))
        return self.view_names[key]

    def scratch(self, patch: int, nonzero: int, accs: int) -> None:
        m = self.model
        m.patch_size, m.nonzero_size, m.accs_size = (max(m.patch_size, patch), max(m.nonzero_size, nonzero),
                                                     max(m.accs_size, accs))

    # -- model
    def build(self) -> PyModel:
        g, m = self.g, self.model
        x = g.tensors[g.inputs[0]]
        h, w, c = boundary_hwc(g, x.name)
        m.input = {"name": x.name, "shape": _tuple_expr(x.shape), "size": x.size, "frac": x.qformat.frac,
                   "h": h, "w": w, "c": c, "scale": _pow2_expr(x.qformat.frac), "qformat": str(x.qformat)}
        offset = 0
        for name in g.outputs:
            t = g.tensors[name]
            h, w, c = boundary_hwc(g, name)
            region, planned = g.memory[name]
            if region != "output" or planned != offset:
                raise AssertionError(f"output %{name} planned at {region}+{planned}, expected output+{offset}")
            m.outputs.append({"name": name, "shape": _tuple_expr(t.shape), "size": t.size, "frac": t.qformat.frac,
                              "offset": offset, "h": h, "w": w, "c": c, "inv_scale": _pow2_expr(-t.qformat.frac),
                              "qformat": str(t.qformat)})
            offset += t.size
        m.output_size = offset
        m.errors = input_contract(m.prefix, x.size)
        m.output_frac = m.outputs[0]["frac"]
        m.arena_size = g.arena_size
        m.stream, m.state_size = is_step(g), state_size(g)  # passes/stream.py
        for index, node in enumerate(g.nodes):
            m.layers.append(self.layer(index, node))
        m.macs = sum(layer_macs(g, n) for n in g.nodes)
        return m

    def layer(self, index: int, n: Node) -> PyLayer:
        g = self.g
        emit = SPEC[n.op].emit_py  # codegen/ops: each op's MicroPython call
        if emit is None:
            supported = ", ".join(op.value for op, spec in SPEC.items() if spec.emit_py)
            raise UserError(f"{n.where()}: no MicroPython kernel for op {n.op.value}; qgen's MicroPython target "
                            f"supports {supported}")
        got = emit(self, n, index)
        shapes = signature(g, n)
        if got is None:
            return PyLayer(index, n.where(), shapes, None, [], None)
        fn, params, extra = got
        ins = [self.view(t) for t in n.inputs if not g.tensors[t].is_const]
        y = self.view(n.outputs[0])
        pname = f"_L{index}"
        call = f"{fn}({', '.join(ins + [y, pname])}{extra})"  # const: no activation input
        return PyLayer(index, n.where(), shapes, pname, [(k, str(v)) for k, v in params], call)


def model_data(graph: Graph, prefix: str, banner: list[str] | None = None) -> PyModel:
    if not graph.memory or any(n.attrs.get("in_place") for n in graph.nodes):
        # the pure kernels write no output at a stride: every concat copies (planned again without in place)
        from ..passes import plan_memory

        graph = copy.deepcopy(graph)
        for n in graph.nodes:
            n.attrs.pop("in_place", None)
            n.attrs.pop("out_stride", None)
        graph = plan_memory.run(graph)  # a streaming step keeps its state region (plan_memory.plan_state)
    if graph.tensors[graph.inputs[0]].dtype == "int16":
        raise UserError("the model takes int16 input (--precision input=int16), which the pure MicroPython module "
                        "does not implement; recompile with an int8 input")
    for n in graph.nodes:
        if n.op is Op.BATCH_NORM or any(graph.tensors[t].qformat is None for t in n.inputs + n.outputs):
            raise UserError(f"{n.where()}: the graph is not quantised; compile it first (codegen.compile)")
        if graph.tensors[n.outputs[0]].dtype == "int16":
            raise UserError(f"{n.where()} has int16 activations (mixed precision), which the pure MicroPython "
                            "module does not implement; use --mode natmod or --mode usercmod (the C kernels), "
                            "or compile without --precision")
    return _Builder(graph, prefix, list(banner or [])).build()


def render_micropython(graph: Graph, prefix: str, banner: list[str]) -> dict[str, str]:
    """Render the model as one pure-MicroPython module: {f"{prefix}.py": source}. Deterministic.

    The module exposes predict(input_bytes) -> bytes (int8, qgen layout (H, W, C) in and the
    concatenated outputs out), predict_float(values) -> list of floats (PyTorch layout in and out),
    and INPUT_SHAPE, INPUT_SIZE, INPUT_FRAC, OUTPUT_SIZE, OUTPUT_FRAC, ARENA_SIZE, WEIGHT_BYTES, MACS.
    """
    check_module_name(prefix)
    model = model_data(graph, prefix, banner)
    text = template_environment().get_template("micropython/model.py.j2").render(m=model)
    return {f"{prefix}.py": used_kernels_only(text)}


KERNELS_BEGIN = "# ---------------------------------------------------------------- kernels\n"
KERNELS_END = "# ---------------------------------------------------------------- weights\n"


def used_kernels_only(text: str) -> str:
    """The module without the kernel functions it never calls: a MicroPython `import` compiles every function
    into heap-resident bytecode, so an unused kernel costs RAM on the device. Kept: the functions the rest of
    the module names and, transitively, those they name; every other top-level statement (the viper source,
    imports) stays. Works on the rendered text, so it sees exactly the calls that were emitted."""
    import ast

    start = text.index(KERNELS_BEGIN)
    end = text.index(KERNELS_END, start)
    kernels, rest = text[start:end], text[:start] + text[end:]
    lines = kernels.splitlines(keepends=True)
    tree = ast.parse(kernels)
    funcs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def names(source_or_node) -> set[str]:
        node = ast.parse(source_or_node) if isinstance(source_or_node, str) else source_or_node
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(funcs)

    keep, todo = set(), list(names(rest) | {n for stmt in tree.body if not isinstance(stmt, ast.FunctionDef)
                                            for n in names(stmt)})
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(names(funcs[name]) - keep)
    drop = [funcs[name] for name in funcs if name not in keep]
    for node in sorted(drop, key=lambda f: f.lineno, reverse=True):
        first = node.lineno - 1 - len(node.decorator_list)
        last = node.end_lineno
        while last < len(lines) and not lines[last].strip():  # the blank lines after it
            last += 1
        del lines[first:last]
    return text[:start] + "".join(lines) + text[end:]
