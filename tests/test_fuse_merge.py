"""codegen.fuse.merge: weight-space merging (W = sum C_i W_i), permutation alignment, REPAIR, `qgen merge`."""
from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from codegen.errors import UserError
from codegen.fuse import merge
from codegen.fuse.weight_merge import (
    _activations,
    _match,
    activation_matching,
    activation_merge_many,
    align_states,
    perm_spec,
    permute_state,
    traced,
    weight_matching,
)


class ResCNN(nn.Module):
    """conv+BN, a residual add (three tensors joined), depthwise conv, strided conv, flatten into an MLP head."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.c3 = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.c1(x)))
        y = y + self.bn2(self.c2(y))
        y = torch.relu(self.c3(self.dw(y)))
        return self.fc2(torch.relu(self.fc1(y.flatten(1))))


def mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 3)).eval()


def rescnn(seed: int) -> ResCNN:
    torch.manual_seed(seed)
    m = ResCNN()
    for bn in (m.bn1, m.bn2):  # non-trivial statistics, so that a wrong BN permutation shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    return m.eval()


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _permuted_copy(m, x, seed: int = 1):
    gm = traced(m, x[:1])
    spec = perm_spec(gm)
    rng = np.random.default_rng(seed)
    perms = {}
    for g, n in spec.sizes.items():
        while g not in perms or (perms[g] == np.arange(n)).any():  # every unit moves
            perms[g] = rng.permutation(n)
    other = copy.deepcopy(m)
    other.load_state_dict(permute_state(_state(m), spec, perms))
    return spec, other


def test_spec_follows_bn_residual_and_flatten():
    m = rescnn(0)
    spec = perm_spec(traced(m, torch.zeros(1, 1, 8, 8)))
    g = {fqn: entries for fqn, entries in spec.axes.items()}
    # the residual add joins c1's and c2's outputs into one permutation: c2 reads and writes it
    (a0, g0, _), (a1, g1, _) = g["c2.weight"]
    assert (a0, a1) == (0, 1) and g0 == g1 == g["c1.weight"][0][1] == g["bn1.running_var"][0][1]
    assert g["dw.weight"] == [(0, g0, 1)]  # depthwise carries the channel permutation
    # flatten: c3's 6 channels become blocks of 4x4 = 16 features of fc1's input
    c3 = g["c3.weight"][1][1] if g["c3.weight"][0][1] == g0 else g["c3.weight"][0][1]
    assert (1, c3, 16) in g["fc1.weight"]
    assert "fc2.bias" not in g  # the output units keep their order
    assert sorted(spec.sizes.values()) == [4, 6, 12]


def test_permuted_copy_same_function_and_aligns_back_exactly():
    m = rescnn(0)
    x = torch.randn(6, 1, 8, 8)
    spec, other = _permuted_copy(m, x)
    with torch.no_grad():
        torch.testing.assert_close(other(x), m(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(other.fc1.weight, m.fc1.weight) and not torch.equal(other.bn2.running_mean,
                                                                                  m.bn2.running_mean)
    found = weight_matching(spec, _state(m), _state(other))
    back = permute_state(_state(other), spec, found)
    assert all(torch.equal(back[k], v) for k, v in _state(m).items())
    # so merging a model with its permuted copy gives the model back (and without alignment it does not)
    merged = merge([m, other], align=True, example_input=x[:1], repair=False)
    assert all(torch.allclose(merged.state_dict()[k].float(), v.float(), atol=1e-6) for k, v in _state(m).items())
    naive = merge([m, other])
    assert not torch.allclose(naive.fc1.weight, m.fc1.weight, atol=1e-3)


def test_activation_matching_aligns_back_exactly():
    m = rescnn(0)
    x = torch.randn(32, 1, 8, 8)
    spec, other = _permuted_copy(m, x, seed=3)
    gm = traced(m, x[:1])
    found = activation_matching(gm, spec, _state(m), _state(other), x)
    back = permute_state(_state(other), spec, found)
    assert all(torch.equal(back[k], v) for k, v in _state(m).items())
    merged = merge([m, other], align="activations", calib_data=x, repair=False)
    assert all(torch.allclose(merged.state_dict()[k].float(), v.float(), atol=1e-6) for k, v in _state(m).items())


def test_merge_many_aligns_three_permuted_copies():
    m = mlp(0)
    x = torch.randn(4, 8)
    spec, b = _permuted_copy(m, x, seed=1)
    _, c = _permuted_copy(m, x, seed=2)
    aligned = align_states(spec, [_state(m), _state(b), _state(c)])
    assert all(torch.equal(a[k], v) for a in aligned for k, v in _state(m).items())


def test_activation_merge_many_aligns_three_permuted_copies():
    # MergeMany with activation matching (each model re-matched to the sum of the others' aligned activations)
    m = rescnn(0)
    x = torch.randn(32, 1, 8, 8)
    spec, b = _permuted_copy(m, x, seed=1)
    _, c = _permuted_copy(m, x, seed=2)
    gm = traced(m, x[:1])
    aligned = align_states(spec, [_state(m), _state(b), _state(c)], gm=gm, calib=x)
    assert all(torch.equal(a[k], v) for a in aligned for k, v in _state(m).items())
    # independent models: at the end each one's permutation is the best match to the sum of the others' aligned
    # activations (a fixed point; matching each to the first only is not)
    x = torch.randn(64, 8)
    models = [mlp(s) for s in range(3)]
    gm = traced(models[0], x[:1])
    spec = perm_spec(gm)
    states = [_state(m) for m in models]
    acts = [_activations(gm, spec, s, x) for s in states]

    def fixed_point(perms) -> bool:
        return all(all(np.array_equal(found[g], perms[i][g]) for g in found)
                   for i in range(3) for found in [_match({g: [sum(acts[j][g][k][:, perms[j][g]] for j in range(3)
                                                                   if j != i) for k in range(len(acts[i][g]))]
                                                           for g in spec.sizes}, acts[i], spec.sizes)])

    assert fixed_point(activation_merge_many(gm, spec, states, x))
    assert not fixed_point(activation_merge_many(gm, spec, states, x, rounds=0))


def test_reference_model_and_auto_alignment():
    m = mlp(0)
    x = torch.randn(64, 8)
    spec, b = _permuted_copy(m, x, seed=1)
    _, c = _permuted_copy(m, x, seed=2)
    for align, ref, want in (("weights", 1, b), ("activations", 2, c)):  # aligned to the reference's unit order
        got = merge([m, b, c], align=align, reference=ref, calib_data=x, repair=False)
        assert all(torch.allclose(got.state_dict()[k], v, atol=1e-6) for k, v in _state(want).items()), (align, ref)
    # "best": the member with the best held-out accuracy (here the labels are model 2's predictions)
    models = [mlp(0), mlp(1), mlp(2)]
    with torch.no_grad():
        y = models[2](x).argmax(1).numpy()
    best, info = merge(models, align="weights", reference="best", eval_data=x, labels=y, repair=False,
                       return_info=True)
    third = merge(models, align="weights", reference=2, example_input=x[:1], repair=False)
    assert info.member_accuracy[2] == 100.0 and max(info.member_accuracy[:2]) < 100
    assert all(torch.equal(best.state_dict()[k], v) for k, v in third.state_dict().items())
    # auto: both alignments tried, the better on the held-out data kept (and reported); align=True with calib
    # and held-out data is auto
    scores = {}
    for how in ("weights", "activations"):
        scores[how] = merge(models, align=how, calib_data=x, eval_data=x, labels=y, return_info=True)[1].accuracy
    auto, info = merge(models, align="auto", calib_data=x, eval_data=x, labels=y, return_info=True)
    assert info.align_method == max(scores, key=lambda k: (scores[k], k == "activations"))
    assert info.accuracy == max(scores.values()) and f"aligned by {info.align_method}" in info.summary()
    assert merge(models, align=True, calib_data=x, return_info=True)[1].align_method == "activations"


def test_uniform_and_coefficients_exact():
    models = [mlp(s) for s in range(3)]
    states = [_state(m) for m in models]
    for coeffs, expect in ((None, [1 / 3] * 3), ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5])):
        merged = merge(models, coeffs)
        for k, v in merged.state_dict().items():
            want = sum(c * s[k].double() for c, s in zip(expect, states)).float()
            assert torch.equal(v, want), k
    assert type(merged) is type(models[0]) and merged is not models[0]


def _linear_models():
    """Three linear classifiers on separable data: two good (W + noise), one anti-correlated (-3W)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8))
    x = rng.standard_normal((600, 8)).astype(np.float32)
    logits = np.sort(x @ w.T, 1)
    x = x[logits[:, -1] - logits[:, -2] > 0.5]  # a margin: the good members and their average all get 100%
    y = (x @ w.T).argmax(1)
    models = []
    for weight in (w + 0.05 * rng.standard_normal(w.shape), w + 0.05 * rng.standard_normal(w.shape), -3 * w):
        lin = nn.Linear(8, 3)
        lin.weight.data = torch.tensor(weight, dtype=torch.float32)
        lin.bias.data.zero_()
        models.append(lin.eval())
    return models, x, y


def test_greedy_soup_skips_a_member_that_lowers_accuracy():
    models, x, y = _linear_models()
    merged, info = merge([models[2], models[0], models[1]], method="greedy", eval_data=x, labels=y,
                         return_info=True)
    assert info.coeffs == [0.0, 0.5, 0.5]
    assert info.member_accuracy == [0.0, 100.0, 100.0] and info.accuracy == 100.0
    want = (models[0].weight.double() + models[1].weight.double()) / 2
    assert torch.equal(merged.weight, want.float())
    uniform = merge([models[2], models[0], models[1]], eval_data=x, labels=y, return_info=True)[1]
    assert uniform.accuracy < 50  # the bad member drags the plain average down: greedy mattered


def test_coefficient_search_moves_weight_off_a_bad_member():
    models, x, y = _linear_models()
    _, info = merge(models, method="search", eval_data=x, labels=y, return_info=True)
    assert info.coeffs[2] < 0.25 and abs(sum(info.coeffs) - 1) < 1e-9
    assert info.accuracy >= 95
    again = merge(models, method="search", eval_data=x, labels=y, return_info=True)[1]
    assert again.coeffs == info.coeffs  # deterministic


def test_repair_sets_bn_statistics_and_channel_statistics():
    x = torch.randn(64, 1, 8, 8)
    a, b = rescnn(0), rescnn(1)
    merged, info = merge([a, b], align=True, calib_data=x, return_info=True)
    assert {"batch_norm", "batch_norm_1"} <= set(info.repaired)
    # BN running statistics = the statistics of the BN input of the merged model on the calibration data
    feats = {}
    merged.bn2.register_forward_hook(lambda mod, inp, out: feats.setdefault("bn2", inp[0]))
    with torch.no_grad():
        merged(x)
    inp = feats["bn2"]
    torch.testing.assert_close(merged.bn2.running_mean, inp.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged.bn2.running_var, inp.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    # REPAIR on layers without BN: fc1's outputs have the coefficient-weighted mean and std of the (aligned)
    # members' fc1 outputs
    gm = traced(a, x[:1])
    spec = perm_spec(gm)
    states = align_states(spec, [_state(a), _state(b)], gm=gm, calib=x)  # as merge: by activations

    def fc1_out(state):
        m = copy.deepcopy(a)
        m.load_state_dict(state)
        got = {}
        m.fc1.register_forward_hook(lambda mod, inp, out: got.setdefault("o", out))
        with torch.no_grad():
            m(x)
        return got["o"]

    outs = [fc1_out(s) for s in states]
    target_mean = sum(0.5 * o.mean(0) for o in outs)
    target_std = sum(0.5 * o.std(0, unbiased=False) for o in outs)
    got = fc1_out(_state(merged))
    torch.testing.assert_close(got.mean(0), target_mean, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got.std(0, unbiased=False), target_std, rtol=1e-3, atol=1e-4)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 1)
        self.block = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return self.block(self.stem(x)).mean((2, 3))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1).sum(-1)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


@pytest.mark.parametrize("cls, shape, words", [
    (Grouped, (1, 1, 4, 4), ["grouped convolution (groups=2) at 'block' (Conv2d) (test_fuse_merge.py:"]),
    (Attention, (1, 5, 6), ["aten.matmul at 'matmul' (test_fuse_merge.py:"]),
    (Concat, (1, 4), ["concatenation of permuted channels at 'cat' (test_fuse_merge.py:"]),
])
def test_align_refuses_what_it_cannot_permute(cls, shape, words):
    torch.manual_seed(0)
    models = [cls().eval(), cls().eval()]
    with pytest.raises(UserError) as err:
        merge(models, align=True, example_input=torch.zeros(shape))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "Merge without align" in str(err.value)
    merged = merge(models)  # a plain average needs no alignment
    assert torch.equal(merged.state_dict()[next(iter(merged.state_dict()))],
                       (sum(m.state_dict()[next(iter(merged.state_dict()))].double() for m in models) / 2).float())


def test_errors():
    a, b = mlp(0), mlp(1)
    wide = mlp(2, hidden=17)
    with pytest.raises(UserError, match=r"model 2 differs from model 1 at '0.weight': torch.float32 \[17, 8\]"):
        merge([a, wide])
    with pytest.raises(UserError, match="model 2 has no '4.bias'"):
        other = copy.deepcopy(b)
        other[4] = nn.Linear(16, 3, bias=False)
        merge([a, other])
    with pytest.raises(UserError, match="3 coefficients for 2 models"):
        merge([a, b], [0.2, 0.3, 0.5])
    with pytest.raises(UserError, match="coefficient -0.5 is negative"):
        merge([a, b], [1.5, -0.5])
    with pytest.raises(UserError, match="coefficients sum to 0.8; they must sum to 1.*e.g. 0.375,0.625"):
        merge([a, b], [0.3, 0.5])
    with pytest.raises(UserError, match="at least 2 models"):
        merge([a])
    with pytest.raises(UserError, match="method='greedy' chooses coefficients by held-out accuracy"):
        merge([a, b], method="greedy")
    with pytest.raises(UserError, match="method 'best'"):
        merge([a, b], method="best")
    with pytest.raises(UserError, match="repair needs calibration data"):
        merge([a, b], repair=True)
    with pytest.raises(UserError, match="align='activations' matches hidden units by their outputs: give calib_data"):
        merge([a, b], align="activations")
    with pytest.raises(UserError, match="align='auto' tries weight and activation matching.*give calib_data, "
                       "eval_data and labels"):
        merge([a, b], align="auto", calib_data=np.zeros((4, 8), np.float32))
    with pytest.raises(UserError, match=r"reference=5: give a model index 0..1 or 'best'"):
        merge([a, b], align=True, reference=5, calib_data=np.zeros((4, 8), np.float32))
    with pytest.raises(UserError, match="reference='best' picks the member with the best held-out accuracy"):
        merge([a, b], align=True, reference="best", calib_data=np.zeros((4, 8), np.float32))
    with pytest.raises(UserError, match="rounds=-1: give a number of MergeMany rounds >= 0"):
        merge([a, b], align=True, rounds=-1, calib_data=np.zeros((4, 8), np.float32))
    with pytest.raises(UserError, match="align='yes'"):
        merge([a, b], align="yes", calib_data=np.zeros((4, 8), np.float32))
    with pytest.raises(UserError, match="give example_input"):
        merge([a, b], align=True)
    with pytest.raises(UserError, match="3 labels for 4 evaluation samples"):
        merge([a, b], method="greedy", eval_data=np.zeros((4, 8), np.float32), labels=[0, 1, 2])


def test_merged_model_compiles_prunes_and_is_bit_exact():
    from codegen import compile as qcompile
    from codegen.options import CompileOptions, CompressOptions

    x = torch.randn(64, 1, 8, 8)
    merged = merge([rescnn(0), rescnn(1), rescnn(2)], align=True, calib_data=x)
    result = qcompile(merged, (1, 1, 8, 8), x.numpy(), options=CompileOptions(compress=CompressOptions(prune=0.5)))
    check = result.verify(x[:8].numpy())
    assert check.exact, check
    with torch.no_grad():
        ref = merged(x[:8]).numpy()
    assert (result.predict(x[:8].numpy()).reshape(8, -1).argmax(1) == ref.argmax(1)).mean() >= 0.75


@pytest.mark.training
def test_merged_model_through_qat():
    from codegen import qat

    x = torch.randn(64, 8)
    merged = merge([mlp(0), mlp(1), mlp(2)], align=True, calib_data=x)
    model = qat.prepare(merged, x[:1], x.numpy())
    y = merged(x).argmax(1).numpy()
    qat.finetune(model, x.numpy(), y, epochs=1)
    assert qat.compile(model).verify(x[:4].numpy()).exact


@pytest.mark.training
def test_independent_mlps_naive_average_collapses_aligned_merge_does_not():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    models = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only cost
    try:
        for seed in range(3):
            torch.manual_seed(seed)
            m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            opt = torch.optim.Adam(m.parameters(), 1e-2)
            for _ in range(80):
                opt.zero_grad()
                nn.functional.cross_entropy(m(xt), yt).backward()
                opt.step()
            models.append(m.eval())
    finally:
        torch.set_num_threads(threads)

    def acc(m):
        with torch.no_grad():
            return 100 * float((m(torch.from_numpy(x[1200:])).argmax(1).numpy() == y[1200:]).mean())

    best = max(acc(m) for m in models)
    naive = acc(merge(models))
    aligned = acc(merge(models, align=True, calib_data=x[:600]))  # activation matching, MergeMany, REPAIR
    assert naive < best - 20, (naive, best)
    # narrow models keep a gap after alignment (bench/FUSION.md: 2-5 points for MLPs of this size); here 6.0
    # (activation matching to model 1 only: 4.7, with MergeMany: 6.0; weight matching: 4.5)
    assert aligned > best - 7 and aligned > naive + 30, (aligned, naive, best)


def _write_factory(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        def make():
            return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), torch.zeros(1, 8)

        def other():
            return nn.Sequential(nn.Linear(8, 17), nn.ReLU(), nn.Linear(17, 3)), torch.zeros(1, 8)
    """))
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        torch.save(m.state_dict(), tmp_path / f"m{seed}.pt")
        paths.append(str(tmp_path / f"m{seed}.pt"))
    return f"{tmp_path}/net.py:make", paths


def test_cli_merge_then_compile(tmp_path, capsys):
    from codegen.cli import main

    factory, paths = _write_factory(tmp_path)
    calib = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    out = tmp_path / "merged.pt2"
    assert main(["merge", factory, *paths, "--coeffs", "0.25,0.25,0.5", "-o", str(out)]) == 0
    program = torch.export.load(str(out))
    states = [torch.load(p) for p in paths]
    got = program.module().state_dict()
    for k in states[0]:
        want = (0.25 * states[0][k].double() + 0.25 * states[1][k].double() + 0.5 * states[2][k].double()).float()
        assert torch.equal(got[k], want), k
    assert "coefficients 0.25, 0.25, 0.5" in capsys.readouterr().out
    # the state-dict form, for the factory again (e.g. to fine-tune)
    assert main(["merge", factory, *paths, "--uniform", "--align", "--calib", str(tmp_path / "calib.npy"),
                 "-o", str(tmp_path / "merged.pt")]) == 0
    assert set(torch.load(tmp_path / "merged.pt")) == set(states[0])
    # alignment chosen on held-out data, matched to the best member / to a given one
    np.savez(tmp_path / "val.npz", x=calib, y=np.arange(32) % 3)
    assert main(["merge", factory, *paths, "--align", "--reference", "best", "--calib", str(tmp_path / "calib.npy"),
                 "--eval", str(tmp_path / "val.npz"), "-o", str(tmp_path / "auto.pt")]) == 0
    assert "aligned by " in capsys.readouterr().out
    assert main(["merge", factory, *paths, "--align-by", "weights", "--reference", "3", "--input-shape", "1,8",
                 "-o", str(tmp_path / "w.pt")]) == 0
    assert "aligned by weights" in capsys.readouterr().out
    # the merged program is what qgen compile takes
    assert main(["compile", str(out), "--calib", str(tmp_path / "calib.npy"), "--out", str(tmp_path / "c"),
                 "--verify"]) == 0
    assert (tmp_path / "c" / "model_model.c").is_file()
    # .pt2 members need no factory; their batch-1 input guard does not stop a calibration batch
    assert main(["merge", str(out), str(out), "--align", "--calib", str(tmp_path / "calib.npy"),
                 "-o", str(tmp_path / "again.pt2")]) == 0
    assert "statistics re-estimated at 1 layers" in capsys.readouterr().out


def test_cli_merge_errors(tmp_path, capsys):
    from codegen.cli import main

    factory, paths = _write_factory(tmp_path)
    out = tmp_path / "x.pt2"
    assert main(["merge", factory, *paths, "--coeffs", "0.5,0.5", "-o", str(out)]) == 1
    assert "2 coefficients for 3 models" in capsys.readouterr().err
    assert not out.exists()
    assert main(["merge", factory.replace(":make", ":other"), *paths, "-o", str(out)]) == 1
    assert "m0.pt' does not fit" in capsys.readouterr().err
    assert main(["merge", factory, paths[0], "-o", str(out)]) == 1
    assert "at least 2 models" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["merge", factory, paths[0], str(tmp_path / "junk.pt"), "-o", str(out)]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["merge", factory, *paths, "--align", "--reference", "4", "-o", str(out)]) == 1
    assert "--reference 4: give a model position 1..3 or 'best'" in capsys.readouterr().err
    assert main(["merge", factory, *paths, "--greedy", "-o", str(out)]) == 1
    assert "--greedy" in capsys.readouterr().err
    assert main(["merge", factory, *paths, "-o", str(tmp_path / "x.onnx")]) == 1
    assert "-o" in capsys.readouterr().err
    assert not out.exists()
