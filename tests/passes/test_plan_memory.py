import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_residual

from codegen import compile as qcompile
from codegen.passes.plan_memory import Buffer, _lowest_free_offset, check_overlap, lifetimes


def test_planned_arena_reuses_memory_and_never_overlaps():
    model, x = make_residual()
    r = qcompile(model, x, np.random.default_rng(0).standard_normal((8, 3, 16, 16)))
    g = r.graph
    bufs = [b for b in lifetimes(g) if all(g.memory[t][0] == "arena" for t in b.tensors)]
    for b in bufs:
        b.offset = g.memory[b.tensors[0]][1]
    check_overlap(bufs)
    total = sum(b.size for b in bufs)
    assert g.arena_size < total  # reuse happened
    assert g.memory[g.inputs[0]] == ("input", 0) and g.memory[g.outputs[0]] == ("output", 0)
    assert g.arena_size >= max(_live_bytes(bufs, step) for step in range(len(g.nodes)))


def _live_bytes(bufs: list[Buffer], step: int) -> int:
    """Bytes alive at `step`, less what an output may share with its dying input (a lower bound)."""
    alive = [b for b in bufs if b.first <= step <= b.last]
    shared = 0
    for out in alive:
        src = next((b for b in alive if out.over in b.tensors and out.first == b.last), None)
        if src is not None:
            shared += max(0, min(src.size, out.size - out.distance) - max(0, -out.distance))
    return sum(b.size for b in alive) - shared


def test_check_overlap_catches_a_bad_plan():
    a, b = Buffer(["a"], 16, 0, 2, 0), Buffer(["b"], 16, 1, 3, 8)
    with pytest.raises(AssertionError, match="overlap"):
        check_overlap([a, b])


def test_check_overlap_proves_deliberate_overlaps():
    """An output may cover the start of the input its producer reads for the last time, from the
    kernel's distance below it; anything else that shares bytes is refused."""
    src = Buffer(["a", "a_flat"], 100, 0, 1, 40)
    check_overlap([src, Buffer(["b"], 100, 1, 2, 40 - 24, over="a", distance=24)])
    check_overlap([src, Buffer(["b"], 100, 1, 2, 0, over="a", distance=24)])  # further down is fine too
    check_overlap([src, Buffer(["b"], 30, 1, 2, 50, over="a", distance=-10)])  # may start inside it
    with pytest.raises(AssertionError, match="must start at least 24 B below"):
        check_overlap([src, Buffer(["b"], 100, 1, 2, 40 - 23, over="a", distance=24)])
    with pytest.raises(AssertionError, match="alive together"):  # not its producer's input
        check_overlap([src, Buffer(["b"], 100, 1, 2, 16, over="z", distance=24)])
    with pytest.raises(AssertionError, match="alive together"):  # the input is read again later
        check_overlap([Buffer(["a"], 100, 0, 2, 40), Buffer(["b"], 100, 1, 2, 16, over="a", distance=24)])
    with pytest.raises(AssertionError, match="alive together"):  # a third buffer gets no such right
        check_overlap([src, Buffer(["b"], 100, 1, 2, 16, over="a", distance=24), Buffer(["c"], 8, 1, 1, 100)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 20), st.integers(0, 6)), min_size=1, max_size=25))
def test_greedy_placement_is_always_valid(specs):
    buffers = [Buffer([f"t{i}"], size, first, first + span) for i, (size, first, span) in enumerate(specs)]
    placed = []
    for buf in sorted(buffers, key=lambda b: (-b.size, b.first)):
        buf.offset = _lowest_free_offset(buf, placed)
        assert buf.offset % 4 == 0
        placed.append(buf)
    check_overlap(placed)
