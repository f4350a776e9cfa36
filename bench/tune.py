"""`qgen tune` benchmark: the Pareto front the tuner finds vs the hand-picked configurations of bench/COMPRESSION.md,
and the trials per hour with 1 and 2 Dask workers.

    python bench/tune.py                 # the fronts (both tasks, both boards): writes bench/tune.json, bench/TUNE.md
    python bench/tune.py --scaling       # only the 1- vs 2-worker wall time (rerun it on an idle machine)
    python bench/tune.py --trials 30     # fewer trials per search
    python bench/tune.py --qemu          # one search per (task, board) with QEMU latency as the 4th objective
                                         # (default: one search per task with MACs as the 4th objective, then
                                         # the front points of each board counted under QEMU)

Tasks (offline data):
  digits   the `qgen demo` CNN (Conv 1->8, Conv 8->16, MaxPool, Linear 256->10) on scikit-learn's 8x8 digits,
           1437 train / 360 test images.
  mnist1d  a small strided 1-D CNN (Conv1d 1->16 k5 s2, Conv1d 16->32 k5 s2, Linear 224->10; 21.6 K MACs) trained
           here (30 epochs, bench/sequence.py's loop) on mnist1d (PyPI mnist1d==0.0.2.post1, generated
           procedurally), 6000 train signals; accuracy on the first 1000 test signals. (The TCN of
           examples/sequence is 30x the MACs: too slow to tune on a shared 2-core machine.)
Boards: an M0+ with 256 KB flash / 32 KB RAM (atsamd21g18a: Arduino Zero / MKR, 48 MHz) and an M4 with 512 KB flash
(stm32f446, 180 MHz).

Hand-picked: every row of bench/COMPRESSION.md's table (same settings: 5 fine-tuning epochs per step, gradual
pruning in 2 steps), compiled here with the tuner's calibration samples (the first 512 training samples) and
measured on the same evaluation samples, so both sides are measured the same way.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codegen import tuning  # noqa: E402

BOARDS = {"M0+": dict(board="atsamd21g18a"), "M4": dict(board="stm32f446")}
FT_EPOCHS = 5  # as bench/compression.py
HAND_PICKED = [("int8 dense", {}),
               ("magnitude pruning 80%, no ft", {"prune": 0.8}),
               ("magnitude pruning 50% + ft", dict(prune=0.5, finetune_epochs=FT_EPOCHS)),
               ("magnitude pruning 80% + ft", dict(prune=0.8, prune_steps=2, finetune_epochs=FT_EPOCHS)),
               ("magnitude pruning 90% + ft", dict(prune=0.9, prune_steps=2, finetune_epochs=FT_EPOCHS)),
               ("gradient pruning 80% + ft", dict(prune=0.8, importance="gradient", prune_steps=2,
                                                  finetune_epochs=FT_EPOCHS)),
               ("channel pruning 25% + ft", dict(channels=0.25, finetune_epochs=FT_EPOCHS)),
               ("channel pruning 50% + ft", dict(channels=0.5, finetune_epochs=FT_EPOCHS)),
               ("low rank energy 0.95 + ft", dict(rank="energy:0.95", finetune_epochs=FT_EPOCHS)),
               ("low rank energy 0.8 + ft", dict(rank="energy:0.8", finetune_epochs=FT_EPOCHS)),
               ("clustering 4 bits", {"cluster": 4}),
               ("clustering 2 bits", {"cluster": 2}),
               ("pruning 80% + ft + clustering 4 bits", dict(prune=0.8, prune_steps=2, cluster=4,
                                                             finetune_epochs=FT_EPOCHS))]
N_PRESETS = 9  # trials 0-8 of a new study: the default compile and the standard techniques (tuning.preset_params)
OUT_JSON = ROOT / "bench" / "tune.json"
OUT_MD = ROOT / "bench" / "TUNE.md"
WORK = Path("build") / "bench-tune"  # relative to the repository root (main() runs there): command lines


def digits_task():
    import torch

    from codegen.demo import digits_data, trained_model

    model, _ = trained_model()
    x_tr, y_tr, x_te, y_te = digits_data()
    return torch.export.export(model.eval(), (torch.zeros(1, 1, 8, 8),)), (1, 1, 8, 8), (x_tr, y_tr), (x_te, y_te)


def mnist1d_cnn():
    """A small strided 1-D CNN for mnist1d's (1, 40) signals: 5 KB of int8 weights, 21.6 K MACs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 16, 5, stride=2), nn.ReLU(), nn.Conv1d(16, 32, 5, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 7, 10))


def mnist1d_task(epochs: int = 30):
    import torch

    from codegen.hostcheck import cache_root
    from examples.sequence.models import mnist1d

    sys.path.insert(0, str(ROOT / "bench"))
    from sequence import train  # bench/sequence.py's seeded loop

    x_tr, y_tr, x_te, y_te = mnist1d()
    model = mnist1d_cnn()
    path = cache_root() / "bench-tune" / f"cnn-mnist1d-{epochs}ep-{torch.__version__}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        torch.set_num_threads(2)
        train(model, x_tr, y_tr, epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    shape = (1, 1, 40)
    return torch.export.export(model, (torch.zeros(shape),)), shape, (x_tr, y_tr), (x_te[:1000], y_te[:1000])


TASKS = {"digits": digits_task, "mnist1d": mnist1d_task}


def hand_picked(program, shape, train, ev) -> list[dict]:
    """Each COMPRESSION.md setting, compiled with the tuner's calibration samples, on the tuner's eval samples."""
    from codegen import compile as qcompile
    from codegen import compress
    from codegen.options import CompileOptions

    calib = train[0][:tuning.CALIB_SAMPLES]
    rows = []
    for name, kwargs in HAND_PICKED:
        opts = CompileOptions(compress=compress.parse_cli(**kwargs)) if kwargs else CompileOptions()
        result = qcompile(program, shape, calib, options=opts, train=train if kwargs else None)
        pred = result.predict(ev[0])
        acc = float(np.mean(pred.reshape(len(pred), -1).argmax(1) == ev[1]))
        rows.append({"name": name, "accuracy": acc, "flash_bytes": int(result.report["flash_bytes"]),
                     "arena_bytes": int(result.report["arena_bytes"]), "macs": int(result.report["macs"])})
        print(f"  hand-picked {name}: {100 * acc:.2f}% {result.report['flash_bytes']:,} B", flush=True)
    return rows


def pareto(points: list[dict]) -> list[dict]:
    """The (accuracy max, flash min) non-dominated points."""
    return [p for p in points if not any(
        q["accuracy"] >= p["accuracy"] and q["flash_bytes"] <= p["flash_bytes"]
        and (q["accuracy"] > p["accuracy"] or q["flash_bytes"] < p["flash_bytes"]) for q in points)]


def dominated_by(h: dict, front: list[dict]) -> dict | None:
    """The tuner point with the least flash that dominates or equals hand-picked point h (accuracy and flash)."""
    hits = [p for p in front if p["accuracy"] >= h["accuracy"] and p["flash_bytes"] <= h["flash_bytes"]]
    return min(hits, key=lambda p: (p["flash_bytes"], -p["accuracy"])) if hits else None


def _point_dict(p: tuning.Point) -> dict:
    return {"trial": p.number, "accuracy": p.accuracy, "flash_bytes": p.flash_bytes, "arena_bytes": p.arena_bytes,
            "macs": p.macs, "instructions": p.instructions, "latency_ms": p.latency_ms,
            "options": tuning.describe(p.params), "command": p.command}


def search(task: str, program, shape, train, ev, board: str, limits: dict, trials: int, qemu: bool,
           workers: int, fresh: bool = False) -> dict:
    study = WORK / f"{task}-{board}{'-qemu' if qemu else ''}.journal"
    if fresh:  # a new search (the search space or the presets changed): drop the stored study
        for f in WORK.glob(f"{study.name}*"):
            if f.is_file():
                f.unlink()
    start = time.perf_counter()
    result = tuning.tune(program, board=limits["board"], data=train, eval=ev, input_shape=shape, trials=trials,
                         study=study, workers=workers, qemu=qemu, max_flash=limits.get("max_flash"),
                         max_ram=limits.get("max_ram"), finetune_epochs=FT_EPOCHS)
    return {"study": str(study), "seconds": time.perf_counter() - start, "trials": len(result.trials),
            "all": [_point_dict(p) for p in result.trials]}


_COMPILED: dict = {}  # (study, trial) -> CompileResult, shared by the boards' fronts


def board_front(points: list[dict], limits: dict, board_name: str, study: str) -> list[dict]:
    """The board's feasible (accuracy, flash, latency) front; latency counted under QEMU per point (cached)."""
    from codegen.limits import limits as board_limits
    from codegen.target import load_board

    lim = board_limits(limits.get("max_flash"), limits.get("max_ram"), limits["board"])
    board = load_board(limits["board"])
    fits = [dict(p) for p in points if p["flash_bytes"] <= lim.flash and p["arena_bytes"] <= lim.ram]
    front2 = pareto(fits)
    for p in front2:
        if p["instructions"] is None:
            key = (study, p["trial"])  # one compile per trial for every board (fine-tuning is the slow part)
            if key not in _COMPILED:
                _COMPILED[key] = tuning.compile_trial(ROOT / study, p["trial"])
            p["instructions"] = tuning.qemu_instructions(_COMPILED[key], board)
            p["latency_ms"] = p["instructions"] / (board.clock_mhz * 1e3)
    return sorted(front2, key=lambda p: -p["accuracy"])


def run_fronts(args) -> dict:
    out = {}
    for task, make in TASKS.items():
        if args.task and task != args.task:
            continue
        print(f"[{task}] preparing", flush=True)
        program, shape, train, ev = make()
        kept = args.doc.get("fronts", {}).get(task, {}).get("hand_picked")  # deterministic: measured once
        hand = kept if kept and not args.rehand else hand_picked(program, shape, train, ev)
        entry = {"hand_picked": hand, "boards": {}}
        shared = None
        for bname, limits in BOARDS.items():
            print(f"[{task}] tuning for {bname} ({limits['board']})", flush=True)
            if args.qemu or shared is None:
                s = search(task, program, shape, train, ev, "shared" if not args.qemu else bname, limits,
                           args.trials, args.qemu, args.workers, args.fresh)
                shared = s if not args.qemu else None
            else:
                s = shared
            front = board_front(s["all"], limits, bname, s["study"])
            hand_front = pareto(hand)
            met = {h["name"]: (dominated_by(h, front) or {}).get("trial") for h in hand_front}
            entry["boards"][bname] = {"limits": limits, "search": {k: v for k, v in s.items() if k != "all"},
                                      "front": front, "hand_front_met": met}
        entry["all"] = s["all"]
        out[task] = entry
    return out


def run_scaling(args) -> dict:
    program, shape, train, ev = digits_task()
    rows = {}
    for workers in (1, 2):
        study = WORK / f"scaling-{workers}w.journal"
        for f in WORK.glob(f"scaling-{workers}w.journal*"):
            if f.is_file():
                f.unlink()
        start = time.perf_counter()
        tuning.tune(program, board="stm32f446", data=train, eval=ev, input_shape=shape, trials=args.scaling_trials,
                    study=study, workers=workers, qemu=False, finetune_epochs=FT_EPOCHS)
        sec = time.perf_counter() - start
        n = args.scaling_trials
        rows[workers] = {"trials": n, "seconds": sec, "trials_per_hour": 3600 * n / sec}
        print(f"[scaling] {workers} worker(s): {args.scaling_trials} trials in {sec:.0f} s", flush=True)
    import os

    return {"rows": rows, "speedup": rows[2]["trials_per_hour"] / rows[1]["trials_per_hour"],
            "cpus": os.cpu_count(), "load": os.getloadavg()[0], "note": args.note}


def _fit(lim: dict) -> tuple[int, int]:
    """(flash, RAM) bytes a point may use on the board (the tuner's constraints: board RAM less its stack)."""
    from codegen.limits import limits as board_limits

    b = board_limits(lim.get("max_flash"), lim.get("max_ram"), lim["board"])
    return b.flash, b.ram


def _matches(entry: dict, lim: dict) -> list[str]:
    """For every hand-picked configuration: the tuner's point that dominates or equals it (accuracy and flash),
    among all the trials that fit the board, and among the searched ones (the presets left out)."""
    fl, ram = _fit(lim)
    fits = [p for p in entry.get("all", []) if p["flash_bytes"] <= fl and p["arena_bytes"] <= ram]
    searched = [p for p in fits if p["trial"] >= N_PRESETS]
    hand = entry["hand_picked"]
    on_front = {h["name"] for h in pareto(hand)}
    cell = lambda p: (f"trial {p['trial']}: {100 * p['accuracy']:.2f}%, {p['flash_bytes']:,} B"  # noqa: E731
                      if p else "**not reached**")
    rows, n_all, n_front, s_front = [], 0, 0, 0
    for h in hand:
        any_p, s_p = dominated_by(h, fits), dominated_by(h, searched)
        n_all += any_p is not None
        n_front += h["name"] in on_front and any_p is not None
        s_front += h["name"] in on_front and s_p is not None
        rows.append(f"| {h['name']}{' (Pareto)' * (h['name'] in on_front)} | {100 * h['accuracy']:.2f}% | "
                    f"{h['flash_bytes']:,} | {cell(any_p)} | {cell(s_p)} |")
    return ["", f"Every hand-picked configuration against the tuner's trials that fit the board (a tuner point with "
            f"accuracy >= and weight flash <=; the one with the least flash): **{n_all} of {len(hand)}** dominated "
            f"or equalled; of the hand-picked Pareto points (accuracy, flash) **{n_front} of {len(on_front)}** "
            f"({s_front} of {len(on_front)} by a searched trial, the presets 0-{N_PRESETS - 1} left out).", "",
            "| hand-picked | accuracy | weight flash (B) | tuner's point (any trial) | searched trial only |",
            "|---|---:|---:|---|---|", *rows]


def markdown(doc: dict) -> str:
    lines = ["# qgen tune: the front found vs the hand-picked configurations", "",
             "Generated by `python bench/tune.py` (the fronts) and `python bench/tune.py --scaling` (wall time); do "
             "not edit by hand. Accuracy is the integer reference's (== the generated C) on the evaluation samples; "
             "weight flash is `<PREFIX>_FLASH_BYTES`; latency is instructions per inference under QEMU at the "
             "board's clock, 1 instruction per cycle. Hand-picked: the settings of bench/COMPRESSION.md compiled "
             "with the same calibration and evaluation samples as the tuner.", ""]
    meta = doc.get("fronts_meta", {})
    if meta:
        how = "QEMU latency as an objective, one search per board" if meta["qemu"] else \
            "MACs as the 4th objective (one search per task for both boards; front points counted under QEMU per board)"
        lines += [f"Fronts: trial counts per search below (the first {N_PRESETS}: the default compile and "
                  f"qgen's standard techniques, `tuning.preset_params`), {meta['workers']} Dask workers, {how}. "
                  f"{meta['note']}",
                  ""]
    for task, entry in doc.get("fronts", {}).items():
        lines += [f"## {task}", "", "Hand-picked (bench/COMPRESSION.md settings):", "",
                  "| setting | accuracy | weight flash (B) | arena (B) |", "|---|---:|---:|---:|"]
        lines += [f"| {h['name']} | {100 * h['accuracy']:.2f}% | {h['flash_bytes']:,} | {h['arena_bytes']:,} |"
                  for h in entry["hand_picked"]]
        for bname, b in entry["boards"].items():
            lim = b["limits"]
            s = b["search"]
            fl, ram = _fit(lim)
            caps = f", limits {fl >> 10} KB flash / {ram >> 10} KB RAM after the stack reserve"
            lines += ["", f"### {task} on {bname} ({lim['board']}{caps})", "",
                      f"{s['trials']} finished trials, {s['seconds'] / 60:.1f} min wall. Front of accuracy vs weight "
                      "flash among the points that fit the board, each counted under QEMU on its core:", "",
                      "| trial | accuracy | weight flash (B) | arena (B) | instr./inference | ms | options |",
                      "|---:|---:|---:|---:|---:|---:|---|"]
            for p in b["front"]:
                lines.append(f"| {p['trial']} | {100 * p['accuracy']:.2f}% | {p['flash_bytes']:,} | "
                             f"{p['arena_bytes']:,} | {p['instructions']:,.0f} | {p['latency_ms']:.3f} | "
                             f"{p['options']} |")
            lines += _matches(entry, lim)
        cmds = [p for p in next(iter(entry["boards"].values()))["front"] if p.get("command")][:3]
        if cmds:
            lines += ["", "Reproduce a point (paths relative to the repository root):", ""]
            lines += [f"    {p['command']}" for p in cmds]
        lines.append("")
    sc = doc.get("scaling")
    if sc:
        r = sc["rows"]
        lines += ["## Wall time: 1 vs 2 Dask workers", "",
                  f"digits CNN, {r['1']['trials'] if '1' in r else r[1]['trials']} trials (no QEMU), fresh study "
                  f"each, LocalCluster start-up included. Machine: {sc['cpus']} CPUs, load average "
                  f"{sc['load']:.1f} at the end. {sc.get('note') or ''}", "",
                  "| workers | wall (s) | trials/hour |", "|---:|---:|---:|"]
        for w, row in sorted(r.items()):
            lines.append(f"| {w} | {row['seconds']:.0f} | {row['trials_per_hour']:.0f} |")
        lines += ["", f"Speed-up: **{sc['speedup']:.2f}x** (target >= 1.7x on an idle 2-core machine).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scaling", action="store_true", help="only the 1- vs 2-worker wall time")
    ap.add_argument("--scaling-trials", type=int, default=48)  # 12: the cluster start-up dominates
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--qemu", action="store_true", help="QEMU latency as an objective, one search per board")
    ap.add_argument("--task", choices=sorted(TASKS), help="one task only (the other's results are kept)")
    ap.add_argument("--note", default="", help="a remark recorded with the numbers (e.g. the machine's load)")
    ap.add_argument("--rehand", action="store_true", help="measure the hand-picked settings again")
    ap.add_argument("--fresh", action="store_true", help="start the searches anew (default: resume the stored ones)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite bench/TUNE.md from bench/tune.json")
    args = ap.parse_args()
    from codegen import progress

    progress.configure(progress.cli_mode())
    import os

    os.chdir(ROOT)
    WORK.mkdir(parents=True, exist_ok=True)
    doc = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}
    args.doc = doc
    if args.markdown_only:
        OUT_MD.write_text(markdown(doc))
        print(f"wrote {OUT_MD.relative_to(ROOT)}")
        return
    if args.scaling:
        scaling = run_scaling(args)
    else:
        fronts = run_fronts(args)
    doc = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {}  # again: another run may have written it
    if args.scaling:
        doc["scaling"] = scaling
    else:
        doc.setdefault("fronts", {}).update(fronts)
        doc["fronts_meta"] = {"trials": args.trials, "workers": args.workers, "qemu": args.qemu, "note": args.note}
    OUT_JSON.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    OUT_MD.write_text(markdown(json.loads(OUT_JSON.read_text())))
    print(f"wrote {OUT_MD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
