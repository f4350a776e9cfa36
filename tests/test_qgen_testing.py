"""The shared failure reporter of the exactness tests names the right output, element and values."""
import numpy as np
import pytest
from qgen_testing import act, assert_outputs_equal, first_difference

from codegen.ir import Graph


def _two_outputs(dtype_b: str = "int8") -> Graph:
    b = act("b", (4,), 0)
    b.dtype = dtype_b
    return Graph({"a": act("a", (2, 3), 0), "b": b}, [], [], ["a", "b"])


def test_names_the_output_and_element_of_the_first_difference():
    g = _two_outputs()
    want = np.zeros((2, 10), np.int8)
    got = want.copy()
    got[1, 8] = -128  # second sample, output 'b' element 2
    got[1, 9] = 5
    assert first_difference(g, got, want, "cortex-m4") == \
        "cortex-m4: output 'b' (4,), sample 1, element 2: got -128, reference 0"
    with pytest.raises(AssertionError, match="output 'b'.*element 2"):
        assert_outputs_equal(got, want, g, "cortex-m4")
    assert_outputs_equal(want.copy(), want, g)  # equal: no error


def test_int16_outputs_read_as_bytes_are_counted_in_bytes():
    g = _two_outputs("int16")
    want = np.zeros((1, 6 + 8), np.int8)
    got = want.copy()
    got[0, 6 + 5] = 1
    assert "output 'b' (4,), sample 0, byte 5" in first_difference(g, got, want)


def test_describe_adds_what_the_element_means_and_shapes_must_match():
    g = _two_outputs()
    want = np.zeros((1, 10), np.int8)
    got = want.copy()
    got[0, 4] = 3
    text = first_difference(g, got, want, describe=lambda name, i: f"step {i // 3}, unit {i % 3}")
    assert "output 'a' (2, 3), sample 0, element 4 (step 1, unit 1): got 3" in text
    with pytest.raises(AssertionError, match="outputs"):
        assert_outputs_equal(got[:, :5], want, g, "host C")
