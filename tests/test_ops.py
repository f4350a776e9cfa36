"""The op table (codegen/ops) is complete: for every Op, its spec has every rule, a PyTorch (and, where
ONNX has the op, an ONNX) front-end handler produces it, its C kernels exist in qg_kernels.h and the C
emitter calls one of them, and the README's supported-op table is the one generated from the specs.

Adding an op without one of these is a failing test here, not a user's crash."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codegen import ops
from codegen.ops import SPEC, Op, Trait

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "firmware" / "kernels" / "qg_kernels.h").read_text()
NO_KERNEL = {Op.BATCH_NORM: "folded before quantisation", Op.RESHAPE: "the planner aliases its buffers"}
# ops no front end produces: a pass inserts them (tests/passes/test_<pass>.py emits and runs them)
PASS_MADE = {Op.HISTORY: "passes/stream.py (--stream) inserts it before a causal convolution over time",
             Op.MEAN: "fuse/ensemble_graph.py combines an ensemble's members with it (tests/test_fuse_ensemble.py)",
             Op.VOTE: "fuse/ensemble_graph.py combines an ensemble's members with it (tests/test_fuse_ensemble.py)"}


class AllOps(nn.Module):
    """One small model whose IR holds every op (BatchNorm after an add cannot be folded)."""

    shuffle = True  # the parts the ONNX front end does not take (3-D views, recurrent layers)
    layout = True  # channel shuffle, chunk, matmul of two images: both front ends

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.prelu = nn.PReLU(4)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2 * 2 + 4, 5)  # + the channel mean (reduce)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)  # conv_transpose2d
        self.inorm = nn.InstanceNorm2d(8, affine=True)  # group_norm (groups = C)
        self.bn1d = nn.BatchNorm1d(5)  # after a ReLU: channel_affine
        self.ln = nn.LayerNorm(5)
        self.gru = nn.GRU(9, 4, batch_first=True)  # recurrent layers over the 2x2 pixels as 4 time steps
        self.lstm = nn.LSTM(9, 3, batch_first=True)
        self.rnn = nn.RNN(3, 2, batch_first=True)
        self.fc_seq = nn.Linear(4 + 2, 5)
        self.register_buffer("keep", torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]]))  # masked_softmax
        self.register_buffer("pos", torch.randn(1, 4, 8, 8) * 0.1)  # const: a (1, C, H, W) constant added

    def forward(self, x):
        y = torch.relu(self.conv(self.pad(x)))
        y = y + self.up(nn.functional.interpolate(nn.functional.max_pool2d(y, 4), scale_factor=2))  # resize
        gate = torch.sigmoid(y.mean((2, 3), keepdim=True))  # mul of a (1, C, 1, 1) gate, sub, max, min, affine
        y = self.prelu(torch.maximum(y, y * 0.5) - torch.minimum(y, 1 - y)) * gate
        y = self.bn(self.dw(y) + y) + self.pos
        if self.layout:  # channel shuffle: one transpose; chunk: two slices; (1, C, H, W) @ (1, C, W, H)
            y = y.view(1, 2, 2, *y.shape[2:]).transpose(1, 2).reshape(y.shape)
            a, b = y.chunk(2, 1)  # two slices
            y = torch.cat([b, a], 1)
            y = y + 0.1 * torch.matmul(y, y.transpose(2, 3))
        y = torch.cat([torch.relu(nn.functional.max_pool2d(y, 2)),
                       torch.sigmoid(nn.functional.avg_pool2d(y, 3, 2, 1, count_include_pad=False))], 1)  # clipped
        y = nn.functional.max_pool2d(nn.functional.pad(self.inorm(y), (0, 1, 1, 0)), 2)  # a pad no conv absorbs
        if self.shuffle:  # matmul of two activations: (1, C, HW) @ (1, HW, C) @ (1, C, HW)
            f = y.flatten(2)
            y = ((f @ f.transpose(1, 2)) @ f).view(y.shape)
        y = torch.cat([y, y.mean(1, keepdim=True)], 1)  # reduce over channels
        z = self.fc(torch.flatten(y, 1))
        if self.shuffle:  # GRU, LSTM, RNN over the 2x2 pixels as 4 time steps (ONNX: its own recurrent model)
            seq = y.flatten(2).transpose(1, 2)  # (1, 4, 9): channels as features, no copy
            _, h = self.gru(seq)
            r, _ = self.rnn(self.lstm(seq)[0])
            z = z + self.fc_seq(torch.cat([h[-1], r[:, -1]], 1))
        z = z + torch.softmax(z.masked_fill(self.keep == 0, float("-inf")), 1)  # masked_softmax (ONNX: Where)
        h = self.ln(self.bn1d(torch.relu(z)))
        return torch.cat([torch.softmax(h, 1), torch.log_softmax(h, 1)], 1)


def _model():
    torch.manual_seed(0)
    return AllOps().eval(), torch.randn(1, 2, 7, 7)


@pytest.fixture(scope="module")
def torch_graph():
    from codegen.frontend import from_module

    model, x = _model()
    return from_module(model, x)


@pytest.fixture(scope="module")
def onnx_graph(tmp_path_factory):
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    from codegen.frontend.onnx_import import from_onnx_file

    model, x = _model()
    model.shuffle = False
    path = tmp_path_factory.mktemp("onnx") / "allops.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path))
    return from_onnx_file(str(path))


class Recurrent(nn.Module):
    """GRU -> LSTM -> RNN for the ONNX front end (the TorchScript exporter keeps nn.RNN an ONNX RNN node; the
    all-ops model's pixels-as-time reshape is one the ONNX front end does not take)."""

    def __init__(self):
        super().__init__()
        self.gru, self.lstm, self.rnn = (nn.GRU(5, 4, batch_first=True), nn.LSTM(4, 3, batch_first=True),
                                         nn.RNN(3, 2, batch_first=True))

    def forward(self, x):
        return self.rnn(self.lstm(self.gru(x)[0])[0])[1][-1]


@pytest.fixture(scope="module")
def onnx_recurrent_graph(tmp_path_factory):
    pytest.importorskip("onnx", reason="the ONNX front end needs the `onnx` package")
    from codegen.frontend.onnx_import import from_onnx_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "recurrent.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(Recurrent().eval(), (torch.randn(1, 6, 5),), str(path), dynamo=False)
    return from_onnx_file(str(path))


@pytest.fixture(scope="module")
def compiled():
    import codegen

    model, x = _model()
    return codegen.compile(model, x, prefix="allops")


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
def test_spec_is_complete(op):
    spec = SPEC[op]
    assert spec.op is op
    float_only = Trait.FLOAT_ONLY in spec.traits
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("ref_int", "quantize") and float_only:
            assert value is None, f"{op.value} is FLOAT_ONLY but has {f.name}"
            continue
        if f.name in ("torch", "kernels", "onnx", "emit_py", "no_py", "emit_c", "emit_c_wide", "qat", "form",
                      "state_ranges"):
            continue  # checked below; state_ranges: only for ops that keep internal state (an LSTM's cell)
        assert value is not None, f"{op.value}: spec.{f.name} is missing"
        if f.name in ("shape", "check", "ref_float", "ref_int", "quantize", "macs", "torch_float"):
            assert callable(value), f"{op.value}: spec.{f.name} is not callable"
    assert spec.summary
    assert (ROOT / "codegen" / "ops" / f"{spec.family}.py").is_file()
    # the pure MicroPython module: a call, or an explicit refusal with its reason (emit/micropython.py says it)
    assert callable(spec.emit_py) != bool(spec.no_py), f"{op.value}: emit_py xor no_py (the reason it has none)"
    # the generated C: an int8 call unless FLOAT_ONLY, an int16 one wherever its kernel rule has wide variants
    assert callable(spec.emit_c) != float_only, f"{op.value}: emit_c must exist exactly when the op is not FLOAT_ONLY"
    wide = not float_only and any(_has_variant(spec, v) for v in ("s8_to_s16", "s16_to_s8", "s16", "wide"))
    no_code = not float_only and spec.kernel("s8")[0] is None  # reshape: no code at any width
    assert callable(spec.emit_c_wide) == (wide or no_code), f"{op.value}: emit_c_wide must match its int16 kernels"
    assert callable(spec.qat) != float_only, f"{op.value}: QAT's integer twin (qat) exactly when not FLOAT_ONLY"


def _has_variant(spec, variant: str) -> bool:
    try:
        return spec.kernel(variant)[0] is not None
    except ValueError:
        return False


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
def test_a_pytorch_handler_produces_it(op, torch_graph):
    import copy

    from codegen.passes import fold_bn

    if op in PASS_MADE:
        pytest.skip(PASS_MADE[op])
    made = {n.op for n in torch_graph.nodes} | {n.op for n in fold_bn.run(copy.deepcopy(torch_graph)).nodes}
    assert op in made, f"no PyTorch front-end handler (or fold_bn's lowering of a BatchNorm) produced {op.value}:\n" \
                       f"{torch_graph}"


@pytest.mark.parametrize("op", [o for o in Op if SPEC[o].onnx], ids=lambda o: o.value)
def test_an_onnx_handler_produces_it(op, onnx_graph, onnx_recurrent_graph):
    from codegen.frontend.onnx_import import HANDLERS

    assert set(SPEC[op].onnx) <= set(HANDLERS), f"{op.value}: ONNX types without a handler"
    made = {n.op for n in onnx_graph.nodes} | {n.op for n in onnx_recurrent_graph.nodes}
    assert op in made, f"no ONNX handler produced {op.value}:\n{onnx_graph}\n{onnx_recurrent_graph}"


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
def test_its_kernels_exist_in_the_header(op):
    spec = SPEC[op]
    if op in NO_KERNEL:
        assert not spec.kernels, NO_KERNEL[op]
        return
    assert spec.kernels, f"{op.value} names no C kernel"
    for fn in spec.kernels:
        assert re.search(rf"\b{fn}\s*\(", HEADER), f"{op.value}: {fn} has no prototype in qg_kernels.h"


@pytest.mark.parametrize("op", [o for o in Op if o not in NO_KERNEL and o not in PASS_MADE], ids=lambda o: o.value)
def test_the_c_emitter_calls_one_of_its_kernels(op, compiled):
    from codegen.emit.c import model_data

    g = compiled.graph
    layers = [layer for layer, n in zip(model_data(g, "allops").layers, g.nodes) if n.op is op]
    assert layers, f"{op.value} is not in the compiled all-ops model:\n{g}"
    for layer in layers:
        called = set(re.findall(r"\b(qg_\w+)\s*\(", layer.call))
        assert called & set(SPEC[op].kernels), f"{op.value}: emitted {layer.call}, spec names {SPEC[op].kernels}"


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
def test_its_references_run(op, compiled):
    """Float reference on the float graph, integer reference on the quantised one (FLOAT_ONLY: float only)."""
    from codegen.reference import quantize_input, run_float, run_int

    model, x = _model()
    if Trait.FLOAT_ONLY in SPEC[op].traits:
        from codegen.frontend import from_module
        from codegen.reference import to_qgen_layout

        g = from_module(model, x)
        values = run_float(g, to_qgen_layout(g, x.numpy()))
    else:
        g = compiled.graph
        values = run_int(g, quantize_input(g, x.numpy()))
    for n in (n for n in g.nodes if n.op is op):
        assert values[n.outputs[0]].shape[1:] == tuple(g.tensors[n.outputs[0]].shape)
        assert np.all(np.isfinite(values[n.outputs[0]]))


def test_trait_queries_are_what_the_passes_use():
    from codegen.passes import assign_precision, fuse_activation, plan_memory

    assert fuse_activation.FUSABLE == ops.with_trait(Trait.FUSES_ACT)
    assert set(plan_memory.IN_PLACE_OPS) == {Op.RELU, Op.LUT, Op.ADD, Op.SOFTMAX, Op.LOG_SOFTMAX, Op.MASKED_SOFTMAX,
                                             Op.MUL, Op.SUB,
                                             Op.MAXIMUM, Op.MINIMUM, Op.AFFINE, Op.PRELU, Op.CHANNEL_AFFINE,
                                             Op.LAYER_NORM, Op.GROUP_NORM}
    assert set(assign_precision.FOLLOW_OPS) == {Op.RELU, Op.MAXPOOL2D, Op.AVGPOOL2D, Op.RESHAPE, Op.PAD,
                                                 Op.TRANSPOSE, Op.SLICE, Op.RESIZE,
                                                 Op.REDUCE, Op.HISTORY}
    assert set(ops.with_trait(Trait.WEIGHTED)) == {Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.LINEAR, Op.CONV_TRANSPOSE2D}


def test_no_op_category_list_outside_the_op_table():
    """`(Op.A, Op.B, ...)` written out in the code is a list a new op would have to be added to by hand."""
    pattern = re.compile(r"Op\.[A-Z_0-9]+\s*,\s*Op\.")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "codegen").rglob("*.py"))
             if "ops" not in p.relative_to(ROOT / "codegen").parts[:1]
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(found) <= ALLOWED_CATEGORY_LISTS, "\n".join(found)


ALLOWED_CATEGORY_LISTS = 0


def test_readme_supported_table_is_generated():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- ops: begin -->", "<!-- ops: end -->"
    if begin not in readme or end not in readme:
        pytest.skip(f"README.md has no '{begin}' ... '{end}' markers around its supported-op table yet")
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == ops.supported_table_markdown().strip(), \
        "README's supported-op table differs from codegen.ops.supported_table_markdown(); paste its output"


def test_supported_message_comes_from_the_table():
    from codegen.frontend import torch_export

    assert torch_export.SUPPORTED == ops.supported_torch()
    for spec in SPEC.values():
        assert spec.torch in torch_export.SUPPORTED


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
def test_kernel_rule_names_only_listed_kernels(op):
    """Every function the op's kernel rule can choose (codegen.kernels.select) is in spec.kernels and defined
    in a firmware/kernels/*.c file; its parameter struct is declared in qg_kernels.h."""
    from codegen.kernels import kernel_sources, kernel_structs

    spec = SPEC[op]
    chosen = set()
    for variant in ("s8", "s8_to_s16", "s16_to_s8", "s16", "wide", "bitmap", "index", "cluster", "int4",
                    "s8_windows", "s16_windows", "s8_pointwise", "s8_bcast", "wide_bcast"):
        try:
            fn, struct = spec.kernel(variant)
        except ValueError:
            continue  # the op has no kernel of that variant (INT8_ONLY, no sparse depthwise)
        if fn is not None:
            chosen.add(fn)
            assert fn in kernel_sources(), f"{op.value}/{variant}: {fn} is defined in no kernel source"
        if struct is not None:
            assert struct in kernel_structs(), f"{op.value}/{variant}: struct {struct} not in qg_kernels.h"
    assert chosen == set(spec.kernels), f"{op.value}: rule chooses {sorted(chosen)}, spec lists {spec.kernels}"
