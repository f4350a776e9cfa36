"""Quantisation-quality benchmark: float vs int8 PTQ (each calibration method, bias correction,
cross-layer equalisation) vs QAT, with per-layer SQNR.

    python bench/quant.py            # writes bench/QUANT.md and bench/quant.png (needs matplotlib)
    python bench/quant.py --quick    # fewer epochs, no plot (a smoke run)

Tasks (no network needed):
  digits CNN  the `qgen demo` model on scikit-learn's 8x8 digits (1437 train / 360 test images).
  tones 1-D   a synthetic audio-like task made here: 10 classes of tone bursts (5 steady tones with a
              harmonic, 5 chirps; neighbouring classes 2 cycles/window apart), random burst position and
              width, a distractor tone, white noise, and an amplitude spread of 30x (0.1..3) that
              stresses an int8 input format. 6000 train / 2000 test sequences of 128 samples;
              Conv1d(1,16,7,s2)-BN-ReLU, Conv1d(16,32,5)-BN-ReLU-MaxPool2, Conv1d(32,32,3)-BN-ReLU-
              AvgPool4, Linear(256,10).
int8 accuracy is the integer reference's (codegen/reference.py run_int == the generated C, byte for byte).
Calibration always uses the train split; accuracy and SQNR the test split.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("minmax", "percentile", "mse", "kl")
QAT_SEEDS = (0, 1, 2)
EQUALIZE_RESCALED = [0]  # channels the last equalize run rescaled (counted through the biases)


def tones_data(n: int = 8000, length: int = 128, classes: int = 10, seed: int = 0):
    """(x, y): x float32 (n, 1, length), y int64 class. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    y = rng.integers(0, classes, n)
    amp = np.exp(rng.uniform(np.log(0.1), np.log(3.0), n))
    f0 = 4.0 + 2.0 * y + rng.uniform(-0.6, 0.6, n)
    sweep = np.where(y % 2 == 1, 0.35, 0.0) * f0
    phase = 2 * np.pi * (f0[:, None] * t + 0.5 * sweep[:, None] * t**2) + rng.uniform(0, 2 * np.pi, (n, 1))
    width = rng.uniform(0.4, 0.8, n)
    start = rng.uniform(0, 1 - width)
    env = np.clip(np.minimum(t - start[:, None], start[:, None] + width[:, None] - t) * 12, 0, 1)
    sig = np.sin(phase) + 0.3 * np.sin(2 * phase)
    distract = 0.5 * np.sin(2 * np.pi * rng.uniform(3, 30, n)[:, None] * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    noise = rng.standard_normal((n, length)) * 0.5
    x = amp[:, None] * (env * sig + distract + noise)
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def tones_model():
    from torch import nn

    return nn.Sequential(
        nn.Conv1d(1, 16, 7, stride=2, padding=3), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(), nn.AvgPool1d(4),
        nn.Flatten(), nn.Linear(32 * 8, 10))


@dataclass
class Row:
    config: str
    float_acc: float
    int8_acc: float
    agreement: float  # int8 argmax == float argmax
    out_sqnr: float
    layer_sqnr: list[tuple[str, float]] = field(default_factory=list)
    arena: int = 0  # bytes of the planned activation arena (int16 layers cost RAM)


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def _evaluate(config: str, graph, float_graph, x_te, y_te, float_logits) -> Row:
    from codegen.fixed import dequantize
    from codegen.passes import plan_memory
    from codegen.reference import quantize_input, run_float, run_int, to_qgen_layout
    from codegen.report import sqnr_db

    ivals = run_int(graph, quantize_input(graph, x_te))
    fvals = run_float(float_graph, to_qgen_layout(float_graph, x_te.astype(np.float64)))
    inp = graph.inputs[0]
    layers = [("input", sqnr_db(fvals[inp], dequantize(ivals[inp], graph.tensors[inp].qformat)))]
    for node in graph.nodes:
        t = node.outputs[0]
        layers.append((f"{node.name} {node.op.value}", sqnr_db(fvals[t], dequantize(ivals[t], graph.tensors[t].qformat))))
    out = graph.outputs[0]
    logits = dequantize(ivals[out], graph.tensors[out].qformat)
    arena = plan_memory.run(copy.deepcopy(graph)).arena_size
    return Row(config, _accuracy(float_logits, y_te), _accuracy(logits, y_te),
               float((logits.argmax(1) == float_logits.argmax(1)).mean()), layers[-1][1], layers, arena)


def ptq(model, example, x_cal, method: str, bias_correction: bool, equalize: bool, precision=None, auto=None,
        weights: str = "int8"):
    """The compile pipeline up to the quantised IR, with the issue-8 options (mirrors api.compile).

    precision: {layer: 16} or "all" (every eligible layer and the input); auto: (x_val, y_val, max_drop)
    for codegen.precision.search. Returns (graph, float_graph, the int16 layers)."""
    from codegen import precision as precision_mod
    from codegen.frontend import from_module
    from codegen.passes import assign_precision, calibrate, fold_bn, fold_pad, fuse_activation, quantize, run_pipeline
    from codegen.passes import bias_correction as bc_pass
    from codegen.passes import equalize as eq_pass

    passes = [("fold_pad", fold_pad.run), ("fold_bn", fold_bn.run), ("fuse_activation", fuse_activation.run)]
    def equalize_counting(g):
        before = {n: t.data.copy() for n, t in g.tensors.items() if t.is_const and t.data.ndim == 1}
        g = eq_pass.run(g, x_cal)
        EQUALIZE_RESCALED[0] = sum(int(np.sum(g.tensors[n].data != b)) for n, b in before.items())
        return g

    if equalize:
        passes.append(("equalize", equalize_counting))
    passes.append(("calibrate", lambda g: calibrate.run(g, x_cal, method=method)))
    graph = run_pipeline(from_module(model, example), passes)
    if precision == "all":
        precision = {name: 16 for name in assign_precision.candidates(copy.deepcopy(graph))}
    if weights != "int8":  # int4 weights (QuantOptions.weights): before the search, which then measures them
        graph = run_pipeline(graph, [("assign_precision", lambda g: assign_precision.run(g, None, weights))])
    if auto is not None:
        x_val, y_val, max_drop = auto
        precision = precision_mod.search(graph, x_val, y_val, max_drop, x_cal).spec
    if precision:
        graph = run_pipeline(graph, [("assign_precision", lambda g: assign_precision.run(g, precision, weights)),
                                     ("calibrate", lambda g: calibrate.run(g, x_cal, method=method))])
    float_graph = copy.deepcopy(graph)
    post = [("quantize", quantize.run)]
    if bias_correction:
        post.append(("bias_correction", lambda g: bc_pass.run(g, float_graph, x_cal)))
    return run_pipeline(graph, post), float_graph, sorted(precision or {})


def run_task(name: str, model, data, qat_epochs: int, qat_lr: float, log) -> dict:
    import torch

    from codegen import qat

    x_tr, y_tr, x_te, y_te = data
    example = torch.from_numpy(x_tr[:1])
    with torch.no_grad():
        float_logits = model.eval()(torch.from_numpy(x_te)).numpy()
    rows = []
    for method in METHODS:
        for bc in (False, True):
            for eq in (False, True):
                t0 = time.perf_counter()
                graph, fgraph, _ = ptq(model, example, x_tr, method, bc, eq)
                config = method + (" + bias corr." if bc else "") + (" + equalize" if eq else "")
                rows.append(_evaluate(config, graph, fgraph, x_te, y_te, float_logits))
                log(f"{name}: {config:40s} int8 {rows[-1].int8_acc:.4f} ({time.perf_counter() - t0:.1f} s)")
    rescaled = EQUALIZE_RESCALED[0]
    n_val = len(x_tr) // 5  # the auto-precision search measures on a validation split, never on test
    for label, kwargs in (("int16 input", {"precision": {"input": 16}}),
                          ("auto precision <= 0.5 pt", {"auto": (x_tr[-n_val:], y_tr[-n_val:], 0.5)}),
                          ("every layer int16", {"precision": "all"})):
        t0 = time.perf_counter()
        graph, fgraph, wide = ptq(model, example, x_tr, "minmax", False, False, **kwargs)
        config = f"minmax + {label}" + (f" ({', '.join(wide) or 'none: int8 meets it'})" if "auto" in kwargs else "")
        rows.append(_evaluate(config, graph, fgraph, x_te, y_te, float_logits))
        log(f"{name}: {config:40s} acc {rows[-1].int8_acc:.4f} ({time.perf_counter() - t0:.1f} s)")
    for method, bc in (("minmax", False), ("mse", False), ("mse", True)):  # int4 weights, int8 activations
        graph, fgraph, _ = ptq(model, example, x_tr, method, bc, False, weights="int4")
        config = f"{method}{' + bias corr.' if bc else ''} + int4 weights"
        rows.append(_evaluate(config, graph, fgraph, x_te, y_te, float_logits))
        log(f"{name}: {config:40s} acc {rows[-1].int8_acc:.4f}")
    exact_total = [0, 0]
    for seed, weights in [(s, "int8") for s in QAT_SEEDS] + [(s, "int4") for s in QAT_SEEDS]:
        # the shuffling seed: QAT accuracy varies by a few test images between runs
        t0 = time.perf_counter()
        qm = qat.prepare(model, example, x_tr, method="mse", weights=weights)
        qat.finetune(qm, x_tr, y_tr, epochs=qat_epochs, lr=qat_lr, seed=seed)
        result = qat.compile(qm, eval_data=x_te[:8])
        with torch.no_grad():
            qat_out = qm.eval()(torch.from_numpy(x_te)).numpy()
        exact = int(np.sum(qat_out == result.predict(x_te)))
        exact_total[0] += exact
        exact_total[1] += qat_out.size
        kind = "QAT int4 weights" if weights == "int4" else "QAT"
        row = _evaluate(f"{kind} seed {seed} ({qat_epochs} epochs, lr {qat_lr:g}, mse)", result.graph,
                        result.float_graph, x_te, y_te, float_logits)
        rows.append(row)
        log(f"{name}: {row.config} int8 {row.int8_acc:.4f}, QAT eval == integer reference on {exact}/"
            f"{qat_out.size} outputs ({time.perf_counter() - t0:.1f} s)")
    return {"name": name, "rows": rows, "qat_exact": tuple(exact_total), "rescaled": rescaled,
            "float_acc": _accuracy(float_logits, y_te), "test": len(y_te), "train": len(y_tr)}


def _db(v: float) -> str:
    return "exact" if v == float("inf") else f"{v:.1f}"


def to_markdown(tasks: list[dict], command: str) -> str:
    out = ["# Quantisation quality (issue 8)", "",
           (f"Generated by `{command}` (do not edit by hand; rerun it). Float model vs the int8 integer "
            "reference (`run_int`, which the generated C matches byte for byte). Calibration on the train "
            "split, accuracy and SQNR on the test split."), "",
           ("- **calibration**: `minmax` = largest |x| (nothing saturates); `percentile` = 99.99th percentile "
            "of |x|; `mse` = the frac minimising the squared error incl. saturation; `kl` = the frac minimising the "
            "KL divergence of the |x| histogram, as TensorRT's entropy calibration (codegen/passes/calibrate.py)."),
           ("- **bias corr.**: per-channel mean accumulator error on the calibration set removed from the int32 "
            "bias (codegen/passes/bias_correction.py). **equalize**: power-of-two cross-layer scaling "
            "(codegen/passes/equalize.py)."),
           ("- **QAT**: `codegen.qat.prepare` (BN folded, activation formats frozen from `mse` calibration), "
            "fine-tuned with Adam + cosine LR through the exact fake quantisation, then `codegen.qat.compile`. "
            "Its drop / agree columns compare with the original float model (QAT moves the weights)."),
           ("- **mixed precision** (codegen/passes/assign_precision.py, codegen/precision.py): int16 activations "
            "with int8 weights (flash unchanged, RAM = arena B). `int16 input`: the model input only; `auto "
            "precision`: the greedy search on the last fifth of the train split (labels), bound 0.5 pt, layers "
            "chosen in brackets; `every layer int16`: every eligible tensor (model outputs and LUT/softmax "
            "inputs stay int8)."),
           "- **agree**: int top-1 == float top-1. **out SQNR**: float logits vs dequantised integer logits.", ""]
    out += _targets(tasks)
    for task in tasks:
        out += [(f"## {task['name']} ({task['train']} train / {task['test']} test; float accuracy "
                 f"{task['float_acc']:.2%})"), "",
                "| configuration | int acc | drop vs float (pt) | agree | out SQNR (dB) | min layer SQNR (dB) | arena B |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in task["rows"]:
            out.append(f"| {r.config} | {r.int8_acc:.2%} | {100 * (r.float_acc - r.int8_acc):+.2f} | "
                       f"{r.agreement:.2%} | {_db(r.out_sqnr)} | {_db(min(s for _, s in r.layer_sqnr))} | "
                       f"{r.arena:,} |")
        exact, total = task["qat_exact"]
        out += ["", (f"QAT models in eval mode == integer reference of their compiled C: {exact}/{total} output "
                     "elements identical."),
                (f"Equalize rescaled {task['rescaled']} channel(s) of this model (the channel ranges of "
                 "these BatchNorm-trained layers are similar, so the balancing scales round to 2^0; "
                 "tests/passes/test_equalize.py shows +29 dB output SQNR on a deliberately unbalanced model)."), "", "Per-layer SQNR (dB), int8 vs float activations:", ""]
        picks = _picks(task)
        out.append("| layer | " + " | ".join(r.config for r in picks) + " |")
        out.append("|---|" + "---:|" * len(picks))
        for i, (layer, _) in enumerate(picks[0].layer_sqnr):
            out.append(f"| {layer} | " + " | ".join(_db(r.layer_sqnr[i][1]) for r in picks) + " |")
        out.append("")
    out += ["![per-layer SQNR](quant.png)", ""]
    return "\n".join(out)


def _picks(task: dict) -> list[Row]:
    return [r for r in task["rows"] if (" + " not in r.config and not r.config.startswith("QAT"))
            or r.config in ("mse + bias corr.", "minmax + every layer int16", "mse + int4 weights")
            or r.config.startswith(("QAT seed 0", "QAT int4 weights seed 0"))]


def _targets(tasks: list[dict]) -> list[str]:
    """The issue's targets, checked on the digits CNN."""
    digits = tasks[0]
    rows = {r.config: r for r in digits["rows"]}
    qat_rows = [r for r in digits["rows"] if r.config.startswith("QAT seed")]
    drop = 100 * (digits["float_acc"] - rows["minmax"].int8_acc)
    worst = max(100 * (digits["float_acc"] - r.int8_acc) for r in digits["rows"]
                if not r.config.startswith("QAT") and "int4" not in r.config)
    int4_ptq = max(100 * (digits["float_acc"] - r.int8_acc) for r in digits["rows"]
                   if r.config.endswith("int4 weights"))
    int4_qat = [r for r in digits["rows"] if r.config.startswith("QAT int4")]
    int4_gap = 100 * (digits["float_acc"] - float(np.mean([r.int8_acc for r in int4_qat])))
    gap = 100 * (digits["float_acc"] - float(np.mean([r.int8_acc for r in qat_rows])))
    one = 100.0 / digits["test"]
    return ["## Targets (digits CNN)", "",
            (f"- int8 PTQ drop <= 0.5 pt: default min/max {drop:+.2f} pt, worst PTQ configuration {worst:+.2f} pt "
             f"({'met' if worst <= 0.5 else 'NOT met'}); one test image is {one:.2f} pt."),
            (f"- QAT within 0.2 pt of float: mean of {len(qat_rows)} seeds {gap:+.2f} pt "
             f"({'met' if gap <= 0.2 else 'NOT met'}); "
             + ", ".join(f"{r.int8_acc:.2%}" for r in qat_rows) + "."),
            (f"- int4 weights (int8 activations), PTQ drop <= 2 pt: worst int4 PTQ configuration {int4_ptq:+.2f} pt "
             f"({'met' if int4_ptq <= 2 else 'NOT met'}); QAT <= 1 pt: mean of {len(int4_qat)} seeds "
             f"{int4_gap:+.2f} pt ({'met' if int4_gap <= 1 else 'NOT met'}); "
             + ", ".join(f"{r.int8_acc:.2%}" for r in int4_qat) + "."), ""]


def plot(tasks: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.2))
    for ax, task in zip(np.atleast_1d(axes), tasks):
        picks = _picks(task)
        names = [layer.split(" ")[-1] for layer, _ in picks[0].layer_sqnr]
        for r in picks:
            ys = [min(s, 80.0) for _, s in r.layer_sqnr]
            ax.plot(range(len(ys)), ys, marker="o", label=f"{r.config} ({r.int8_acc:.1%})")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("SQNR (dB), int8 vs float")
        ax.set_title(f"{task['name']} (float {task['float_acc']:.1%})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    import torch

    from codegen.demo import digits_data, train, trained_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training, no files written")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    def log(msg: str) -> None:
        print(msg, flush=True)
    tasks = []
    digits, _ = trained_model()
    tasks.append(run_task("digits CNN", digits, digits_data(), qat_epochs=1 if args.quick else 3, qat_lr=1e-4,
                          log=log))
    x, y = tones_data()
    data = (x[:6000], y[:6000], x[6000:], y[6000:])
    torch.manual_seed(0)
    tones = tones_model()
    t0 = time.perf_counter()
    train(tones, data[0], data[1], epochs=3 if args.quick else 20)
    log(f"tones float model trained in {time.perf_counter() - t0:.0f} s")
    tasks.append(run_task("tones 1-D (synthetic audio)", tones, data, qat_epochs=1 if args.quick else 8,
                          qat_lr=3e-4, log=log))
    md = to_markdown(tasks, "python bench/quant.py" + (" --quick" if args.quick else ""))
    if args.quick:
        print(md)
        return
    (ROOT / "bench" / "QUANT.md").write_text(md)
    plot(tasks, ROOT / "bench" / "quant.png")
    log("wrote bench/QUANT.md and bench/quant.png")


if __name__ == "__main__":
    main()
