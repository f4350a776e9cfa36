"""Which C kernel runs a node, decided once: `select(graph, node, core) -> KernelCall`.

The memory planner (scratch, overlap: through kernel_abi.scratch_bytes / overlap_distance), the C emitter
(it checks the kernel it calls is this one) and the natmod builder (which kernel sources a model needs)
read the same answer, as CMSIS-NN's wrappers and their `*_get_buffer_size` share one set of conditions.

The choice has three inputs: the op (each spec's `kernel` rule in codegen/ops/ names the function and its
parameter struct per variant), how the weights are stored (storage_choice: dense, bitmap, index, cluster)
and the activation widths (int8 -> `s8`; any int16 -> the qg_wide.c variant `s8_to_s16`, `s16_to_s8`,
`s16`, or `wide` for add/concat whose operands may mix widths).

Scratch is sized for the core that runs the kernel: `qg_conv2d_s8` needs 8*K4 (+K4) bytes on a core with
the DSP extension (four int16 im2col columns), K bytes of one int8 column on the plain path (Cortex-M0+/M3)
and 4*round16(K) (+K when K > 16) on the Helium path (Cortex-M55, 4-pixel blocks for K >= 5). The generated C is
core-independent (one arena, `qg_conv2d_s8_buffer_size` in C gives the DSP size), so the planner asks with
core=None: the most any core needs.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .ir import Graph, Node
from .ops import SPEC, Trait
from .resources import kernel_dir

HEADER = "qg_kernels.h"
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


DSP_CORES = frozenset({"cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55", "cortex-m85"})  # __ARM_FEATURE_DSP
PLAIN_CORES = frozenset({"cortex-m0", "cortex-m0plus", "cortex-m3", "host"})  # the plain-C paths
MVE_CORES = frozenset({"cortex-m55", "cortex-m85"})  # __ARM_FEATURE_MVE: the Helium kernels of qg_mve.h (also DSP)
MVE_BLOCK_MIN_K = 5  # QG_MVE_BLOCK_MIN_K (qg_mve.h): from this K on, the Helium conv runs 4-pixel blocks


@dataclass(frozen=True)
class KernelCall:
    fn: str | None  # the kernel function; None: no code (reshape: the planner aliased the buffers)
    source: str | None  # the firmware/kernels/*.c file defining it
    struct: str | None  # its parameter struct (typedef name in qg_kernels.h), None: scalar arguments
    fields: dict[str, str]  # the struct's fields and their C types (qg_kernels.h)
    variant: str  # s8 | s8_to_s16 | s16_to_s8 | s16 | wide | bitmap | index | cluster | int4
    scratch: int  # scratch bytes for `core` (None: the most any core needs)
    overlap: int | None  # bytes the output may start below its input (kernel_abi.sliding_window_overlap)


def _storage(g: Graph, n: Node) -> str:
    if Trait.WEIGHTED not in SPEC[n.op].traits:
        return "dense"
    from .weight_storage import storage_choice

    return storage_choice(g, n)


def variant(g: Graph, n: Node) -> str:
    """The kernel variant of node `n` (see the module docstring)."""
    if n.attrs.get("in_place") and all(n.attrs["in_place"]):
        return "none"  # passes/concat_in_place: the producers wrote every part, nothing is left to run
    storage = _storage(g, n)
    if storage != "dense":
        return storage
    xs = [t for t in n.inputs if not g.tensors[t].is_const]
    bits = {t: 16 if g.tensors[t].dtype == "int16" else 8 for t in xs + n.outputs}
    if all(b == 8 for b in bits.values()):
        var = "s8"
    else:
        first = bits[xs[0]] if xs else bits[n.outputs[0]]  # const: no activation input
        var = {(8, 16): "s8_to_s16", (16, 8): "s16_to_s8", (16, 16): "s16"}.get((first, bits[n.outputs[0]]),
                                                                                 "wide")
    form = SPEC[n.op].form  # the node's own refinement (pool: clipped or adaptive windows)
    return form(g, n, var) if form is not None else var


@functools.cache
def kernel_sources() -> dict[str, str]:
    """{kernel function: the firmware/kernels/*.c file that defines it}, read from the sources once."""
    where = {}
    for path in sorted(kernel_dir().glob("*.c")):
        text = path.read_text()
        for m in re.finditer(r"^(?:void|int32_t|int)\s+(qg_\w+)\s*\(", text, re.M):
            close = text.index(")", m.end())  # parameter lists hold no parentheses
            if text[close + 1:].lstrip()[:1] != ";":  # a definition, not a prototype
                where[m.group(1)] = path.name
    return where


def scratch_for(fn: str | None, g: Graph, n: Node, core: str | None) -> int:
    """Scratch bytes of kernel `fn` on `core` (mirrors the qg_*_buffer_size functions and the plain paths)."""
    from .kernel_abi import (
        conv2d_buffer_size,
        depthwise_conv2d_buffer_size,
        depthwise_conv2d_plain_buffer_size,
        fully_connected_buffer_size,
    )

    if fn in ("qg_conv2d_s8", "qg_depthwise_conv2d_s8", "qg_conv_transpose2d_pointwise_s8"):
        cout, kh, kw, _ = g.tensors[n.inputs[1]].shape
        if fn == "qg_conv_transpose2d_pointwise_s8":  # qg_conv2d_s8 per row: 1x1, in_c -> stride_w * cout
            cout, kh, kw = cout * n.attrs["stride"][1], 1, 1
        cin = g.tensors[n.inputs[0]].shape[2]
        if fn == "qg_depthwise_conv2d_s8":
            if core in PLAIN_CORES or core in MVE_CORES:  # int8 weights there, int16 on the DSP path
                return depthwise_conv2d_plain_buffer_size(cin, kh, kw, cout)
            return depthwise_conv2d_buffer_size(cin, kh, kw, cout)
        cin //= n.attrs.get("groups", 1)  # a grouped conv gathers one group's channels at a time
        k = kh * kw * cin
        if core in MVE_CORES and k >= MVE_BLOCK_MIN_K:  # 4 pixels' columns padded to 16 values (+ one to gather into)
            return 4 * -(-k // 16) * 16 + (k if k > 16 else 0)
        if core in PLAIN_CORES or core in MVE_CORES:
            return k  # the plain path (and Helium's short rows) im2col one int8 column of K bytes
        return conv2d_buffer_size(cin, kh, kw, cout)
    if fn == "qg_conv_transpose2d_s8":
        from .ops.upsample import conv_transpose_scratch

        return conv_transpose_scratch(g, n)  # the same on every core (the plain path uses its first K bytes)
    if fn == "qg_fully_connected_s8":
        out_f, in_f = g.tensors[n.inputs[1]].shape
        return fully_connected_buffer_size(in_f, out_f)
    if fn == "qg_recurrent_s8":
        from .ops.recurrent import rnn_scratch

        return rnn_scratch(g, n)  # the whole-window state, then the gate slots and int16 vectors (any core)
    if fn in ("qg_conv2d_s4", "qg_depthwise_conv2d_s4", "qg_fully_connected_s4"):
        from .weight_storage import int4_scratch

        return int4_scratch(fn, g, n, core in PLAIN_CORES)
    return 0  # the compressed-weight (qg_sparse_s8.c, qg_cluster_s8.c) and int16 (qg_wide.c) kernels: none


# Kernels that honour the order contract of firmware/kernels/qg_conv2d_s8.c / qg_pool2d_s8.c (output
# pixels in increasing order, input read only at or after the pixel being written) and take `in`/`out`
# without `restrict`. Not the sparse kernels (output channel outer), the clustered ones (`restrict`), the
# int16 kernels, nor fully connected layers (one output reads the whole input: nothing to gain).
ORDERED = frozenset({"qg_conv2d_s8", "qg_depthwise_conv2d_s8", "qg_maxpool2d_s8", "qg_avgpool2d_s8",
                     "qg_conv2d_s4", "qg_depthwise_conv2d_s4"})  # qg_conv2d_s4.c: the same order


def _overlap(fn: str | None, g: Graph, n: Node) -> int | None:
    if fn == "qg_concat_s8":
        return concat_overlap(g, n)
    if fn not in ORDERED or n.attrs.get("groups", 1) != 1:  # grouped: the DSP path gathers group by group
        return None
    from .kernel_abi import sliding_window_overlap

    x, y = g.tensors[n.inputs[0]], g.tensors[n.outputs[0]]
    kernel = g.tensors[n.inputs[1]].shape[1:3] if Trait.WEIGHTED in SPEC[n.op].traits else n.attrs["kernel"]
    return sliding_window_overlap(x.shape[:2], y.shape[:2], tuple(kernel), tuple(n.attrs["stride"]),
                                  tuple(n.attrs["padding"][:2]), x.shape[2], y.shape[2],
                                  tuple(n.attrs.get("dilation", (1, 1))))


def concat_overlap(g: Graph, n: Node) -> int | None:
    """qg_concat_s8 copies its first input block by block before the others (qg_eltwise_s8.c; the pure
    MicroPython _concat goes pixel by pixel, which needs less): with that input at least
    (outer - 1) * (out_block - block0) + block0 bytes above the output's start, no block is overwritten before it
    is read, and each block's copy reads and writes disjoint bytes. A skip connection concatenated with a decoder
    branch (U-Net) then lives in the upper part of the concat output instead of beside it. Not when a producer
    writes into the output in place (passes/concat_in_place: the output is alive before the concat)."""
    if any(n.attrs.get("in_place") or []):
        return None
    out, x0 = g.tensors[n.outputs[0]], g.tensors[n.inputs[0]]
    if x0.is_const or x0.dtype != out.dtype:
        return None
    outer = functools.reduce(lambda a, b: a * b, out.shape[:n.attrs["axis"]], 1)
    block, block0 = n.attrs.get("out_stride", out.nbytes // outer), x0.nbytes // outer  # out_stride: written into
    return (outer - 1) * (block - block0) + block0  # a wider concat output (concat_in_place; int8: elements = bytes)


def select(g: Graph, n: Node, core: str | None = None) -> KernelCall:
    """The kernel that runs node `n` of the quantised graph `g` on `core` (None: any core)."""
    var = variant(g, n)
    fn, struct = SPEC[n.op].kernel(var)
    fields = dict(kernel_structs()[struct]) if struct else {}
    source = kernel_sources().get(fn) if fn else None
    assert fn is None or source, f"{n.where()}: kernel {fn} is defined in no firmware/kernels/*.c file"
    return KernelCall(fn, source, struct, fields, var, scratch_for(fn, g, n, core), _overlap(fn, g, n))


@functools.cache
def helper_sources() -> dict[str, frozenset[str]]:
    """{kernel .c file: the other kernel .c files defining a function it names}, read from the sources once.
    A mention counts, not only a call: qg_pool2d_s8.c's comment "see qg_conv2d_s8.c" ships qg_conv2d_s8.c
    with every pooling model, as the model.c scan this replaced did (the golden MANIFESTs list it)."""
    where = kernel_sources()
    texts = {path.name: path.read_text() for path in sorted(kernel_dir().glob("*.c"))}
    return {name: frozenset(src for fn, src in where.items() if src != name and re.search(rf"\b{fn}\b", text))
            for name, text in texts.items()}


def boundary_functions(g: Graph) -> tuple[str, str]:
    """The float boundary functions the generated model.c calls besides its layers' kernels:
    <prefix>_quantize_input's and <prefix>_dequantize_output's."""
    quantize = "qg_quantize_chw_to_hwc_f32" + ("_s16" if g.tensors[g.inputs[0]].dtype == "int16" else "")
    return quantize, "qg_dequantize_hwc_to_chw_s8"


def model_sources(g: Graph) -> list[str]:
    """The kernel .c files (names) a generated model needs: the source of select(g, n) for every node and
    of the float boundary functions, transitively with the sources of the helpers they call."""
    where = kernel_sources()
    fns = {select(g, n).fn for n in g.nodes} | set(boundary_functions(g))
    todo = {where[fn] for fn in fns if fn}
    used: set[str] = set()
    while todo:
        name = todo.pop()
        used.add(name)
        todo |= helper_sources()[name] - used
    return sorted(used)
