"""F.unfold / F.fold (nn.Unfold / nn.Fold) of non-overlapping patches, as MobileViTv2 (apple/ml-cvnets) unfolds a
feature map: a view and a permute, lowered through the layout tracking (issue 16: was 'aten.im2col.default, which
qgen does not support'); overlapping windows are refused naming the call."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import codegen
from codegen.errors import UserError


class PatchMixer(nn.Module):
    def __init__(self, c: int = 4, k: int = 2, stride: int = 2):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.mix = nn.Linear(c * k * k, c * k * k)
        self.out = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        h, w = y.shape[-2:]
        p = F.unfold(y, kernel_size=self.k, stride=self.stride)  # (1, C*k*k, L)
        p = p + self.mix(p.transpose(1, 2)).transpose(1, 2)
        y = F.fold(p, output_size=(h, w), kernel_size=self.k, stride=self.stride)
        return self.out(y)


def test_non_overlapping_unfold_and_fold_are_views():
    torch.manual_seed(0)
    model = PatchMixer().eval()
    x = torch.randn(16, 3, 8, 6)
    r = codegen.compile(model, x[:1], x.numpy())
    with torch.no_grad():
        want = model(x).numpy()
    got = r.predict(x.numpy())
    sqnr = 10 * np.log10((want**2).sum() / ((got - want) ** 2).sum())
    assert sqnr > 20, f"integer model vs PyTorch SQNR {sqnr:.1f} dB"


def test_overlapping_unfold_is_refused_naming_the_call():
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(UserError, match=r"F.unfold\(kernel_size=\[3, 3\].*stride=\[1, 1\].*non-overlapping"):
        codegen.compile(PatchMixer(k=3, stride=1).eval(), x[:1], x.numpy())
