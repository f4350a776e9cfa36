"""Overlapping in-place on real kernels: C == reference with outputs written over their dying inputs.

One chain of sliding-window layers covers the kernel paths (im2col with gathered and widened columns,
the plain 1x1 path that reads its input in place, depthwise multiplier 1 and 2, stride 2, padding,
odd sizes, channel expansion and reduction, max and average pooling). It runs twice: as the planner
places it, and with every link at exactly its overlap distance (hand-made layout, proven by
check_overlap) -- on the host under ASan/UBSan and under QEMU on a Cortex-M4 (DSP paths) and an M0+
(plain C). A layout two pixels closer than the distance is refused by check_overlap and, run anyway,
gives wrong outputs: the C comparison can fail.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from fuzz.fuzzgen import PREFIX, build_sanitized  # kernels compiled with ASan/UBSan once
from qgen_testing import act, const, edge_inputs

from codegen.emit.c import render, write_atomic
from codegen.hostcheck import reference_outputs, run_native
from codegen.ir import SHAPE_RULES, Graph, Node, Op, verify
from codegen.kernel_abi import OVERLAP_OPS
from codegen.passes import plan_memory
from codegen.passes.plan_memory import Buffer, check_overlap, lifetimes
from codegen.passes.quantize import avg_params
from codegen.reference import run_int
from codegen.target import build_elf, build_plugin, missing_tools, run_qemu

# (op, out channels or multiplier, kernel, stride, padding (top, left, bottom, right), clamp)
CHAIN = [
    (Op.CONV2D, 7, (3, 5), (1, 1), (1, 2, 1, 2), (-128, 127)),  # reads the graph input: no overlap
    (Op.CONV2D, 5, (3, 3), (1, 1), (1, 1, 1, 1), (0, 127)),  # in_c 7: gathered column; reduction
    (Op.DEPTHWISE_CONV2D, 1, (3, 3), (1, 1), (1, 1, 1, 1), (-128, 127)),  # 5 channels: 4 + a tail
    (Op.CONV2D, 12, (1, 1), (1, 1), (0, 0, 0, 0), (0, 127)),  # pointwise expansion
    (Op.DEPTHWISE_CONV2D, 1, (3, 3), (2, 2), (1, 1, 1, 1), (-128, 127)),  # stride 2
    (Op.DEPTHWISE_CONV2D, 2, (3, 3), (1, 1), (1, 1, 1, 1), (-40, 90)),  # multiplier 2: generic path
    (Op.CONV2D, 8, (1, 1), (2, 1), (0, 0, 0, 0), (-128, 127)),  # pointwise reduction, stride (2, 1)
    (Op.CONV2D, 8, (3, 5), (1, 1), (1, 2, 1, 2), (-128, 127)),  # in_c 8: widened in place; odd pixel count
    (Op.MAXPOOL2D, None, (3, 3), (2, 2), (1, 1, 1, 1), None),
    (Op.CONV2D, 9, (2, 2), (1, 1), (1, 1, 0, 0), (-128, 127)),
    (Op.AVGPOOL2D, None, (2, 2), (1, 1), (0, 0, 0, 0), (-128, 127)),
    (Op.CONV2D, 6, (1, 1), (1, 1), (0, 0, 0, 0), (-128, 127)),  # writes the caller's output: no overlap
]
X_SHAPE = (11, 9, 7)


def chain_graph(rng) -> Graph:
    """CHAIN on X_SHAPE, random int8 weights, small biases, and shifts that keep every layer's outputs
    spread over int8 (measured on random inputs), so that a clobbered input byte shows in the output."""
    g = Graph({"x": act("x", X_SHAPE, 3)}, [], ["x"], [], source="test")
    probe = rng.integers(-128, 128, (4, *X_SHAPE)).astype(np.int8)
    src = "x"
    for i, (op, n, kernel, stride, pad, clamp) in enumerate(CHAIN):
        name = f"l{i}"
        cin = g.tensors[src].shape[2]
        attrs = {"stride": stride, "padding": pad}
        inputs = [src]
        if op in (Op.CONV2D, Op.DEPTHWISE_CONV2D):
            w_shape = (n, *kernel, cin) if op is Op.CONV2D else (cin * n, *kernel, 1)
            w = rng.integers(-128, 128, w_shape)
            taps = int(np.prod(w_shape[1:]))
            g.tensors[f"{name}_w"] = const(f"{name}_w", w, 8, (3,) * w_shape[0])
            g.tensors[f"{name}_b"] = const(f"{name}_b", rng.integers(-2000, 2000, w_shape[0]), 32, (7,) * w_shape[0])
            inputs += [f"{name}_w", f"{name}_b"]
            g.outputs = [src]
            x_std = max(float(np.std(run_int(g, probe)[src])), 1.0)
            shift = int(round(np.log2(x_std * 74 * np.sqrt(taps) / 40)))  # output std ~40
            attrs.update(shift=[shift] * w_shape[0], act_min=clamp[0], act_max=clamp[1])
        else:
            attrs["kernel"] = kernel
            if op is Op.AVGPOOL2D:
                attrs.update(avg_params(kernel[0] * kernel[1]), act_min=clamp[0], act_max=clamp[1])
        node = Node(name, op, inputs, [name], attrs)
        g.nodes.append(node)
        g.tensors[name] = act(name, (1,), 3)
        g.tensors[name].shape = SHAPE_RULES[op](g, node)
        src = name
    g.outputs = [src]
    verify(g, quantized=True)
    return g


def arena_buffers(g: Graph) -> list[Buffer]:
    return [b for b in lifetimes(g) if all(g.memory.get(t, ("arena",))[0] == "arena" for t in b.tensors)
            and not any(t in g.inputs + g.outputs for t in b.tensors)]


def tight_layout(g: Graph, closer: dict[int, int] | None = None) -> Graph:
    """Every link exactly at its overlap distance (minus closer[step] bytes), all scratch at 0."""
    closer = closer or {}
    bufs = arena_buffers(g)
    scratch = [b for b in bufs if b.tensors[0].startswith("scratch:")]
    chain = sorted((b for b in bufs if b not in scratch), key=lambda b: b.first)
    offset = 0
    for prev, b in zip([None] + chain, chain):
        if prev is not None:
            assert b.over == prev.tensors[0]  # every link in the chain may overlap
            offset -= b.distance - closer.get(b.first, 0)
        b.offset = offset
    floor = (max(b.size for b in scratch) + 3) // 4 * 4
    low = min(b.offset for b in chain)
    for b in chain:
        b.offset += floor - low
    for b in scratch:
        b.offset = 0
    if not closer:
        check_overlap(bufs)
    g.memory.update({t: ("arena", b.offset) for b in bufs for t in b.tensors})
    g.arena_size = max(b.offset + b.size for b in bufs)
    return g


def overlapping_links(g: Graph) -> int:
    """Sliding-window nodes whose output shares bytes with their input in the plan."""
    n = 0
    for node in g.nodes:
        if node.op not in OVERLAP_OPS:
            continue
        (r1, a), (r2, b) = g.memory[node.inputs[0]], g.memory[node.outputs[0]]
        sa, sb = g.tensors[node.inputs[0]].nbytes, g.tensors[node.outputs[0]].nbytes
        n += r1 == r2 == "arena" and a < b + sb and b < a + sa
    return n


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(7)
    x = edge_inputs(rng, X_SHAPE, n_random=6)
    made = {}
    base = chain_graph(rng)
    for name in ("planned", "tight", "too_close"):
        g = plan_memory.run(copy.deepcopy(base))
        if name == "tight":
            g = tight_layout(g)
        if name == "too_close":  # the first depthwise layer 2 pixels closer than allowed (its kernel
            g = tight_layout(g, closer={2: 2 * g.tensors["l2"].shape[2]})  # would survive 1: see test_overlap_distance)
        out = tmp_path_factory.mktemp(name) / "model"
        write_atomic(render(g, PREFIX, ["test"]), out)
        made[name] = (g, out)
    return made, x, reference_outputs(base, run_int(base, x))


def test_planner_overlaps_the_chain(models, monkeypatch):
    (made, _, _) = models
    g = made["planned"][0]
    assert overlapping_links(g) >= 3
    monkeypatch.setattr(plan_memory, "overlap_distance", lambda graph, node: None)
    without = plan_memory.run(copy.deepcopy(g)).arena_size
    assert g.arena_size < without  # 1,665 B instead of 1,800 B


def test_tight_layout_is_proven_and_too_close_is_refused(models):
    (made, _, _) = models
    assert overlapping_links(made["tight"][0]) == len(CHAIN) - 2
    g = made["too_close"][0]
    bufs = arena_buffers(g)
    for b in bufs:
        b.offset = g.memory[b.tensors[0]][1]
    with pytest.raises(AssertionError, match="must start at least 55 B below"):
        check_overlap(bufs)


@pytest.mark.parametrize("variant", ["planned", "tight"])
def test_host_c_equals_reference_under_sanitizers(models, variant, tmp_path):
    (made, x, expect) = models
    g, out = made[variant]
    exe = build_sanitized(out, tmp_path / "model")
    got = run_native(exe, x.reshape(len(x), -1), expect.shape[1])
    assert np.array_equal(got, expect), f"{variant}: first difference at {np.argwhere(got != expect)[0]}"


def test_too_close_gives_wrong_outputs(models, tmp_path):
    """The comparison above can fail: two pixels closer than the distance corrupt the result."""
    (made, x, expect) = models
    g, out = made["too_close"]
    exe = build_sanitized(out, tmp_path / "model")
    assert not np.array_equal(run_native(exe, x.reshape(len(x), -1), expect.shape[1]), expect)


@pytest.mark.skipif(bool(missing_tools()), reason=f"missing tools: {missing_tools()}")
@pytest.mark.parametrize("board", ["mps2-an386", "rp2040"])  # Cortex-M4 (DSP paths), M0+ (plain C)
def test_on_cortex_m(models, board, tmp_path):
    (made, x, expect) = models
    for variant in ("planned", "tight"):
        g, out = made[variant]
        sources = [out / f"{PREFIX}_model.c", out / f"{PREFIX}_weights.c", *sorted((out / "kernels").glob("*.c"))]
        elf = build_elf(board, sources, [out, out / "kernels"], PREFIX, tmp_path / variant,
                        extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
        result = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], plugin=build_plugin())
        assert np.array_equal(result.outputs, expect), f"{board}, {variant}"



def _pool_graph(later_reader: bool) -> Graph:
    """x -> maxpool a -> maxpool b (over a) -> ...; with later_reader, a reshape of `a` is also read by a
    linear layer after b, so b must not overlap a."""
    g = Graph({"x": act("x", (6, 6, 4), 3)}, [], ["x"], [], source="test")
    pool = {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1, 1, 1)}
    g.nodes += [Node("a", Op.MAXPOOL2D, ["x"], ["a"], dict(pool)), Node("b", Op.MAXPOOL2D, ["a"], ["b"], dict(pool)),
                Node("c", Op.MAXPOOL2D, ["b"], ["c"], dict(pool))]
    for t in "abc":
        g.tensors[t] = act(t, (6, 6, 4), 3)
    g.outputs = ["c"]
    if later_reader:
        w = const("w", np.ones((2, 144)), 8, (0, 0))
        g.tensors.update(w=w, bias=const("bias", np.zeros(2), 32, (3, 3)), flat=act("flat", (144,), 3),
                         y=act("y", (2,), 3))
        g.nodes += [Node("flat", Op.RESHAPE, ["a"], ["flat"], {"shape": (144,)}),
                    Node("fc", Op.LINEAR, ["flat", "w", "bias"], ["y"], {"shift": [0, 0], "act_min": -128,
                                                                         "act_max": 127})]
        g.outputs.append("y")
    return g


def test_overlap_only_over_an_input_that_dies():
    over = {b.tensors[0]: b.over for b in lifetimes(_pool_graph(later_reader=False))}
    assert over["a"] is None  # reads the caller's input
    assert over["b"] == "a"
    assert "c" not in over or over["c"] is None  # writes the caller's output
    over = {b.tensors[0]: b.over for b in lifetimes(_pool_graph(later_reader=True))}
    assert over["b"] is None  # `a` lives on through its reshape `flat`
    g = plan_memory.run(_pool_graph(later_reader=True))
    assert overlapping_links(g) == 0


def test_a_small_output_is_placed_under_its_large_dying_input():
    """SqueezeNet's stem: a big convolution output, then a stride-2 max pool four times smaller. The pool's
    output goes first (outputs_first) so that the convolution output lands just above it, overlapping: the
    arena is the convolution output plus the overlap distance, not both buffers."""
    import torch
    import torch.nn as nn

    import codegen
    from codegen.kernels import select

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                          nn.Conv2d(16, 4, 1)).eval()
    calib = np.random.default_rng(0).standard_normal((8, 3, 33, 33)).astype(np.float32)
    r = codegen.compile(model, torch.zeros(1, 3, 33, 33), calib)
    g = r.graph
    conv, pool = g.nodes[0], g.nodes[1]
    assert pool.op is Op.MAXPOOL2D
    big, small = g.tensors[conv.outputs[0]].nbytes, g.tensors[pool.outputs[0]].nbytes
    (_, a), (_, b) = g.memory[conv.outputs[0]], g.memory[pool.outputs[0]]
    assert b + select(g, pool).overlap <= a < b + small  # the pool's output starts under the conv's, overlapping
    assert r.report["arena_bytes"] < big + small
    assert r.verify(calib[:3]).exact
