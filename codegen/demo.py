"""`qgen demo`: a small CNN on scikit-learn's bundled 8x8 digits, trained (or loaded from cache),
compiled to Q-format C, verified bit-exact on the host, and reported. No network needed."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_EPOCHS = 40
DEMO_SEED = 0


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test); x float32 (N, 1, 8, 8) scaled to [0, 1]. Fixed 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=DEMO_SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def make_model():
    """Conv(1,8,3)-BN-ReLU-Conv(8,16,3)-BN-ReLU-MaxPool2-Linear(256,10): the issue's digits CNN."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10),
    )


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = DEMO_EPOCHS, seed: int = DEMO_SEED):
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def trained_model(cache: bool = True):
    """The demo CNN trained on the digits train split, cached by training recipe and torch version."""
    import torch

    from .hostcheck import cache_root

    x_tr, y_tr, _, _ = digits_data()
    key = hashlib.sha256(f"digits-cnn-v1|{DEMO_EPOCHS}|{DEMO_SEED}|{torch.__version__}".encode()).hexdigest()[:12]
    path = cache_root() / "demo" / f"digits_cnn_{key}.pt"
    model = make_model()
    if cache and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    torch.set_num_threads(min(2, torch.get_num_threads()))
    train(model, x_tr, y_tr)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model, False


@dataclass
class DemoResult:
    float_accuracy: float
    int8_accuracy_reference: float
    int8_accuracy_c: float
    bit_exact_samples: int
    samples: int
    arena_bytes: int
    flash_bytes: int
    macs: int
    compile_seconds: float
    cached_model: bool


def run(out_dir: str | Path = "build/demo", prefix: str = "digits", console=None, cache: bool = True) -> DemoResult:
    import torch

    from . import compile as qcompile
    from . import report

    log = console.print if console is not None else print
    x_tr, y_tr, x_te, y_te = digits_data()
    t0 = time.perf_counter()
    model, cached = trained_model(cache)
    log(f"model: digits CNN ({'loaded from cache' if cached else f'trained {DEMO_EPOCHS} epochs'} "
        f"in {time.perf_counter() - t0:.1f} s), {len(x_tr)} train / {len(x_te)} test images")
    with torch.no_grad():
        float_acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    result = qcompile(model, torch.from_numpy(x_tr[:1]), x_tr, prefix=prefix, out_dir=out_dir,
                      eval_data=x_te, command=f"qgen demo --out {out_dir}")
    ref_acc = float((result.predict(x_te).argmax(1) == y_te).mean())
    check = result.verify(x_te)
    out_frac = result.graph.tensors[result.graph.outputs[0]].qformat
    c_logits = check.outputs.astype(np.int64)
    c_acc = float((c_logits.argmax(1) == y_te).mean())
    rep = result.report
    rep.update(float_accuracy=float_acc, int8_accuracy_reference=ref_acc, int8_accuracy_c=c_acc,
               bit_exact=f"{'yes' if check.exact else 'NO'} ({check.matching}/{check.samples} samples)")
    report.print_table(rep, console)
    log(f"\nfloat accuracy      {float_acc:.4f}")
    log(f"int8 accuracy (ref) {ref_acc:.4f}   (output {out_frac})")
    log(f"int8 accuracy (C)   {c_acc:.4f}")
    log(f"arena {rep['arena_bytes']:,} B, flash (weights) {rep['flash_bytes']:,} B, {rep['macs']:,} MACs")
    log("   for comparison, TFLite Micro on this model: 3,872 B arena, 8,552 B flatbuffer")
    log(f"compile time {rep['compile_seconds']:.2f} s; generated C in {out_dir}/")
    log(str(check))
    if not check.exact:
        raise RuntimeError("demo: generated C differs from the reference (see above); please report")
    return DemoResult(float_acc, ref_acc, c_acc, check.matching, check.samples, rep["arena_bytes"],
                      rep["flash_bytes"], rep["macs"], rep["compile_seconds"], cached)
