"""Ensemble as one graph (codegen.fuse.ensemble) vs the same members in a `qgen bundle`, on scikit-learn's digits.

    .venv/bin/python bench/ensemble.py            # prints the markdown tables (about a minute on one core)

Two sets of 3 members, each the demo's digits CNN (codegen/demo.py):
- independent: trained from 3 seeds (nothing to share);
- one backbone: one model trained, then 3 copies fine-tuned on bootstrap samples of the training split with the
  first convolution (and its BatchNorm) frozen: the ensemble computes that layer once.
For each: int8 test accuracy of every member compiled alone and of the ensemble (mean, vote), arena and flash
(constant data) of the ensemble graph vs the bundle of the members (shared arena = the largest member's).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPOCHS = 15
FINETUNE_EPOCHS = 5


def _train(model, x, y, epochs: int, seed: int):
    from codegen.demo import train

    return train(model, x, y, epochs=epochs, seed=seed)


def independent(x, y) -> list:
    import torch

    from codegen.demo import make_model

    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(_train(make_model(), x, y, EPOCHS, seed))
    return models


def one_backbone(x, y) -> list:
    import copy

    import torch

    from codegen.demo import make_model

    torch.manual_seed(10)
    base = _train(make_model(), x, y, EPOCHS, 10)
    models = []
    for seed in range(3):
        m = copy.deepcopy(base)
        for p in list(m[0].parameters()) + list(m[1].parameters()):
            p.requires_grad_(False)
        idx = np.random.default_rng(seed).integers(0, len(x), len(x))  # a bootstrap sample per member
        m = _train(m, x[idx], y[idx], FINETUNE_EPOCHS, 100 + seed).eval()
        m[1].load_state_dict(base[1].state_dict())  # the frozen BatchNorm's statistics too: conv1 folds identically
        models.append(m)
    return models


def accuracy(result, x, y) -> float:
    return float((result.predict(x).argmax(1) == y).mean())


def measure(name: str, models: list, x_tr, x_te, y_te) -> list[str]:
    import torch

    import codegen
    from codegen.bundle import bundle
    from codegen.fuse.ensemble_graph import ensemble

    example = torch.zeros(1, 1, 8, 8)
    alone = [codegen.compile(m, example, x_tr, prefix=f"m{i}") for i, m in enumerate(models)]
    bundled = bundle(alone)
    outputs = sum(r.graph.tensors[o].nbytes for r in alone for o in r.graph.outputs)
    rows = []
    accs = [accuracy(r, x_te, y_te) for r in alone]
    flash = sum(r.report["flash_bytes"] for r in alone)
    rows.append(f"| {name} | bundle of 3 | {', '.join(f'{a:.3f}' for a in accs)} | {bundled.arena_size:,} | "
                f"{flash:,} | {sum(len(r.graph.nodes) for r in alone)} |")
    for combine in ("mean", "vote", "concat"):
        fused = ensemble(models, example, combine, x_tr, prefix="ens")
        acc = f"{accuracy(fused, x_te, y_te):.3f}" if combine != "concat" else "-"
        e = fused.report["ensemble"]
        rows.append(f"| {name} | ensemble {combine} | {acc} | {fused.report['arena_bytes']:,} | "
                    f"{fused.report['flash_bytes']:,} | {len(fused.graph.nodes)} (shared: "
                    f"{e['layers_before'] - e['layers']}) |")
    bound = max(r.report["arena_bytes"] for r in alone) + outputs
    rows.append(f"| {name} | bound: largest member + outputs | | {bound:,} | | |")
    return rows


def main() -> None:
    import torch

    from codegen.demo import digits_data

    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = digits_data()
    lines = ["| members | graph | int8 test accuracy | arena B | flash B (constant data) | nodes |",
             "|---|---|---|---|---|---|"]
    lines += measure("independent (3 seeds)", independent(x_tr, y_tr), x_tr, x_te, y_te)
    lines += measure("one backbone (conv1 frozen)", one_backbone(x_tr, y_tr), x_tr, x_te, y_te)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
