"""Model fusion on trained tasks: weight-space merging (codegen.fuse.merge) next to the ensemble graph
(codegen.fuse.ensemble), on sklearn digits (8x8) and mnist1d (40-step 1-D signals).

    python bench/fusion.py            # trains everything (CPU, seeded, ~10-30 min on shared cores), writes FUSION.md
    python bench/fusion.py --quick    # fewer epochs: a smoke run (numbers not for the table)
    python bench/fusion.py --draws 1  # only draw 0 (the per-model tables), no repetition with other seeds
    python bench/fusion.py --width-sweep     # only the digits width sweep: replaces its section of FUSION.md
    python bench/fusion.py --mnist1d-sweep   # only the mnist1d width sweep (3 draws per width)

For each task, two MCU-sized architectures: an MLP (no BatchNorm: REPAIR rescales its hidden layers) and a
small CNN with BatchNorm (statistics re-estimated). For each:
- 3 models trained independently (seeds 0, 1, 2: different initialisations and data orders): each member, the
  naive average, the average after BatchNorm re-estimation / REPAIR alone, aligned merges (weight matching /
  activation matching, each with MergeMany; activation matching to model 1 only), the recommended pure merge
  (align='auto': the alignment that merges better on the validation split, reference = the best member on it,
  REPAIR), the same with coefficients searched on the validation split, one epoch of training after the merge
  (NOT a pure merge: shown apart), and the ensemble of the 3 as one graph (combine="mean");
- 3 models fine-tuned from one pre-trained model (Wortsman et al. 2022: the pre-trained model fully trained, each
  member fine-tuned for half the epochs at a constant learning rate with its own seed and hyper-parameters:
  FINETUNE = learning rate, weight decay, input noise, label smoothing): each member, the uniform soup, the greedy
  soup and the soup with coefficients searched on the validation split, and their ensemble.
- The targets again over more draws (--draws, default 3: every model trained again with other seeds), float.
Float accuracy (PyTorch) and int8 accuracy (codegen.compile, the integer reference = the C output bit for bit)
on the test split; flash = qgen's weights and tables (report flash_bytes). Splits: digits 1000 train / 300
validation / 497 test; mnist1d (its default generator, 10,000 samples, seed 42) 5,000 train / 1,000 validation /
4,000 test. Calibration: 256 training samples.
"""
from __future__ import annotations

import argparse
import copy
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

Which numbers meet which target, by which method (float, test split; 3 draws in the section above):
- Soup of 3 models fine-tuned from one pre-trained model >= the best member (oracle: best on the test split),
  uniform soup, one model's flash: met in every draw for the mnist1d CNN (+0.5 to +0.6), in 2 of 3 for the digits
  CNN (the third 1 test sample below), in 1 of 3 for both MLPs (mnist1d MLP: mean -0.12, worst -0.32; digits
  MLP: mean -0.54, worst -0.80 = 4 test samples). Against the member one would actually keep (best on the
  validation split) the uniform soup is ahead on average for three of the four models (+0.2 to +0.6), behind
  for the digits MLP (-0.47).
- Why the MLPs miss it: a soup of fine-tuned models tracks the output ensemble of the same members (Wortsman et
  al. 2022), and for the MLPs the ensemble itself is not above the best member (means -0.60 digits, -0.00
  mnist1d): the members are too alike (3 fine-tunes of one MLP on 1,000 / 5,000 samples) for averaging to add
  anything beyond the spread between them, which on digits is a few test samples (497 samples: 1 = 0.2 point).
  Neither the greedy soup (it often keeps one member: the validation split of 300 digits samples cannot tell
  0.2-point differences) nor coefficients searched on validation fix that; they are not worse on average.
  Tried (smaller runs, 3 draws each): the earlier recipe (pre-trained for half the epochs, members at lr
  1e-3/2e-3/3e-3: members of unequal quality, soup 0.2-1.4 below the best), same hyper-parameters for all
  members, 5 members instead of 3: the same picture. The recipe kept is Wortsman's (fully pre-trained,
  members with varied learning rate, weight decay, input noise, label smoothing).
- Aligned merge of 3 independently trained models within 1 point of the best member, pure merge: NOT met by
  these MCU-sized models in any draw. The recommended pure merge (`align='auto'`, reference = best member,
  MergeMany, REPAIR) is 1.2-1.6 points below on the digits CNN, 2-5 on the MLPs, 18-24 on the mnist1d CNN.
  Met only by wider models (digits: MLP 64-256-256-10 and 64-512-512-10, the width sweep below) and, for the
  digits CNN and the mnist1d MLP in draw 0, with coefficients searched on validation (C not degenerate: 0.75 /
  0.13 / 0.13 on the digits CNN, +0.40 above the best member; mnist1d MLP -0.85, 0.75 on one member). One epoch
  of training after the merge (NOT a pure merge; a separate column) gets within 1 point in 2 of 3 draws for the
  digits CNN (-0.8, -0.6; the third -1.01) and 1 of 3 for the mnist1d MLP (-0.77), not for the others.
- What helped the pure merge: MergeMany with activation matching (each member re-matched to the sum of the
  others' aligned activations; before, every member was matched to model 1 only): mnist1d CNN 58.5 -> 70.6 %,
  digits CNN 96.8 -> 97.8 %, mnist1d MLP 54.9 -> 56.9 %. Aligning to the best member on validation: +0 to
  +1.1. Choosing weights vs activations on validation (`align='auto'`): it picks weight matching for the MLPs in
  4 of 6 draws and activation matching in every CNN draw. Not helping: more calibration data
  for REPAIR (mnist1d CNN, all 5,000 training samples instead of 1,000: 70.9 vs 70.6 %).
- Why: permutation alignment closes the barrier between independently trained networks only when they are wide
  (Ainsworth et al. 2023; Jordan et al. 2023); at 16-128 units per layer it does not, and 3-way merges are
  harder than 2-way. The mnist1d MLP does not close it at 512 units either (sweep below: -3.0 at W = 512,
  members overfitted at ~65-70 % test accuracy); the digits MLP does at 256.
- The ensemble (qgen fuse, all members kept) is the most accurate option for independently trained models,
  at n models' flash. int8 accuracy follows float accuracy for every option: merged weights quantise like a
  member's.
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


def train(model, x, y, epochs: int, lr: float, batch: int, seed: int, constant: bool = False, *,
          weight_decay: float = 0.0, noise: float = 0.0, smoothing: float = 0.0):
    """Adam(W) with a one-cycle learning rate (constant: a constant one), cross-entropy (label smoothing), optional
    Gaussian input noise (augmentation); seeded."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = (len(xt) + batch - 1) // batch
    opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam(model.parameters(), lr=lr))
    sched = None if constant else torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            xb = xt[idx] + noise * torch.randn(len(idx), *xt.shape[1:]) if noise else xt[idx]
            F.cross_entropy(model(xb), yt[idx], label_smoothing=smoothing).backward()
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


# fine-tuning recipe (Wortsman et al. 2022: one pre-trained model, fine-tuned with varied hyper-parameters):
# (learning rate, weight decay, input noise std, label smoothing), a constant learning rate, half the epochs
FINETUNE = [(1e-3, 0.0, 0.0, 0.0), (2e-3, 1e-4, 0.0, 0.1), (1e-3, 0.0, 0.05, 0.0)]


def fine_tuned(factory, xtr, ytr, epochs, batch, offset=0):
    """The shared pre-trained model (fully trained) and 3 members fine-tuned from it (FINETUNE)."""
    torch.manual_seed(200 + offset)
    base = train(factory(), xtr, ytr, epochs, 3e-3, batch, seed=10 + offset)
    tuned = []
    for i, (lr, wd, noise, ls) in enumerate(FINETUNE):
        m = factory()
        m.load_state_dict(base.state_dict())
        tuned.append(train(m, xtr, ytr, max(2, epochs // 2), lr, batch, seed=20 + i + offset, constant=True,
                           weight_decay=wd, noise=noise, smoothing=ls))
    return base, tuned


def independent_members(factory, xtr, ytr, epochs, batch, offset=0):
    members = []
    for seed in range(3):
        torch.manual_seed(100 + seed + offset)
        members.append(train(factory(), xtr, ytr, epochs, 3e-3, batch, seed + offset))
    return members


def recommended_merge(members, xtr, xva, yva, **kw):
    """The pure merge the bench recommends for independently trained models: alignment chosen on the validation
    split (weights vs activations, MergeMany), aligned to the best member on validation, REPAIR."""
    return merge(members, align="auto", reference="best", calib_data=xtr[:1000], eval_data=xva, labels=yva,
                 return_info=True, **kw)


def summary_draw(factory, data, batch, epochs, offset, log):
    """One more draw (other seeds) of the targets' numbers, float only: independent members and their pure merge
    (+ one epoch of training, shown apart), fine-tuned members and their soups."""
    (xtr, ytr), (xva, yva), test = data
    t0 = time.perf_counter()

    def acc(m, x=test[0], y=test[1]):
        return accuracy(float_logits(m, x), y)

    ind = independent_members(factory, xtr, ytr, epochs, batch, offset)
    merged, info = recommended_merge(ind, xtr, xva, yva)
    tuned_after = acc(train(copy.deepcopy(merged), xtr, ytr, 1, 1e-3, batch, seed=5))
    _, tuned = fine_tuned(factory, xtr, ytr, epochs, batch, offset)
    val = [acc(m, xva, yva) for m in tuned]
    out = {"best_ind": max(acc(m) for m in ind), "naive": acc(merge(ind, repair=False)), "merge": acc(merged),
           "merge_how": info.align_method, "merge_ft": tuned_after,
           "members_ft": [acc(m) for m in tuned], "picked_ft": acc(tuned[int(np.argmax(val))]),
           "uniform": acc(merge(tuned, repair=False)),
           "greedy": acc(merge(tuned, method="greedy", eval_data=xva, labels=yva, repair=False)),
           "search": acc(merge(tuned, method="search", eval_data=xva, labels=yva, repair=False)),
           "ensemble_ft": accuracy(np.mean([float_logits(m, test[0]) for m in tuned], axis=0), test[1])}
    log(f"  draw +{offset}: {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))
    return out


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
    independent = independent_members(factory, xtr, ytr, epochs, batch)
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
    add("aligned by activations to model 1 only + REPAIR", merge(independent, align="activations", rounds=0,
                                                                 calib_data=xtr[:1000]), note="no MergeMany")
    add("aligned by activations + REPAIR", merge(independent, align="activations", calib_data=xtr[:1000]),
        note="MergeMany")
    aligned, ainfo = recommended_merge(independent, xtr, xva, yva)
    add("aligned + REPAIR", aligned, note=f"auto: {ainfo.align_method}; reference = best on validation")
    searched, sinfo = recommended_merge(independent, xtr, xva, yva, method="search")
    add("aligned + REPAIR, coefficients searched", searched,
        note="C = " + ", ".join(f"{c:.2f}" for c in sinfo.coeffs))
    add("aligned + REPAIR, then 1 epoch of training", train(copy.deepcopy(aligned), xtr, ytr, 1, 1e-3, batch, seed=5),
        note="not a pure merge: a short fine-tune")
    add("ensemble of the 3 independent (mean)", independent, kind="ensemble")
    n_ind = len(rows)

    t0 = time.perf_counter()
    base, tuned = fine_tuned(factory, xtr, ytr, epochs, batch)
    log(f"  trained 1 + 3 fine-tuned in {time.perf_counter() - t0:.0f} s")
    add("pre-trained model (the members' start)", base)
    n_base = len(rows)
    for i, m in enumerate(tuned):
        lr, wd, noise, ls = FINETUNE[i]
        add(f"fine-tuned #{i + 1}", m, note=f"lr {lr:g}, weight decay {wd:g}, input noise {noise:g}, "
            f"label smoothing {ls:g}")
    best_ft = max(r[1] for r in rows[n_base:])
    add("uniform soup", merge(tuned, repair=False))
    greedy, ginfo = merge(tuned, method="greedy", eval_data=xva, labels=yva, repair=False, return_info=True)
    add("greedy soup", greedy, note="C = " + ", ".join(f"{c:.2f}" for c in ginfo.coeffs))
    learned, linfo = merge(tuned, method="search", eval_data=xva, labels=yva, repair=False, return_info=True)
    add("soup, coefficients searched on validation", learned, note="C = " + ", ".join(f"{c:.2f}" for c in
                                                                                       linfo.coeffs))
    add("uniform soup + BN re-estimation / REPAIR", merge(tuned, calib_data=xtr[:1000]))
    add("ensemble of the 3 fine-tuned (mean)", tuned, kind="ensemble")
    by = {r[0]: r[1] for r in rows}
    val = [accuracy(float_logits(m, xva), yva) for m in tuned]
    draw0 = {"best_ind": best_ind, "naive": by["naive average (uniform, no alignment)"],
             "merge": by["aligned + REPAIR"], "merge_how": ainfo.align_method,
             "merge_ft": by["aligned + REPAIR, then 1 epoch of training"],
             "members_ft": [r[1] for r in rows[n_base:n_base + 3]], "picked_ft": rows[n_base + int(np.argmax(val))][1],
             "uniform": by["uniform soup"], "greedy": by["greedy soup"],
             "search": by["soup, coefficients searched on validation"],
             "ensemble_ft": by["ensemble of the 3 fine-tuned (mean)"]}
    return rows, n_ind, best_ind, best_ft, draw0


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
    for task, arch, rows, n_ind, best_ind, best_ft, draws in results:
        lines += [f"## {task}: {arch}", "", "| option | float % | int8 % | flash B | note |",
                  "|---|---:|---:|---:|---|"]
        for label, acc, acc8, flash, note in rows:
            lines.append(f"| {label} | {acc:.2f} | {'-' if acc8 is None else f'{acc8:.2f}'} | "
                         f"{'-' if flash is None else f'{flash:,}'} | {note} |")
        lines.append("")
        by = {r[0]: r for r in rows}
        aligned = by["aligned + REPAIR"][1]
        searched = by["aligned + REPAIR, coefficients searched"]
        coeffs = [float(c) for c in searched[4].removeprefix("C = ").split(", ")]
        tuned = by["aligned + REPAIR, then 1 epoch of training"][1]
        if aligned >= best_ind - 1:
            verdict = "met (pure merge)"
        elif searched[1] >= best_ind - 1:
            verdict = "met with searched C" if max(coeffs) < 0.9 else "NOT met (the search selects one member)"
        else:
            verdict = "NOT met" + (" (met after 1 epoch of training)" if tuned >= best_ind - 1 else "")
        naive = by["naive average (uniform, no alignment)"][1]
        soups = {k: by[k][1] for k in ("uniform soup", "greedy soup", "soup, coefficients searched on validation")}
        targets.append(f"| {task} | {arch} | {best_ind:.2f} | {naive:.2f} | {aligned:.2f} "
                       f"({aligned - best_ind:+.2f}) | "
                       f"{searched[1]:.2f} ({searched[1] - best_ind:+.2f}; {searched[4]}) | {verdict} | "
                       f"{tuned:.2f} ({tuned - best_ind:+.2f}) | {best_ft:.2f} | "
                       + " / ".join(f"{v:.2f}" for v in soups.values())
                       + f" | {'met' if soups['uniform soup'] >= best_ft else 'NOT met'} |")
    lines += ["## Targets (issue 20), draw 0", "",
              "Aligned merge of 3 independent models within 1 point of the best member; soup of 3 fine-tuned "
              "models >= the best member (float, test split); both at the flash of one model. 'aligned + REPAIR' "
              "= the pure merge the bench recommends: `merge(models, align='auto', reference='best', calib_data=..., "
              "eval_data=..., labels=...)` (weight or activation matching, whichever merges better on the "
              "validation split; MergeMany; REPAIR). The column 'then 1 epoch' is NOT a pure merge (one epoch of "
              "training after it) and is shown apart.", "",
              "| task | model | best independent | naive average | aligned + REPAIR (pure merge) | "
              "aligned + REPAIR, searched C | within 1 pt | then 1 epoch of training (not a pure merge) | "
              "best fine-tuned | uniform / greedy / searched soup | uniform soup >= best |",
              "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|", *targets, ""]
    if any(len(r[6]) > 1 for r in results):
        lines += seeds_section(results)
    lines += [NOTES]
    return "\n".join(lines)


def seeds_section(results) -> list[str]:
    """The targets over several draws (each draw: other seeds for every member and the pre-trained model)."""
    n = max(len(r[6]) for r in results)
    lines = [f"## The targets over {n} draws (float, test split)", "",
             "Each draw trains everything again with other seeds (draw 0 = the tables above). Independent: best "
             "member, naive average, the recommended pure merge (alignment picked on validation: w = weights, "
             "a = activations), and one epoch of training after it (not a pure merge). Fine-tuned: the best member "
             "on the test split (an oracle pick), the member one would pick (best on the validation split), the "
             "uniform / greedy / searched soup and the members' ensemble (output average: n models' flash).", "",
             "| task / model | draw | best indep. | naive | pure merge (vs best) | + 1 epoch (vs best) | "
             "fine-tuned members | picked on val. | uniform / greedy / searched soup | ensemble | "
             "uniform soup - best | uniform soup - picked |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    means = []
    for task, arch, *_, draws in results:
        for d, r in enumerate(draws):
            best_ft = max(r["members_ft"])
            lines.append(
                f"| {task} {arch} | {d} | {r['best_ind']:.2f} | {r['naive']:.2f} | {r['merge']:.2f} "
                f"({r['merge'] - r['best_ind']:+.2f}, {r['merge_how'][0]}) | {r['merge_ft']:.2f} "
                f"({r['merge_ft'] - r['best_ind']:+.2f}) | {', '.join(f'{a:.2f}' for a in r['members_ft'])} | "
                f"{r['picked_ft']:.2f} | {r['uniform']:.2f} / {r['greedy']:.2f} / {r['search']:.2f} | "
                f"{r['ensemble_ft']:.2f} | {r['uniform'] - best_ft:+.2f} | {r['uniform'] - r['picked_ft']:+.2f} |")
        mean = {k: float(np.mean([r[k] - (max(r["members_ft"]) if k in ("uniform", "greedy", "search",
                                                                          "ensemble_ft") else r["best_ind"])
                                  for r in draws])) for k in ("merge", "merge_ft", "uniform", "greedy", "search",
                                                              "ensemble_ft")}
        mean["picked"] = float(np.mean([r["uniform"] - r["picked_ft"] for r in draws]))
        worst = min(r["uniform"] - max(r["members_ft"]) for r in draws)
        met = sum(r["uniform"] >= max(r["members_ft"]) for r in draws)
        merged_ok = sum(r["merge"] >= r["best_ind"] - 1 for r in draws)
        means.append(f"| {task} {arch} | {mean['merge']:+.2f} ({merged_ok}/{len(draws)}) | {mean['merge_ft']:+.2f} | "
                     f"{mean['uniform']:+.2f} ({met}/{len(draws)}; worst {worst:+.2f}) | {mean['greedy']:+.2f} | "
                     f"{mean['search']:+.2f} | {mean['ensemble_ft']:+.2f} | {mean['picked']:+.2f} |")
    lines += ["", "Means over the draws (differences in points; in brackets: draws meeting the target):", "",
              "| task / model | pure merge - best indep. (within 1) | + 1 epoch - best | uniform soup - best "
              "fine-tuned (>= 0) | greedy - best | searched - best | ensemble - best | uniform soup - picked on "
              "val. |", "|---|---:|---:|---:|---:|---:|---:|---:|", *means, ""]
    return lines


MNIST1D_SWEEP_BEGIN, MNIST1D_SWEEP_END = "<!-- mnist1d-width-sweep: begin -->", "<!-- mnist1d-width-sweep: end -->"


def mnist1d_mlp_wide(width: int):
    return lambda: nn.Sequential(nn.Flatten(), nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, 10))


def mnist1d_width_sweep(quick: bool, draws: int, log) -> str:
    """Aligned 3-way merges of independently trained mnist1d MLPs 40-W-W-10 by width, several draws per width:
    best member, naive average, the recommended pure merge, and one epoch of training after it (apart)."""
    (xtr, ytr), (xva, yva), test = mnist1d()
    start = time.perf_counter()
    rows, summary = [], []
    widths = (64, 128) if quick else (64, 256, 512)
    for width in widths:
        factory = mnist1d_mlp_wide(width)
        params = sum(p.numel() for p in factory().parameters())
        gaps, gaps_ft, gaps_naive = [], [], []
        for d in range(draws):
            t0 = time.perf_counter()
            members = independent_members(factory, xtr, ytr, 2 if quick else 15, 128, offset=1000 * d)
            accs = [accuracy(float_logits(m, test[0]), test[1]) for m in members]
            best = max(accs)
            naive = accuracy(float_logits(merge(members, repair=False), test[0]), test[1])
            merged, info = recommended_merge(members, xtr, xva, yva)
            acc = accuracy(float_logits(merged, test[0]), test[1])
            acc_ft = accuracy(float_logits(train(copy.deepcopy(merged), xtr, ytr, 1, 1e-3, 128, seed=5), test[0]),
                              test[1])
            gaps.append(acc - best)
            gaps_ft.append(acc_ft - best)
            gaps_naive.append(naive - best)
            rows.append(f"| 40-{width}-{width}-10 | {params:,} | {d} | {', '.join(f'{a:.2f}' for a in accs)} | "
                        f"{naive:.2f} | {acc:.2f} ({acc - best:+.2f}, {info.align_method}) | {acc_ft:.2f} "
                        f"({acc_ft - best:+.2f}) |")
            log(f"  mnist1d MLP W={width} draw {d}: {rows[-1]} ({time.perf_counter() - t0:.0f} s)")
        summary.append(f"| 40-{width}-{width}-10 | {params:,} | {np.mean(gaps_naive):+.2f} | {np.mean(gaps):+.2f} "
                       f"(worst {min(gaps):+.2f}; {sum(g >= -1 for g in gaps)}/{draws} within 1) | "
                       f"{np.mean(gaps_ft):+.2f} |")
    return "\n".join([
        MNIST1D_SWEEP_BEGIN, "## Width sweep on mnist1d (MLP 40-W-W-10, several draws per width)", "",
        f"Generated by `python bench/fusion.py --mnist1d-sweep`{' --quick (smoke run)' if quick else ''} in "
        f"{time.perf_counter() - start:.0f} s. Per width and draw, 3 MLPs trained independently (15 epochs, seeds "
        "of the draw); pure merge = `align='auto', reference='best'` + REPAIR on 1000 training samples (w/a: the "
        "alignment the validation split picked); '+ 1 epoch' = one epoch of training after the merge (NOT a pure "
        "merge). Float test accuracy (4,000 samples: 1 sample = 0.025 point). int8 weights = the parameter count "
        "in bytes.", "",
        "| model | parameters | draw | members | naive average | pure merge (vs best) | + 1 epoch (vs best) |",
        "|---|---:|---:|---|---:|---:|---:|", *rows, "",
        "| model | parameters | naive - best (mean) | pure merge - best (mean) | + 1 epoch - best (mean) |",
        "|---|---:|---:|---:|---:|", *summary, MNIST1D_SWEEP_END])


def splice(text: str, section: str | None, begin: str, end: str) -> str:
    if section is None:
        return text
    if begin in text:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def old_section(text: str, begin: str, end: str) -> str | None:
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end if begin in text else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "FUSION.md"))
    parser.add_argument("--tasks", default="digits,mnist1d")
    parser.add_argument("--draws", type=int, default=3, help="draws (sets of seeds) of the targets' numbers")
    parser.add_argument("--width-sweep", action="store_true", help="run only the digits width sweep and replace its "
                        "section of --out (the rest of the file is kept)")
    parser.add_argument("--mnist1d-sweep", action="store_true", help="run only the mnist1d width sweep and replace "
                        "its section of --out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: threads cost more than they give on shared cores
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if args.width_sweep or args.mnist1d_sweep:
        text = old
        if args.width_sweep:
            text = splice(text, width_sweep(args.quick, print), SWEEP_BEGIN, SWEEP_END)
        if args.mnist1d_sweep:
            text = splice(text, mnist1d_width_sweep(args.quick, args.draws, print), MNIST1D_SWEEP_BEGIN,
                          MNIST1D_SWEEP_END)
        out.write_text(text)
        print(text)
        return 0
    start = time.perf_counter()
    results = []
    for task in args.tasks.split(","):
        loader, archs, shape, batch = TASKS[task]
        data = loader()
        for arch, factory in archs.items():
            epochs = (4 if args.quick else 30) if task == "digits" else (2 if args.quick else 15)
            print(f"{task} / {arch}", flush=True)
            rows, n_ind, best_ind, best_ft, draw0 = run_arch(arch, factory, data, shape, batch, epochs, print)
            draws = [draw0] + [summary_draw(factory, data, batch, epochs, 1000 * d, print)
                               for d in range(1, args.draws)]
            results.append((task, arch, rows, n_ind, best_ind, best_ft, draws))
    text = markdown(results, args.quick, time.perf_counter() - start)
    for begin, end in ((SWEEP_BEGIN, SWEEP_END), (MNIST1D_SWEEP_BEGIN, MNIST1D_SWEEP_END)):
        text = splice(text, old_section(old, begin, end), begin, end)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
