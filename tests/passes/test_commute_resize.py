"""U-Net's decoder arena (issue 16): a 1x1 conv after an upsampling runs before it (passes/commute_resize.py),
and a concat's first input (the skip connection) lives inside the upper part of the concat output
(kernels.concat_overlap). Float IR == torch, C == integer reference on the host (ASan/UBSan) and on Cortex-M0+ /
M4 under QEMU, and the arena is smaller than without either."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import codegen
from codegen import kernels
from codegen.frontend.torch_export import from_module
from codegen.hostcheck import SANITIZE_FLAGS, build_native, run_native
from codegen.ir import Op
from codegen.passes import commute_resize, fold_bn
from codegen.reference import run_float, to_qgen_layout, to_torch_layout


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class TinyUNet(nn.Module):
    """Two levels, bilinear (or nearest) upsampling then a 1x1 conv halving the channels, skip concatenations."""

    def __init__(self, mode: str = "bilinear", k: int = 1, widen: bool = False):
        super().__init__()
        self.inc, self.down = _block(1, 4), nn.Sequential(nn.MaxPool2d(2), _block(4, 8))
        up = dict(scale_factor=2, mode=mode) | ({"align_corners": False} if mode == "bilinear" else {})
        self.up = nn.Sequential(nn.Upsample(**up), nn.Conv2d(8, 16 if widen else 4, k, padding=k // 2))
        self.dec, self.out = _block(20 if widen else 8, 4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x1 = self.inc(x)
        return self.out(self.dec(torch.cat([x1, self.up(self.down(x1))], 1)))


SHAPE = (1, 1, 16, 16)


def _order(g) -> list[str]:
    """The upsampling and the decoder's conv next to it, in graph order."""
    r = next(n for n in g.nodes if n.op is Op.RESIZE)
    if g.consumers(r.outputs[0])[0].op is Op.CONV2D:
        return ["resize", "conv2d"]
    return ["conv2d", "resize"] if g.producer(r.inputs[0]).op is Op.CONV2D else ["?"]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_pointwise_conv_moves_before_the_upsampling_and_the_float_ir_equals_torch(mode):
    torch.manual_seed(0)
    model = TinyUNet(mode).eval()
    g = from_module(model, torch.zeros(SHAPE))
    assert _order(g) == ["resize", "conv2d"]
    g = commute_resize.run(fold_bn.run(g))
    assert _order(g) == ["conv2d", "resize"]
    conv = next(n for n in g.nodes if n.op is Op.CONV2D and g.tensors[n.inputs[1]].shape[1] == 1 and
                g.tensors[n.outputs[0]].shape[-1] == 4)
    assert g.tensors[conv.outputs[0]].shape == (8, 8, 4)  # at the low resolution
    x = np.random.default_rng(0).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = to_torch_layout(run_float(g, to_qgen_layout(g, x))[g.outputs[0]], g.io_layout.get(g.outputs[0]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kwargs", [{"k": 3}, {"widen": True}])
def test_other_convolutions_stay_after_the_upsampling(kwargs):
    g = commute_resize.run(fold_bn.run(from_module(TinyUNet(**kwargs).eval(), torch.zeros(SHAPE))))
    assert _order(g) == ["resize", "conv2d"]


def _compile(out_dir=None, monkeypatch=None):
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    if monkeypatch is not None:  # neither rewrite: the arena before
        monkeypatch.setattr(commute_resize, "run", lambda g: g)
        monkeypatch.setattr(kernels, "concat_overlap", lambda g, n: None)
    return codegen.compile(TinyUNet().eval(), torch.zeros(SHAPE), calib, out_dir=out_dir), calib


def test_arena_shrinks():
    after = _compile()[0].report["arena_bytes"]
    with pytest.MonkeyPatch.context() as mp:
        before = _compile(monkeypatch=mp)[0].report["arena_bytes"]
    assert after <= 0.8 * before, (after, before)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("unet") / "m"
    r, calib = _compile(out)
    g = r.graph
    cat = [n for n in g.nodes if n.op is Op.CONCAT and g.tensors[n.outputs[0]].shape[:2] == (16, 16)][-1]
    first = g.producer(cat.inputs[0])  # an early copy of the skip (passes/concat_in_place), or the skip itself
    skip = g.memory[first.inputs[0] if first.attrs.get("early_copy") is not None else cat.inputs[0]]
    at = g.memory[cat.outputs[0]][1]
    assert skip[0] == "arena" and at < skip[1] < at + g.tensors[cat.outputs[0]].nbytes  # the skip lies inside
    return r, calib, out


def test_host_c_equals_reference_under_sanitizers(compiled, tmp_path):
    r, calib, out = compiled
    check = r.verify(calib[:4])
    assert check.exact, str(check)
    exe = build_native(out, r.prefix, tmp_path / "asan", SANITIZE_FLAGS)
    x = r.quantize_input(calib[:4])
    assert np.array_equal(run_native(exe, x.reshape(len(x), -1), check.outputs.shape[1]), check.outputs)


@pytest.mark.qemu
@pytest.mark.parametrize("board", ["mps2-an386", "rp2040"])  # Cortex-M4 (DSP), M0+ (plain C)
def test_bit_exact_on_cortex_m(compiled, board):
    from codegen import deploy
    from codegen.target import missing_tools

    if missing_tools():
        pytest.skip(f"missing tools: {missing_tools()}")
    r, calib, out = compiled
    run = deploy.run(out, board, r.quantize_input(calib[:3]))
    assert run.exact


def test_pure_micropython_module_equals_reference(compiled, tmp_path):
    """The pure MicroPython module plans the same overlap; its _concat goes pixel by pixel (needs less)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_micropython import check_graph

    r, calib, _ = compiled
    check_graph(r.graph, r.quantize_input(calib[:3]), tmp_path, mpy=False)
