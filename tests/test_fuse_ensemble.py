"""codegen.fuse.ensemble / qgen fuse: several models as ONE graph (fuse/ensemble_graph.py), the combine ops mean and
vote (codegen/ops/combine.py, firmware/kernels/qg_combine_s8.c) and the shared prefix (codegen/passes/cse.py, whose own
tests are tests/passes/test_cse.py).

C == integer reference on the host (cffi, and under ASan/UBSan) and on Cortex-M0+/M4 under QEMU, and the pure
MicroPython module (CPython and MicroPython); the arena bound;
identical leading layers computed once; the vote's tie rule; the errors; the CLI."""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from qgen_testing import act, const, edge_inputs, safe_bias
from torch import nn

import codegen
from codegen.errors import UserError
from codegen.fixed import QFormat
from codegen.fuse.ensemble_graph import ensemble, member_graphs, merge_graphs, reschedule
from codegen.ir import SHAPE_RULES, Graph, Node, Op, Tensor, verify
from codegen.ops import SPEC
from codegen.passes import cse, plan_memory

IN = (1, 1, 8, 8)


def cnn(seed: int, width: int = 8, backbone: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, width, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 4 * 4, 10)).eval()
    if backbone is not None:  # fine-tuned from one backbone with its first layer frozen
        m[0].load_state_dict(backbone[0].state_dict())
    return m


@pytest.fixture(scope="module")
def members():
    a = cnn(0)
    x = torch.randn(64, *IN[1:], generator=torch.manual_seed(9))
    return [a, cnn(1, backbone=a), cnn(2, width=16, backbone=a)], x


@pytest.fixture(scope="module")
def fused(members):
    models, x = members
    return {combine: ensemble(models, torch.zeros(IN), combine, x, prefix="ens")
            for combine in ("mean", "vote", "concat")}


@pytest.mark.parametrize("combine", ["mean", "vote", "concat"])
def test_host_c_is_bit_exact(fused, members, combine):
    check = fused[combine].verify(members[1].numpy())
    assert check.exact, check


def test_mean_is_the_members_float_mean(fused, members):
    models, x = members
    with torch.no_grad():
        want = torch.stack([m(x) for m in models]).mean(0).numpy()
    got = fused["mean"].predict(x.numpy())
    assert np.abs(got - want).max() < 0.05  # int8 logits at s8.f8: a few steps
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.9


def test_member_outputs_feed_one_rounding_mean_and_the_votes(fused, members):
    """The combine's inputs are the members' int8 outputs; mean = one requantisation of their aligned sum; vote
    counts each member's argmax."""
    from codegen.reference import run_int

    x_i8 = fused["vote"].quantize_input(members[1].numpy())
    g = fused["vote"].graph
    values = run_int(g, x_i8)
    node = g.nodes[-1]
    picks = np.stack([values[t].argmax(1) for t in node.inputs])
    counts = np.stack([(picks == c).sum(0) for c in range(10)], 1)
    out = values[node.outputs[0]]
    np.testing.assert_array_equal(out // 2, counts)
    assert (out % 2).sum(1).tolist() == [1] * len(out)  # exactly one decided class
    assert np.all(out.argmax(1) == np.where(out % 2 == 1)[1])
    gm = fused["mean"].graph
    mean = gm.nodes[-1]
    vals = run_int(gm, x_i8)
    fc = max(gm.tensors[t].qformat.frac for t in mean.inputs)
    total = sum(vals[t] << (fc - gm.tensors[t].qformat.frac) for t in mean.inputs)
    fo = gm.tensors[mean.outputs[0]].qformat.frac
    exact = total / 3 * 2.0 ** (fo - fc)
    assert np.abs(vals[mean.outputs[0]] - exact).max() <= 0.5 + 1e-9  # one rounding, no saturation here


# ------------------------------------------------------------------ shared prefix (passes/cse.py)


def test_identical_leading_layers_are_computed_once(fused, members):
    models, x = members
    report = fused["mean"].report["ensemble"]
    assert (report["layers_before"], report["layers"]) == (13, 11)  # 3 x 4 layers + mean -> conv1 once
    assert report["weight_values_before"] - report["weight_values"] == 2 * (8 * 9 + 8)
    g = fused["mean"].graph
    assert sum(1 for n in g.nodes if "input" in n.inputs) == 1
    alone = ensemble(models, torch.zeros(IN), "mean", x, share_prefix=False)
    assert sum(1 for n in alone.graph.nodes if "input" in n.inputs) == 3
    assert alone.report["flash_bytes"] > fused["mean"].report["flash_bytes"] + 2 * 8 * 9


# ------------------------------------------------------------------ arena


def _aligned(n: int) -> int:
    return (n + plan_memory.ALIGN - 1) // plan_memory.ALIGN * plan_memory.ALIGN


def test_arena_is_the_largest_members_plus_the_outputs(members):
    """Members without shared layers: arena <= the largest member's arena + the members' outputs. The largest runs
    first (reschedule), which the given order [small, small, large] would not do."""
    _, x = members
    models = [cnn(3), cnn(4), cnn(5, width=16)]
    alone = [codegen.compile(m, torch.zeros(IN), x) for m in models]
    fused = ensemble(models, torch.zeros(IN), "mean", x)
    outputs = sum(_aligned(r.graph.tensors[r.graph.outputs[0]].nbytes) for r in alone)
    assert fused.report["arena_bytes"] <= max(r.report["arena_bytes"] for r in alone) + outputs
    assert fused.graph.nodes[0].name.startswith("m2.")  # the largest member runs first


def test_equal_members_meet_the_bound_and_concat_members_write_into_the_output(members):
    """Three members of one architecture: mean and vote within the largest member's arena + the outputs' bytes
    (unaligned: plan_memory's small_last strategy puts the waiting outputs above the last member's peak, was 1,720
    vs 1,710 for the demo CNNs); concat: the members write straight into the caller's output buffer (their slices
    of it, passes/concat_in_place), so the arena is the largest member's."""
    from codegen.demo import make_model

    _, x = members
    models = []
    for seed in range(3):  # the demo's digits CNN (conv8-conv16-pool-fc10), as bench/ensemble.py
        torch.manual_seed(seed)
        models.append(make_model().eval())
    largest = max(codegen.compile(m, torch.zeros(IN), x).report["arena_bytes"] for m in models)
    for combine in ("mean", "vote"):
        assert ensemble(models, torch.zeros(IN), combine, x).report["arena_bytes"] <= largest + 3 * 10, combine
    cat = ensemble(models, torch.zeros(IN), "concat", x)
    g = cat.graph
    assert cat.report["arena_bytes"] == largest
    assert [g.memory[t] for t in g.nodes[-1].inputs] == [("output", 0), ("output", 10), ("output", 20)]
    check = cat.verify(x.numpy()[:4])
    assert check.exact, check


def test_shared_prefix_keeps_its_branch_tensor_only(fused, members):
    """With conv1 shared, its output lives until the last member has read it: the arena stays below the bundle's
    (the largest member's) plus that tensor, and reschedule runs the members reading it together."""
    models, x = members
    largest = max(codegen.compile(m, torch.zeros(IN), x).report["arena_bytes"] for m in models)
    assert fused["mean"].report["arena_bytes"] < largest + 8 * 8 * 8


def test_reschedule_takes_the_smallest_planned_arena(members):
    graphs = member_graphs([cnn(3), cnn(5, width=16), cnn(4)], torch.zeros(IN))
    g = merge_graphs(graphs, "vote")
    order = [n.name.split(".")[0] for n in reschedule(copy.deepcopy(g)).nodes[:-1]]
    assert order[:order.count("m1")] == ["m1"] * order.count("m1")  # the largest member (m1) runs first


def test_member_orders_stay_few_for_many_members():
    from codegen.fuse.ensemble_graph import member_orders

    assert len(member_orders([5, 1, 9])) == 6  # every order
    orders = member_orders([5, 1, 9, 7, 3, 2])
    assert len(orders) <= 6 + 3 and (2, 3, 0, 4, 5, 1) in orders and (1, 5, 4, 0, 3, 2) in orders  # largest first/last
    assert all(sorted(o) == list(range(6)) for o in orders)


# ------------------------------------------------------------------ the vote's rule


def _vote(fracs: list[int], rows: list[list[int]]) -> list[int]:
    g = Graph({f"x{i}": act(f"x{i}", (len(rows[0]),), f) for i, f in enumerate(fracs)}, [], ["x0"], [])
    node = Node("vote", Op.VOTE, list(g.tensors), ["v"])
    g.tensors["v"] = act("v", (len(rows[0]),), 0)
    SPEC[Op.VOTE].quantize(g, node, lambda name, frac=None: QFormat(8, frac))
    xs = [np.array([r]) for r in rows]
    return SPEC[Op.VOTE].ref_int(g, node, xs)[0].tolist()


def test_vote_tie_rule():
    assert _vote([0, 0, 0], [[1, 5, 2], [0, 7, 1], [9, 0, 0]]) == [2, 5, 0]  # 2 votes for class 1: decided
    assert _vote([0, 0], [[0, 5, 0], [4, 0, 0]]) == [2, 3, 0]  # 1:1, class 1 has the larger logit sum (5 > 4)
    assert _vote([0, 0], [[1, 5, 5], [5, 1, 1]]) == [3, 2, 0]  # 1:1, equal sums (6, 6): the lower index
    assert _vote([0, 0], [[3, 3, 0], [0, 0, 4]]) == [2, 0, 3]  # a member's tie: its first maximum (not class 1)
    # sums are taken in one format: 4 at f1 (= 2.0) loses to 3 at f0 (= 3.0), though 4 > 3 as integers
    assert _vote([1, 0], [[0, 4, 0], [3, 0, 0]]) == [3, 2, 0]


def test_vote_float_reference_decides_like_the_integer_one():
    g = Graph({"a": Tensor("a", (3,)), "b": Tensor("b", (3,)), "v": Tensor("v", (3,))}, [], ["a"], ["v"])
    node = Node("vote", Op.VOTE, ["a", "b"], ["v"])
    out = SPEC[Op.VOTE].ref_float(g, node, [np.array([[0.0, 2.5, 0.0]]), np.array([[2.0, 0.0, 0.0]])])
    assert out.tolist() == [[1.0, 1.5, 0.0]]  # votes, + 0.5 on the decided class


# ------------------------------------------------------------------ kernels: host (sanitizers) and Cortex-M


def kernel_graph(rng) -> Graph:
    """x (12,) -> 8 linear 'members' in different formats, some with narrow ranges (ties), then every combine form:
    mean of 3 (1/3, mixed formats), 2 and 4 (shifts), into a finer output (left shift), votes of 2 / 4 / 3
    (one member twice) and of two 0/1 members (ties of votes and of sums), then 8 random draws."""
    g = Graph({"x": act("x", (12,), 3)}, [], ["x"], [], source="test")
    fmt = {}
    members = [(5, -128, 127), (3, -128, 127), (6, -2, 2), (2, 0, 1), (2, 0, 1), (-3, -128, 127), (20, -128, 127),
               (24, -40, 127)]  # the last three: formats far apart (alignment capped at 16 bits)
    for i, (frac, lo, hi) in enumerate(members):
        w = rng.integers(-128, 128, (9, 12))
        g.tensors[f"w{i}"] = const(f"w{i}", w, 8, (3,) * 9)
        g.tensors[f"b{i}"] = const(f"b{i}", safe_bias(rng, w), 32, (6,) * 9)
        g.tensors[f"m{i}"] = act(f"m{i}", (9,), frac)
        g.nodes.append(Node(f"m{i}", Op.LINEAR, ["x", f"w{i}", f"b{i}"], [f"m{i}"],
                            {"shift": [int(s) for s in rng.integers(6, 12, 9)], "act_min": lo, "act_max": hi}))
    cases = [("mean3", Op.MEAN, ["m0", "m1", "m2"], 6), ("mean2", Op.MEAN, ["m0", "m1"], 3),
             ("mean4", Op.MEAN, ["m0", "m1", "m2", "m3"], 2), ("mean_fine", Op.MEAN, ["m3", "m2"], 9),
             ("vote2", Op.VOTE, ["m2", "m3"], None), ("vote4", Op.VOTE, ["m0", "m1", "m2", "m3"], None),
             ("vote_same", Op.VOTE, ["m2", "m2", "m0"], None),
             ("vote_flat", Op.VOTE, ["m3", "m4"], None)]  # values 0 / 1: equal sums among tied classes
    for k in range(8):  # random draws: 2..9 members (repeats allowed), any formats, output fracs -3..22
        picks = [f"m{int(i)}" for i in rng.integers(0, len(members), int(rng.integers(2, 10)))]
        op = Op.MEAN if k % 2 == 0 else Op.VOTE
        cases.append((f"rand{k}", op, picks, int(rng.integers(-3, 23)) if op is Op.MEAN else None))
    for name, op, inputs, frac in cases:
        node = Node(name, op, inputs, [name])
        g.tensors[name] = act(name, (9,), 0)
        g.tensors[name].shape = SHAPE_RULES[op](g, node)
        fmt[name] = frac
        SPEC[op].quantize(g, node, lambda n, f=None: QFormat(8, f if f is not None else fmt[n]))
        g.nodes.append(node)
        g.outputs.append(name)
    verify(g, quantized=True)
    return plan_memory.run(g)


@pytest.fixture(scope="module")
def kernel_model(tmp_path_factory):
    from codegen.emit.c import render, write_atomic
    from codegen.hostcheck import reference_outputs
    from codegen.reference import run_int

    rng = np.random.default_rng(5)
    g = kernel_graph(rng)
    out = tmp_path_factory.mktemp("combine") / "model"
    write_atomic(render(g, "kc", ["test"]), out)
    x = edge_inputs(rng, (12,), n_random=12)
    return g, out, x, reference_outputs(g, run_int(g, x))


def test_kernel_graph_hits_the_edges(kernel_model):
    g, _, _, expect = kernel_model
    attrs = {n.name: n.attrs for n in g.nodes}
    assert attrs["mean3"]["avg_mult"] != 1 and attrs["mean2"]["avg_mult"] == 1 and attrs["mean_fine"]["shift"] < 0
    assert min(attrs["mean3"]["shifts"]) < 0  # exact left shifts to the common frac
    assert any(max(n.attrs["shifts"]) > 0 for n in g.nodes if n.op in (Op.MEAN, Op.VOTE))  # formats > 16 bits apart
    assert np.any(expect == 127) and np.any(expect == -128)  # saturation in the means
    from codegen.reference import run_int

    _, _, x, _ = kernel_model
    values = run_int(g, x)
    a, b = values["m3"], values["m4"]
    pa, pb = a.argmax(1), b.argmax(1)
    rows = np.arange(len(x))
    # members disagree and both classes have the same logit sum: the lower index decides
    assert np.any((pa != pb) & (a[rows, pa] + b[rows, pa] == a[rows, pb] + b[rows, pb]))


def test_torch_and_qat_twins_equal_the_references(kernel_model):
    """torch_float (compression fine-tuning) == ref_float; the QAT integer twin (exact, float64) == ref_int."""
    from codegen.qat import QATStep
    from codegen.reference import run_int

    g, _, x, _ = kernel_model
    values = run_int(g, x)
    for n in (n for n in g.nodes if SPEC[n.op].family == "combine"):
        xs = [values[t] for t in n.inputs]
        step = QATStep(n.attrs, 0, 0, False, True, torch.float64)
        twin = SPEC[n.op].qat(None, 0, n, [torch.tensor(v, dtype=torch.float64) for v in xs], step).numpy()
        np.testing.assert_array_equal(twin, SPEC[n.op].ref_int(g, n, xs), err_msg=n.name)
        fx = [v * 2.0 ** -g.tensors[t].qformat.frac for v, t in zip(xs, n.inputs)]
        np.testing.assert_allclose(SPEC[n.op].torch_float(n, [torch.tensor(v) for v in fx], None).numpy(),
                                   SPEC[n.op].ref_float(g, n, fx), err_msg=n.name)


@pytest.mark.parametrize("flags", ["strict", "sanitizers"])
def test_kernels_host_c_equals_reference(kernel_model, tmp_path, flags):
    from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native

    g, out, x, expect = kernel_model
    exe = build_native(out, "kc", tmp_path / "kc", SANITIZE_FLAGS if flags == "sanitizers" else ["-O2"])
    np.testing.assert_array_equal(run_native(exe, x.reshape(len(x), -1), expect.shape[1]), expect)


def test_kernels_micropython_equals_reference(kernel_model, fused, members, tmp_path):
    """The pure MicroPython module (templates/micropython/_kernels.py _mean, _vote): CPython and MicroPython."""
    from test_micropython import check_graph

    g, _, x, _ = kernel_model
    check_graph(g, x, tmp_path)
    vote = fused["vote"]
    check_graph(vote.graph, vote.quantize_input(members[1][:6].numpy()), tmp_path, prefix="ens")


BOARDS = {"cortex-m0plus": "rp2040", "cortex-m4": "mps2-an386"}


def _run_on(board: str, model_dir: Path, prefix: str, x: np.ndarray, out_size: int, work: Path) -> np.ndarray:
    from codegen.target import build_elf, run_qemu

    sources = [model_dir / f"{prefix}_model.c", model_dir / f"{prefix}_weights.c",
               *sorted((model_dir / "kernels").glob("*.c"))]
    elf = build_elf(board, sources, [model_dir, model_dir / "kernels"], prefix, work,
                    extra_cflags=("-std=c99", "-Werror", "-Wconversion"))
    return run_qemu(board, elf, x.reshape(len(x), -1), out_size, count_instructions=False).outputs


def test_kernels_bit_exact_on_cortex_m0plus_and_m4(kernel_model, tmp_path):
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    g, out, x, expect = kernel_model
    with ThreadPoolExecutor(2) as pool:
        runs = {core: pool.submit(_run_on, board, out, "kc", x, expect.shape[1], tmp_path / core)
                for core, board in BOARDS.items()}
        for core, job in runs.items():
            np.testing.assert_array_equal(job.result(), expect, err_msg=core)


def test_ensemble_bit_exact_on_cortex_m4(members, tmp_path):
    """One firmware: the three members (conv1 shared) with all three combines as outputs (mean, vote, concat)."""
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    models, x = members
    g = merge_graphs(member_graphs(models, torch.zeros(IN)), "mean")
    outs = list(g.nodes[-1].inputs)
    for name, op, attrs, size in (("vote", Op.VOTE, {}, 10), ("concat", Op.CONCAT, {"axis": 0}, 30)):
        g.tensors[name] = Tensor(name, (size,))
        g.nodes.append(Node(name, op, outs, [name], attrs))
        g.outputs.append(name)
        g.io_layout[name] = "nf"
    result = codegen.compile(g, None, x, prefix="ens", out_dir=tmp_path / "ens",
                             extra_passes=[("share_prefix", cse.run)])
    assert sum(1 for n in result.graph.nodes if n.op is Op.CONV2D) == 4  # conv1 once
    x_i8 = np.concatenate([result.quantize_input(x[:12].numpy()), edge_inputs(np.random.default_rng(1), (8, 8, 1))])
    expect = result.reference(x_i8)
    got = _run_on("mps2-an386", tmp_path / "ens", "ens", x_i8, expect.shape[1], tmp_path / "m4")
    np.testing.assert_array_equal(got, expect)


# ------------------------------------------------------------------ errors


def test_errors_name_the_member_and_what_to_do(members):
    models, x = members
    z = torch.zeros(IN)
    with pytest.raises(UserError, match="at least 2 models, got 1"):
        ensemble(models[:1], z)
    with pytest.raises(UserError, match="combine 'max' is not one of mean, concat, vote"):
        ensemble(models, z, "max")
    wide = nn.Sequential(nn.Flatten(), nn.Linear(64, 7)).eval()
    for combine in ("mean", "vote"):
        with pytest.raises(UserError, match=rf"member 1 \(Sequential\) outputs \[7\] but member 0 outputs \[10\]; "
                                            rf"--combine {combine} needs one output shape"):
            ensemble([models[0], wide], z, combine)
    assert ensemble([models[0], wide], z, "concat", x).graph.tensors["ensemble.concat"].shape == (17,)

    class TwoOut(nn.Module):
        def forward(self, v):
            return v.flatten(1)[:, :3] * 2, v.flatten(1)[:, 3:6] * 3

    with pytest.raises(UserError, match=r"member 1 \(TwoOut\) has 2 outputs; an ensemble combines one output"):
        ensemble([models[0], TwoOut()], z)
    image = nn.Conv2d(1, 2, 3).eval()
    with pytest.raises(UserError, match=r"--combine concat joins the outputs along their last dimension"):
        ensemble([models[0], image], z, "concat")
    with pytest.raises(UserError, match=r"--combine vote needs one vector of class scores .* outputs \[6, 6, 2\]"):
        ensemble([image, image], z, "vote")


def test_members_of_different_input_shapes_are_refused(tmp_path):
    (tmp_path / "m.py").write_text("import torch\nfrom torch import nn\n"
                                   "def a():\n    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()\n")
    small = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    graphs = member_graphs([small, small], torch.zeros(1, 16))
    other = member_graphs([nn.Sequential(nn.Flatten(), nn.Linear(9, 3)).eval()], torch.zeros(1, 9))[0]
    from codegen.fuse.ensemble_graph import _check_members

    with pytest.raises(UserError, match=r"member 1 \(Sequential\) takes input \[9\] \(nf\) but member 0 takes \[16\] "
                                        r"\(nf\); the members of an ensemble share one input"):
        _check_members([small, small], [graphs[0], other], "mean")


# ------------------------------------------------------------------ CLI


MEMBERS_PY = """
import torch
from torch import nn


def _cnn(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def a():
    return _cnn(0)


def b():
    return _cnn(1)


def wide():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 7)).eval()
"""


def test_cli_fuse(tmp_path, capsys, monkeypatch):
    from codegen.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "members.py").write_text(MEMBERS_PY)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((16, 1, 6, 6)).astype(np.float32))
    assert main(["fuse", "members.py:a", "members.py:b", "--combine", "vote", "--input-shape", "1,1,6,6",
                 "--calib", "calib.npy", "-o", "out", "--prefix", "vote", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "ensemble of 2 models (vote)" in text and "bit-exact: yes" in text
    assert "qg_vote_s8(" in (tmp_path / "out" / "vote_model.c").read_text()
    assert main(["fuse", "members.py:a", "members.py:wide", "--input-shape", "1,1,6,6", "-o", "bad"]) == 1
    assert "member 1 ('members.py:wide') outputs [7] but member 0 outputs [5]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["fuse", "members.py:a", "--input-shape", "1,1,6,6"]) == 1
    assert "qgen fuse needs at least 2 models" in capsys.readouterr().err
    for flags, layers in (([], "4 member layers -> 2 after sharing"), (["--no-share-prefix"], "-> 4 after")):
        assert main(["fuse", "members.py:a", "members.py:a", "--input-shape", "1,1,6,6", "-o", "same", *flags]) == 0
        assert layers in capsys.readouterr().out
