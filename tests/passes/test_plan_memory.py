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
    peak = max(sum(b.size for b in bufs if b.first <= step <= b.last) for step in range(len(g.nodes)))
    assert g.arena_size >= peak


def test_check_overlap_catches_a_bad_plan():
    a, b = Buffer(["a"], 16, 0, 2, 0), Buffer(["b"], 16, 1, 3, 8)
    with pytest.raises(AssertionError, match="overlap"):
        check_overlap([a, b])


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
