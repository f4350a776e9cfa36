"""One torch interpreter of the IR, shared by compression fine-tuning (codegen/compress.py, float) and
quantisation-aware training (codegen/qat.py, fake quantisation), so that the two cannot drift apart.

It runs the IR as reference.run_float does (the NumPy spec): channels-last activations, 1-D models as
(N, 1, L, C), the IR's asymmetric padding. What is shared:
  - the layouts at the model's boundary (to_ir_layout / to_torch_layout: NCHW, NCL and plain vectors);
  - the walk over the nodes (`execute`);
  - the geometry of every op (conv, pool, pad, reshape, concat) and the torch twin of each LUT function;
  - `float_node`: the float meaning of each op (reference.run_float's, in torch, differentiable).
QAT evaluates weighted layers and requantisations its own way (integers carried in float tensors) on top
of the same geometry; tests/test_torch_ir.py checks float_node against reference.run_float.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import UserError
from .ir import Graph, Node, Op
from .ops import SPEC, Trait, with_trait

WEIGHTED = with_trait(Trait.WEIGHTED)


# ------------------------------------------------------------------ layouts at the model's boundary


def to_ir_layout(x: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """A batch in PyTorch layout -> the IR's (reference.to_qgen_layout): (N,C,H,W) -> (N,H,W,C),
    (N,C,L) -> (N,1,L,C), (N,F) unchanged; `layout` is the input's graph.io_layout ('nlc': (N,L,C) -> (N,1,L,C))."""
    if x.ndim == 3 and layout == "nlc":
        return x[:, None]
    if x.ndim == 4:
        return x.permute(0, 2, 3, 1)
    if x.ndim == 3:
        return x.permute(0, 2, 1)[:, None]
    return x


def to_torch_layout(y: torch.Tensor, layout: str | None) -> torch.Tensor:
    """An output batch in the IR's layout -> PyTorch's (reference.from_qgen_layout); `layout` is the
    output's graph.io_layout ('ncl': (N,1,L,C) -> (N,C,L))."""
    if y.ndim != 4:
        return y
    if layout == "nlc":
        return y[:, 0]
    return y[:, 0].permute(0, 2, 1) if layout == "ncl" else y.permute(0, 3, 1, 2)


# ------------------------------------------------------------------ the walk and the geometry of each op


def execute(graph: Graph, x: torch.Tensor, evaluate: Callable[[int, Node, list[torch.Tensor]], torch.Tensor]
            ) -> torch.Tensor:
    """Run `graph` on `x` (IR layout): evaluate(index, node, activation inputs) gives each node's output."""
    values = {graph.inputs[0]: x}
    for i, node in enumerate(graph.nodes):
        xs = [values[t] for t in node.inputs if not graph.tensors[t].is_const]
        y = evaluate(i, node, xs)
        values[node.outputs[0]] = y if xs else y.expand(x.shape[0], *y.shape[1:])  # const: batch 1
    return values[graph.outputs[0]]


def conv(x: torch.Tensor, w: torch.Tensor, node: Node) -> torch.Tensor:
    """Convolution sums (no bias) of a conv2d / depthwise node: x (N,H,W,Cin), w (Cout,KH,KW,Cin or 1)."""
    top, left, bottom, right = node.attrs["padding"]
    xp = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    groups = xp.shape[1] if node.op is Op.DEPTHWISE_CONV2D else int(node.attrs.get("groups", 1))
    return F.conv2d(xp, w.permute(0, 3, 1, 2), stride=tuple(node.attrs["stride"]), groups=groups,
                    dilation=tuple(node.attrs.get("dilation", (1, 1)))).permute(0, 2, 3, 1)


def conv_transpose(x: torch.Tensor, w: torch.Tensor, node: Node) -> torch.Tensor:
    """Transposed-convolution sums (no bias) of a conv_transpose2d node (codegen/ops/upsample.py): x (N,H,W,Cin),
    w (Cout,KH,KW,Cin/groups); the full output cropped by attrs crop (a negative bottom/right adds zero rows)."""
    top, left, bottom, right = node.attrs["crop"]
    gr = int(node.attrs.get("groups", 1))
    cout, kh, kw, cg = w.shape  # torch's weight: (Cin, Cout/groups, KH, KW)
    w_t = w.reshape(gr, cout // gr, kh, kw, cg).permute(0, 4, 1, 2, 3).reshape(gr * cg, cout // gr, kh, kw)
    y = F.conv_transpose2d(x.permute(0, 3, 1, 2), w_t, stride=tuple(node.attrs["stride"]), groups=gr,
                           dilation=tuple(node.attrs.get("dilation", (1, 1))))
    y = F.pad(y, (0, max(0, -right), 0, max(0, -bottom)))
    return y[:, :, top:y.shape[2] - max(0, bottom), left:y.shape[3] - max(0, right)].permute(0, 2, 3, 1)


def weighted_sums(x: torch.Tensor, w: torch.Tensor, node: Node) -> torch.Tensor:
    """The sums of a conv2d, depthwise, linear or conv_transpose2d node, before bias."""
    if node.op is Op.CONV_TRANSPOSE2D:
        return conv_transpose(x, w, node)
    return x @ w.T if node.op is Op.LINEAR else conv(x, w, node)


def pad(x: torch.Tensor, attrs: dict) -> torch.Tensor:
    top, left, bottom, right = attrs["padding"]
    return F.pad(x, (0, 0, left, right, top, bottom))


def reshape(x: torch.Tensor, attrs: dict) -> torch.Tensor:
    return x.reshape((x.shape[0],) + tuple(attrs["shape"]))


def concat(xs: list[torch.Tensor], attrs: dict) -> torch.Tensor:
    return torch.cat(xs, dim=attrs["axis"] + 1)  # the IR's axis has no batch


def lut_function(attrs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch twin of reference.lut_function (the float function behind a LUT node)."""
    fn = attrs["fn"]
    if fn == "sigmoid":
        return torch.sigmoid
    if fn == "tanh":
        return torch.tanh
    if fn == "hardsigmoid":
        return F.hardsigmoid
    if fn == "hardswish":
        return F.hardswish
    if fn == "silu":
        return F.silu
    if fn == "gelu":
        return lambda v: F.gelu(v, approximate=attrs.get("approximate", "none"))
    if fn == "leaky_relu":
        return lambda v: F.leaky_relu(v, attrs["alpha"])
    if fn == "elu":
        return lambda v: F.elu(v, attrs["alpha"])
    if fn == "exp":
        return torch.exp
    if fn == "softplus":
        return lambda v: F.softplus(v, attrs.get("beta", 1.0), attrs.get("threshold", 20.0))
    if fn in ("mish", "selu", "log_sigmoid"):
        return {"mish": F.mish, "selu": F.selu, "log_sigmoid": F.logsigmoid}[fn]
    if fn == "celu":
        return lambda v: F.celu(v, attrs["alpha"])
    if fn in ("hardshrink", "softshrink"):
        return lambda v: getattr(F, fn)(v, attrs["lambd"])
    if fn == "threshold":
        return lambda v: F.threshold(v, attrs["threshold"], attrs["value"])
    if fn == "abs":
        return torch.abs
    if fn == "softsign":
        return F.softsign
    raise UserError(f"no torch function for LUT '{fn}'")


def clamp(y: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    return y if lo is None and hi is None else y.clamp(min=lo, max=hi)


# ------------------------------------------------------------------ float semantics


def float_node(node: Node, xs: list[torch.Tensor], const: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The float output of `node` (reference.run_float's rule for its op); const(tensor name) gives a
    constant input (e.g. a trainable parameter)."""
    return SPEC[node.op].torch_float(node, xs, const)  # the op's rule: codegen/ops/<family>.py


class FloatModule:
    """The float IR as a differentiable torch function, its constants (weights, biases, BatchNorm scales)
    as parameters: `params[tensor name]`; `write_back()` copies them into the IR."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.params = {name: torch.nn.Parameter(torch.tensor(t.data, dtype=torch.float32))
                       for name, t in graph.tensors.items() if t.is_const}

    def write_back(self) -> None:
        for name, p in self.params.items():
            self.graph.tensors[name].data = p.detach().double().numpy().copy()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x in the IR's layout (to_ir_layout); the output in PyTorch's (to_torch_layout)."""
        g = self.graph
        y = execute(g, x, lambda i, node, xs: float_node(node, xs, self.params.__getitem__))
        return to_torch_layout(y, g.io_layout.get(g.outputs[0]))
