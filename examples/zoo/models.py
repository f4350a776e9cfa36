"""The architecture acceptance zoo: the networks users bring, written from the papers' layer lists.

Each factory returns (model, example_input) with random weights and randomised BatchNorm statistics (no
downloads). They are written the way public model zoos write them — in-place activations, `F.*` calls,
`torch.cat`, `chunk`, `view`/`transpose` channel shuffles, ceil-mode pooling, squeeze-and-excitation gates,
Chomp1d slicing — because that is what qgen has to accept without a rewrite.

| factory            | paper layer list                       | input   | board it is sized for                |
|--------------------|----------------------------------------|---------|--------------------------------------|
| mobilenet_v2       | Sandler et al. 2018, table 2, α=0.35   | 3x96x96 | STM32H743 (2 MB flash, 1 MB RAM)     |
| mobilenet_v3_small | Howard et al. 2019, table 2, α=0.5     | 3x96x96 | STM32F746 (1 MB flash, 320 KB RAM)   |
| shufflenet_v2      | Ma et al. 2018, table 5, 0.5x          | 3x96x96 | STM32F746                            |
| squeezenet         | Iandola et al. 2016, v1.1, width 0.5   | 3x96x96 | STM32F746                            |
| mnasnet_se         | EfficientNet-B0 MBConv+SE+SiLU, α=0.25 | 3x96x96 | STM32F746                            |
| tcn                | Bai et al. 2018, 4 levels, k=3         | 10x49   | nRF52840 (1 MB flash, 256 KB RAM)    |
| unet               | Ronneberger et al. 2015, 3 levels, 8ch | 1x64x64 | STM32F746 (its arena is > 100 KB)    |
| vit_block          | Dosovitskiy et al. 2021, 1 block       | 1x32x32 | nRF52840                             |

All end in two classes (or two segmentation classes for the U-Net).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _div8(v: float, divisor: int = 8) -> int:
    """The channel rounding of the MobileNet/MnasNet reference code (never below 90 % of v)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# ---------------------------------------------------------------------------------------------- MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]  # t, c, n, s

    def __init__(self, alpha: float = 0.35, n_classes: int = 2, last: int = 1280):
        super().__init__()
        c = _div8(32 * alpha)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True)]
        for t, ch, n, s in self.SETTINGS:
            out = _div8(ch * alpha)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        layers += [nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, n_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------- MobileNetV3-Small


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int, gate: type[nn.Module] = nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.act = act(inplace=True)
        self.gate = gate(inplace=True) if gate is not nn.Sigmoid else gate()

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * s


class Bneck(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act(inplace=True)]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp),
                   act(inplace=True)]
        if se:
            layers.append(SqueezeExcitation(exp, _div8(exp / 4)))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        if self.use_res:
            y += x
        return y


class MobileNetV3Small(nn.Module):
    RE, HS = nn.ReLU, nn.Hardswish
    SETTINGS = [(3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
                (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
                (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
                (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1)]  # k, exp, out, SE, act, stride

    def __init__(self, alpha: float = 0.5, n_classes: int = 2, last: int = 1024):
        super().__init__()
        c = _div8(16 * alpha)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.Hardswish(inplace=True)]
        for k, exp, out, se, act, s in self.SETTINGS:
            exp, out = _div8(exp * alpha), _div8(out * alpha)
            layers.append(Bneck(c, k, exp, out, se, act, s))
            c = out
        head = 6 * c
        layers += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.Hardswish(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(head, last), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2, inplace=True), nn.Linear(last, n_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -------------------------------------------------------------------------------------------- ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        b2_in = cin if stride > 1 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(b2_in, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats=(4, 8, 4), channels=(24, 48, 96, 192, 1024), n_classes: int = 2):
        super().__init__()
        c = channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for n, out in zip(repeats, channels[1:4]):
            units = [ShuffleUnit(c, out, 2)] + [ShuffleUnit(out, out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            c = out
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(nn.Conv2d(c, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(channels[-1], n_classes)

    def forward(self, x):
        x = self.conv5(self.stages(self.maxpool(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# ---------------------------------------------------------------------------------------------- SqueezeNet


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 (fire modules, ceil-mode max pooling), every channel count times `width`."""

    def __init__(self, width: float = 0.5, n_classes: int = 2):
        super().__init__()
        w = lambda c: max(8, int(c * width))  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, w(64), 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(w(64), w(16), w(64), w(64)), Fire(w(128), w(16), w(64), w(64)),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(w(128), w(32), w(128), w(128)), Fire(w(256), w(32), w(128), w(128)),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(w(256), w(48), w(192), w(192)), Fire(w(384), w(48), w(192), w(192)),
            Fire(w(384), w(64), w(256), w(256)), Fire(w(512), w(64), w(256), w(256)))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(w(512), n_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


# ------------------------------------------------------------------------- MnasNet / EfficientNet-style MBConv


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.SiLU(inplace=True),
                   SqueezeExcitation(hidden, max(1, cin // 4), gate=nn.Sigmoid, act=nn.SiLU),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MnasNetSE(nn.Module):
    """EfficientNet-B0's MBConv stages (SE + SiLU), width `alpha`, one block per stage beyond the first two."""

    STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 1, 2, 3), (6, 112, 1, 1, 5),
              (6, 192, 1, 2, 5), (6, 320, 1, 1, 3)]  # expand, channels, repeats, stride, kernel

    def __init__(self, alpha: float = 0.25, n_classes: int = 2):
        super().__init__()
        c = _div8(32 * alpha)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.SiLU(inplace=True)]
        for t, ch, n, s, k in self.STAGES:
            out = _div8(ch * alpha)
            for i in range(n):
                layers.append(MBConv(c, out, k, s if i == 0 else 1, t))
                c = out
        head = _div8(1280 * alpha)
        layers += [nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(head, n_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(F.dropout(x.flatten(1), 0.2, self.training))


# ----------------------------------------------------------------------------------------------------- TCN


class Chomp1d(nn.Module):
    def __init__(self, chomp: int):
        super().__init__()
        self.chomp = chomp

    def forward(self, x):
        return x[:, :, :-self.chomp].contiguous()


class TemporalBlock(nn.Module):
    """Bai et al.'s residual block: two dilated causal convolutions (pad both sides, chomp the right)."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int):
        super().__init__()
        pad = (k - 1) * dilation
        self.net = nn.Sequential(
            nn.Conv1d(cin, cout, k, padding=pad, dilation=dilation), Chomp1d(pad), nn.ReLU(), nn.Dropout(0.1),
            nn.Conv1d(cout, cout, k, padding=pad, dilation=dilation), Chomp1d(pad), nn.ReLU(), nn.Dropout(0.1))
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(self.net(x) + res)


class TCN(nn.Module):
    def __init__(self, n_in: int = 10, channels=(24, 24, 24, 24), k: int = 3, n_classes: int = 2):
        super().__init__()
        blocks, c = [], n_in
        for i, out in enumerate(channels):
            blocks.append(TemporalBlock(c, out, k, 2 ** i))
            c = out
        self.network = nn.Sequential(*blocks)
        self.linear = nn.Linear(c, n_classes)

    def forward(self, x):
        y = self.network(x)
        return self.linear(y[:, :, -1])  # the last time step sees the whole receptive field


# ---------------------------------------------------------------------------------------------------- U-Net


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Encoder–decoder with skip concatenations; `up="transpose"` (ConvTranspose2d, the paper's up-conv) or
    `up="bilinear"` (Upsample + 1x1 conv, as many implementations do)."""

    def __init__(self, n_in: int = 1, base: int = 8, n_classes: int = 2, up: str = "transpose"):
        super().__init__()
        self.inc = _double_conv(n_in, base)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), _double_conv(base, 2 * base))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), _double_conv(2 * base, 4 * base))
        if up == "transpose":
            self.up1 = nn.ConvTranspose2d(4 * base, 2 * base, 2, stride=2)
            self.up2 = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        else:
            self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(4 * base, 2 * base, 1))
            self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(2 * base, base, 1))
        self.conv1 = _double_conv(4 * base, 2 * base)
        self.conv2 = _double_conv(2 * base, base)
        self.outc = nn.Conv2d(base, n_classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        y = self.conv1(torch.cat([x2, self.up1(x3)], dim=1))
        y = self.conv2(torch.cat([x1, self.up2(y)], dim=1))
        return self.outc(y)


# ------------------------------------------------------------------------------------- attention (ViT block)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, n, self.heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Patch embedding (conv 4x4 stride 4), one pre-norm transformer block, mean over tokens, head."""

    def __init__(self, n_in: int = 1, dim: int = 32, heads: int = 2, patch: int = 4, n_classes: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(n_in, dim, patch, patch)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x.mean(dim=1)))


# ---------------------------------------------------------------------------------------------- factories


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights plus plausible BatchNorm statistics (a freshly built net has mean 0, var 1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
        if isinstance(m, nn.LayerNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _make(cls, seed: int, shape, **kwargs):
    def factory():
        torch.manual_seed(seed)
        return _randomised(cls(**kwargs), seed), torch.zeros(*shape)
    factory.__name__ = cls.__name__.lower()
    return factory


mobilenet_v2 = _make(MobileNetV2, 10, (1, 3, 96, 96))
mobilenet_v3_small = _make(MobileNetV3Small, 11, (1, 3, 96, 96))
shufflenet_v2 = _make(ShuffleNetV2, 12, (1, 3, 96, 96))
squeezenet = _make(SqueezeNet, 13, (1, 3, 96, 96))
mnasnet_se = _make(MnasNetSE, 14, (1, 3, 96, 96))
tcn = _make(TCN, 15, (1, 10, 49))
unet = _make(UNet, 16, (1, 1, 64, 64))
unet_bilinear = _make(UNet, 17, (1, 1, 64, 64), up="bilinear")
vit_block = _make(ViTBlock, 18, (1, 1, 32, 32))

MODELS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small, "shufflenet_v2": shufflenet_v2,
          "squeezenet": squeezenet, "mnasnet_se": mnasnet_se, "tcn": tcn, "unet": unet,
          "unet_bilinear": unet_bilinear, "vit_block": vit_block}
