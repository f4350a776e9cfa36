"""qgen's small typed IR: Graph, Node, Tensor, and a verifier run after every pass.

Layout: activations carry no batch dimension. Image tensors are (H, W, C) — channels last, so a
kernel's inner loop walks contiguous channels; vectors are (F,). Weights: conv (Cout, KH, KW, Cin),
depthwise (Cout, KH, KW, 1) with Cout = Cin * multiplier, linear (Out, In).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .fixed import QFormat
from .ops import SPEC, Op, VerifyError  # noqa: F401 (Op, VerifyError re-exported)
from .ops.window import conv_out_size  # noqa: F401 (re-exported)


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # float32 | int8 | int16 | int32
    qformat: QFormat | None = None
    data: np.ndarray | None = None  # constants (weights, biases)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * DTYPE_BYTES[self.dtype]

    def __str__(self) -> str:
        q = f" {self.qformat}" if self.qformat else ""
        return f"%{self.name}:{self.dtype}{list(self.shape)}{q}"


DTYPE_BYTES = {"float32": 4, "int8": 1, "int16": 2, "int32": 4}


@dataclass
class Node:
    name: str  # user-facing: the module path ("features.3") or the export node name
    op: Op
    inputs: list[str]  # tensor names: activation(s) first, then weight, bias
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "model.py:42" when torch gives it

    def __str__(self) -> str:
        attrs = " ".join(f"{k}={v}" for k, v in self.attrs.items() if not isinstance(v, np.ndarray))
        return f"{', '.join('%' + o for o in self.outputs)} = {self.op.value}({', '.join('%' + i for i in self.inputs)}) {attrs}  # {self.name}"

    def where(self) -> str:
        return f"{self.op.value} '{self.name}'" + (f" ({self.source})" if self.source else "")


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    source: str = ""  # what it was compiled from, for banners and reports
    # PyTorch layout of inputs/outputs: "nchw" (image), "ncl" (sequence, IR (1, L, C)), "nf" (vector)
    io_layout: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, float] = field(default_factory=dict)  # calibrate: range each activation's format must hold (method-dependent)
    calibration: dict[str, str] = field(default_factory=dict)  # calibrate: method per tensor, fallbacks (not minmax)
    memory: dict[str, tuple[str, int]] = field(default_factory=dict)  # plan_memory: tensor -> (region, offset)
    arena_size: int = 0
    input_bits: int = 8  # assign_precision (before quantize): 16 makes the model input int16

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def activation_inputs(self, node: Node) -> list[Tensor]:
        return [self.tensors[t] for t in node.inputs if not self.tensors[t].is_const]

    def fresh_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.tensors:
            name, i = f"{base}_{i}", i + 1
        return name

    def __str__(self) -> str:
        lines = [f"graph({', '.join(str(self.tensors[t]) for t in self.inputs)}):"]
        lines += [f"  {n}" for n in self.nodes]
        lines.append(f"  return {', '.join(str(self.tensors[t]) for t in self.outputs)}")
        return "\n".join(lines)


def signature(g: Graph, n: Node) -> str:
    """'[8, 8, 1] s8.f6 -> [8, 8, 8] s8.f4': activation inputs and output with Q-formats (for comments)."""
    xs = [g.tensors[t] for t in n.inputs if not g.tensors[t].is_const]
    out = g.tensors[n.outputs[0]]
    return " + ".join(f"{list(t.shape)} {t.qformat}" for t in xs) + f" -> {list(out.shape)} {out.qformat}"


# shape rules and node checks live in the op table (codegen/ops/); this view is kept for callers
SHAPE_RULES: dict[Op, Callable[[Graph, Node], tuple[int, ...]]] = {op: spec.shape for op, spec in SPEC.items()}


def verify(g: Graph, quantized: bool = False) -> None:
    """Check single producer, defined-before-use, shapes, and (if quantized) dtypes and Q-formats."""
    produced: set[str] = set(g.inputs)
    for name in g.inputs:
        if name not in g.tensors:
            raise VerifyError(f"graph input %{name} has no tensor")
    for n in g.nodes:
        for i in n.inputs:
            if i not in g.tensors:
                raise VerifyError(f"{n.where()}: input %{i} is not a tensor of the graph")
            if not g.tensors[i].is_const and i not in produced:
                raise VerifyError(f"{n.where()}: input %{i} is used before it is produced")
        for o in n.outputs:
            if o in produced or (o in g.tensors and g.tensors[o].is_const):
                raise VerifyError(f"{n.where()}: %{o} has more than one producer")
            produced.add(o)
        SPEC[n.op].check(g, n)
        expect = SPEC[n.op].shape(g, n)
        got = g.tensors[n.outputs[0]].shape
        if tuple(expect) != tuple(got):
            raise VerifyError(f"{n.where()}: output shape {got}, shape rule says {expect}")
        if quantized:
            _verify_quantized_node(g, n)
    for o in g.outputs:
        if o not in produced:
            raise VerifyError(f"graph output %{o} is never produced")


def _verify_quantized_node(g: Graph, n: Node) -> None:
    if SPEC[n.op].ref_int is None:  # Trait.FLOAT_ONLY (batch_norm)
        raise VerifyError(f"{n.where()}: {n.op.value} left after folding")
    for name in n.inputs + n.outputs:
        tensor = g.tensors[name]
        if tensor.dtype == "float32" or tensor.qformat is None:
            raise VerifyError(f"{n.where()}: %{name} is not quantised ({tensor.dtype}, {tensor.qformat})")
        if tensor.data is not None:
            lo, hi = -(1 << (tensor.qformat.bits - 1)), (1 << (tensor.qformat.bits - 1)) - 1
            if tensor.data.size and (tensor.data.min() < lo or tensor.data.max() > hi):
                raise VerifyError(f"{n.where()}: constant %{name} exceeds {tensor.qformat}")
