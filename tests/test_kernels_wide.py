"""int16 activations (mixed precision): generated C == integer reference, byte for byte.

Model inputs and outputs are int8 (the C API), so every graph here is a chain int8 -> ... int16
layers ... -> int8, built already quantised with full-range int8 weights and random shifts (left
shifts saturate the int16 intermediates at -32768/32767), covering every kernel of qg_wide.c in
each input/output mix and both accumulators. Also built with ASan/UBSan at the end.
"""
from __future__ import annotations

import numpy as np
import pytest
from qgen_testing import act, assert_c_equals_reference, build_host, const, edge_inputs, finish

from codegen.fixed import QFormat
from codegen.hostcheck import SANITIZE_FLAGS, build_native, reference_outputs, run_native
from codegen.ir import SHAPE_RULES, Graph, Node, Op, Tensor
from codegen.passes.quantize import avg_params
from codegen.reference import run_int


def act16(name: str, shape, frac: int) -> Tensor:
    return Tensor(name, tuple(shape), "int16", QFormat(16, frac))


class Chain:
    """x (int8) -> layers -> y; each layer says its output width."""

    def __init__(self, shape, rng):
        self.rng = rng
        self.tensors = {"x": act("x", shape, 4)}
        self.nodes: list[Node] = []
        self.cur = "x"

    def _out(self, node: Node, bits: int) -> str:
        name = f"t{len(self.nodes)}"
        node.outputs = [name]
        self.nodes.append(node)
        g = Graph(self.tensors, self.nodes, ["x"], [name])
        shape = SHAPE_RULES[node.op](g, node)
        self.tensors[name] = (act16 if bits == 16 else act)(name, shape, 5)
        self.cur = name
        return name

    def bits(self, tensor: str | None = None) -> int:
        return 16 if self.tensors[tensor or self.cur].dtype == "int16" else 8

    def weighted(self, op: Op, bits: int, cout: int = 0, k=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1),
                 w_max: int = 128, shifts=(-2, 12), acc64: bool = False, act_range=None) -> str:
        rng, i = self.rng, len(self.nodes)
        x_shape = self.tensors[self.cur].shape
        if op is Op.LINEAR:
            w = rng.integers(-w_max, w_max, (cout, x_shape[0]))
        elif op is Op.DEPTHWISE_CONV2D:
            cout = cout or x_shape[2]
            w = rng.integers(-w_max, w_max, (cout, *k, 1))
        else:
            w = rng.integers(-w_max, w_max, (cout, *k, x_shape[2]))
        w.reshape(-1)[0] = -w_max
        in_max = 1 << (self.bits() - 1)
        bound = np.abs(w.reshape(cout, -1)).sum(axis=1) * in_max
        room = np.maximum((2**31 - 1) - bound, 0) if not acc64 else np.full(cout, 2**24)
        b = np.array([rng.integers(-min(r, 2**20), min(r, 2**20) + 1) for r in room])
        assert acc64 or bound.max() + np.abs(b).max() <= 2**31 - 1
        self.tensors[f"w{i}"] = const(f"w{i}", w, 8, tuple([3] * cout))
        self.tensors[f"b{i}"] = const(f"b{i}", b, 32, tuple([7] * cout))
        lo, hi = act_range or ((-32768, 32767) if bits == 16 else (-128, 127))
        attrs = {"shift": [int(s) for s in rng.integers(*shifts, cout)], "act_min": lo, "act_max": hi}
        if acc64:
            attrs["acc64"] = True
        if op is not Op.LINEAR:
            attrs.update(stride=tuple(stride), padding=tuple(padding))
        return self._out(Node(f"l{i}", op, [self.cur, f"w{i}", f"b{i}"], [], attrs), bits)

    def unary(self, op: Op, **attrs) -> str:
        return self._out(Node(f"l{len(self.nodes)}", op, [self.cur], [], attrs), self.bits())

    def graph(self) -> Graph:
        assert self.bits() == 8, "chains end in int8 (the C API)"
        return finish(Graph(self.tensors, self.nodes, ["x"], [self.cur], source="test"))


def _check(chain: Chain, tmp_path, rng, shape) -> Graph:
    g = chain.graph()
    x = edge_inputs(rng, shape)
    assert_c_equals_reference(g, build_host(g, tmp_path), x)
    wide = [t for t in g.tensors.values() if t.dtype == "int16"]
    values = run_int(g, x)
    assert wide and any(np.abs(values[t.name]).max() > 127 for t in wide), "the int16 path was not exercised"
    return g


@pytest.mark.parametrize("k,stride,pad", [((3, 3), (1, 1), (1, 1, 1, 1)), ((3, 5), (2, 2), (1, 2, 0, 1)),
                                          ((1, 1), (1, 1), (0, 0, 0, 0))])
def test_conv2d_every_mix(k, stride, pad, rng, tmp_path):
    shape = (7, 9, 3)
    c = Chain(shape, rng)
    c.weighted(Op.CONV2D, 16, 5, k, stride, pad)  # s8 -> s16
    c.weighted(Op.CONV2D, 16, 4, (3, 3), (1, 1), (1, 1, 1, 1), w_max=8, shifts=(3, 10))  # s16 -> s16
    c.weighted(Op.CONV2D, 8, 6, (3, 3), (1, 1), (0, 1, 2, 1), w_max=8, shifts=(8, 18))  # s16 -> s8
    _check(c, tmp_path, rng, shape)


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_every_mix(mult, rng, tmp_path):
    shape = (6, 7, 3)
    c = Chain(shape, rng)
    c.weighted(Op.DEPTHWISE_CONV2D, 16, 3 * mult, (3, 3), (2, 1), (1, 1, 1, 1))
    c.weighted(Op.DEPTHWISE_CONV2D, 16, 0, (2, 3), (1, 1), (1, 0, 0, 2), shifts=(4, 9))
    c.weighted(Op.DEPTHWISE_CONV2D, 8, 0, (3, 3), (1, 1), (1, 1, 1, 1), shifts=(8, 14))
    _check(c, tmp_path, rng, shape)


def test_fully_connected_every_mix_and_int64_accumulator(rng, tmp_path):
    shape = (37,)
    c = Chain(shape, rng)
    c.weighted(Op.LINEAR, 16, 600, shifts=(-3, 6))
    # fan-in 600 at |x| = 2^15 and |w| = 128: the int32 bound fails, so the kernel must use int64.
    # Make it really overflow: saturated positive inputs (all-127 input, positive weights, left
    # shifts) into rows of +127.
    c.tensors["w0"].data = np.abs(c.tensors["w0"].data.astype(np.int64)).clip(1, 127).astype(np.int8)
    c.nodes[0].attrs["shift"] = [-8] * 600
    c.tensors["b0"].data[:] = 0
    c.weighted(Op.LINEAR, 16, 33, acc64=True, shifts=(8, 14))
    c.tensors["w1"].data[:] = 127
    c.weighted(Op.LINEAR, 8, 7, shifts=(8, 16))
    g = _check(c, tmp_path, rng, shape)
    acc = run_int(g, edge_inputs(rng, shape))["t0"].astype(np.int64) @ g.tensors["w1"].data.T.astype(np.int64)
    assert np.abs(acc).max() > 2**31, "the test data must overflow an int32 accumulator"


def test_pools_clamp_pad_reshape_at_int16(rng, tmp_path):
    shape = (8, 7, 4)
    c = Chain(shape, rng)
    c.weighted(Op.CONV2D, 16, 5, shifts=(-1, 8))
    c.unary(Op.MAXPOOL2D, kernel=(2, 3), stride=(2, 1), padding=(0, 1, 0, 1))
    c.unary(Op.AVGPOOL2D, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), **avg_params(9),
            act_min=-32768, act_max=32767)
    c.unary(Op.AVGPOOL2D, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), **avg_params(4),
            act_min=-32768, act_max=32767)
    c.unary(Op.RELU, lo=-1.0, hi=6.0, act_min=-300, act_max=20000)
    c.unary(Op.PAD, padding=(1, 0, 2, 1))
    c.weighted(Op.CONV2D, 8, 3, padding=(0, 0, 0, 0), w_max=16, shifts=(8, 14))
    h, w, ch = c.tensors[c.cur].shape
    c.unary(Op.RESHAPE, shape=(h * w * ch,))
    _check(c, tmp_path, rng, shape)


@pytest.mark.parametrize("out_bits", [8, 16])
def test_add_of_int8_and_int16_operands(out_bits, rng, tmp_path):
    from codegen.passes.quantize import _quantize_add

    shape = (4, 5, 3)
    c = Chain(shape, rng)
    a = c.weighted(Op.CONV2D, 8, 3, shifts=(2, 9))
    b = c.weighted(Op.CONV2D, 16, 3, shifts=(-2, 8))
    for fa, fb, fy in [(4, 12, 6), (9, 2, 11)]:
        c.tensors[a].qformat, c.tensors[b].qformat = QFormat(8, fa), QFormat(16, fb)
        node = Node("add", Op.ADD, [a, b], [], {})
        y = c._out(node, out_bits)
        _quantize_add(Graph(c.tensors, c.nodes, ["x"], [y]), node, QFormat(out_bits, fy))
        if out_bits == 16:
            c.weighted(Op.CONV2D, 8, 3, shifts=(9, 14))
        _check(c, tmp_path / f"{fa}", rng, shape)
        c.nodes = c.nodes[:2]
        c.cur = b


def test_concat_of_mixed_inputs(rng, tmp_path):
    shape = (3, 4, 2)
    c = Chain(shape, rng)
    a = c.weighted(Op.CONV2D, 8, 3, shifts=(2, 9))
    b = c.weighted(Op.CONV2D, 16, 2, shifts=(-2, 8))
    node = Node("cat", Op.CONCAT, [a, "x", b], [], {"axis": 2, "shifts": [-3, 0, 4]})
    c._out(node, 16)
    c.weighted(Op.CONV2D, 8, 4, shifts=(8, 14))
    _check(c, tmp_path, rng, shape)


def test_wide_kernels_clean_under_sanitizers(rng, tmp_path):
    shape = (6, 5, 3)
    c = Chain(shape, rng)
    c.weighted(Op.CONV2D, 16, 4, (3, 3), (2, 1), (1, 1, 1, 1), shifts=(-2, 6))
    c.weighted(Op.DEPTHWISE_CONV2D, 16, 8, (3, 3), (1, 1), (1, 1, 1, 1), shifts=(4, 9))
    c.unary(Op.AVGPOOL2D, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), **avg_params(9),
            act_min=-32768, act_max=32767)
    c.weighted(Op.CONV2D, 8, 3, (1, 1), (1, 1), (0, 0, 0, 0), shifts=(8, 14))
    h, w, ch = c.tensors[c.cur].shape
    c.unary(Op.RESHAPE, shape=(h * w * ch,))
    c.weighted(Op.LINEAR, 16, 9, shifts=(-2, 4))
    c.weighted(Op.LINEAR, 8, 4, acc64=True, shifts=(8, 16))
    g = c.graph()
    from codegen.emit.c import render, write_atomic

    write_atomic(render(g, "w", ["test"]), tmp_path / "w")
    exe = build_native(tmp_path / "w", "w", tmp_path / "w_asan", SANITIZE_FLAGS)
    x = edge_inputs(rng, shape)
    expect = reference_outputs(g, run_int(g, x))
    assert np.array_equal(run_native(exe, x.reshape(len(x), -1), expect.shape[1]), expect)


def _firmware_chains(rng) -> list[tuple[str, Graph, tuple]]:
    """Chains whose dot products hit every DSP tail: runs of length % 4 = 0..3, int32 and int64."""
    chains = []
    c = Chain((7, 9, 3), rng)  # conv runs (kx1 - kx0) * in_c: 9, 6, 3 (clipped) and 15 / 10 / 5
    c.weighted(Op.CONV2D, 16, 5, (3, 3), (1, 1), (1, 1, 1, 1), shifts=(-2, 8))
    c.weighted(Op.CONV2D, 16, 6, (3, 3), (2, 1), (1, 1, 1, 1), w_max=8, shifts=(3, 10))
    c.weighted(Op.DEPTHWISE_CONV2D, 16, 12, (3, 3), (1, 1), (1, 1, 1, 1), shifts=(4, 9))
    c.weighted(Op.CONV2D, 8, 4, (1, 1), (1, 1), (0, 0, 0, 0), w_max=8, shifts=(8, 18))
    chains.append(("conv", c.graph(), (7, 9, 3)))
    v = Chain((37,), rng)
    v.weighted(Op.LINEAR, 16, 1003, shifts=(-3, 6))  # 1003 = 4 * 250 + 3
    v.tensors["w0"].data = np.abs(v.tensors["w0"].data.astype(np.int64)).clip(1, 127).astype(np.int8)
    v.nodes[0].attrs["shift"] = [-8] * 1003
    v.tensors["b0"].data[:] = 0
    # all-extreme inputs saturate the 1003 int16 values; weights 64..127 then overflow an int32
    # accumulator (SMLALD on DSP cores), and shifts 17..19 keep the sums from saturating the output
    v.weighted(Op.LINEAR, 16, 33, acc64=True, shifts=(17, 20))
    v.tensors["w1"].data = rng.integers(64, 128, v.tensors["w1"].data.shape).astype(np.int8)
    v.weighted(Op.LINEAR, 8, 7, shifts=(8, 16))
    chains.append(("fc", v.graph(), (37,)))
    return chains


@pytest.mark.skipif(bool(__import__("codegen.target", fromlist=["missing_tools"]).missing_tools()),
                    reason="needs arm-none-eabi-gcc and qemu-system-arm (scripts/setup.sh installs them)")
@pytest.mark.parametrize("board", ["rp2040", "mps2-an386", "mps2-an500"])  # M0+ plain C, M4 and M7 DSP
def test_wide_kernels_bit_exact_on_cortex_m(board, rng, tmp_path):
    from codegen.emit.c import render, write_atomic
    from codegen.target import build_elf, build_plugin, run_qemu

    plugin = build_plugin()
    for name, g, shape in _firmware_chains(rng):
        out = tmp_path / name / "model"
        write_atomic(render(g, "kw", ["test"]), out)
        x = edge_inputs(rng, shape, n_random=3)
        expect = reference_outputs(g, run_int(g, x))
        sources = [out / "kw_model.c", out / "kw_weights.c", *sorted((out / "kernels").glob("*.c"))]
        elf = build_elf(board, sources, [out, out / "kernels"], "kw", tmp_path / name / "build",
                        extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
        got = run_qemu(board, elf, x.reshape(len(x), -1), expect.shape[1], plugin=plugin).outputs
        assert np.array_equal(got, expect), f"{board} {name}: target != reference"
        if name == "fc":
            t1 = run_int(g, x)["t1"]
            assert np.abs(t1).max() < 32767 and np.abs(t1).max() > 2**31 >> 19, "int64 sums must reach the output"
