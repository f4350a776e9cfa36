"""The four MLPerf Tiny reference networks in PyTorch, written from their published layer lists.

Trained weights are not needed for size and speed: each factory returns (model, example_input) with
random weights and randomised BatchNorm statistics, which is what `qgen compile` accepts:

    qgen compile examples/mlperf_tiny/models.py:ds_cnn --out build/kws

| factory          | task                 | input        | params  | MACs   |
|------------------|----------------------|--------------|---------|--------|
| ds_cnn           | keyword spotting     | 1x49x10 MFCC | 22.6 k  | 2.66 M |
| mobilenet_v1_025 | visual wake words    | 3x96x96      | 208 k   | 7.49 M |
| resnet8          | image classification | 3x32x32      | 77.4 k  | 12.5 M |
| fc_autoencoder   | anomaly detection    | 640          | 264 k   | 0.26 M |

TensorFlow's 'same' padding is asymmetric for even sizes (extra row/column at the bottom/right);
ds_cnn reproduces it with an explicit ZeroPad2d, which qgen folds into the convolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU()]


class DSCNN(nn.Module):
    """Keyword spotting DS-CNN (MLPerf Tiny KWS): conv 10x4 s2 + 4 depthwise-separable blocks, 64 ch."""

    def __init__(self, n_classes: int = 12, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.ZeroPad2d((1, 1, 4, 5)), *_conv_bn_relu(1, width, (10, 4), 2)]
        for _ in range(4):
            layers += _conv_bn_relu(width, width, 3, 1, 1, groups=width)  # depthwise 3x3
            layers += _conv_bn_relu(width, width, 1)  # pointwise 1x1
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d((25, 5))
        self.classifier = nn.Linear(width, n_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MobileNetV1(nn.Module):
    """Visual wake words MobileNetV1 with width multiplier 0.25 on 96x96x3 (MLPerf Tiny VWW)."""

    BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512),
              (1, 512), (2, 1024), (1, 1024)]

    def __init__(self, alpha: float = 0.25, n_classes: int = 2):
        super().__init__()
        c = int(32 * alpha)
        layers: list[nn.Module] = _conv_bn_relu(3, c, 3, 2, 1)
        for stride, out in self.BLOCKS:
            out = int(out * alpha)
            layers += _conv_bn_relu(c, c, 3, stride, 1, groups=c)
            layers += _conv_bn_relu(c, out, 1)
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, n_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet8(nn.Module):
    """Image classification ResNet-8 on CIFAR-10 32x32x3 (MLPerf Tiny IC): 16-32-64 residual stacks."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, 16, 3, 1, 1))
        self.stack1 = ResidualBlock(16, 16, 1)
        self.stack2 = ResidualBlock(16, 32, 2)
        self.stack3 = ResidualBlock(32, 64, 2)
        self.pool = nn.AvgPool2d(8)
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x):
        y = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.classifier(torch.flatten(self.pool(y), 1))


class FCAutoencoder(nn.Module):
    """Anomaly detection autoencoder (MLPerf Tiny AD): 640-128x4-8-128x4-640, BN + ReLU between."""

    def __init__(self, n_in: int = 640, hidden: int = 128, bottleneck: int = 8):
        super().__init__()
        sizes = [n_in] + [hidden] * 4 + [bottleneck] + [hidden] * 4
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(hidden, n_in))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random weights plus plausible BatchNorm statistics (a freshly built net has mean 0, var 1)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def ds_cnn():
    torch.manual_seed(0)
    return _randomised(DSCNN(), 0), torch.zeros(1, 1, 49, 10)


def mobilenet_v1_025():
    torch.manual_seed(1)
    return _randomised(MobileNetV1(), 1), torch.zeros(1, 3, 96, 96)


def resnet8():
    torch.manual_seed(2)
    return _randomised(ResNet8(), 2), torch.zeros(1, 3, 32, 32)


def fc_autoencoder():
    torch.manual_seed(3)
    return _randomised(FCAutoencoder(), 3), torch.zeros(1, 640)


MODELS = {"kws_ds_cnn": ds_cnn, "vww_mobilenet_v1_025": mobilenet_v1_025, "ic_resnet8": resnet8,
          "ad_fc_autoencoder": fc_autoencoder}
