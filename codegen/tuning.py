"""`qgen tune` / `codegen.tune(...)`: search the compile options for the models that fit a board, on one machine or
a Dask cluster.

    front = codegen.tune("model.py:factory", board="stm32f446", data=(x, y), eval=(xe, ye),
                         input_shape=(1, 1, 8, 8), trials=60, study="build/tune.journal")
    for point in front.points: print(point.accuracy, point.flash_bytes, point.latency_ms, point.command)

Design (the parts are off-the-shelf; qgen writes only the objective and the glue):
- Optuna owns the search: a multi-objective study (accuracy max; weight flash, arena, latency min; latency is the
  instructions per inference counted under QEMU on the board's core, at the board's clock, or the MACs with
  qemu=False), NSGA-II by default (TPE on request), the board's flash / RAM and the latency budget as constraints
  (the samplers' constraints_func: an infeasible point is never on the front). The study lives in an Optuna journal
  file (JournalStorage), so an interrupted search resumes where it stopped.
- One process, the driver, owns the study and talks to it with ask/tell. Each trial's work, `evaluate(spec,
  params)`, is a pure function of its parameters: compile (compression, fine-tuning, quantisation: the same
  codegen.compile a `qgen compile` runs), accuracy of the integer reference on the evaluation data, a QEMU run
  (cached per generated model). It runs on Dask distributed (a LocalCluster by default, `scheduler=` for a real
  cluster) with retries; a task lost with a dead worker is rescheduled by Dask. Results are told as they complete.
- Resume: trials a killed driver left RUNNING are failed and enqueued again with the same parameters; finished
  trials are never repeated. One driver per study at a time (a lock file beside the journal).
- Pruners: Optuna's pruners stop a trial on intermediate values of a single objective; Optuna refuses
  `trial.report` in multi-objective studies. So the default (objective="pareto", four objectives) has a structural
  early stop only: a point whose flash or arena already breaks the board's limits after compiling skips the QEMU
  run. objective="accuracy" is a single-objective study (the integer accuracy, maximised under the same flash /
  RAM / latency constraints) with an Optuna pruner (MedianPruner by default) on the fine-tuning epochs: the
  float accuracy on the evaluation data after each epoch is reported, and a trial below the median of the earlier
  trials at that epoch stops there (state PRUNED). The pruner runs on the worker, on an in-memory Optuna study
  holding the finished trials' intermediate values as the driver saw them when it submitted the trial.
- Every trial records the `qgen compile` command line that rebuilds its point bit for bit (the data it needs is
  saved beside the study, in STUDY.d/); a QAT point or one fine-tuned by a user training function is rebuilt by
  `codegen.tuning.compile_trial(study, number, out_dir)`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import progress
from .errors import UserError

STUDY_NAME = "qgen-tune"
OBJECTIVES = ("accuracy", "flash_bytes", "arena_bytes", "latency_ms")  # latency_ms: "macs" when QEMU is off
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")
OBJECTIVE_MODES = ("pareto", "accuracy")  # four objectives (the default) / accuracy alone, with a pruner
CALIBRATIONS = ("minmax", "percentile", "mse", "kl")
LAYER_CHOICES = ("int8", "int16", "w4")  # --precision LAYER=int16 (int16 output activations) / LAYER=w4 (int4 weights)
AFTER_INT16 = ("int8", "int16")  # a layer after an int16 one: int4 weights take int8 activations only
SPACE_VERSION = 2  # 2: gradual pruning steps, per-layer int4 (a study of another space cannot be resumed)
QEMU_SAMPLES = 2
CALIB_SAMPLES = 512


@dataclass(frozen=True)
class TuneSpec:
    """Everything a trial needs besides its parameters (pickled to the Dask workers)."""

    model: str  # a `qgen compile` model target: model.pt2, file.py:factory
    input_shape: tuple[int, ...] | None
    board: str
    calib: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray
    train: tuple[np.ndarray, np.ndarray] | None = None
    qemu: bool = True
    layers: tuple[str, ...] = ()  # the weighted layers (per-layer precision)
    finetune_max: int = 0  # fine-tuning epochs searched in [0, finetune_max] when train data is given
    qat: bool = False  # QAT on/off is a search dimension
    train_fn: Callable | None = None  # user fine-tuning: train_fn(module, x, y, epochs) (see evaluate)
    model_bytes: bytes | None = None  # a .pt2 made by tune from an nn.Module: workers write it locally
    data_dir: str | None = None  # where the command lines find calib.npy, train_x.npy ... (STUDY.d)
    fixed: dict = field(default_factory=dict)  # parameters held fixed (Optuna's PartialFixedSampler)


# ---------------------------------------------------------------------------------------------- search space


def suggest(trial, spec: TuneSpec) -> dict:
    """Sample one point of the search space (define-by-run) and return trial.params."""
    cal = trial.suggest_categorical("calibration", CALIBRATIONS)
    if cal == "percentile":
        trial.suggest_categorical("percentile", (99.9, 99.99, 99.999))
    trial.suggest_categorical("bias_correction", (False, True))
    trial.suggest_categorical("equalize", (False, True))
    compressed = False
    if trial.suggest_categorical("prune_on", (False, True)):
        compressed = True
        trial.suggest_float("prune", 0.3, 0.95, step=0.05)
        trial.suggest_categorical("prune_scope", ("layer", "global"))
        if spec.train is not None:
            trial.suggest_categorical("importance", ("magnitude", "gradient"))
            if spec.finetune_max > 0:  # gradual pruning (--prune-steps): rounds of prune + fine-tune
                trial.suggest_int("prune_steps", 1, 3)
    if trial.suggest_categorical("channels_on", (False, True)):
        compressed = True
        trial.suggest_float("channels", 0.1, 0.6, step=0.05)
    rank = trial.suggest_categorical("rank_on", (False, True))
    if rank:
        compressed = True
        trial.suggest_float("rank_energy", 0.7, 0.99, step=0.01)
    cluster = trial.suggest_categorical("cluster_on", (False, True))
    if cluster:
        compressed = True
        trial.suggest_int("cluster", 2, 6)
    # int4 weights everywhere the activations are int8 (--weights int4), int16 activations or int4 weights per
    # layer (--precision LAYER=int16 / LAYER=w4). Sparse and clustered weight kernels take int8 activations only, and
    # low rank renames the layers it factorises: with those, the global choice only. A layer after an int16 one (in
    # call order: its input, in a chain) is offered no w4 (its own parameter name: Optuna's choices are fixed per
    # name); in a branching graph a w4 layer reading int16 is refused by the compile (a failed trial).
    trial.suggest_categorical("weights", ("int8", "int4"))
    per_layer = not (rank or cluster or trial.params["prune_on"])
    after_int16 = False
    for layer in spec.layers if per_layer else ():
        if after_int16:
            after_int16 = trial.suggest_categorical(f"precision:{layer}:after-int16", AFTER_INT16) == "int16"
        else:
            after_int16 = trial.suggest_categorical(f"precision:{layer}", LAYER_CHOICES) == "int16"
    qat = spec.qat and spec.train is not None and trial.suggest_categorical("qat", (False, True))
    if spec.train is not None and spec.finetune_max > 0 and (compressed or qat):
        trial.suggest_int("finetune_epochs", 1 if qat else 0, spec.finetune_max)
    return dict(trial.params)


def preset_params(spec: TuneSpec) -> list[dict]:
    """The first trials of a new study: the default compile, then qgen's standard single techniques (the settings
    of bench/COMPRESSION.md, fine-tuned for finetune_max epochs: pruning 50%, 80% and 90% (the last two gradual, in
    2 steps), channels 25/50%, low rank at energy 0.95, clustering 4 bits, int4 weights), so that the search starts
    from what a person would try first and the front is never worse than those. Complete parameter sets, as
    suggest() draws them."""
    ft = {"finetune_epochs": spec.finetune_max} if spec.train is not None and spec.finetune_max > 0 else {}
    imp = {"importance": "magnitude"} if spec.train is not None else {}
    steps = lambda n: {"prune_steps": n} if ft else {}  # noqa: E731 - prune_steps is suggested with fine-tuning only
    int8 = {f"precision:{n}": "int8" for n in spec.layers}  # per-layer choices exist without prune/cluster/rank
    plain = {"calibration": "minmax", "bias_correction": False, "equalize": False, "prune_on": False,
             "channels_on": False, "rank_on": False, "cluster_on": False, "weights": "int8",
             **({"qat": False} if spec.qat and spec.train is not None else {})}
    return [{**plain, **int8},  # the baseline: the default compile
            {**plain, "prune_on": True, "prune": 0.5, "prune_scope": "layer", **imp, **steps(1), **ft},
            {**plain, "prune_on": True, "prune": 0.8, "prune_scope": "layer", **imp, **steps(2), **ft},
            {**plain, "prune_on": True, "prune": 0.9, "prune_scope": "layer", **imp, **steps(2), **ft},
            {**plain, "channels_on": True, "channels": 0.25, **int8, **ft},
            {**plain, "channels_on": True, "channels": 0.5, **int8, **ft},
            {**plain, "rank_on": True, "rank_energy": 0.95, **ft},
            {**plain, "cluster_on": True, "cluster": 4, **ft},
            {**plain, "weights": "int4", **int8}]


def options_from_params(params: dict, prefix: str = "model"):
    """The CompileOptions of a point of the search space."""
    from .options import CompileOptions, CompressOptions, EmitOptions, QuantOptions

    precision = {layer: {"int16": 16, "w4": 4}[v] for layer, v in _layer_precision(params).items() if v != "int8"}
    quant = QuantOptions(calibration=params.get("calibration", "minmax"),
                         percentile=float(params.get("percentile", 99.99)),
                         bias_correction=bool(params.get("bias_correction", False)),
                         equalize=bool(params.get("equalize", False)), precision=precision,
                         weights=params.get("weights", "int8"))
    p = {k: round(v, 6) if isinstance(v, float) else v for k, v in params.items()}  # Optuna steps: 0.1 + 0.2
    compress = CompressOptions(prune=p.get("prune") if p.get("prune_on") else None,
                               prune_scope=p.get("prune_scope", "layer"), importance=p.get("importance", "magnitude"),
                               channels=p.get("channels") if p.get("channels_on") else None,
                               rank_energy=p.get("rank_energy") if p.get("rank_on") else None,
                               cluster=p.get("cluster") if p.get("cluster_on") else None,
                               finetune_epochs=0 if p.get("qat") else int(p.get("finetune_epochs", 0)))
    if compress.prune is not None and compress.finetune_epochs > 0:  # steps without fine-tuning: one prune
        compress = dataclasses.replace(compress, prune_steps=int(p.get("prune_steps", 1)))
    return CompileOptions(quant=quant, compress=compress, emit=EmitOptions(prefix=prefix))


def _layer_precision(params: dict) -> dict[str, str]:
    """{layer: "int8" | "int16" | "w4"} of a point's per-layer parameters ('precision:LAYER[:after-int16]')."""
    return {k.split(":")[1]: v for k, v in params.items() if k.startswith("precision:")}


def _needs_train(options) -> bool:
    c = options.compress
    return c.any and (c.finetune_epochs > 0 or (c.prune is not None and c.importance == "gradient"))


def command_line(spec: TuneSpec, params: dict, out: str = "build/tuned") -> str | None:
    """The `qgen compile` command that rebuilds this point (None: a QAT point or a user training function)."""
    options = options_from_params(params)
    if params.get("qat") or (spec.train_fn is not None and options.compress.finetune_epochs > 0):
        return None
    d = Path(spec.data_dir or ".")
    q, c = options.quant, options.compress
    args = ["qgen", "compile", spec.model]
    if spec.input_shape:
        args += ["--input-shape", ",".join(map(str, spec.input_shape))]
    args += ["--calib", str(d / "calib.npy")]
    if q.calibration != "minmax":
        args += ["--calibration", q.calibration]
    if q.calibration == "percentile":
        args += ["--percentile", repr(q.percentile)]
    args += ["--bias-correction"] * q.bias_correction + ["--equalize"] * q.equalize
    if q.precision:
        args += ["--precision", ",".join(f"{k}={'int16' if b == 16 else 'w4'}" for k, b in sorted(q.precision.items()))]
    if q.weights != "int8":
        args += ["--weights", q.weights]
    if c.prune is not None:
        args += ["--prune", repr(c.prune), "--prune-scope", c.prune_scope, "--importance", c.importance]
        args += ["--prune-steps", str(c.prune_steps)] if c.prune_steps != 1 else []
    if c.channels is not None:
        args += ["--channels", repr(c.channels)]
    if c.rank_energy is not None:
        args += ["--rank", f"energy:{c.rank_energy!r}"]
    if c.cluster is not None:
        args += ["--cluster", str(c.cluster)]
    if c.finetune_epochs:
        args += ["--finetune-epochs", str(c.finetune_epochs)]
    if _needs_train(options):
        args += ["--train", str(d / "train_x.npy"), "--labels", str(d / "train_y.npy")]
    return shlex.join(args + ["--out", out])


# ---------------------------------------------------------------------------------------------- one trial


def _model_target(spec: TuneSpec) -> str:
    """The model target on this machine (a .pt2 made by tune is written once per worker, by content)."""
    if spec.model_bytes is None:
        return spec.model
    from .hostcheck import cache_root

    path = cache_root() / "tune" / f"model-{hashlib.sha256(spec.model_bytes).hexdigest()[:16]}.pt2"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(spec.model_bytes)
        tmp.replace(path)
    return str(path)


def compile_point(spec: TuneSpec, params: dict, out_dir: str | Path | None = None):
    """Compile one point of the search space -> CompileResult (what `command_line` runs, or its QAT / user
    fine-tuning equivalent)."""
    from . import compile as qcompile

    options = options_from_params(params)
    target = _model_target(spec)
    if params.get("qat"):
        return _compile_qat(spec, params, options, target, out_dir)
    extra, train = None, (spec.train if _needs_train(options) else None)
    if spec.train_fn is not None and options.compress.finetune_epochs > 0:
        extra = _user_finetune_passes(spec, options)
        options = dataclasses.replace(options, compress=type(options.compress)())
        train = None
    return qcompile(target, spec.input_shape, spec.calib, options=options, train=train, extra_passes=extra,
                    out_dir=out_dir)


def _user_finetune_passes(spec: TuneSpec, options) -> list:
    """Compression passes with the user's training function in place of the built-in loop: one fine-tuning
    after the structural and pruning steps, before clustering (training would undo the sharing)."""
    from . import compress

    c = options.compress
    base = compress.passes(dataclasses.replace(c, finetune_epochs=0, cluster=None), train=spec.train)
    tail = compress.passes(type(c)(cluster=c.cluster)) if c.cluster is not None else []
    return [*base, ("finetune_user", lambda g: _run_user_training(g, spec, c.finetune_epochs)), *tail]


def _run_user_training(graph, spec: TuneSpec, epochs: int):
    import torch

    from .torch_ir import FloatModule, to_ir_layout

    module = FloatModule(graph)
    zeros = {k: (p != 0).float() for k, p in module.params.items()}
    x = to_ir_layout(torch.as_tensor(np.asarray(spec.train[0]), dtype=torch.float32),
                     graph.io_layout.get(graph.inputs[0]))
    spec.train_fn(module, x, torch.as_tensor(np.asarray(spec.train[1])), epochs)
    with torch.no_grad():  # pruned weights stay pruned
        for k, m in zeros.items():
            module.params[k].mul_(m)
    module.write_back()
    return graph


def _compile_qat(spec: TuneSpec, params: dict, options, target: str, out_dir):
    """Quantisation-aware fine-tuning (codegen/qat.py) of the compressed model, then its compile."""
    import torch

    from . import compress, qat
    from .frontend import load_model
    from .passes import equalize as equalize_pass

    model, example = load_model(target, spec.input_shape)
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    example = example if example is not None else torch.as_tensor(spec.calib[:1])
    q, c = options.quant, options.compress
    extra = compress.passes(c, train=spec.train) if c.any else []
    if q.equalize:
        extra.append(("equalize", lambda g: equalize_pass.run(g, spec.calib)))
    qm = qat.prepare(model, example, spec.calib, method=q.calibration, percentile=q.percentile, extra_passes=extra,
                     weights=q.weights, precision=q.precision or None)
    epochs = int(params.get("finetune_epochs", 1))
    if spec.train_fn is not None:
        spec.train_fn(qm, torch.as_tensor(spec.train[0]), torch.as_tensor(spec.train[1]), epochs)
        qm.eval()
    else:
        qat.finetune(qm, *spec.train, epochs=epochs)
    return qat.compile(qm, out_dir=out_dir, eval_data=spec.calib[:64])


class _Pruned(Exception):
    """Raised from the fine-tuning epoch hook when the pruner stops the trial."""


def evaluate(spec: TuneSpec, params: dict, limits: dict | None = None, pruning: tuple | None = None) -> dict:
    """One trial: compile, accuracy of the integer reference on the evaluation data, QEMU instructions.

    A pure function of (spec, params): Dask may run it again after losing a worker. `limits` ({"flash", "ram"}
    bytes) skips the QEMU run of a point that does not fit anyway. pruning: (Optuna pruner, finished trials) in
    the accuracy mode: the float accuracy after each fine-tuning epoch goes to the pruner ("intermediate"), which
    may stop the trial ({"pruned": epoch}). Returns the metrics (a JSON-ready dict); a point qgen refuses to
    compile returns {"error": message}."""
    start = time.perf_counter()
    steps: dict[int, float] = {}
    try:
        if pruning is None or params.get("qat") or spec.train_fn is not None:  # QAT / user loops: not hooked
            result = compile_point(spec, params)
        else:
            from . import compress

            with compress.epoch_hook(_pruning_hook(spec, pruning, steps)):
                result = compile_point(spec, params)
    except UserError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - start}
    except _Pruned:
        return {"pruned": max(steps), "intermediate": steps, "seconds": time.perf_counter() - start}
    pred = result.predict(spec.eval_x)
    accuracy = float(np.mean(np.argmax(pred.reshape(len(pred), -1), axis=1) == spec.eval_y))
    rep = result.report
    out = {"accuracy": accuracy, "flash_bytes": int(rep["flash_bytes"]), "arena_bytes": int(rep["arena_bytes"]),
           "macs": int(rep["macs"]), "instructions": None, "latency_ms": None}
    if steps:
        out["intermediate"] = steps
    fits = limits is None or (out["flash_bytes"] <= limits["flash"] and out["arena_bytes"] <= limits["ram"])
    if spec.qemu and fits:
        from .target import load_board

        board = load_board(spec.board)
        out["instructions"] = qemu_instructions(result, board)
        out["latency_ms"] = out["instructions"] / (board.clock_mhz * 1e3)
    out["seconds"] = time.perf_counter() - start
    return out


def _pruning_hook(spec: TuneSpec, pruning: tuple, steps: dict) -> Callable:
    """The fine-tuning epoch hook of the accuracy mode: the float accuracy on the evaluation data after each epoch
    (steps 1, 2, ... over every fine-tuning round of the compile), reported to an in-memory Optuna study that holds
    the finished trials; raises _Pruned when its pruner says so."""
    import optuna
    import torch

    from .compress import _torch_batch

    pruner, history = pruning
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trials(history)
    trial = study.ask()
    ys = torch.as_tensor(spec.eval_y)

    def hook(module, graph) -> None:
        out = module(_torch_batch(spec.eval_x, graph))
        step = len(steps) + 1
        steps[step] = float((out.reshape(len(out), -1).argmax(1) == ys).float().mean())
        trial.report(steps[step], step)
        if trial.should_prune():
            raise _Pruned(step)

    return hook


def qemu_instructions(result, board) -> float:
    """Instructions per inference of the generated C on the board's core under QEMU, cached per model (by the
    generated files' content) and board."""
    import tempfile

    from . import deploy
    from .hostcheck import cache_root
    from .output import write_atomic

    digest = hashlib.sha256(board.name.encode())
    for name in sorted(result.files):
        data = result.files[name]
        digest.update(name.encode() + b"\0" + (data.encode() if isinstance(data, str) else data))
    path = cache_root() / "tune" / "qemu" / f"{digest.hexdigest()[:24]}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["instructions"])
    with tempfile.TemporaryDirectory(prefix="qgen-tune-") as tmp:
        write_atomic(result.files, Path(tmp) / "model")
        run = deploy.run(Path(tmp) / "model", board, n=QEMU_SAMPLES)
    if not run.exact:
        raise RuntimeError(f"the generated C is not bit-exact on {board.name}: {run.first_mismatch}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_text(json.dumps({"instructions": run.instructions_per_inference}))
    tmp_path.replace(path)
    return float(run.instructions_per_inference)


# ---------------------------------------------------------------------------------------------- the study


@dataclass
class Point:
    """One finished trial."""

    number: int
    params: dict
    accuracy: float
    flash_bytes: int
    arena_bytes: int
    macs: int
    instructions: float | None
    latency_ms: float | None
    feasible: bool
    command: str | None

    def row(self) -> str:
        lat = f"{self.latency_ms:.3f}" if self.latency_ms is not None else "-"
        ins = f"{self.instructions:,.0f}" if self.instructions is not None else "-"
        return (f"| {self.number} | {100 * self.accuracy:.2f}% | {self.flash_bytes:,} | {self.arena_bytes:,} | "
                f"{self.macs:,} | {ins} | {lat} | {describe(self.params)} |")


@dataclass
class TuneResult:
    study_path: Path
    board: str
    points: list[Point]  # the Pareto front (feasible trials only), by accuracy, best first
    trials: list[Point]  # every finished trial
    limits: dict

    def table(self) -> str:
        """The front as a markdown table, with each point's command line below it."""
        lines = [f"Pareto front on {self.board} ({len(self.points)} of {len(self.trials)} finished trials; "
                 f"limits: flash {self.limits['flash']:,} B, RAM {self.limits['ram']:,} B"
                 + (f", latency {self.limits['latency_ms']} ms" if self.limits.get("latency_ms") else "") + ")",
                 "", "| trial | accuracy | weight flash (B) | arena (B) | MACs | instr./inference | ms | options |",
                 "|---:|---:|---:|---:|---:|---:|---:|---|"]
        lines += [p.row() for p in self.points]
        lines.append("")
        for p in self.points:
            lines.append(f"trial {p.number}: {p.command or _api_hint(self.study_path, p.number)}")
        return "\n".join(lines)


def _api_hint(study: Path, number: int) -> str:
    return (f"python -c \"import codegen.tuning as t; t.compile_trial('{study}', {number}, 'build/tuned')\" "
            "(QAT or a user training function: no `qgen compile` equivalent)")


def describe(params: dict) -> str:
    """A short human summary of a point: 'kl, bias-corr, prune 0.8 + ft2, w4: fc'."""
    p = params
    out = [p.get("calibration", "minmax")]
    if p.get("calibration") == "percentile":
        out[0] += f" {p.get('percentile')}"
    out += ["bias-corr"] * bool(p.get("bias_correction")) + ["equalize"] * bool(p.get("equalize"))
    if p.get("prune_on"):
        out.append(f"prune {p['prune']:.2f} {p.get('prune_scope', 'layer')} {p.get('importance', 'magnitude')}"
                   + (f" in {p['prune_steps']} steps" if p.get("prune_steps", 1) > 1 and p.get("finetune_epochs")
                      else ""))
    if p.get("channels_on"):
        out.append(f"channels {p['channels']:.2f}")
    if p.get("rank_on"):
        out.append(f"rank energy {p['rank_energy']:.2f}")
    if p.get("cluster_on"):
        out.append(f"cluster {p['cluster']} b")
    if p.get("finetune_epochs"):
        out.append(f"{'QAT' if p.get('qat') else 'ft'} {p['finetune_epochs']} ep")
    if p.get("weights", "int8") != "int8":
        out.append(f"{p['weights']} weights")
    for kind in ("int16", "w4"):
        layers = [layer for layer, v in _layer_precision(p).items() if v == kind]
        if layers:
            out.append(f"{kind}: {' '.join(layers)}")
    return ", ".join(out)


def data_dir(study: str | Path) -> Path:
    return Path(f"{study}.d")


def _storage(study: str | Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study)))


def _sampler(name: str, seed: int, fixed: dict | None):
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # constraints_func

    def constraints(trial) -> list[float]:  # <= 0: met (Optuna's convention)
        return list(trial.user_attrs.get("constraints", [1.0]))

    if name == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints, population_size=12)
    elif name == "tpe":
        base = optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, n_startup_trials=10,
                                          multivariate=True, group=True)
    else:
        raise UserError(f"sampler '{name}' is unknown; use nsga2 (NSGA-II, the default) or tpe")
    return optuna.samplers.PartialFixedSampler(fixed, base) if fixed else base


def _open_study(study: str | Path, sampler=None, objective: str = "pareto"):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = list(DIRECTIONS) if objective == "pareto" else ["maximize"]
    return optuna.create_study(storage=_storage(study), study_name=STUDY_NAME, directions=directions,
                               sampler=sampler, load_if_exists=True)


def _finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and "error" in t.user_attrs)]


def recover_interrupted(study) -> int:
    """Trials a killed driver left RUNNING: failed, and enqueued again with the same parameters (their work was
    lost with the driver's futures). Returns how many."""
    from optuna.trial import TrialState

    lost = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in lost:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return len(lost)


def _constraints(metrics: dict, limits: dict) -> list[float]:
    lat = metrics.get("latency_ms")
    out = [metrics["flash_bytes"] - limits["flash"], metrics["arena_bytes"] - limits["ram"]]
    if limits.get("latency_ms") is not None:
        out.append((lat if lat is not None else float("inf")) - limits["latency_ms"])
    return [float(v) for v in out]


def _tell(study, trial, metrics: dict, limits: dict, command: str | None) -> None:
    from optuna.trial import TrialState

    if "error" in metrics:
        trial.set_user_attr("error", metrics["error"])
        study.tell(trial, state=TrialState.FAIL)
        return
    for step, value in sorted(metrics.get("intermediate", {}).items()):  # the accuracy mode's epochs
        trial.report(value, int(step))
    if "pruned" in metrics:
        trial.set_user_attr("pruned_at_epoch", metrics["pruned"])
        study.tell(trial, state=TrialState.PRUNED)
        return
    for k, v in metrics.items():
        if k != "intermediate":  # reported above
            trial.set_user_attr(k, v)
    trial.set_user_attr("command", command)
    trial.set_user_attr("constraints", _constraints(metrics, limits))
    if len(study.directions) == 1:  # objective="accuracy": the limits stay constraints
        study.tell(trial, metrics["accuracy"])
        return
    fourth = metrics["latency_ms"] if limits.get("qemu") else float(metrics["macs"])
    study.tell(trial, [metrics["accuracy"], float(metrics["flash_bytes"]), float(metrics["arena_bytes"]),
                       float("inf") if fourth is None else float(fourth)])


class _InProcess:
    """workers=0: every trial in the driver's process, one at a time (tests, debugging)."""

    slots = 1

    def __init__(self):
        self._done: list = []

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported as the trial's failure
            fut.set_exception(exc)
        self._done.append(fut)
        return fut

    def next_done(self):
        return self._done.pop(0)

    def close(self) -> None:
        pass


class _Dask:
    """Trials as Dask tasks: a LocalCluster of `workers` processes (one thread each), or a running scheduler."""

    def __init__(self, workers: int, scheduler: str | None, retries: int = 3):
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise UserError("qgen tune runs trials on Dask: pip install 'qgen[tune]' (dask, distributed, "
                            "optuna), or workers=0 to run them in this process") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except OSError as exc:
                raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one with "
                                "`dask scheduler` and workers with `dask worker HOST:8786`") from None
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)
        self.retries = retries
        self.slots = max(1, sum(self.client.nthreads().values()))
        self._ac = as_completed()

    def submit(self, fn, *args):
        fut = self.client.submit(fn, *args, pure=False, retries=self.retries)
        self._ac.add(fut)
        return fut

    def next_done(self):
        return next(self._ac)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class _Lock:
    """One driver per study: an exclusive lock on STUDY.lock for as long as the driver runs."""

    def __init__(self, study: Path):
        import fcntl

        self.path = Path(f"{study}.driver.lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise UserError(f"study '{study}' is being tuned by another process (lock {self.path}); wait for it "
                            "or tune into another --study") from None

    def release(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------- entry points


def _xy(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from a pair of arrays or an .npz file holding x and y."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise UserError(f"{what} file '{data}' does not exist; give an .npz with arrays x and y "
                            "(numpy.savez(path, x=x, y=y))")
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise UserError(f"cannot read {what} '{data}' as an .npz archive ({type(exc).__name__}); save it with "
                            "numpy.savez(path, x=x, y=y)") from None
        have = ", ".join(z.files) if isinstance(z, np.lib.npyio.NpzFile) else "one .npy array"
        if not isinstance(z, np.lib.npyio.NpzFile) or not {"x", "y"} <= set(z.files):
            raise UserError(f"{what} '{data}' holds {have or 'nothing'}; give an .npz with arrays x (float samples) "
                            "and y (integer labels): numpy.savez(path, x=x, y=y)")
        with z:
            x, y = z["x"], z["y"]
    else:
        try:
            x, y = data
        except (TypeError, ValueError):
            raise UserError(f"{what}: give (x, y) arrays or an .npz path") from None
        x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu" or len(x) != len(y) or len(x) == 0:
        raise UserError(f"{what}: x must be float samples and y as many integer labels; got x {x.dtype} "
                        f"{list(x.shape)}, y {y.dtype} {list(y.shape)}")
    return x.astype(np.float32), y.astype(np.int64)


def _save_data(d: Path, calib, train, eval_xy) -> None:
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"calib": calib, "eval_x": eval_xy[0], "eval_y": eval_xy[1]}
    if train is not None:
        arrays.update(train_x=train[0], train_y=train[1])
    for name, a in arrays.items():
        np.save(d / f"{name}.npy", a)


def _prepare_model(model: Any, input_shape, d: Path) -> tuple[str, bytes | None]:
    """A model target string (as given), or an nn.Module / ExportedProgram saved as STUDY.d/model.pt2."""
    if isinstance(model, (str, Path)):  # a .pt2 travels to the workers (a cluster's machines need not share files)
        pt2 = Path(model)
        return str(model), (pt2.read_bytes() if str(model).endswith(".pt2") and pt2.is_file() else None)
    import torch

    if isinstance(model, torch.nn.Module):
        if input_shape is None:
            raise UserError("give input_shape (e.g. (1, 1, 8, 8)) to tune an nn.Module")
        model = torch.export.export(model.eval(), (torch.zeros(tuple(input_shape)),))
    if not isinstance(model, torch.export.ExportedProgram):
        raise UserError(f"cannot tune a {type(model).__name__}; give an nn.Module, an ExportedProgram or a "
                        "'file.py:factory' / 'model.pt2' target")
    d.mkdir(parents=True, exist_ok=True)
    torch.export.save(model, d / "model.pt2")
    return str(d / "model.pt2"), (d / "model.pt2").read_bytes()


def tune(model: Any, *, board: str, data: Any, eval: Any, input_shape: tuple[int, ...] | None = None,
         trials: int = 60, study: str | Path = "build/tune.journal", workers: int = 2, scheduler: str | None = None,
         qemu: bool = True, max_latency_ms: float | None = None, max_flash: int | None = None,
         max_ram: int | None = None, sampler: str = "nsga2", seed: int = 0, finetune_epochs: int = 2,
         qat: bool = False, train_fn: Callable | None = None, fixed: dict | None = None,
         presets: bool = True, objective: str = "pareto", pruner: Any = True) -> TuneResult:
    """Search compile options for `board` (see the module docstring); returns the Pareto front.

    model: a `qgen compile` target ('file.py:factory', 'model.pt2') or an nn.Module / ExportedProgram (saved as
        STUDY.d/model.pt2, which the command lines use). data / eval: (x, y) float samples in PyTorch layout and
        integer labels, or .npz files holding x and y: training (calibration, fine-tuning) and evaluation splits.
    trials: finished trials the study should hold (a resumed study runs only the missing ones).
    workers: Dask LocalCluster worker processes (0: run every trial in this process); scheduler: the address
        of a running Dask scheduler (tcp://HOST:8786) instead. qemu=False: no QEMU runs; the fourth objective is
        then the MACs.
    max_latency_ms / max_flash / max_ram: hard limits (default flash and RAM: the board's).
    finetune_epochs: the most fine-tuning epochs a trial may use (0: none). qat: search QAT on/off too.
    train_fn(module, x, y, epochs): your training loop instead of the built-in one (module: the float IR as a
        torch module, or the QAT model; x in the module's layout).
    fixed: {parameter: value} held fixed (e.g. {"calibration": "minmax"}).
    presets: a new study starts with the default compile and qgen's standard single techniques (preset_params);
        False: with the default compile only.
    objective: "pareto" (the default): four objectives (accuracy; weight flash, arena, latency or MACs), the
        Pareto front. "accuracy": the integer accuracy alone, maximised under the same limits (constraints), with
        `pruner` stopping trials early on their float accuracy after each fine-tuning epoch (True: Optuna's
        MedianPruner(n_startup_trials=5); an optuna.pruners object; False: none). The result's points are then the
        feasible trials no other dominates, best accuracy first, as in the pareto mode.
    """
    import optuna  # the `tune` extra

    from . import limits as limits_mod
    from .target import load_board

    b = load_board(board)  # UserError for an unknown board
    if max_latency_ms is not None and not qemu:
        raise UserError("--max-latency-ms needs the QEMU instruction counts; drop --no-qemu")
    if max_latency_ms is not None and max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms must be positive, got {max_latency_ms}")
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    if objective not in OBJECTIVE_MODES:
        raise UserError(f"objective '{objective}' is unknown; use pareto (accuracy, flash, arena and latency: the "
                        "Pareto front) or accuracy (the best accuracy under the limits, with an Optuna pruner)")
    lim = limits_mod.limits(max_flash, max_ram, b.name)
    limits = {"flash": lim.flash, "ram": lim.ram, "latency_ms": max_latency_ms, "qemu": qemu}
    study = Path(study)
    study.parent.mkdir(parents=True, exist_ok=True)
    train = _xy(data, "training data")
    eval_xy = _xy(eval, "evaluation data")
    d = data_dir(study)
    lock = _Lock(study)
    try:
        target, model_bytes = _prepare_model(model, input_shape, d)
        calib = train[0][:CALIB_SAMPLES]
        from .api import _frontend, float_batch

        graph = _frontend(target, input_shape)
        float_batch(graph, train[0], "training data")  # shapes checked once, with the model's own message
        float_batch(graph, eval_xy[0], "evaluation data")
        _save_data(d, calib, train, eval_xy)
        from .ops import Trait, has

        layers = tuple(n.name for n in graph.nodes  # model outputs stay int8 (the C API)
                       if has(n.op, Trait.WEIGHTED) and not set(n.outputs) & set(graph.outputs))
        spec = TuneSpec(model=target, input_shape=tuple(input_shape) if input_shape else None, board=b.name,
                        calib=calib, eval_x=eval_xy[0], eval_y=eval_xy[1], train=train, qemu=qemu, layers=layers,
                        finetune_max=finetune_epochs, qat=qat, train_fn=train_fn, model_bytes=model_bytes,
                        data_dir=str(d), fixed=dict(fixed or {}))
        opened = _open_study(study, _sampler(sampler, seed, fixed), objective)
        _check_same_study(opened, spec, limits, presets, objective)
        if objective == "pareto" or pruner is False or pruner is None:
            pruner = None  # Optuna refuses trial.report in multi-objective studies
        elif pruner is True:
            pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
        _run(opened, spec, limits, trials, workers, scheduler, pruner)
        return _result(opened, study, b.name, limits, spec, require_feasible=True)
    finally:
        lock.release()


def _check_same_study(study, spec: TuneSpec, limits: dict, use_presets: bool = True,
                      objective: str = "pareto") -> None:
    """A new study records what it tunes; a resumed one must tune the same model, board and data."""
    key = {"model": spec.model, "board": spec.board, "qemu": spec.qemu, "layers": list(spec.layers),
           "input_shape": list(spec.input_shape or []),
           "data": hashlib.sha256(spec.calib.tobytes() + spec.eval_x.tobytes()).hexdigest()[:16],
           "objective": objective, "space": SPACE_VERSION}
    old = study.user_attrs.get("spec")
    if old is None:
        study.set_user_attr("spec", key)
        study.set_user_attr("limits", limits)
        study.set_user_attr("data_dir", spec.data_dir)
        for i, params in enumerate(preset_params(spec)[:None if use_presets else 1]):
            study.enqueue_trial(params, user_attrs={"preset": i})  # trial 0, the default compile, always
        return
    diff = [k for k in key if old.get(k, {"objective": "pareto", "space": 1}.get(k)) != key[k]]
    if diff:
        was = ", ".join(f"{k}={old.get(k)}" for k in diff)
        raise UserError(f"the study was made for another {', '.join(diff)} ({was}); "
                        "resume it with the same model, board, data, --objective and qgen version (search space), "
                        "or give a new --study")
    study.set_user_attr("limits", limits)


def _run(study, spec: TuneSpec, limits: dict, trials: int, workers: int, scheduler: str | None,
         pruner=None) -> None:
    """The driver: ask Optuna for parameters, run each trial's evaluate() on the executor, tell the results as
    they complete, until the study holds `trials` finished trials."""
    recovered = recover_interrupted(study)
    done = len(_finished(study))
    if done >= trials:
        return
    executor = _InProcess() if workers == 0 and not scheduler else _Dask(workers, scheduler)
    pending: dict = {}
    try:
        with progress.task(f"tune ({executor.slots} worker{'s' * (executor.slots > 1)})", total=trials) as bar:
            bar.advance(done)
            if recovered:
                bar.note(f"resumed: {done} finished trials kept, {recovered} interrupted trial(s) queued again")
            while True:
                while done + len(pending) < trials and len(pending) < executor.slots:
                    trial = study.ask()
                    params = suggest(trial, spec)
                    pruning = None if pruner is None else (pruner, _pruner_history(study))
                    pending[executor.submit(evaluate, spec, params, limits, pruning)] = (trial, params)
                if not pending:
                    break
                fut = executor.next_done()
                trial, params = pending.pop(fut)
                try:
                    metrics = fut.result()
                except Exception as exc:  # noqa: BLE001 - e.g. Dask's KilledWorker after the retries
                    metrics = {"error": f"{type(exc).__name__}: {exc}"}
                _tell(study, trial, metrics, limits, command_line(spec, params, f"build/tuned/trial{trial.number}"))
                done += 1
                bar.advance()
                bar.note(_note(trial.number, metrics, limits))
    finally:
        for fut in pending:  # an interrupted driver: its RUNNING trials are re-queued by the next resume
            if hasattr(fut, "cancel"):
                fut.cancel()
        executor.close()


def _pruner_history(study) -> list:
    """The finished trials a worker's pruner compares with (those with fine-tuning epochs reported)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.intermediate_values]


def _note(number: int, m: dict, limits: dict) -> str:
    if "error" in m:
        return f"trial {number}: refused: {m['error'].splitlines()[0][:120]}"
    if "pruned" in m:
        return (f"trial {number}: pruned after fine-tuning epoch {m['pruned']} "
                f"(float accuracy {100 * m['intermediate'][m['pruned']]:.2f}%)")
    fits = all(c <= 0 for c in _constraints(m, limits))
    lat = f", {m['latency_ms']:.2f} ms" if m.get("latency_ms") is not None else ""
    return (f"trial {number}: {100 * m['accuracy']:.2f}%, {m['flash_bytes']:,} B flash, {m['arena_bytes']:,} B "
            f"arena{lat}{'' if fits else ' (over a limit)'}")


def _point(t) -> Point:
    a = t.user_attrs
    return Point(t.number, dict(t.params), a["accuracy"], a["flash_bytes"], a["arena_bytes"], a["macs"],
                 a.get("instructions"), a.get("latency_ms"), all(c <= 0 for c in a["constraints"]), a.get("command"))


def _result(study, path: Path, board: str, limits: dict, spec: TuneSpec | None,
            require_feasible: bool = False) -> TuneResult:
    from optuna.trial import TrialState

    done = [_point(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(study.directions) == 1:  # objective="accuracy": the front of the feasible trials all the same
        front_numbers = {p.number for p in _pareto([p for p in done if p.feasible], limits)}
    else:
        front_numbers = {t.number for t in study.best_trials}
    front = sorted((p for p in done if p.number in front_numbers and p.feasible),
                   key=lambda p: (-p.accuracy, p.flash_bytes, p.number))
    if require_feasible and done and not front:
        raise UserError(_infeasible_message(done, limits))
    return TuneResult(path, board, front, done, limits)


def _pareto(points: list[Point], limits: dict) -> list[Point]:
    """The points no other point dominates in (accuracy max; flash, arena, latency or MACs min)."""
    def key(p: Point) -> tuple:
        fourth = p.latency_ms if limits.get("qemu") else p.macs
        return (-p.accuracy, p.flash_bytes, p.arena_bytes, float("inf") if fourth is None else fourth)

    keys = {p.number: key(p) for p in points}
    return [p for p in points if not any(all(a <= b for a, b in zip(keys[q.number], keys[p.number]))
                                         and keys[q.number] != keys[p.number] for q in points)]


def _infeasible_message(done: list[Point], limits: dict) -> str:
    """Which limit no trial met, and how close the best came."""
    out = []
    least_flash = min(p.flash_bytes for p in done)
    least_arena = min(p.arena_bytes for p in done)
    if least_flash > limits["flash"]:
        out.append(f"the flash limit ({limits['flash']:,} B): the smallest weight flash was {least_flash:,} B")
    if least_arena > limits["ram"]:
        out.append(f"the RAM limit ({limits['ram']:,} B): the smallest arena was {least_arena:,} B")
    lats = [p.latency_ms for p in done if p.latency_ms is not None]
    if limits.get("latency_ms") is not None and (not lats or min(lats) > limits["latency_ms"]):
        best = f"the fastest ran {min(lats):.3f} ms" if lats else "no trial fitted well enough to be run under QEMU"
        out.append(f"the latency limit ({limits['latency_ms']} ms): {best}")
    if not out:
        out.append("all limits at once (each was met by some trial, never all together)")
    return (f"no trial met {'; '.join(out)}. Raise the limit, pick a bigger or faster board, run more trials, or "
            "make the model smaller")


def load(study: str | Path) -> TuneResult:
    """The front of a stored study (`qgen tune --show STUDY`)."""
    path = Path(study)
    if not path.is_file():
        raise UserError(f"study '{study}' does not exist; run `qgen tune ... --study {study}` first")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        opened = optuna.load_study(study_name=STUDY_NAME, storage=_storage(path))
    except KeyError:
        raise UserError(f"'{study}' holds no qgen tune study") from None
    except Exception as exc:  # a file that is not an Optuna journal
        raise UserError(f"cannot read '{study}' as a qgen tune study ({type(exc).__name__})") from None
    spec = opened.user_attrs.get("spec", {})
    return _result(opened, path, spec.get("board", "?"), opened.user_attrs.get("limits", {}), None)


def compile_trial(study: str | Path, number: int, out_dir: str | Path | None = None, train_fn: Callable | None = None):
    """Rebuild a trial's point (any point, QAT included) -> CompileResult, from the study and STUDY.d/."""
    import optuna

    path = Path(study)
    opened = optuna.load_study(study_name=STUDY_NAME, storage=_storage(path))
    attrs = opened.user_attrs
    d = Path(attrs["data_dir"])
    trial = opened.trials[number]
    s = attrs["spec"]
    load_npy = lambda n: np.load(d / f"{n}.npy")  # noqa: E731
    train = (load_npy("train_x"), load_npy("train_y")) if (d / "train_x.npy").is_file() else None
    spec = TuneSpec(model=s["model"], input_shape=tuple(s["input_shape"]) or None, board=s["board"],
                    calib=load_npy("calib"), eval_x=load_npy("eval_x"), eval_y=load_npy("eval_y"), train=train,
                    layers=tuple(s["layers"]), train_fn=train_fn, data_dir=str(d))
    return compile_point(spec, dict(trial.params), out_dir)


def plot(result: TuneResult, path: str | Path) -> Path:
    """PNG: accuracy vs weight flash of every finished trial, the front highlighted, colour = latency (needs
    matplotlib). Written atomically."""
    from .output import write_file_atomic

    path = Path(path)
    write_file_atomic(path, plot_png(result))
    return path


def plot_png(result: TuneResult) -> bytes:
    """The plot of `plot` as PNG bytes (UserError without matplotlib)."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = result.trials
    lat = [p.latency_ms if p.latency_ms is not None else p.macs for p in pts]
    sc = ax.scatter([p.flash_bytes for p in pts], [100 * p.accuracy for p in pts], c=lat, cmap="viridis", s=18,
                    alpha=0.6, label="trials")
    front = result.points
    ax.plot([p.flash_bytes for p in sorted(front, key=lambda p: p.flash_bytes)],
            [100 * p.accuracy for p in sorted(front, key=lambda p: p.flash_bytes)], "r.-", label="Pareto front")
    if pts and result.limits.get("flash", 0) <= 4 * max(p.flash_bytes for p in pts):  # else it squashes the trials
        ax.axvline(result.limits["flash"], color="grey", ls="--", lw=0.8, label="flash limit")
    ax.set_xscale("log")
    ax.set_xlabel("weight flash (bytes)")
    ax.set_ylabel("accuracy of the integer reference (%)")
    ax.set_title(f"qgen tune on {result.board}")
    fig.colorbar(sc, label="latency (ms)" if result.limits.get("qemu") else "MACs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def html_page(result: TuneResult) -> str:
    """The study as one self-contained HTML page (templates/report/tune.html.j2, autoescaped: option text, paths
    and command lines are data): the limits, the front with each point's command, the plot as a data URI when
    matplotlib is installed."""
    import base64

    import jinja2

    from .resources import data_dir

    try:
        png = "data:image/png;base64," + base64.b64encode(plot_png(result)).decode() if result.trials else None
    except UserError:  # no matplotlib: the page without the plot
        png = None
    lim = result.limits
    rows = [{"trial": p.number, "accuracy": f"{100 * p.accuracy:.2f}%", "flash": f"{p.flash_bytes:,}",
             "arena": f"{p.arena_bytes:,}", "macs": f"{p.macs:,}",
             "instructions": f"{p.instructions:,.0f}" if p.instructions is not None else "-",
             "ms": f"{p.latency_ms:.3f}" if p.latency_ms is not None else "-", "options": describe(p.params),
             "command": p.command or _api_hint(result.study_path, p.number)} for p in result.points]
    data = {"study": str(result.study_path), "board": result.board, "rows": rows, "png": png,
            "finished": len(result.trials),
            "limits": [f"flash {lim['flash']:,} B" if lim.get("flash") else None,
                       f"RAM {lim['ram']:,} B" if lim.get("ram") else None,
                       f"latency {lim['latency_ms']} ms" if lim.get("latency_ms") else None],
            "latency": "QEMU instructions at the board's clock" if lim.get("qemu") else "MACs (no QEMU)"}
    data["limits"] = ", ".join(x for x in data["limits"] if x) or "none recorded"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report/tune.html.j2").render(d=data)


def write_html(result: TuneResult, path: str | Path) -> Path:
    """`qgen tune ... --html PATH`: html_page(result), written atomically."""
    from .output import write_file_atomic

    path = Path(path)
    write_file_atomic(path, html_page(result).encode())
    return path
