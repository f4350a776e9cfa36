"""Builders for quantised IR graphs used by kernel tests (no torch: integer weights straight in)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from codegen.emit.c import render, write_atomic
from codegen.fixed import QFormat
from codegen.hostcheck import HostModel, reference_outputs
from codegen.ir import Graph, Node, Op, Tensor, verify
from codegen.passes import plan_memory
from codegen.reference import run_int


def act(name: str, shape, frac: int) -> Tensor:
    return Tensor(name, tuple(shape), "int8", QFormat(8, frac))


class GraphBuilder:
    """A one-input int8 graph (input 'x' of `shape` at frac 3) grown node by node; kernel tests subclass it with
    their own weighted-layer draws."""

    def __init__(self, rng, shape):
        self.rng = rng
        self.g = Graph({"x": act("x", shape, 3)}, [], ["x"], [], source="test")

    def node(self, name: str, op: Op, inputs: list[str], output: bool = True, **attrs) -> str:
        """Append `op` reading `inputs`; its int8 output (frac 3) takes the op's shape rule; a graph output unless
        `output` is False."""
        from codegen.ir import SHAPE_RULES

        node = Node(name, op, inputs, [name], attrs)
        self.g.nodes.append(node)
        self.g.tensors[name] = act(name, (1,), 3)
        self.g.tensors[name].shape = SHAPE_RULES[op](self.g, node)
        if output:
            self.g.outputs.append(name)
        return name


def const(name: str, data: np.ndarray, bits: int, frac) -> Tensor:
    dtype = {8: "int8", 16: "int16", 32: "int32"}[bits]
    return Tensor(name, data.shape, dtype, QFormat(bits, frac), data.astype(dtype))


def safe_bias(rng, w: np.ndarray, in_max: int = 128) -> np.ndarray:
    """Random int32 biases that keep the accumulator bound inside int32 (as quantize guarantees)."""
    cout = w.shape[0]
    room = (2**31 - 1) - np.abs(w.reshape(cout, -1).astype(np.int64)).sum(axis=1) * in_max
    return np.array([rng.integers(-min(r, 2**20), min(r, 2**20) + 1) for r in room], dtype=np.int64)


def weighted_graph(op: Op, x_shape, w: np.ndarray, b: np.ndarray, shift, act_min=-128, act_max=127,
                   stride=(1, 1), padding=(0, 0, 0, 0)) -> Graph:
    """x -> conv/depthwise/linear -> y, already quantised (fracs are nominal; shifts drive the math)."""
    from codegen.ir import SHAPE_RULES

    cout = w.shape[0]
    tensors = {"x": act("x", x_shape, 4), "w": const("w", w, 8, tuple([3] * cout)),
               "b": const("b", b, 32, tuple([7] * cout))}
    attrs = {"shift": [int(s) for s in np.broadcast_to(shift, (cout,))], "act_min": act_min, "act_max": act_max}
    if op is not Op.LINEAR:
        attrs.update(stride=tuple(stride), padding=tuple(padding))
    node = Node("layer", op, ["x", "w", "b"], ["y"], attrs)
    g = Graph(tensors, [node], ["x"], ["y"], source="test")
    tensors["y"] = act("y", (1,), 2)
    tensors["y"].shape = SHAPE_RULES[op](g, node)
    return g


def finish(g: Graph) -> Graph:
    verify(g, quantized=True)
    return plan_memory.run(g)


def build_host(g: Graph, tmp_path: Path, prefix: str = "t") -> HostModel:
    out = tmp_path / f"{prefix}_model"
    write_atomic(render(g, prefix, ["test"]), out)
    inp = g.tensors[g.inputs[0]]
    return HostModel(out, prefix, inp.size, sum(g.tensors[o].size for o in g.outputs))


def assert_c_equals_reference(g: Graph, host: HostModel, x_i8: np.ndarray) -> None:
    expect = reference_outputs(g, run_int(g, x_i8))
    got = host.run(x_i8.reshape(x_i8.shape[0], -1))
    if not np.array_equal(got, expect):
        bad = np.argwhere(got != expect)[0]
        raise AssertionError(f"C != reference at sample {bad[0]}, element {bad[1]}: C {got[tuple(bad)]}, "
                             f"reference {expect[tuple(bad)]}\n{g}")


def first_difference(graph: Graph, got: np.ndarray, want: np.ndarray, where: str = "", describe=None) -> str:
    """Where two (samples, output columns) arrays of `graph` first differ: the output's name and shape, the sample,
    the element (the byte, when int16 outputs were read back as bytes) and both values; `describe(name, index)`
    may add what the element means for the op (a time step, a unit)."""
    sample, at = (int(v) for v in np.argwhere(got != want)[0])
    sizes = [graph.tensors[n].size for n in graph.outputs]
    unit = "element"
    if got.shape[1] != sum(sizes):  # outputs read back as bytes: an int16 element is two
        sizes = [graph.tensors[n].size * (2 if graph.tensors[n].dtype == "int16" else 1) for n in graph.outputs]
        unit = "byte"
    prefix = f"{where}: " if where else ""
    index = at
    for name, size in zip(graph.outputs, sizes):
        if index < size:
            extra = f" ({describe(name, index)})" if describe else ""
            return (f"{prefix}output '{name}' {graph.tensors[name].shape}, sample {sample}, {unit} {index}{extra}: "
                    f"got {got[sample, at]}, reference {want[sample, at]}")
        index -= size
    return f"{prefix}sample {sample}, column {at}: got {got[sample, at]}, reference {want[sample, at]}"


def assert_outputs_equal(got: np.ndarray, want: np.ndarray, graph: Graph, where: str = "", describe=None) -> None:
    """The target's outputs equal the reference's exactly; otherwise fail naming the first difference."""
    assert got.shape == want.shape, f"{where}: outputs {got.shape}, reference {want.shape}"
    if not np.array_equal(got, want):
        raise AssertionError(first_difference(graph, got, want, where, describe))


def edge_inputs(rng, shape, n_random: int = 6) -> np.ndarray:
    """All -128, all 127, alternating extremes, zeros, then random int8 samples."""
    size = int(np.prod(shape))
    fixed = [np.full(size, -128), np.full(size, 127), np.where(np.arange(size) % 2, 127, -128), np.zeros(size)]
    rand = [rng.integers(-128, 128, size) for _ in range(n_random)]
    return np.stack(fixed + rand).astype(np.int8).reshape((-1,) + tuple(shape))


def assert_no_writable_static_data(files: dict[str, str], work: Path, wrapper: str, flags=()) -> None:
    """Every C file of a rendered natmod folder but its `wrapper` compiles (gcc -fpic, extra `flags`) to an object
    whose .data / .bss sections are empty: a MicroPython native module may hold no writable static data."""
    import subprocess

    for name, text in files.items():
        (work / name).write_text(text)
    for name in sorted(n for n in files if n.endswith(".c") and n != wrapper):
        obj = work / f"{name}.o"
        subprocess.run(["gcc", "-std=c99", "-Os", "-fpic", "-fno-common", *flags, "-c", "-I", str(work),
                        str(work / name), "-o", str(obj)], check=True)
        sections = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
        for line in sections.splitlines():
            parts = line.split()
            if parts and parts[0].startswith((".data", ".bss")) and not parts[0].startswith(".data.rel.ro"):
                assert int(parts[1]) == 0, f"{name}: {line}"
