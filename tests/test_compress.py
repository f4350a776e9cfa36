"""codegen.compress: option parsing, the pass list, the float IR as a torch module, fine-tuning."""
import numpy as np
import pytest
import torch
from models import MLP, make_residual

from codegen import compile as qcompile
from codegen import compress
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op
from codegen.passes import fold_bn, fuse_activation, prune_magnitude
from codegen.reference import run_float


def test_parse_cli():
    o = compress.parse_cli(prune=0.8, channels=0.5, rank="energy:0.95", cluster=4)
    assert (o.prune, o.channels, o.rank_energy, o.rank, o.cluster) == (0.8, 0.5, 0.95, None, 4)
    assert compress.parse_cli(rank="8").rank == 8
    names = [name for name, _ in compress.passes(o)]
    assert names == ["prune_channels", "low_rank", "prune_magnitude", "cluster"]


@pytest.mark.parametrize("kwargs,match", [
    ({"prune": 1.0}, "sparsity 1.0 is impossible"), ({"channels": 1.0}, "ratio 1.0 is impossible"),
    ({"rank": "0"}, "rank 0 is impossible"), ({"rank": "energy:1.2"}, "energy 1.2 is impossible"),
    ({"rank": "big"}, "not understood"), ({"cluster": 9}, "cluster bits 9 is impossible"),
])
def test_impossible_options_are_refused(kwargs, match):
    with pytest.raises(UserError, match=match):
        compress.parse_cli(**kwargs)


def test_gradient_importance_needs_data():
    with pytest.raises(UserError, match="needs training data"):
        compress.passes(compress.parse_cli(prune=0.5, importance="gradient"))


def test_graph_module_matches_the_float_interpreter():
    model, example = make_residual()
    g = fuse_activation.run(fold_bn.run(from_module(model, example)))
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        got = compress.GraphModule(g)(torch.from_numpy(x.transpose(0, 2, 3, 1))).numpy()
        expect = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, run_float(g, x.transpose(0, 2, 3, 1).astype(np.float64))[g.outputs[0]],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def _task(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 20)).astype(np.float32)
    y = (x[:, :3].sum(1) > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    return x, y


def test_finetune_keeps_pruned_weights_zero_and_recovers_accuracy():
    torch.manual_seed(0)
    x, y = _task()
    g = prune_magnitude.run(fuse_activation.run(fold_bn.run(from_module(MLP().eval(), torch.randn(1, 20)))), 0.7)
    zeros = {n.name: g.tensors[n.inputs[1]].data == 0 for n in g.nodes if n.op is Op.LINEAR}
    acc = lambda: float(np.mean(run_float(g, x)[g.outputs[0]].argmax(1) == y))
    before = acc()
    g = compress.finetune(g, (x, y), compress.CompressOptions(finetune_epochs=15))
    assert acc() > before + 0.2  # from near chance (random MLP, 70% pruned)
    for n in g.nodes:
        if n.name in zeros:
            np.testing.assert_array_equal(g.tensors[n.inputs[1]].data == 0, zeros[n.name])


def test_gradient_importance_and_compile_with_all_techniques():
    torch.manual_seed(0)
    x, y = _task()
    opts = compress.parse_cli(prune=0.6, channels=0.25, rank="energy:0.99", cluster=5, importance="gradient",
                              finetune_epochs=2)
    imp = compress.gradient_importance(fuse_activation.run(fold_bn.run(from_module(MLP().eval(), torch.randn(1, 20)))), x, y)
    assert all(v.shape == (32, 20) or v.ndim == 2 for v in imp.values()) and len(imp) == 3
    result = qcompile(MLP().eval(), torch.randn(1, 20), x, prefix="all",
                      extra_passes=compress.passes(opts, train=(x, y)))
    totals = compress.totals(result.graph)
    assert totals["bytes"] < totals["dense_bytes"]
    assert len(compress.summary_lines(result.graph)) == 2 + len(compress.summary(result.graph))
    check = result.verify(x[:32])
    assert check.exact, str(check)


def test_prune_steps_flag_and_its_errors(capsys):
    from codegen import cli

    parse = lambda *a: cli.compile_options(cli.build_parser().parse_args(["compile", "m.pt2", *a]))  # noqa: E731
    o = parse("--prune", "0.8", "--prune-steps", "2", "--finetune-epochs", "1").compress
    assert o.prune_steps == 2
    names = [name for name, _ in compress.passes(o, train=_task(8))]
    assert names == ["prune_magnitude_1", "finetune_sparse_1", "prune_magnitude_2", "finetune_sparse_2"]
    assert parse("--prune", "0.8").compress.prune_steps == 1
    for args, match in [(("--prune", "0.8", "--prune-steps", "0", "--finetune-epochs", "1"),
                         "--prune-steps / prune_steps\\) must be an integer >= 1, got 0"),
                        (("--prune-steps", "2", "--finetune-epochs", "1"), "--prune-steps 2 is gradual .*give --prune"),
                        (("--prune", "0.8", "--prune-steps", "3"), "give --finetune-epochs N")]:
        with pytest.raises(UserError, match=match):
            parse(*args)
        assert cli.main(["compile", "missing.pt2", *args]) == 1
        assert "Traceback" not in capsys.readouterr().err


def test_gradual_pruning_from_a_low_sparsity():
    """--prune 0.3 --prune-steps 3: the first step (10%) shrinks no layer's storage on its own; it prunes the layers
    the final sparsity prunes instead of refusing the model."""
    torch.manual_seed(0)
    x, y = _task(64)
    opts = compress.parse_cli(prune=0.3, prune_steps=3, finetune_epochs=1)
    result = qcompile(MLP().eval(), torch.randn(1, 20), x, extra_passes=compress.passes(opts, train=(x, y)))
    assert compress.totals(result.graph)["bytes"] < compress.totals(result.graph)["dense_bytes"]
