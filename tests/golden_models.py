"""Model classes of tests/test_golden.py. Their source lines are recorded in the golden files (each node's
`source`), so editing this file means regenerating them: QGEN_UPDATE_GOLDEN=1 pytest tests/test_golden.py."""
from __future__ import annotations

import torch
import torch.nn as nn


class BranchNet(nn.Module):
    """pad, conv, residual add, concat, avgpool, LUT activations (sigmoid, tanh), linear, softmax."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 1, 1, 1))
        self.c1 = nn.Conv2d(2, 4, 3)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.c1(self.pad(x)))
        y = torch.relu(self.c2(y) + y)
        y = torch.cat([torch.sigmoid(y), torch.tanh(y)], 1)
        return torch.softmax(self.fc(torch.flatten(self.avg(y), 1)), 1)


class DepthwiseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = nn.functional.relu6(self.bn(self.c(x)))
        y = torch.relu(self.pw(torch.relu(self.dw(y))))
        return self.fc(y.mean((2, 3)))
