"""Small PyTorch models used across tests."""
from __future__ import annotations

import torch
import torch.nn as nn


class ResidualNet(nn.Module):
    """conv-bn-relu, depthwise + relu6, residual add + relu, BN without a producer, pools, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, (3, 5), padding=(1, 2), stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.r6 = nn.ReLU6()
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.r6(self.c2(y)) + y)
        y = self.avg(self.pool(self.bn2(y)))
        return self.fc(torch.flatten(y, 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def make_residual():
    torch.manual_seed(0)
    return randomize_bn(ResidualNet()), torch.randn(1, 3, 16, 16)


class GlobalPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.d = nn.Conv2d(6, 12, 3, padding=1, groups=6)  # depthwise with multiplier 2
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = torch.clamp(self.d(torch.relu(self.c(x))), 0.0, 3.0)
        y = y.mean((2, 3))
        return self.fc(y)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.cumsum(self.c(x), 1)  # line reported in the error


class SequenceNet(nn.Module):
    """Conv1d / BatchNorm1d / pool1d / cat / activation functions on a (1, C, L) input."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(3, 4, 5, padding=2)
        self.bn = nn.BatchNorm1d(4)
        self.mp = nn.MaxPool1d(2)
        self.ap = nn.AvgPool1d(2)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        a = self.ap(self.mp(torch.relu(self.bn(self.c(x)))))
        b = torch.cat([torch.tanh(a), torch.nn.functional.silu(a)], 1)
        return torch.softmax(self.fc(b.flatten(1)), 1)


class PadCatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 1, 4, 5))
        self.c = nn.Conv2d(1, 4, (10, 4), stride=2)

    def forward(self, x):
        y = self.c(self.pad(x))
        y = torch.cat([torch.sigmoid(y), nn.functional.hardswish(y), nn.functional.leaky_relu(y, 0.2),
                       nn.functional.gelu(y), nn.functional.elu(y), nn.functional.hardsigmoid(y)], 1)
        return nn.functional.max_pool2d(nn.functional.pad(y, (0, 1, 1, 0)), 2)
