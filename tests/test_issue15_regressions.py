"""Regressions of issue 15: one decision read by every consumer, so that two copies cannot disagree.

1. The kernel (and so the scratch) of a compressed layer: planner and emitter read one storage_choice.
2. Struct-field ranges: from the C types declared in qg_kernels.h, for every struct.
3. Compression fine-tuning: the same torch interpreter of the IR as QAT (1-D models included).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from qgen_testing import finish, safe_bias, weighted_graph

from codegen import kernel_abi
from codegen.emit import weight_formats as wf
from codegen.emit.c import model_data
from codegen.ir import Op

# ------------------------------------------------------------------ 1. scratch of a clustered layer


def _clustered_conv_that_stays_dense(rng):
    """A conv with 72 weights of many distinct values: a 6-bit codebook (64 B) + indices outweigh 72 B dense."""
    w = rng.integers(-128, 128, (8, 3, 3, 1)).astype(np.int8)
    g = weighted_graph(Op.CONV2D, (8, 8, 1), w, safe_bias(rng, w), 7, padding=(1, 1, 1, 1))
    g.nodes[0].attrs["weight_format"] = "cluster"
    return g


def test_planner_and_emitter_read_one_storage_choice(rng):
    g = _clustered_conv_that_stays_dense(rng)
    node = g.nodes[0]
    assert wf.storage_choice(g, node) == "dense" and wf.choose(g, node).format == "dense"
    # the dense kernel it falls back to needs its im2col scratch, and the planner must plan it
    assert kernel_abi.scratch_bytes(g, node) == kernel_abi.conv2d_buffer_size(1, 3, 3, 8) > 0
    layer = model_data(finish(g), "t").layers[0]
    assert layer.call.startswith("qg_conv2d_s8(") and not layer.call.endswith("NULL);")


def test_emitter_refuses_to_give_a_kernel_null_scratch(rng, monkeypatch):
    """Defence in depth: if the planner ever plans less scratch than the emitted kernel needs, the emitter
    stops with an internal error (not a C file that writes through NULL)."""
    from codegen.passes import plan_memory

    g = _clustered_conv_that_stays_dense(rng)
    monkeypatch.setattr(plan_memory, "scratch_bytes", lambda graph, node: 0)
    g = finish(g)
    with pytest.raises(AssertionError, match=r"needs \d+ B of scratch but the memory plan gave it 0 B"):
        model_data(g, "t")


@pytest.mark.parametrize("fmt", ["bitmap", "index", "cluster"])
@pytest.mark.parametrize("op,shape", [(Op.CONV2D, (5, 3, 3, 7)), (Op.LINEAR, (9, 300))])
@pytest.mark.parametrize("sparsity,distinct", [(0.0, 256), (0.7, 5), (1.0, 1)])
def test_encoded_bytes_are_the_encodings_bytes(fmt, op, shape, sparsity, distinct, rng):
    w = rng.choice(np.arange(-128, 128)[rng.permutation(256)[:distinct]], shape).astype(np.int8)
    w[rng.random(shape) < sparsity] = 0
    assert wf.encoded_bytes(fmt, op, w) == wf.encode(fmt, op, w).nbytes


def test_cli_cluster_with_dense_fallback_verifies(tmp_path):
    """The issue's command: exit 139 (the dense conv kernel wrote im2col data through NULL) before."""
    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    """))
    r = subprocess.run([sys.executable, "-m", "codegen.cli", "compile", "m.py:make", "--input-shape", "1,1,8,8",
                        "--cluster", "6", "--verify", "--out", "out"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-exact: yes" in r.stdout
    assert "qg_conv2d_s8(" in (tmp_path / "out" / "model_model.c").read_text()


# ------------------------------------------------------------------ 2. struct fields checked against their C types


def test_every_kernel_struct_field_has_its_declared_type():
    from codegen.emit.c_structs import INT_RANGES, field_type, kernel_structs

    structs = kernel_structs()
    assert {"qg_conv2d_params_t", "qg_conv2d_sparse_params_t", "qg_conv2d_cluster_params_t",
            "qg_concat_wide_params_t"} <= set(structs)
    assert field_type("qg_conv2d_sparse_params_t", "conv.in_c") == "uint16_t"
    assert field_type("qg_conv2d_cluster_params_t", "bits") == "uint8_t"
    assert field_type("qg_conv2d_params_t", "weights") == "const int8_t *"
    assert field_type("qg_add_wide_params_t", "act_min") == "int16_t"
    for fields in structs.values():  # every field is an integer, a pointer or another declared struct
        assert all(t in INT_RANGES or t.endswith("*") or t in structs for t in fields.values()), fields


def test_a_field_the_header_does_not_declare_is_an_internal_error():
    from codegen.emit.c_structs import check_fields

    node = weighted_graph(Op.LINEAR, (4,), np.ones((2, 4), np.int8), np.zeros(2), 0).nodes[0]
    with pytest.raises(AssertionError, match="qg_conv2d_params_t has no field 'in_features'"):
        check_fields(node, "qg_conv2d_sparse_params_t", [("conv.in_features", 4)])


@pytest.mark.parametrize("fmt", ["sparse", "cluster!"])
def test_compressed_layer_too_wide_for_its_struct_is_refused(fmt, rng):
    """A sparse Linear(70000, 2) emitted `.conv.in_c = 70000` into a uint16_t (4464 in C) before."""
    from codegen.errors import UserError

    w = np.zeros((2, 70000), np.int8)
    w[:, ::10] = rng.integers(-3, 4, (2, 7000))
    g = weighted_graph(Op.LINEAR, (70000,), w, np.zeros(2, np.int64), 7)
    g.nodes[0].attrs["weight_format"] = fmt
    assert wf.storage_choice(g, g.nodes[0]) != "dense"
    with pytest.raises(UserError, match=r"conv.in_c = 70000 does not fit the kernel's uint16_t field"):
        model_data(finish(g), "t")


def test_firmware_project_builds_the_model_with_werror():
    from codegen.target import load_board, makefile_text

    line = next(x for x in makefile_text(load_board("mps2-an386"), "m").splitlines()
                if x.startswith("MODEL_WARNINGS"))
    assert "-Werror" in line.split() and "-Wconversion" in line.split()


# ------------------------------------------------------------------ 3. fine-tuning a 1-D model (one torch interpreter)


def _conv1d_task():
    import torch
    from torch import nn

    from codegen.frontend import from_module
    from codegen.passes import fold_bn, fuse_activation

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(320, 10))
    g = fuse_activation.run(fold_bn.run(from_module(model, torch.zeros(1, 1, 40))))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 1, 40)).astype(np.float32)
    y = (x[:, 0, :20].mean(1) > 0).astype(np.int64) + 2 * (x[:, 0, 20:].mean(1) > 0)
    return g, x, y


def _accuracy(g, x, y) -> float:
    from codegen.reference import run_float, to_qgen_layout

    out = run_float(g, to_qgen_layout(g, x).astype(np.float64))[g.outputs[0]]
    return float((out.argmax(1) == y).mean())


@pytest.mark.parametrize("option,floor", [({"prune": 0.5}, 0.6), ({"prune": 0.5, "importance": "gradient"}, 0.6),
                                          ({"channels": 0.5}, 0.6), ({"rank": "2"}, 0.3)])
def test_conv1d_compression_fine_tunes(option, floor):
    """--prune/--channels/--rank with --finetune-epochs crashed on every Conv1d model (permute of a 3-D
    tensor: compress.py had its own interpreter, which assumed images)."""
    from codegen import compress
    from codegen.passes import run_pipeline

    accuracy = {}
    for epochs in (0, 3):
        g, x, y = _conv1d_task()
        opts = compress.parse_cli(**option, finetune_epochs=epochs, lr=1e-2)
        g = run_pipeline(g, compress.passes(opts, train=(x, y)))
        accuracy[epochs] = _accuracy(g, x, y)
        if "prune" in option:  # pruned weights stay zero through fine-tuning
            w = g.tensors[g.nodes[-1].inputs[1]].data
            assert np.count_nonzero(w) <= w.size // 2 + 1
    assert accuracy[3] >= floor and accuracy[3] > accuracy[0] + 0.1, accuracy
