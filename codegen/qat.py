"""Quantisation-aware training whose fake quantisation IS the integer arithmetic of the compiled model.

    qm = qat.prepare(model, example, calib_data)      # lower, fold BN, calibrate: an nn.Module
    qat.finetune(qm, x_train, y_train, epochs=5)      # or any torch training loop over qm(x)
    result = qat.compile(qm, prefix="net")            # int8 C; result.predict(x) == qm.eval()(x) exactly

How it stays exact:
- `prepare` runs the compiler's own front end and float passes (fold_pad, fold_bn, fuse_activation),
  then calibrate (any method). The activation Q-formats are taken from quantize.run on that graph and
  then frozen for training. The module executes the *IR*, node by node, in qgen's channels-last layout,
  through codegen/torch_ir.py (the torch interpreter of the IR that compression fine-tuning uses too).
- BatchNorm is folded into the preceding conv/linear at prepare time (fold_bn, running statistics), and
  the folded weights and biases are the trained parameters: BN statistics are frozen during QAT. This is
  what the integer model computes, so nothing changes at convert time.
- Every forward recomputes the weight formats from the current float weights with the compiler's own
  function (quantize.weight_formats: per-channel frac, accumulator-overflow guard, bias at f_in + f_w).
- Activations are carried as integers (stored in float tensors) with their frac. Each requantisation is
  q = clamp(floor(v) + (v - floor(v) >= 0.5), lo, hi) on v = value * 2^frac — fixed.quantize's rule and,
  for accumulators, exactly round_shift's round-half-up + saturation. In eval mode everything runs in
  float64, where all values are dyadic with < 53 significant bits, so sums and shifts are exact and the
  forward equals reference.run_int element for element. In train mode (float32) rounding uses the
  straight-through estimator: gradient 1 inside [lo, hi], 0 where the value saturates.
- `convert` writes the trained weights into the float graph and pins each activation range to
  127 * 2^-frac, which quantize.py maps back to the same frac (calibrate.py documents ranges).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import progress, torch_ir
from .errors import UserError
from .fixed import frac_for_range
from .ir import Graph, Node
from .ops import SPEC, Trait, has
from .passes import calibrate, concat_in_place, fold_bn, fold_pad, fuse_activation, quantize, run_pipeline
from .torch_ir import WEIGHTED


def prepare(model: nn.Module, example: torch.Tensor, calib_data: np.ndarray, method: str = "minmax",
            percentile: float = 99.99, extra_passes: list | None = None, weights: str = "int8",
            precision: dict[str, int] | None = None) -> QATModel:
    """Lower `model` like codegen.compile does, calibrate, and wrap the IR as a fake-quant nn.Module.

    extra_passes: (name, fn) float-IR passes run before calibration (e.g. equalize), as in compile().
    weights / precision: as QuantOptions (passes/assign_precision.py): "int4" or {layer: 4} fake-quantise
    those layers' weights to int4 exactly as the compiled model stores them.
    """
    from .frontend import from_module
    from .passes import assign_precision

    graph = from_module(model, example)  # keeps the model's (and every submodule's) training flag
    calib = np.asarray(calib_data)
    graph = run_pipeline(graph, [("fold_pad", fold_pad.run), ("fold_bn", fold_bn.run),
                                 ("fuse_activation", fuse_activation.run), *(extra_passes or []),
                                 *([("assign_precision", lambda g: assign_precision.run(g, precision, weights))]
                                   if precision or weights != "int8" else []),
                                 ("calibrate", lambda g: calibrate.run(g, calib, method=method,
                                                                       percentile=percentile))])
    return QATModel(graph)


def convert(qat_model: QATModel) -> Graph:
    """The calibrated float IR holding the trained weights, with activation formats pinned to QAT's."""
    return qat_model.float_graph()


@progress.tracked("compile (QAT)")
def compile(qat_model: QATModel, *, prefix: str = "model", out_dir: str | Path | None = None,
            eval_data: np.ndarray | None = None, command: str | None = None):
    """codegen.compile's back half (driver.lower: quantize, plan memory, limits, report, emit) on
    convert(qat_model)."""
    from . import driver
    from .emit.c import check_prefix
    from .options import CompileOptions, EmitOptions
    from .output import option_text

    start = time.perf_counter()
    check_prefix(prefix)
    float_graph = convert(qat_model)
    if eval_data is None:
        in_shape = qat_model.torch_input_shape()
        eval_data = np.random.default_rng(0).standard_normal((16, *in_shape)).astype(np.float32)
    options = CompileOptions(emit=EmitOptions(prefix=prefix))
    return driver.lower(float_graph, options, driver.Context(), eval_x=eval_data,
                        banner_options=option_text(prefix=prefix, qat=True), command=command,
                        out_dir=Path(out_dir) if out_dir is not None else None, start=start)


def finetune(qat_model: QATModel, x: np.ndarray, y: np.ndarray, epochs: int = 5, lr: float = 1e-3,
             batch: int = 64, seed: int = 0) -> QATModel:
    """A plain classification fine-tuning loop (Adam, cross-entropy, cosine LR) through the fake quant."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))
    opt = torch.optim.Adam(qat_model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    qat_model.train()
    batches = -(-len(xt) // batch)
    with progress.task("QAT", total=epochs * batches) as bar:  # one step per batch, a line per epoch
        for epoch in range(epochs):
            loss_sum = 0.0
            for idx in torch.randperm(len(xt), generator=gen).split(batch):
                opt.zero_grad()
                loss = F.cross_entropy(qat_model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(idx)
                bar.advance()
            sched.step()
            bar.note(f"epoch {epoch + 1}/{epochs} loss {loss_sum / max(1, len(xt)):.4f}")
    return qat_model.eval()


# ------------------------------------------------------------------------------------------ module


def _round_half_up(v: torch.Tensor) -> torch.Tensor:
    """fixed.quantize's rounding: floor(v), plus one where the remainder is >= 1/2 (no double rounding)."""
    q = torch.floor(v)
    return q + (v - q >= 0.5).to(v.dtype)


@dataclass(frozen=True)
class QATStep:
    """What an op's `qat` rule (codegen/ops) reads besides the module: the layer's integer attrs, input and
    output fraction bits, straight-through rounding (training) or exact integers (evaluation)."""
    attrs: dict
    fin: int
    fout: int
    ste: bool
    exact: bool
    dtype: torch.dtype


def _requant(v: torch.Tensor, lo: float | None, hi: float | None, ste: bool) -> torch.Tensor:
    """v (a value times 2^frac) -> integer in [lo, hi]; straight-through gradient inside [lo, hi]."""
    q = _round_half_up(v)
    if lo is not None or hi is not None:
        q, v = torch.clamp(q, lo, hi), torch.clamp(v, lo, hi)
    if not ste:
        return q
    return v + (q - v).detach()


def _pow2(e) -> float:
    return float(2.0 ** int(e))


requant, pow2 = _requant, _pow2  # for the ops' qat rules (codegen/ops)


class QATModel(nn.Module):
    """Executes qgen's float IR with fake quantisation that mirrors codegen/reference.py run_int."""

    def __init__(self, graph: Graph):
        super().__init__()
        self._graph = copy.deepcopy(graph)
        # activation formats and weight-free attributes, as compile chooses them (driver.int_passes: a concat's
        # in-place inputs share its range before quantize)
        qgraph = quantize.run(concat_in_place.share_formats(copy.deepcopy(graph)))
        self._frac = {name: t.qformat.frac for name, t in qgraph.tensors.items()
                      if not t.is_const and t.qformat is not None}
        self._attrs = [n.attrs for n in qgraph.nodes]  # same node order as the float graph
        self._tables = {n.outputs[0]: torch.from_numpy(qgraph.tensors[n.inputs[1]].data.astype(np.int64))
                        for n in qgraph.nodes if has(n.op, Trait.TABLE)}
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.params = nn.ParameterDict()  # other trained constants (OpSpec.qat_params): "<node>_<input index>"
        for i, node in enumerate(self._graph.nodes):
            for k in SPEC[node.op].qat_params:
                self.params[f"{i}_{k}"] = nn.Parameter(torch.tensor(self._graph.tensors[node.inputs[k]].data,
                                                                    dtype=torch.float32))
            if node.op in WEIGHTED:
                self.weights[str(i)] = nn.Parameter(torch.tensor(self._graph.tensors[node.inputs[1]].data,
                                                                 dtype=torch.float32))
                self.biases[str(i)] = nn.Parameter(torch.tensor(self._graph.tensors[node.inputs[2]].data,
                                                                dtype=torch.float32))
        self.eval()

    # -- introspection
    def act_fracs(self) -> dict[str, int]:
        """The frozen activation frac of every tensor (same names as the compiled graph)."""
        return dict(self._frac)

    def torch_input_shape(self) -> tuple[int, ...]:
        shape = self._graph.tensors[self._graph.inputs[0]].shape
        layout = self._graph.io_layout.get(self._graph.inputs[0], "nf")
        if layout == "nchw":
            return (shape[2], shape[0], shape[1])
        if layout == "ncl":
            return (shape[2], shape[1])
        if layout == "nlc":
            return (shape[1], shape[2])
        return tuple(shape)

    def float_graph(self) -> Graph:
        """The float IR with the current weights and ranges pinned to the frozen activation fracs."""
        g = copy.deepcopy(self._graph)
        for i, node in enumerate(g.nodes):
            if node.op in WEIGHTED:
                g.tensors[node.inputs[1]].data = self.weights[str(i)].detach().double().numpy().copy()
                g.tensors[node.inputs[2]].data = self.biases[str(i)].detach().double().numpy().copy()
            for k in SPEC[node.op].qat_params:
                g.tensors[node.inputs[k]].data = self.params[f"{i}_{k}"].detach().double().numpy().copy()
        # activations pinned to their frozen formats: the calibrated range where it gives that format (a format
        # chosen from it at another width stays: a relu RNN's int16 state), else 127 * 2^-frac; internal state
        # ranges (an LSTM's '<out>#cell') as calibrated
        cal = g.ranges
        g.ranges = {**{k: v for k, v in cal.items() if k not in self._frac and k not in g.tensors},
                    **{name: cal[name] if name in cal and frac_for_range(cal[name], 8) == frac else 127.0 * 2.0 ** -frac
                       for name, frac in self._frac.items()}}
        return g

    # -- execution
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self._graph
        exact = not self.training
        dtype = torch.float64 if exact else torch.float32
        x = torch_ir.to_ir_layout(torch.as_tensor(x).to(dtype), g.io_layout.get(g.inputs[0]))
        x = _requant(x * _pow2(self._frac[g.inputs[0]]), -128, 127, not exact)
        y = torch_ir.execute(g, x, lambda i, node, xs: self._node(i, node, xs, exact, dtype))
        out = g.outputs[0]
        return torch_ir.to_torch_layout(y * _pow2(-self._frac[out]), g.io_layout.get(out))

    def _node(self, i: int, node: Node, xs: list[torch.Tensor], exact: bool, dtype) -> torch.Tensor:
        rule = SPEC[node.op].qat  # codegen/ops: each op's fake-quantised integer twin
        if rule is None:
            raise UserError(f"{node.where()}: QAT does not support op {node.op.value}")
        step = QATStep(self._attrs[i], self._frac.get(node.inputs[0], 0), self._frac[node.outputs[0]], not exact,
                       exact, dtype)  # fin 0: a const node has no activation input
        return rule(self, i, node, xs, step)

    def _weighted(self, i: int, node: Node, x: torch.Tensor, fin: int, fout: int, attrs: dict,
                  exact: bool, dtype) -> torch.Tensor:
        w, b = self.weights[str(i)], self.biases[str(i)]
        fw, w_q, b_q, _ = quantize.weight_formats(w.detach().double().numpy(), b.detach().double().numpy(), fin,
                                                  fout, bool(node.attrs.get("weight_per_tensor")), node.where(),
                                                  bits=int(node.attrs.get("weight_bits", 8)))
        scale_w = torch.tensor(np.exp2(fw.astype(np.float64)), dtype=dtype)
        scale_b = torch.tensor(np.exp2((fin + fw).astype(np.float64)), dtype=dtype)
        w_int = torch.tensor(w_q, dtype=dtype)
        b_int = torch.tensor(b_q, dtype=dtype)
        if not exact:  # straight-through: forward uses the integers, gradient flows to the float weights
            ws = w * scale_w.reshape((-1,) + (1,) * (w.ndim - 1))
            w_int = ws + (w_int - ws).detach()
            bs = b * scale_b
            b_int = bs + (b_int - bs).detach()
        acc = torch_ir.weighted_sums(x, w_int, node)
        shift = torch.tensor(np.exp2(-(fin + fw - fout).astype(np.float64)), dtype=dtype)
        return _requant((acc + b_int) * shift, attrs["act_min"], attrs["act_max"], not exact)

