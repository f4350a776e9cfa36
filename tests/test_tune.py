"""qgen tune / codegen.tune: the search space and its command lines, resume after an interrupted driver, a Dask
worker killed in the middle of a trial, the CLI (errors, --show) and one run with QEMU instruction counts.

A tiny MLP (8 -> 16 -> 3) on separable synthetic data keeps each trial to a second or two."""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")  # the `tune` extra (scripts/setup.sh installs it)

from codegen import cli  # noqa: E402
from codegen import tuning as qtune  # noqa: E402
from codegen.api import load_compiled  # noqa: E402
from codegen.errors import UserError  # noqa: E402

NO_COMPRESSION = {"prune_on": False, "channels_on": False, "rank_on": False, "cluster_on": False}


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.random.default_rng(99).standard_normal((3, 8)) * 2
    return (centres[y] + rng.standard_normal((n, 8))).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model.pt2 path, (x, y) train, (x, y) eval, directory)."""
    import torch
    from torch import nn

    d = tmp_path_factory.mktemp("tune")
    train, ev = _data(384, 0), _data(128, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 8),)), d / "tiny.pt2")
    np.savez(d / "train.npz", x=train[0], y=train[1])
    np.savez(d / "eval.npz", x=ev[0], y=ev[1])
    return str(d / "tiny.pt2"), train, ev, d


def _tune(tiny, study, **kw):
    model, train, ev, _ = tiny
    args = dict(board="stm32f446", data=train, eval=ev, trials=3, study=study, workers=0, qemu=False,
                finetune_epochs=1, presets=False)
    return qtune.tune(model, **{**args, **kw})


def test_options_and_command_line_of_a_point():
    params = {"calibration": "percentile", "percentile": 99.9, "bias_correction": True, "equalize": False,
              "prune_on": True, "prune": 0.30000000000000004, "prune_scope": "global", "importance": "magnitude",
              "channels_on": False, "rank_on": False, "cluster_on": True, "cluster": 4, "weights": "int4",
              "precision:0": "int16", "finetune_epochs": 2, "prune_steps": 2}
    opts = qtune.options_from_params(params)
    assert opts.quant.calibration == "percentile" and opts.quant.percentile == 99.9 and opts.quant.bias_correction
    assert opts.quant.precision == {"0": 16} and opts.quant.weights == "int4"
    assert opts.compress.prune == 0.3 and opts.compress.cluster == 4 and opts.compress.finetune_epochs == 2
    assert opts.compress.prune_steps == 2  # gradual pruning: --prune-steps (only with fine-tuning)
    assert qtune.options_from_params({**params, "finetune_epochs": 0}).compress.prune_steps == 1
    spec = qtune.TuneSpec(model="m.pt2", input_shape=None, board="stm32f446", calib=np.zeros((1, 8)),
                          eval_x=np.zeros((1, 8)), eval_y=np.zeros(1), data_dir="S.d")
    args = shlex.split(qtune.command_line(spec, params, "out"))
    assert args[:3] == ["qgen", "compile", "m.pt2"]
    for flag in (["--calibration", "percentile"], ["--percentile", "99.9"], ["--prune", "0.3"],
                 ["--cluster", "4"], ["--weights", "int4"], ["--precision", "0=int16"], ["--finetune-epochs", "2"],
                 ["--prune-steps", "2"],
                 ["--train", "S.d/train_x.npy"], ["--labels", "S.d/train_y.npy"], ["--out", "out"]):
        i = args.index(flag[0])
        assert args[i + 1] == flag[1], flag
    assert "--bias-correction" in args and "--equalize" not in args
    # parsed back by qgen compile's own parser into the same options
    parsed = cli.build_parser().parse_args(args[1:])
    assert cli.compile_options(parsed) == opts
    # QAT has no qgen compile flag: no command line, compile_trial rebuilds it
    assert qtune.command_line(spec, {**params, "qat": True}) is None


def test_front_point_command_reproduces_accuracy_and_flash(tiny, tmp_path, monkeypatch):
    study = tmp_path / "s.journal"
    result = _tune(tiny, study, fixed={"prune_on": True, "prune": 0.5, "prune_steps": 2, "finetune_epochs": 1,
                                       "cluster_on": False})
    assert len(result.trials) == 3 and result.points  # no trial refused
    assert result.trials[0].params["prune_on"] is False  # the baseline (default compile) is trial 0, enqueued
    assert result.trials[0].params["precision:0"] == "int8"
    point = next(p for p in result.points if p.params.get("prune_on"))
    monkeypatch.chdir(tmp_path)  # the command writes build/tuned/trialN here
    args = shlex.split(point.command)
    assert args[args.index("--prune-steps") + 1] == "2"
    assert cli.main(args[1:] + ["--quiet"]) == 0
    out = load_compiled(args[args.index("--out") + 1])
    ev = tiny[2]
    acc = float(np.mean(out.predict(ev[0]).argmax(1) == ev[1]))
    assert acc == point.accuracy
    assert out.report["flash_bytes"] == point.flash_bytes and out.report["arena_bytes"] == point.arena_bytes
    # qgen tune --show lists the stored front with the same command lines
    shown = qtune.load(study)
    assert [p.number for p in shown.points] == [p.number for p in result.points]
    assert point.command in shown.table()


def test_resume_after_an_interrupted_driver(tiny, tmp_path):
    study = tmp_path / "r.journal"
    _tune(tiny, study, trials=2, fixed=NO_COMPRESSION)
    s = qtune._open_study(study, qtune._sampler("nsga2", 1, NO_COMPRESSION))
    lost = s.ask()  # a driver killed while this trial ran: RUNNING forever
    params = qtune.suggest(lost, qtune.TuneSpec(model="", input_shape=None, board="", calib=np.zeros(1),
                                                eval_x=np.zeros(1), eval_y=np.zeros(1), train=tiny[1], layers=("0",),
                                                finetune_max=1))
    before = {t.number: t.values for t in s.trials if t.values}
    _tune(tiny, study, trials=4, fixed=NO_COMPRESSION)
    s = qtune._open_study(study)
    states = {t.number: t.state.name for t in s.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    assert {n: s.trials[n].values for n in before} == before  # finished trials kept, not run again
    retry = s.trials[3]
    assert retry.user_attrs["retry_of"] == 2 and retry.params == params  # re-enqueued with the same parameters
    # a complete study: nothing left to run
    again = _tune(tiny, study, trials=4, fixed=NO_COMPRESSION)
    assert len(again.trials) == 4 and len(qtune._open_study(study).trials) == 5


def _slow_training(module, x, y, epochs):
    """A user training function that takes long enough to be killed in the middle (and records where it ran)."""
    marker = Path(os.environ["QGEN_TUNE_TEST_MARKERS"])
    (marker / f"start-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(1.5)


@pytest.mark.slow
def test_dask_worker_killed_mid_trial_is_retried(tiny, tmp_path, monkeypatch):
    cloudpickle = pytest.importorskip("cloudpickle")
    pytest.importorskip("distributed")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests directory
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("QGEN_TUNE_TEST_MARKERS", str(markers))  # inherited by the worker processes
    killed: list[int] = []

    def killer():  # kill the worker running the first fine-tuning, while it runs
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            started = sorted(markers.glob("start-*"))
            if started:
                pid = int(started[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    study = tmp_path / "k.journal"
    result = _tune(tiny, study, trials=3, workers=2, train_fn=_slow_training,
                   fixed={"prune_on": True, "prune": 0.5, "channels_on": False, "rank_on": False, "cluster_on": False,
                          "finetune_epochs": 1})
    thread.join(1)
    assert len(killed) == 1
    s = qtune._open_study(study)
    assert [t.state.name for t in s.trials] == ["COMPLETE"] * 3  # none lost, none failed
    runs = [int(m.name.split("-")[1]) for m in markers.glob("start-*")]
    assert len(runs) == 3  # trials 1 and 2 fine-tune (the baseline does not); one of them twice
    assert killed[0] in runs and len(set(runs)) >= 2  # the killed trial ran again on another worker process
    assert all(p.command is None for p in result.trials[1:])  # a user training function: compile_trial rebuilds
    assert len(result.trials) == 3


def test_cli_errors(tiny, tmp_path, capsys):
    model, _, _, d = tiny
    base = [model, "--data", str(d / "train.npz"), "--eval", str(d / "eval.npz"), "--workers", "0", "--no-qemu",
            "--study", str(tmp_path / "e.journal"), "--quiet"]
    assert cli.main(["tune", *base, "--board", "nosuchboard"]) == 1
    assert "nosuchboard" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((4, 8), np.float32))
    bad = [a if a != str(d / "train.npz") else str(tmp_path / "x.npy") for a in base]
    assert cli.main(["tune", *bad, "--board", "stm32f446"]) == 1
    assert "x (float samples) and y" in capsys.readouterr().err
    assert cli.main(["tune", "--board", "stm32f446"]) == 1
    assert "needs model, --data, --eval" in capsys.readouterr().err
    assert cli.main(["tune", *base, "--board", "stm32f446", "--max-latency-ms", "1"]) == 1
    assert "needs the QEMU instruction counts" in capsys.readouterr().err
    # limits no trial can meet: say which
    assert cli.main(["tune", *base, "--board", "stm32f446", "--max-flash", "64", "--trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "no trial met the flash limit (64 B): the smallest weight flash was" in err
    assert cli.main(["tune", "--show", str(tmp_path / "none.journal")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resumed_study_must_match(tiny, tmp_path):
    study = tmp_path / "m.journal"
    _tune(tiny, study, trials=1)
    with pytest.raises(UserError, match="made for another board"):
        _tune(tiny, study, trials=2, board="rp2040")


@pytest.mark.qemu
def test_tune_with_qemu_latency(tiny, tmp_path, capsys, monkeypatch):
    """One trial (the baseline) on the M0+ under QEMU through the CLI: instructions -> ms at the board's clock."""
    model, _, _, d = tiny
    monkeypatch.setenv("QGEN_CACHE", str(tmp_path / "cache"))  # a cold QEMU cache
    study = tmp_path / "q.journal"
    argv = ["tune", model, "--board", "rp2040", "--data", str(d / "train.npz"), "--eval", str(d / "eval.npz"),
            "--workers", "0", "--trials", "1", "--study", str(study), "--max-latency-ms", "50", "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    point = qtune.load(study).points[0]
    assert point.instructions > 100 and point.latency_ms == pytest.approx(point.instructions / 133e3)
    assert f"{point.latency_ms:.3f}" in out
    cached = list((tmp_path / "cache" / "tune" / "qemu").glob("*.json"))
    assert len(cached) == 1
    from codegen.target import load_board

    compiled = qtune.compile_trial(study, 0)
    assert qtune.qemu_instructions(compiled, load_board("rp2040")) == point.instructions  # from the cache


def test_presets_start_a_new_study(tiny, tmp_path):
    """The default compile, then the standard single techniques, as complete parameter sets (nothing sampled)."""
    spec = qtune.TuneSpec(model="", input_shape=None, board="", calib=np.zeros(1), eval_x=np.zeros(1),
                          eval_y=np.zeros(1), train=tiny[1], layers=("0",), finetune_max=1)
    presets = qtune.preset_params(spec)
    assert {"prune": 0.9, "prune_steps": 2}.items() <= presets[3].items() and presets[6]["rank_energy"] == 0.95
    result = _tune(tiny, tmp_path / "p.journal", trials=len(presets), presets=True)
    assert [p.params for p in result.trials] == presets
    assert all(p.command for p in result.trials)


def test_one_driver_per_study(tiny, tmp_path):
    study = tmp_path / "l.journal"
    held = qtune._Lock(study)  # another driver
    try:
        with pytest.raises(UserError, match="being tuned by another process"):
            _tune(tiny, study, trials=1)
    finally:
        held.release()
    assert len(_tune(tiny, study, trials=1).trials) == 1


GOOD = {"calibration": "minmax", "bias_correction": False, "equalize": False, "prune_on": True, "prune": 0.3,
        "prune_scope": "layer", "importance": "magnitude", "prune_steps": 1, "channels_on": False, "rank_on": False,
        "cluster_on": False, "weights": "int8", "finetune_epochs": 2}


@pytest.fixture(scope="module")
def accuracy_study(tiny, tmp_path_factory):
    """objective="accuracy": a fine-tuned trial, then a hopeless one (95% pruned, 60% of the channels cut) that the
    MedianPruner stops after its first fine-tuning epoch, then one more."""
    import optuna

    study = tmp_path_factory.mktemp("acc") / "a.journal"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    kw = dict(objective="accuracy", pruner=pruner, finetune_epochs=2, fixed=GOOD)
    _tune(tiny, study, trials=2, **kw)  # the baseline (no fine-tuning: nothing reported), a good trial
    opened = qtune._open_study(study, objective="accuracy")
    opened.enqueue_trial({**GOOD, "prune": 0.95, "channels_on": True, "channels": 0.6})
    result = _tune(tiny, study, trials=4, **kw)  # the hopeless trial, then one more: the study goes on
    return study, result, opened


def test_accuracy_objective_prunes_a_trial_and_completes(tiny, accuracy_study):
    from optuna.trial import TrialState

    study, result, opened = accuracy_study
    trials = opened.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED, TrialState.COMPLETE]
    assert opened.directions == [optuna_direction("maximize")]
    assert trials[2].user_attrs["pruned_at_epoch"] == 1 and list(trials[2].intermediate_values) == [1]
    assert "accuracy" not in trials[2].user_attrs  # stopped before its compile finished
    assert list(trials[1].intermediate_values) == [1, 2]  # the float accuracy after each fine-tuning epoch
    assert len(result.trials) == 3 and result.points and all(p.feasible for p in result.points)
    assert result.points[0].accuracy == max(p.accuracy for p in result.trials)
    # the epoch hook does not change the compile: a rebuild without it gives the same accuracy
    ev = tiny[2]
    rebuilt = qtune.compile_trial(study, 1)
    assert float(np.mean(rebuilt.predict(ev[0]).argmax(1) == ev[1])) == trials[1].user_attrs["accuracy"]
    # resuming with the other objective is refused
    with pytest.raises(UserError, match="another objective"):
        _tune(tiny, study, trials=5)
    with pytest.raises(UserError, match="objective 'loss' is unknown"):
        _tune(tiny, study, trials=5, objective="loss")


def optuna_direction(name: str):
    import optuna

    return getattr(optuna.study.StudyDirection, name.upper())


def test_show_html_page(accuracy_study, tmp_path, capsys):
    study, result, _ = accuracy_study
    out = tmp_path / "tune.html"
    assert cli.main(["tune", "--show", str(study), "--html", str(out), "--quiet"]) == 0
    page = out.read_text()
    assert page.count('<tr class="point"') == len(result.points) >= 1
    for p in result.points:
        assert f'data-trial="{p.number}"' in page
        assert (p.command or "").replace('"', "&#34;").replace("'", "&#39;") in page  # escaped, as data
    try:
        import matplotlib  # noqa: F401

        assert 'src="data:image/png;base64,' in page
    except ImportError:
        assert 'id="noplot"' in page
    assert not list(tmp_path.glob(".*tmp"))  # written atomically
    # user text is data: a command line with markup is escaped
    hostile = qtune.TuneResult(result.study_path, "<b>board</b>", [qtune.Point(
        **{**result.points[0].__dict__, "command": "qgen compile '<script>alert(1)</script>' --out x&y"})],
        result.trials, result.limits)
    page = qtune.html_page(hostile)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "x&amp;y" in page
    assert "<b>board</b>" not in page
    # a directory that does not exist: exit 1, nothing written
    capsys.readouterr()
    assert cli.main(["tune", "--show", str(study), "--html", str(tmp_path / "no" / "t.html"), "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_per_layer_int4_in_the_space(tiny):
    """--precision LAYER=w4 per layer; a layer after an int16 one is offered int8/int16 only (its own name)."""
    import optuna

    spec = qtune.TuneSpec(model=tiny[0], input_shape=None, board="stm32f446", calib=tiny[1][0][:64],
                          eval_x=tiny[2][0], eval_y=tiny[2][1], layers=("a", "b", "c"), data_dir="S.d")
    base = {"calibration": "minmax", "bias_correction": False, "equalize": False, "weights": "int8", **NO_COMPRESSION}
    drawn = qtune.suggest(optuna.trial.FixedTrial(
        {**base, "precision:a": "w4", "precision:b": "int16", "precision:c:after-int16": "int8"}), spec)
    assert {k: v for k, v in drawn.items() if k.startswith("precision")} == {
        "precision:a": "w4", "precision:b": "int16", "precision:c:after-int16": "int8"}
    with pytest.raises(ValueError):  # after an int16 layer, "precision:c" (with w4) is not drawn
        qtune.suggest(optuna.trial.FixedTrial({**base, "precision:a": "int16", "precision:b": "w4",
                                               "precision:c": "w4"}), spec)
    opts = qtune.options_from_params(drawn)
    assert opts.quant.precision == {"a": 4, "b": 16}
    args = shlex.split(qtune.command_line(spec, drawn, "out"))
    assert args[args.index("--precision") + 1] == "a=w4,b=int16"
    assert cli.compile_options(cli.build_parser().parse_args(args[1:])) == opts
    assert "w4: a" in qtune.describe(drawn) and "int16: b" in qtune.describe(drawn)
    # the tiny MLP's hidden layer ('0') with int4 weights: compiles, less flash than int8
    spec = qtune.TuneSpec(**{**spec.__dict__, "layers": ("0",)})
    w4, w8 = (qtune.evaluate(spec, {**base, "precision:0": v}) for v in ("w4", "int8"))
    assert w4["flash_bytes"] < w8["flash_bytes"] and w4["accuracy"] > 0.8
