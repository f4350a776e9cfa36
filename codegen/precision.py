"""Automatic mixed precision: raise the most sensitive layers to int16 until the accuracy drop is met.

Metric (on evaluation samples, through the integer reference, the spec): with labels, the drop is
float accuracy minus integer accuracy, in percentage points. Without labels it is the share of samples
whose top-1 class differs from the float model's (in points) — an upper bound on the accuracy drop
for any labelling, so meeting it guarantees the bound.

Search (greedy, as the user asked for a bound, not an optimum): quantise everything to int8 and
measure. If the drop is too large, measure each layer raised alone (assign_precision.candidates) and
rank the layers by the SQNR of the model output (float vs integer) that this alone gives: a smooth
measure, where the top-1 drop of one layer alone moves by single samples (ties: the drop). Then
raise them in that order, re-measuring after each, until the drop is within the bound or nothing is
left. Raised tensors use their min/max range (calibrate.py does the same for int16 tensors).

With int4 weights (`--weights int4` / LAYER=w4: the float graph's layers carry weight_bits 4) the search has a
second kind of move: give one int4 layer int8 weights back (spec value 8). Both kinds are measured alone,
ranked together by output SQNR and taken greedily, so the result is the cheapest mix the greedy order finds
(flash grows by half a byte per weight raised, RAM by the int16 tensors).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from . import progress
from .errors import UserError
from .ir import Graph
from .passes import calibrate, plan_memory, quantize
from .passes.assign_precision import INPUT, candidates, tensor_bits
from .reference import quantize_input, run_float, run_int, to_qgen_layout


@dataclass
class Step:
    layer: str | None  # the layer raised at this step (None: all int8)
    drop: float  # points
    sqnr_db: float  # model output, integer vs float


@dataclass
class AutoPrecision:
    spec: dict[str, int]
    max_drop: float
    metric: str  # "accuracy vs labels" | "top-1 agreement with the float model"
    float_score: float  # float accuracy (labels) or 100 (agreement)
    steps: list[Step] = field(default_factory=list)
    sensitivity: dict[str, dict] = field(default_factory=dict)  # drop and output SQNR with only that raised
    arena_int8: int = 0
    arena_mixed: int = 0
    start: str = "all int8"  # the starting point's description (int4 weights: "int4 weights, int8 activations")

    @property
    def met(self) -> bool:
        return self.steps[-1].drop <= self.max_drop

    def to_dict(self) -> dict:
        return {"int16_layers": sorted(k for k, v in self.spec.items() if v == 16),
                **({"int8_weight_layers": sorted(k for k, v in self.spec.items() if v == 8)}
                   if 8 in self.spec.values() else {}),
                "max_drop": self.max_drop, "met": self.met,
                "metric": self.metric, "float_score": self.float_score,
                "steps": [{"layer": s.layer, "drop": s.drop, "sqnr_db": s.sqnr_db} for s in self.steps],
                "sensitivity": self.sensitivity, "arena_int8": self.arena_int8, "arena_mixed": self.arena_mixed}

    def lines(self) -> list[str]:
        out = [f"auto precision ({self.metric}, bound {self.max_drop:.2f} pt):"]
        for s in self.steps:
            what = (self.start if s.layer is None else f"+ {s.layer} int8 weights" if self.spec.get(s.layer) == 8
                    else f"+ {s.layer} int16")
            out.append(f"  {what:<32} drop {s.drop:6.2f} pt   output SQNR {s.sqnr_db:6.1f} dB")
        verdict = "met" if self.met else "NOT met with every eligible layer at int16"
        wide = sum(1 for v in self.spec.values() if v == 16)
        raised = sum(1 for v in self.spec.values() if v == 8)
        weights = f"{raised} int4 layer(s) given int8 weights" if raised else "weights unchanged"
        out.append(f"  {verdict}: {wide} layer(s) int16; arena {self.arena_int8} -> {self.arena_mixed} B "
                   f"(+{self.arena_mixed - self.arena_int8} B), {weights}")
        return out


@progress.tracked("auto precision")  # a step per measured mix, a line per layer raised
def search(float_graph: Graph, eval_x: np.ndarray, labels: np.ndarray | None, max_drop: float,
           calib_x: np.ndarray) -> AutoPrecision:
    """float_graph: calibrated float IR; eval_x / calib_x: float samples in PyTorch layout."""
    if max_drop < 0:
        raise UserError(f"--max-acc-drop {max_drop}: give a bound >= 0 in percentage points, e.g. 0.5")
    x_hwc = to_qgen_layout(float_graph, np.asarray(eval_x, dtype=np.float64))
    out = float_graph.outputs[0]
    float_out = run_float(float_graph, x_hwc)[out].reshape(len(x_hwc), -1)
    if float_out.shape[1] < 2:
        raise UserError("auto precision measures top-1 accuracy, but the model's first output has one value "
                        "per sample; choose layers with --precision LAYER=int16 instead")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != len(x_hwc):
            raise UserError(f"{labels.shape[0]} labels for {len(x_hwc)} evaluation samples; give one label each")
        target, metric = labels, "accuracy vs labels"
    else:
        target, metric = float_out.argmax(axis=1), "top-1 agreement with the float model"
    float_score = 100.0 * float(np.mean(float_out.argmax(axis=1) == target))
    maxima = calibrate.run(copy.deepcopy(float_graph), calib_x, method="minmax").ranges

    def measure(spec: dict[str, int]) -> tuple[float, float, Graph]:
        g = _with_precision(float_graph, spec, maxima)
        q = quantize.run(g)
        ints = run_int(q, quantize_input(q, eval_x))[out].reshape(len(x_hwc), -1)
        deq = ints * 2.0 ** -q.tensors[out].qformat.frac
        score = 100.0 * float(np.mean(deq.argmax(axis=1) == target))
        noise = float(np.sum((deq - float_out) ** 2))
        sqnr = 10 * np.log10(float(np.sum(float_out ** 2)) / noise) if noise > 0 else float("inf")
        progress.current().advance()
        return float_score - score, float(sqnr), q

    result = AutoPrecision({}, max_drop, metric, float_score)
    if any(n.attrs.get("weight_bits") == 4 for n in float_graph.nodes):
        result.start = "int4 weights, int8 activations"
    drop, sqnr, base = measure({})
    result.steps.append(Step(None, drop, sqnr))
    result.arena_int8 = result.arena_mixed = plan_memory.run(copy.deepcopy(base)).arena_size
    if drop <= max_drop:
        return result
    spec: dict[str, int] = {}
    graph = base
    while True:  # one round without int4 layers; with them, a new round once their weights are int8 again
        ranked = []
        current = _with_precision(float_graph, spec, maxima)
        for name in candidates(copy.deepcopy(current)):
            if spec.get(name) != 16:  # a layer given int8 weights may also get an int16 output
                d, s, _ = measure({**spec, name: 16})
                result.sensitivity.setdefault(name, {"drop": d, "sqnr_db": s})
                ranked.append((-s, d, name, 16))
        for node in current.nodes:  # int4 layers: int8 weights back
            if node.attrs.get("weight_bits") == 4 and node.name not in spec:
                d, s, _ = measure({**spec, node.name: 8})
                result.sensitivity.setdefault(f"{node.name} (int8 weights)", {"drop": d, "sqnr_db": s})
                ranked.append((-s, d, node.name, 8))
        for _, _, name, bits in sorted(ranked):
            spec[name] = bits
            drop, sqnr, graph = measure(spec)
            result.steps.append(Step(name, drop, sqnr))
            progress.current().note(f"+ {name} {'int8 weights' if bits == 8 else 'int16'}: drop {drop:.2f} pt, "
                                    f"output SQNR {sqnr:.1f} dB")
            if drop <= max_drop:
                break
        if drop <= max_drop or not any(bits == 8 for *_, bits in ranked):
            break
    result.spec = dict(spec)
    result.arena_mixed = plan_memory.run(graph).arena_size
    return result


def _with_precision(float_graph: Graph, spec: dict[str, int], maxima: dict[str, float]) -> Graph:
    g = copy.deepcopy(float_graph)
    if spec.get(INPUT) == 16:
        g.input_bits = 16
    for node in g.nodes:
        if spec.get(node.name) in (8, 16):  # int16 output or int8 weights given back: no int4 weights
            node.attrs.pop("weight_bits", None)
        if spec.get(node.name) == 16:
            node.attrs["out_bits"] = 16
    for name, bits in tensor_bits(g).items():
        if bits == 16:
            g.ranges[name] = maxima[name]
    return g
