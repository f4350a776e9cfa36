"""The architecture acceptance zoo: the networks users bring, written from the papers' layer lists.

Each factory returns (model, example_input) with random weights and randomised BatchNorm statistics (no
downloads). They are written the way public model zoos write them — in-place activations, `F.*` calls,
`torch.cat`, `chunk`, `view`/`transpose` channel shuffles, ceil-mode pooling, squeeze-and-excitation gates,
Chomp1d slicing, ConvNeXt's written-out channels-first LayerNorm and layer scale, MobileViT's unfolding into
patches by reshape/transpose — because that is what qgen has to accept without a rewrite.

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
| convnext_atto      | Liu et al. 2022, atto, width 0.3       | 3x64x64 | STM32F411 (512 KB flash, 128 KB RAM) |
| mobilevit_xxs      | Mehta & Rastegari 2022, XXS, L=1       | 3x96x96 | STM32F746                            |

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


# ------------------------------------------------------------------------------------------------ ConvNeXt


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth as timm writes it: identity in eval(), a per-sample Bernoulli mask in training."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class ConvNeXtLayerNorm(nn.Module):
    """The official ConvNeXt LayerNorm: F.layer_norm for channels-last, written out over dim 1 for channels-first."""

    def __init__(self, c: int, eps: float = 1e-6, data_format: str = "channels_last"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps, self.data_format, self.normalized_shape = eps, data_format, (c,)

    def forward(self, x):
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """dw 7x7 -> permute to channels-last -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale -> permute
    back -> DropPath residual (Liu et al. 2022, figure 4)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = ConvNeXtLayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x):
        inp = x
        x = self.dwconv(x).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return inp + self.drop_path(x)


class ConvNeXt(nn.Module):
    """ConvNeXt-atto's stage depths (2, 2, 6, 2) (timm convnext_atto, dims 40-80-160-320) at width 0.3: patchify
    stem (conv 4x4 stride 4 + LayerNorm), channels-first LayerNorm + conv 2x2 stride 2 between stages, mean
    pool, LayerNorm, head."""

    def __init__(self, depths=(2, 2, 6, 2), dims=(12, 24, 48, 96), drop_path_rate: float = 0.1, n_classes: int = 2):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ConvNeXtLayerNorm(dims[0], data_format="channels_first"))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(ConvNeXtLayerNorm(dims[i], data_format="channels_first"),
                                                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.stages, cur = nn.ModuleList(), 0
        for depth, dim in zip(depths, dims):
            self.stages.append(nn.Sequential(*[ConvNeXtBlock(dim, rates[cur + j]) for j in range(depth)]))
            cur += depth
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean([-2, -1])))


# ----------------------------------------------------------------------------------------------- MobileViT


class ConvLayer(nn.Sequential):
    """ml-cvnets' ConvLayer: conv (+ BatchNorm) (+ SiLU)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 norm: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class MV2Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 2):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(ConvLayer(cin, hidden, 1), ConvLayer(hidden, hidden, 3, stride, groups=hidden),
                                   ConvLayer(hidden, cout, 1, act=False))
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MultiHeadAttention(nn.Module):
    """ml-cvnets' MultiHeadAttention: one qkv projection reshaped and transposed into heads, scaled query."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.heads, self.scaling = heads, (dim // heads) ** -0.5
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv_proj(x).reshape(b, n, 3, self.heads, -1).transpose(1, 3).contiguous()
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        attn = self.softmax(torch.matmul(query * self.scaling, key.transpose(-1, -2)))
        out = torch.matmul(attn, value).transpose(1, 2).reshape(b, n, -1)
        return self.out_proj(out)


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int):
        super().__init__()
        self.pre_norm_mha = nn.Sequential(nn.LayerNorm(dim), MultiHeadAttention(dim, heads), nn.Dropout(0.1))
        self.pre_norm_ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ffn_dim), nn.SiLU(), nn.Dropout(0.0),
                                          nn.Linear(ffn_dim, dim), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.pre_norm_mha(x)
        return x + self.pre_norm_ffn(x)


class MobileViTBlock(nn.Module):
    """Local 3x3 + 1x1, unfold into 2x2 patches by reshape/transpose ((B*P, N, d): pixel p of every patch is one
    sequence), L pre-norm transformer layers, fold back, 1x1 projection, fusion 3x3 over cat(input, result)
    (Mehta & Rastegari 2022, figure 1b; ml-cvnets' unfolding/folding)."""

    def __init__(self, c: int, dim: int, ffn_dim: int, n_layers: int, head_dim: int = 16, patch: int = 2):
        super().__init__()
        self.local_rep = nn.Sequential(ConvLayer(c, c, 3), ConvLayer(c, dim, 1, act=False, norm=False))
        self.global_rep = nn.Sequential(*[TransformerEncoder(dim, ffn_dim, dim // head_dim) for _ in range(n_layers)],
                                        nn.LayerNorm(dim))
        self.conv_proj = ConvLayer(dim, c, 1)
        self.fusion = ConvLayer(2 * c, c, 3)
        self.patch = patch

    def unfolding(self, fm):
        p = self.patch
        b, c, h, w = fm.shape
        new_h, new_w = math.ceil(h / p) * p, math.ceil(w / p) * p
        if (new_h, new_w) != (h, w):  # ml-cvnets resizes a map that the patches do not tile (3x3 at 96x96)
            fm = F.interpolate(fm, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // p, new_w // p
        fm = fm.reshape(b * c * nh, p, nw, p).transpose(1, 2)  # (B*C*nh, nw, p, p)
        fm = fm.reshape(b, c, nh * nw, p * p).transpose(1, 3)  # (B, P, N, C)
        return fm.reshape(b * p * p, nh * nw, -1), (b, nh, nw, (h, w))

    def folding(self, patches, info):
        p = self.patch
        b, nh, nw, size = info
        patches = patches.contiguous().view(b, p * p, nh * nw, -1).transpose(1, 3)  # (B, C, N, P)
        c = patches.shape[1]
        fm = patches.reshape(b * c * nh, nw, p, p).transpose(1, 2)
        fm = fm.reshape(b, c, nh * p, nw * p)
        if fm.shape[-2:] != size:
            fm = F.interpolate(fm, size=size, mode="bilinear", align_corners=False)
        return fm

    def forward(self, x):
        patches, info = self.unfolding(self.local_rep(x))
        fm = self.conv_proj(self.folding(self.global_rep(patches), info))
        return self.fusion(torch.cat((x, fm), dim=1))


class MobileViT(nn.Module):
    """MobileViT-XXS's layer list (Mehta & Rastegari 2022, table 4: channels 16-16-24-48-64-80-320, MobileViT
    blocks d = 64 / 80 / 96 with L = 2 / 4 / 3, FFN 2d, MV2 expansion 2) with L = 1 per block, d = 48 / 64 / 80
    (heads of 16) and a 240-channel head: 0.54 M parameters instead of 1.3 M. At 96x96 the last block's 3x3 map
    is resized to 4x4 and back, as ml-cvnets does for maps the 2x2 patches do not tile."""

    def __init__(self, n_classes: int = 2, layers=(1, 1, 1)):
        super().__init__()
        self.conv_1 = ConvLayer(3, 16, 3, 2)
        self.layer_1 = MV2Block(16, 16, 1)
        self.layer_2 = nn.Sequential(MV2Block(16, 24, 2), MV2Block(24, 24, 1), MV2Block(24, 24, 1))
        self.layer_3 = nn.Sequential(MV2Block(24, 48, 2), MobileViTBlock(48, 48, 96, layers[0]))
        self.layer_4 = nn.Sequential(MV2Block(48, 64, 2), MobileViTBlock(64, 64, 128, layers[1]))
        self.layer_5 = nn.Sequential(MV2Block(64, 80, 2), MobileViTBlock(80, 80, 160, layers[2]))
        self.conv_1x1_exp = ConvLayer(80, 240, 1)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
                                        nn.Linear(240, n_classes))

    def forward(self, x):
        x = self.layer_5(self.layer_4(self.layer_3(self.layer_2(self.layer_1(self.conv_1(x))))))
        return self.classifier(self.conv_1x1_exp(x))


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
        if isinstance(m, (nn.LayerNorm, ConvNeXtLayerNorm)):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, ConvNeXtBlock):  # a trained layer scale, not the 1e-6 it starts from
            m.gamma.data.copy_(torch.rand(m.gamma.shape, generator=g) * 0.8 + 0.2)
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
convnext_atto = _make(ConvNeXt, 19, (1, 3, 64, 64))
mobilevit_xxs = _make(MobileViT, 20, (1, 3, 96, 96))

MODELS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small, "shufflenet_v2": shufflenet_v2,
          "squeezenet": squeezenet, "mnasnet_se": mnasnet_se, "tcn": tcn, "unet": unet,
          "unet_bilinear": unet_bilinear, "vit_block": vit_block, "convnext_atto": convnext_atto,
          "mobilevit_xxs": mobilevit_xxs}
