import numpy as np
import pytest
import torch
from torch import nn

from codegen import compile as qcompile
from codegen.emit import weight_formats
from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.ir import Op, verify
from codegen.passes import cluster, fold_bn, fuse_activation, prune_magnitude


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 6 * 6, 10)).eval()


def _graph():
    return fuse_activation.run(fold_bn.run(from_module(_model(), torch.randn(1, 3, 6, 6))))


def test_kmeans_is_deterministic_and_close():
    v = np.random.default_rng(0).standard_normal(2000)
    c = cluster.kmeans_1d(v, 8)
    assert len(c) == 8 and np.all(np.diff(c) > 0)
    np.testing.assert_array_equal(c, cluster.kmeans_1d(v, 8))
    q = cluster.quantize_to_centroids(v, 3)
    assert np.sqrt(np.mean((q - v) ** 2)) < 0.19  # Lloyd-Max optimum for 8 levels: 0.186 and len(np.unique(q)) <= 8


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_each_layer_has_at_most_2_to_the_bits_values(bits):
    g = cluster.run(_graph(), bits)
    verify(g)
    for n in g.nodes:
        if n.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.LINEAR):
            assert len(np.unique(g.tensors[n.inputs[1]].data)) <= 1 << bits
            assert n.attrs["weight_per_tensor"] and n.attrs["weight_format"] == "cluster"


def test_pruned_zeros_survive_clustering():
    g = prune_magnitude.run(_graph(), 0.7)
    zeros = {n.name: g.tensors[n.inputs[1]].data == 0 for n in g.nodes if n.op in (Op.CONV2D, Op.LINEAR)}
    g = cluster.run(g, 2)
    for n in g.nodes:
        if n.name in zeros:
            w = g.tensors[n.inputs[1]].data
            np.testing.assert_array_equal(w == 0, zeros[n.name])
            assert len(np.unique(w)) <= 4 and n.attrs["weight_format"] == "auto"


@pytest.mark.parametrize("bits", [0, 9, 2.5])
def test_impossible_bits_are_refused(bits):
    with pytest.raises(UserError, match="impossible.*1..8 bits"):
        cluster.run(_graph(), bits)


def test_compiled_codebooks_are_exact_smaller_and_bit_exact():
    calib = np.random.default_rng(0).standard_normal((32, 3, 6, 6)).astype(np.float32)
    dense = qcompile(_model(), torch.randn(1, 3, 6, 6), calib, prefix="dense")
    result = qcompile(_model(), torch.randn(1, 3, 6, 6), calib, prefix="cl",
                      extra_passes=[("cluster", lambda g: cluster.run(g, 4))])
    for n in result.graph.nodes:
        if n.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.LINEAR):
            assert len(np.unique(result.graph.tensors[n.inputs[1]].data)) <= 16  # int8: one shared codebook
    formats = {s["name"]: (s["format"], s["bits"]) for s in weight_formats.summary(result.graph)}
    assert formats[result.graph.nodes[-1].name] == ("cluster", 4)
    assert result.report["flash_bytes"] < 0.75 * dense.report["flash_bytes"]
    assert "qg_fully_connected_cluster_s8(" in result.files["cl_model.c"]
    check = result.verify(calib)
    assert check.exact, str(check)
