"""The Python API end to end, and the mismatch diagnostics of verification."""
from __future__ import annotations

import numpy as np
import torch
from models import MLP, GlobalPoolNet, make_residual

from codegen import compile as qcompile


def test_compile_returns_ir_reference_files_report():
    model, x = make_residual()
    calib = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    r = qcompile(model, x, calib, prefix="res")
    assert "res_model.c" in r.files and "res_weights.c" in r.files and "kernels/qg_kernels.h" in r.files
    assert r.report["macs"] == sum(layer["macs"] for layer in r.report["layers"]) > 0
    assert len(r.report["layers"]) == len(r.graph.nodes)
    with torch.no_grad():
        expect = model(torch.from_numpy(calib)).numpy()
    got = r.predict(calib)
    assert np.mean(np.argmax(got, 1) == np.argmax(expect, 1)) >= 0.9
    assert r.verify(calib).exact


def test_other_models_bit_exact():
    torch.manual_seed(0)
    for model, shape in ((GlobalPoolNet().eval(), (2, 9, 9)), (MLP().eval(), (20,))):
        calib = np.random.default_rng(1).standard_normal((24, *shape)).astype(np.float32)
        r = qcompile(model, torch.from_numpy(calib[:1]), calib, prefix="m")
        check = r.verify(np.concatenate([calib, calib * 10]))  # * 10: saturating inputs
        assert check.exact, str(check)


def test_mismatch_names_first_differing_layer(tmp_path):
    model, x = make_residual()
    calib = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    r = qcompile(model, x, calib, prefix="res", out_dir=tmp_path / "res")
    # corrupt the clamp bound of layer 1 (the depthwise conv) in the generated C
    path = tmp_path / "res" / "res_weights.c"
    text = path.read_text()
    start = text.index("const qg_conv2d_params_t res_l1_depthwise_conv2d")
    end = text.index("};", start)
    assert ".act_max = 127," in text[start:end]
    path.write_text(text[:start] + text[start:end].replace(".act_max = 127,", ".act_max = 5,") + text[end:])
    check = r.verify(calib)
    assert not check.exact
    m = check.mismatch
    assert m.layer == 1 and "depthwise_conv2d 'c2'" in m.layer_name and m.c_value != m.ref_value
    assert "first difference in layer 1" in str(check)


def test_quantize_input_matches_c_helper():
    model, x = make_residual()
    calib = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    r = qcompile(model, x, calib, prefix="res")
    host = r.host()
    for sample in calib * 3:
        np.testing.assert_array_equal(host.quantize_input(sample), r.quantize_input(sample[None]).reshape(-1))


def test_new_ops_end_to_end_bit_exact_and_accurate():
    from models import PadCatNet, SequenceNet, randomize_bn

    torch.manual_seed(6)
    for model, shape, tol in ((randomize_bn(SequenceNet()), (3, 16), 0.05), (PadCatNet().eval(), (1, 49, 10), 0.1)):
        x = np.random.default_rng(2).standard_normal((32, *shape)).astype(np.float32)
        r = qcompile(model, torch.from_numpy(x[:1]), x)
        check = r.verify(np.concatenate([x, 8 * x]))
        assert check.exact, str(check)
        with torch.no_grad():
            expect = model(torch.from_numpy(x)).numpy()
        assert np.max(np.abs(r.predict(x) - expect)) < tol * max(1.0, np.abs(expect).max())
