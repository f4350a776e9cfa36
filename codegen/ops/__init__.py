"""The op table: every op of qgen's IR, its traits, and one OpSpec per op.

An op's knowledge lives in its family module (conv.py: conv2d, depthwise, linear; pool.py; eltwise.py:
relu/clamp, add, lut, softmax; layout.py: reshape, pad, concat; norm.py: batch_norm): shape rule, node
check, float and integer reference, quantisation rule, MAC count, the torch float semantic, the PyTorch
and ONNX ops that lower to it and its C kernels. Passes ask `has(op, Trait.X)` or `with_trait(Trait.X)`
instead of writing op lists; tests/test_ops.py checks every op's spec is complete.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import numpy as np

    from ..ir import Graph, Node


class Op(str, enum.Enum):
    CONV2D = "conv2d"
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    LINEAR = "linear"
    BATCH_NORM = "batch_norm"  # only before fold_bn
    CHANNEL_AFFINE = "channel_affine"  # x * scale[c] + offset[c] (int16 scale): a BatchNorm fold_bn cannot fold
    LAYER_NORM = "layer_norm"  # over attrs["axes"] trailing IR axes; inputs gamma, beta; attrs eps
    GROUP_NORM = "group_norm"  # attrs["groups"] over H*W*C/G (InstanceNorm: groups = C); gamma, beta; eps
    RELU = "relu"  # clamp(x, lo, hi) with attrs lo/hi (None = unbounded); fused away where possible
    MAXPOOL2D = "maxpool2d"
    AVGPOOL2D = "avgpool2d"
    RESHAPE = "reshape"  # flatten / view: no data movement
    ADD = "add"
    PAD = "pad"  # zero padding (top, left, bottom, right); folded into a following conv where possible
    CONCAT = "concat"  # along attrs["axis"] of the (batch-less) IR shape
    SOFTMAX = "softmax"  # over the last IR axis (channels / features)
    LOG_SOFTMAX = "log_softmax"  # over the last IR axis, through softmax's exp table and an integer ln
    MASKED_SOFTMAX = "masked_softmax"  # softmax over the last IR axis after a constant mask (attention.py)
    LUT = "lut"  # element-wise function through a 256-entry int8 table (sigmoid, tanh, ...)
    REDUCE = "reduce"  # mean / max / sum over the last IR axis (channels), kept with size 1: attrs["kind"]
    MUL = "mul"  # product of two activations; inputs[1] may be (1, 1, C) against (H, W, C) (broadcast)
    SUB = "sub"  # difference of two activations (aligned like add)
    MAXIMUM = "maximum"  # element-wise max of two activations (aligned like add)
    MINIMUM = "minimum"  # element-wise min of two activations
    AFFINE = "affine"  # x * scale + offset with scalar constants (x * 0.5, x / 6, x + 3)
    PRELU = "prelu"  # x >= 0 ? x : x * alpha[c] (per-channel or one slope)
    TRANSPOSE = "transpose"  # physical permutation copy: attrs["perm"] over the IR axes (np.transpose)
    SLICE = "slice"  # [start, start + length) along IR axis attrs["axis"] (chunk, split, narrow, select)
    MATMUL = "matmul"  # A (batch, M, K) x B (batch, N, K) -> (batch, M, N): two activations, K innermost
    CONV_TRANSPOSE2D = "conv_transpose2d"  # transposed conv (ConvTranspose1d/2d), gather form: no zero MACs
    RESIZE = "resize"  # nearest / bilinear upsampling (Upsample, F.interpolate) through per-axis tables
    GRU = "gru"  # one GRU layer and direction over a (1, T, I) sequence (codegen/ops/recurrent.py)
    LSTM = "lstm"  # one LSTM layer and direction
    RNN = "rnn"  # one Elman RNN layer and direction, attrs["nonlinearity"] tanh | relu
    HISTORY = "history"  # streaming only: the last attrs["frames"] frames of its input (codegen/ops/stream.py)
    MEAN = "mean"  # average of n same-shape activations (an ensemble's members, codegen/ops/combine.py)
    VOTE = "vote"  # per-class vote counts of n members' argmax (codegen/ops/combine.py)
    CONST = "const"  # a constant tensor as an activation (no activation input): codegen/ops/const.py


class Trait(enum.Flag):
    """What passes, the planner and the emitters need to know about an op, instead of op lists."""

    NONE = 0
    WEIGHTED = enum.auto()  # inputs[1] int8 weights (Cout first), inputs[2] int32 bias; attrs shift/act_min/act_max
    MATMUL = enum.auto()  # every output channel reads every input channel (conv2d, linear): prunable
                          # element- and channel-wise, low-rank factorable, sparse weight storage
    SLIDING_WINDOW = enum.auto()  # channels-last window over H, W (stride, padding): output may overlap input
    FUSES_ACT = enum.auto()  # a following clamp/ReLU folds into attrs["act"]
    IN_PLACE = enum.auto()  # element i of the output depends only on element i (or its row) of the
                            # input(s): the planner may write the output over an input
    KEEPS_FORMAT = enum.auto()  # output Q-format = input's (no requantisation; calibration looks through it)
    CHANNELWISE = enum.auto()  # output channel c depends only on input channel c (channel pruning passes it)
    KEEPS_ORDER = enum.auto()  # one activation in, same shape out, a flattened vector keeps its element order
    CHOOSES_FORMAT = enum.auto()  # output format from its own calibrated range: may be raised to int16
    INT8_ONLY = enum.auto()  # integer semantics defined for int8 input only (256-entry tables)
    TABLE = enum.auto()  # inputs[1] is a table built by quantisation (softmax exp, LUT)
    FOLDS_PAD = enum.auto()  # zero padding attribute that a preceding PAD folds into
    FLOAT_ONLY = enum.auto()  # removed before quantisation (batch_norm: folded)
    STRIDED_OUT = enum.auto()  # its int8 kernel writes output pixels at a wider stride (`out_stride`): a concat
                               # input it produces can be written in place (passes/concat_in_place)
    HOLDS_STATE = enum.auto()  # streaming: its output is state kept between steps (plan_memory's "state" region,
                               # zeroed by <prefix>_reset), never scratch (passes/stream.py inserts it)


class VerifyError(Exception):
    """The IR broke an invariant; always a bug in qgen (a pass), never the user's fault."""


ShapeRule = Callable[["Graph", "Node"], tuple]
Reference = Callable[["Graph", "Node", list], "np.ndarray"]


@dataclass(frozen=True)
class OpSpec:
    op: Op
    family: str  # the module holding it: conv, pool, eltwise, layout, norm
    traits: Trait
    shape: ShapeRule  # output shape from the inputs and attrs (ir.verify compares)
    check: Callable[["Graph", "Node"], None]  # raises VerifyError on a malformed node
    ref_float: Reference  # (graph, node, activation inputs (N, ...)) -> float output (reference.run_float)
    ref_int: Reference | None  # the integer spec (reference.run_int); None only for FLOAT_ONLY ops
    quantize: Callable[..., None] | None  # (graph, node, act) sets output format and integer attrs
    macs: Callable[["Graph", "Node"], int]  # multiply-accumulates per inference
    torch_float: Callable[..., Any]  # (node, xs, const) -> torch tensor: torch_ir.float_node
    torch: str  # the PyTorch modules/functions that lower to it (README table, error messages)
    onnx: tuple[str, ...]  # ONNX op types that lower to it
    kernels: tuple[str, ...]  # C kernel functions that can run it (firmware/kernels/qg_kernels.h)
    summary: str  # one line for the README table
    # kernel variant (codegen/kernels.py: s8, s8_to_s16, s16_to_s8, s16, wide, bitmap, index, cluster) ->
    # (C function, parameter struct or None); codegen.kernels.select adds scratch, overlap, source, field types
    kernel: Callable[[str], tuple[str | None, str | None]] | None = None
    # pure MicroPython module (emit/micropython.py): (builder, node, index) -> (module function, its
    # [(parameter, value)], extra call arguments), or None: no code (reshape). emit_py None: the target
    # refuses the op, `no_py` says why
    emit_py: Callable[..., tuple[str, list[tuple[str, Any]], str] | None] | None = None
    no_py: str = ""
    # generated C (emit/c.py): (builder, index, node) -> (parameter struct or None, [(field, value)], the call
    # statement or None: no code), dense weights; emit_c for int8 activations, emit_c_wide for any int16
    # (qg_wide.c). None: FLOAT_ONLY (emit_c) / no int16 kernel (emit_c_wide: the layer keeps int8)
    emit_c: Callable[..., tuple[str | None, list[tuple[str, Any]], str | None]] | None = None
    emit_c_wide: Callable[..., tuple[str | None, list[tuple[str, Any]], str | None]] | None = None
    # QAT's fake-quantised integer twin (qat.py QATModule._node): (module, index, node, xs, step: qat.QATStep)
    # -> torch tensor on the integer grid; None: QAT refuses the op
    qat: Callable[..., Any] | None = None
    # refines the kernel variant from the node (pool: "s8" -> "s8_windows" for clipped or adaptive windows);
    # None: the variant alone decides (codegen/kernels.py variant)
    form: Callable[["Graph", "Node", str], str] | None = None
    # ranges of internal state that calibration records besides the output's (graph.ranges keys such as
    # '<output>#cell'): (graph, node, float activation inputs) -> {key: max |value|}; None: none
    state_ranges: Callable[["Graph", "Node", list], dict[str, float]] | None = None
    # input indices of the constants QAT trains besides a WEIGHTED op's weight and bias (qat.QATModel.params
    # f"{node index}_{input index}", read by the op's qat rule and written back by convert)
    qat_params: tuple[int, ...] = ()


def _zero_macs(g, n) -> int:
    return 0


def _no_check(g, n) -> None:
    return None


from . import attention, combine, const, conv, eltwise, layout, matmul, norm, pool, recurrent, stream, upsample  # noqa: E402  (the families register below)

FAMILIES = (conv, norm, eltwise, pool, layout, upsample, matmul, recurrent, stream, combine, attention, const)
SPEC: dict[Op, OpSpec] = {s.op: s for family in FAMILIES for s in family.SPECS}
assert set(SPEC) == set(Op), set(Op) - set(SPEC)
SPEC = {op: SPEC[op] for op in Op}  # enum order


def has(op: Op, trait: Trait) -> bool:
    return bool(SPEC[op].traits & trait)


def with_trait(trait: Trait) -> tuple[Op, ...]:
    """The ops having `trait`, in enum order (deterministic in messages)."""
    return tuple(op for op in Op if has(op, trait))


def supported_torch() -> str:
    """The PyTorch side of the op table, for the front end's 'Supported:' message."""
    return ", ".join(s.torch for s in SPEC.values() if s.torch) + (
        ", Dropout/Dropout2d/AlphaDropout (eval), PixelShuffle/pixel_unshuffle, x[..., ::2, ::2]"
        ", reflect/replicate/circular padding"
        ", weight_norm (folded into the weights), F.glu/nn.GLU, scaled_dot_product_attention"
        ", F.unfold/F.fold of non-overlapping patches")


def supported_table_markdown() -> str:
    """The README's supported-op table (tests/test_ops.py checks README.md agrees)."""
    rows = ["| IR op | PyTorch | ONNX | C kernels | traits |", "|---|---|---|---|---|"]
    for s in SPEC.values():
        traits = ", ".join(t.name.lower() for t in Trait if t.name != "NONE" and t in s.traits)
        kernels = ", ".join(f"`{k}`" for k in s.kernels) or "(none: " + s.summary + ")"
        rows.append(f"| `{s.op.value}` | {s.torch or '-'} | {', '.join(s.onnx) or '-'} | {kernels} | {traits} |")
    return "\n".join(rows) + "\n"
