"""Model fusion on trained tasks: weight-space merging (codegen.fuse.merge) next to the ensemble graph
(codegen.fuse.ensemble), on sklearn digits (8x8) and mnist1d (40-step 1-D signals).

    python bench/fusion.py            # trains everything (CPU, seeded, ~ a few minutes), writes bench/FUSION.md
    python bench/fusion.py --quick    # fewer epochs: a smoke run (numbers not for the table)
    python bench/fusion.py --width-sweep   # only the width sweep (~1-2 min): replaces its section of FUSION.md

For each task, two MCU-sized architectures: an MLP (no BatchNorm: REPAIR rescales its hidden layers) and a
small CNN with BatchNorm (statistics re-estimated). For each:
- 3 models trained independently (seeds 0, 1, 2: different initialisations and data orders): each member, the
  naive average, the average after BatchNorm re-estimation / REPAIR alone, the aligned merge (weight matching,
  MergeMany) with and without REPAIR, the aligned merge with coefficients searched on the validation split,
  one epoch of training after the aligned merge (not a pure merge: shows how little it needs), and the ensemble
  of the 3 as one graph (combine="mean");
- 3 models fine-tuned from one pre-trained model (trained for half the epochs; each fine-tune the other half, its
  own seed (data order) and constant learning rate 1e-3 / 2e-3 / 3e-3): each member, the uniform soup, the
  greedy soup (validation split) and their ensemble.
Float accuracy (PyTorch) and int8 accuracy (codegen.compile, the integer reference = the C output bit for bit)
on the test split; flash = qgen's weights and tables (report flash_bytes). Splits: digits 1000 train / 300
validation / 497 test; mnist1d (its default generator, 10,000 samples, seed 42) 5,000 train / 1,000 validation /
4,000 test. Calibration: 256 training samples.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codegen import compile as qcompile  # noqa: E402
from codegen.fuse.weight_merge import merge  # noqa: E402

SEED = 0
NOTES = """## Reading

- The naive average of independently trained models collapses (10-44 % here: hidden unit i of one model is
  some other unit of the next). Aligning the hidden units first recovers most of it for the MLPs and the digits
  CNN, about half for the mnist1d CNN; re-estimating the statistics (BatchNorm; REPAIR's per-channel rescaling
  for the MLPs) matters most for the BatchNorm CNNs.
- For these MCU-sized (narrow: 16-128 units per layer) networks the aligned merge of 3 independent models with
  uniform coefficients stays 2-37 points below the best member. Permutation alignment is known to close the gap
  only for wide networks (Ainsworth et al. 2023; Jordan et al. 2023; the width sweep below measures it on digits),
  and 3-way merges are harder than 2-way (mnist1d CNN, 2 of the 3 members, measured apart: 82 %). One epoch of
  training after the merge recovers much of the rest (a short fine-tune, not a pure merge).
- Coefficients searched on the validation split: on the digits CNN the search finds a real merge (three non-zero
  coefficients) 5 test samples (1.0 point) below the best member, just outside the target; elsewhere it puts
  (nearly) all weight on one member (a coefficient >= 0.9): it selects rather than merges, and the targets
  table says so.
- Models fine-tuned from one pre-trained model average as they are: the soup is >= the best member for both
  CNNs (above every member on mnist1d) at one model's flash, 0.2-0.7 point below it for the two MLPs.
- The ensemble (qgen fuse, all members kept) is the most accurate option for independently trained models,
  at n models' flash.
- int8 accuracy follows float accuracy for every option: merged weights quantise like a member's.
"""


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(SEED).permutation(len(x))
    tr, va, te = idx[:1000], idx[1000:1300], idx[1300:]
    return (x[tr], y[tr]), (x[va], y[va]), (x[te], y[te])


def mnist1d():
    from examples.sequence.models import mnist1d as load

    x, y, x_test, y_test = load()
    return (x[:5000], y[:5000]), (x[5000:], y[5000:]), (x_test, y_test)


def digits_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def digits_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def mnist1d_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def mnist1d_cnn():
    return nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 32, 3, padding=1, stride=2), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Conv1d(32, 32, 3, padding=1, stride=2), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 10, 10))


TASKS = {
    "digits": (digits, {"MLP 64-64-32-10": digits_mlp, "CNN+BN 16-32": digits_cnn}, (1, 1, 8, 8), 64),
    "mnist1d": (mnist1d, {"MLP 40-128-64-10": mnist1d_mlp, "CNN+BN 16-32-32 (1-D)": mnist1d_cnn}, (1, 1, 40),
                128),
}


def train(model, x, y, epochs: int, lr: float, batch: int, seed: int, constant: bool = False):
    """Adam with a one-cycle learning rate (constant: a constant one), cross-entropy; seeded."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = (len(xt) + batch - 1) // batch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = None if constant else torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def accuracy(logits, y) -> float:
    return 100.0 * float((np.asarray(logits).reshape(len(y), -1).argmax(1) == y).mean())


def float_logits(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def int8_row(model, shape, calib, test) -> tuple[float, int]:
    result = qcompile(model, shape, calib, prefix="m")
    return accuracy(result.predict(test[0]), test[1]), int(result.report["flash_bytes"])


def ensemble_row(models, shape, calib, test):
    try:
        from codegen.fuse.ensemble_graph import ensemble
    except ImportError:  # the ensemble graph (issue 20 item 2) not in this tree
        return None
    result = ensemble(models, shape, combine="mean", calib_data=calib)
    return accuracy(result.predict(test[0]), test[1]), int(result.report["flash_bytes"])


def run_arch(name, factory, data, shape, batch, epochs, log):
    (xtr, ytr), (xva, yva), test = data
    calib = xtr[:256]
    rows = []

    def add(label, model_or_models, kind="model", note=""):
        if kind == "ensemble":
            models = model_or_models
            logits = np.mean([float_logits(m, test[0]) for m in models], axis=0)
            got = ensemble_row(models, shape, calib, test)
            rows.append((label, accuracy(logits, test[1]), got[0] if got else None, got[1] if got else None,
                         note if got else "ensemble: not available"))
        else:
            acc8, flash = int8_row(model_or_models, shape, calib, test)
            rows.append((label, accuracy(float_logits(model_or_models, test[0]), test[1]), acc8, flash, note))
        log(f"  {label}: float {rows[-1][1]:.2f}" + (f" int8 {rows[-1][2]:.2f}" if rows[-1][2] is not None else ""))

    t0 = time.perf_counter()
    independent = []
    for seed in range(3):
        torch.manual_seed(100 + seed)
        independent.append(train(factory(), xtr, ytr, epochs, 3e-3, batch, seed))
    log(f"  trained 3 independent in {time.perf_counter() - t0:.0f} s")
    for i, m in enumerate(independent):
        add(f"independent #{i + 1}", m)
    best_ind = max(r[1] for r in rows)
    add("naive average (uniform, no alignment)", merge(independent, repair=False))
    add("naive average + BN re-estimation / REPAIR", merge(independent, calib_data=xtr[:1000]))
    add("aligned by weights, no REPAIR", merge(independent, align="weights", repair=False, example_input=xtr[:1]))
    add("aligned by weights + REPAIR", merge(independent, align="weights", calib_data=xtr[:1000]))
    add("aligned by activations, no REPAIR", merge(independent, align="activations", repair=False,
                                                   calib_data=xtr[:1000]))
    aligned = merge(independent, align=True, calib_data=xtr[:1000])
    add("aligned + REPAIR", aligned, note="activations")
    searched, sinfo = merge(independent, method="search", align=True, calib_data=xtr[:1000], eval_data=xva,
                            labels=yva, return_info=True)
    add("aligned + REPAIR, coefficients searched", searched,
        note="C = " + ", ".join(f"{c:.2f}" for c in sinfo.coeffs))
    add("aligned + REPAIR, then 1 epoch of training", train(aligned, xtr, ytr, 1, 1e-3, batch, seed=5),
        note="not a pure merge: a short fine-tune")
    add("ensemble of the 3 independent (mean)", independent, kind="ensemble")
    n_ind = len(rows)

    t0 = time.perf_counter()
    torch.manual_seed(200)
    base = train(factory(), xtr, ytr, max(2, epochs // 2), 3e-3, batch, seed=10)  # the shared "pre-trained" model
    tuned = []
    for i, lr in enumerate((1e-3, 2e-3, 3e-3)):
        m = factory()
        m.load_state_dict(base.state_dict())
        tuned.append(train(m, xtr, ytr, max(2, epochs // 2), lr, batch, seed=20 + i, constant=True))
    log(f"  trained 1 + 3 fine-tuned in {time.perf_counter() - t0:.0f} s")
    for i, m in enumerate(tuned):
        add(f"fine-tuned #{i + 1} (lr {(1e-3, 2e-3, 3e-3)[i]:g})", m)
    best_ft = max(r[1] for r in rows[n_ind:])
    add("uniform soup", merge(tuned, repair=False))
    greedy, ginfo = merge(tuned, method="greedy", eval_data=xva, labels=yva, repair=False, return_info=True)
    add("greedy soup", greedy, note="C = " + ", ".join(f"{c:.2f}" for c in ginfo.coeffs))
    add("uniform soup + BN re-estimation / REPAIR", merge(tuned, calib_data=xtr[:1000]))
    add("ensemble of the 3 fine-tuned (mean)", tuned, kind="ensemble")
    return rows, n_ind, best_ind, best_ft


SWEEP_BEGIN, SWEEP_END = "<!-- width-sweep: begin -->", "<!-- width-sweep: end -->"


def digits_mlp_wide(width: int):
    return lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 10))


def digits_cnn_wide(k: int):
    return lambda: nn.Sequential(nn.Conv2d(1, 16 * k, 3, padding=1), nn.BatchNorm2d(16 * k), nn.ReLU(),
                                 nn.Conv2d(16 * k, 32 * k, 3, padding=1, stride=2), nn.BatchNorm2d(32 * k), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(32 * k * 16, 10))


SWEEP = [("MLP 64-W-W-10", f"W = {w}", digits_mlp_wide(w)) for w in (64, 256, 512)] + \
        [("CNN+BN (16k)-(32k)-10", f"k = {k} ({16 * k}/{32 * k} ch)", digits_cnn_wide(k)) for k in (1, 4)]


def width_sweep(quick: bool, log) -> str:
    """Aligned merges of 3 independent digits models as the hidden width grows (Git Re-Basin / REPAIR report the
    gap closing only for wide networks): best member, naive average, aligned + re-estimation (activation matching
    and weight matching, then BatchNorm re-estimation / REPAIR), float and int8, weight flash of one model."""
    (xtr, ytr), (xva, yva), test = digits()
    calib = xtr[:256]
    start = time.perf_counter()
    rows, verdicts = [], []
    for arch, width, factory in SWEEP:
        t0 = time.perf_counter()
        members = []
        for seed in range(3):
            torch.manual_seed(100 + seed)
            members.append(train(factory(), xtr, ytr, 4 if quick else 30, 3e-3, 64, seed))
        floats = [accuracy(float_logits(m, test[0]), test[1]) for m in members]
        best = int(np.argmax(floats))
        cands = [("best member", members[best]),
                 ("naive average", merge(members, repair=False)),
                 ("aligned (activations) + re-estimation", merge(members, align="activations", calib_data=xtr)),
                 ("aligned (weights) + re-estimation", merge(members, align="weights", calib_data=xtr))]
        got = []
        for label, model in cands:
            acc = accuracy(float_logits(model, test[0]), test[1])
            acc8, flash = int8_row(model, (1, 1, 8, 8), calib, test)
            got.append((label, acc, acc8, flash))
            rows.append(f"| {arch} | {width} | {label} | {acc:.2f} | {acc8:.2f} | "
                        f"{acc - floats[best]:+.2f} | {flash:,} |")
        verdicts.append((arch, width, got[2][1] - floats[best], got[3][1] - floats[best],
                         got[2][2] - got[0][2], got[3][2] - got[0][2], got[0][3]))
        log(f"  {arch} {width}: members {', '.join(f'{a:.2f}' for a in floats)}; "
            + "; ".join(f"{g[0]} {g[1]:.2f}/{g[2]:.2f}" for g in got) + f" ({time.perf_counter() - t0:.0f} s)")
    def met(i: int) -> str:
        ok = [f"{a} {w}" for a, w, *gaps, _ in verdicts if gaps[i] >= -1.0]
        return ", ".join(ok) if ok else "none"

    lines = [SWEEP_BEGIN, "## Width sweep: does a wider network close the gap? (digits)", "",
             f"Generated by `python bench/fusion.py --width-sweep`{' --quick (smoke run)' if quick else ''} in "
             f"{time.perf_counter() - start:.0f} s. 3 models per width trained independently (seeds 0-2, 30 epochs, "
             "as above); merged with uniform coefficients; re-estimation = BatchNorm statistics (CNN) / REPAIR "
             "(MLP) on the 1000 training samples. Flash = one model's weights and tables (int8; the M4 512 KB "
             "flash class holds ~300 KB of model). Members' accuracies in the log; 'vs best' = float, merged "
             "minus the best member (target: >= -1).", "",
             "| model | width | option | float % | int8 % | vs best (float) | flash B |",
             "|---|---|---|---:|---:|---:|---:|", *rows, "",
             "| model | width | one model's flash | aligned (activations) vs best: float / int8 | "
             "aligned (weights) vs best: float / int8 |", "|---|---|---:|---:|---:|",
             *[f"| {a} | {w} | {flash / 1024:.0f} KB | {fa:+.2f} / {ia:+.2f} | {fw:+.2f} / {iw:+.2f} |"
               for a, w, fa, fw, ia, iw, flash in verdicts], "",
             f"Within 1 point of the best member (float): aligned by activations (`align=True` with calib data): "
             f"{met(0)}; aligned by weights (`align='weights'`): {met(1)}. The test split has 497 samples (1 sample "
             "= 0.2 point) and each width is one draw of 3 seeds; the best member is the best on the test split.",
             SWEEP_END]
    return "\n".join(lines)


def splice_sweep(text: str, sweep: str | None) -> str:
    """Put the sweep section (or the one already in the file) at the end of the report."""
    if sweep is None:
        return text
    if SWEEP_BEGIN in text:
        head, rest = text.split(SWEEP_BEGIN, 1)
        return head + sweep + rest.split(SWEEP_END, 1)[1]
    return text.rstrip("\n") + "\n\n" + sweep + "\n"


def markdown(results, quick: bool, seconds: float) -> str:
    lines = ["# Model fusion: one model from several (bench/fusion.py)", "",
             "Generated by `python bench/fusion.py`" + (" --quick (smoke run: NOT the table's numbers)" if quick
                                                          else "") + f" in {seconds:.0f} s on 2 shared CPU cores.",
             "",
             "`codegen.fuse.merge` combines models of one architecture into one, W = sum C_i W_i: the flash of ONE",
             "model. Models trained independently must be aligned first (hidden units permuted to match model 1 by",
             "weight matching, Ainsworth et al. 2023, then REPAIR / BatchNorm re-estimation, Jordan et al. 2023);",
             "models fine-tuned from one initialisation average as they are (a soup, Wortsman et al. 2022).",
             "`codegen.fuse.ensemble` keeps every member and runs them as one graph: n models' flash.",
             "", "Accuracy on the test split: float = PyTorch, int8 = the compiled model (codegen.compile, integer",
             "reference = the C output bit for bit). Flash = weights and tables in bytes (qgen report).", ""]
    targets = []
    for task, arch, rows, n_ind, best_ind, best_ft in results:
        lines += [f"## {task}: {arch}", "", "| option | float % | int8 % | flash B | note |",
                  "|---|---:|---:|---:|---|"]
        for label, acc, acc8, flash, note in rows:
            lines.append(f"| {label} | {acc:.2f} | {'-' if acc8 is None else f'{acc8:.2f}'} | "
                         f"{'-' if flash is None else f'{flash:,}'} | {note} |")
        lines.append("")
        by = {r[0]: r for r in rows}
        aligned = by["aligned + REPAIR"][1]
        by_weights = by["aligned by weights + REPAIR"][1]
        searched = by["aligned + REPAIR, coefficients searched"]
        coeffs = [float(c) for c in searched[4].removeprefix("C = ").split(", ")]
        if max(aligned, by_weights) >= best_ind - 1:
            verdict = "met"
        elif searched[1] >= best_ind - 1:
            verdict = "met with searched C" if max(coeffs) < 0.9 else "NOT met (the search selects one member)"
        else:
            verdict = "NOT met"
        naive = by["naive average (uniform, no alignment)"][1]
        soups = max(by["uniform soup"][1], by["greedy soup"][1])
        targets.append(f"| {task} | {arch} | {best_ind:.2f} | {naive:.2f} | {aligned:.2f} "
                       f"({aligned - best_ind:+.2f}) / {by_weights:.2f} ({by_weights - best_ind:+.2f}) | "
                       f"{searched[1]:.2f} ({searched[1] - best_ind:+.2f}; {searched[4]}) | {verdict} | "
                       f"{best_ft:.2f} | {by['uniform soup'][1]:.2f} / {by['greedy soup'][1]:.2f} | "
                       f"{'met' if soups >= best_ft else 'NOT met'} |")
    lines += ["## Targets (issue 20)", "",
              "Aligned merge of 3 independent models within 1 point of the best member; soup of 3 fine-tuned "
              "models >= the best member (float, test split); both at the flash of one model.", "",
              "| task | model | best independent | naive average | aligned + REPAIR: activations / weights | "
              "aligned + REPAIR, searched C | within 1 pt | best fine-tuned "
              "| uniform / greedy soup | soup >= best |", "|---|---|---:|---:|---:|---:|---|---:|---:|---|",
              *targets, "", NOTES]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "FUSION.md"))
    parser.add_argument("--tasks", default="digits,mnist1d")
    parser.add_argument("--width-sweep", action="store_true", help="run only the width sweep and replace its section "
                        "of --out (the rest of the file is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: threads cost more than they give on shared cores
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if args.width_sweep:
        sweep = width_sweep(args.quick, print)
        out.write_text(splice_sweep(old, sweep))
        print(sweep)
        return 0
    old_sweep = (SWEEP_BEGIN + old.split(SWEEP_BEGIN, 1)[1].split(SWEEP_END, 1)[0] + SWEEP_END
                 if SWEEP_BEGIN in old else None)
    start = time.perf_counter()
    results = []
    for task in args.tasks.split(","):
        loader, archs, shape, batch = TASKS[task]
        data = loader()
        for arch, factory in archs.items():
            epochs = (4 if args.quick else 30) if task == "digits" else (2 if args.quick else 15)
            print(f"{task} / {arch}", flush=True)
            rows, n_ind, best_ind, best_ft = run_arch(arch, factory, data, shape, batch, epochs, print)
            results.append((task, arch, rows, n_ind, best_ind, best_ft))
    text = splice_sweep(markdown(results, args.quick, time.perf_counter() - start), old_sweep)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
