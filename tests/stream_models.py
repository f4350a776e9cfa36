"""Small models over a time axis for the streaming tests and bench (codegen/passes/stream.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalBlock(nn.Module):
    """Two causal dilated Conv1d (F.pad on the left) and a residual add: the TCN block."""

    def __init__(self, c: int, k: int, d: int, depthwise: bool = False):
        super().__init__()
        self.pad = (k - 1) * d
        self.conv1 = nn.Conv1d(c, c, k, dilation=d, groups=c if depthwise else 1)
        self.conv2 = nn.Conv1d(c, c, 1 if depthwise else k, dilation=d)

    def forward(self, x):
        y = torch.relu(self.conv1(F.pad(x, (self.pad, 0))))
        y = self.conv2(F.pad(y, (self.pad, 0)) if self.conv2.kernel_size[0] > 1 else y)
        return torch.relu(x + y)


class TCN(nn.Module):
    """Causal dilated Conv1d classifier: input conv, residual blocks, the last time step, a linear head."""

    def __init__(self, cin: int = 10, c: int = 16, k: int = 3, classes: int = 5, dilations=(1, 2, 4),
                 depthwise=(False, False, False)):
        super().__init__()
        self.inp = nn.Conv1d(cin, c, 1)
        self.blocks = nn.Sequential(*[CausalBlock(c, k, d, dw) for d, dw in zip(dilations, depthwise)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.blocks(torch.relu(self.inp(x)))[:, :, -1])


class SeqOut(nn.Module):
    """A sequence in, a sequence out (no last-step slice): causal depthwise + pointwise, sigmoid gate."""

    def __init__(self, cin: int = 6, c: int = 8):
        super().__init__()
        self.dw = nn.Conv1d(cin, cin, 5, dilation=2, groups=cin, padding=0)
        self.pw = nn.Conv1d(cin, c, 1)

    def forward(self, x):
        y = self.dw(F.pad(x, (8, 0)))
        return torch.sigmoid(self.pw(torch.relu(y)))


class KWS(nn.Module):
    """Keyword-spotting shaped: frames of `f` features, a causal Conv1d front end, (a causal depthwise dilated
    block), a GRU or LSTM (batch first) whose last step feeds a linear classifier."""

    def __init__(self, f: int = 10, c: int = 32, h: int = 32, classes: int = 12, cell: str = "gru",
                 block: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(f, c, 3)
        self.block = CausalBlock(c, 3, 2, depthwise=True) if block else nn.Identity()
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell](c, h, batch_first=True)
        self.fc = nn.Linear(h, classes)

    def forward(self, x):
        y = self.block(torch.relu(self.conv(F.pad(x, (2, 0)))))
        out, _ = self.rnn(y.transpose(1, 2))
        return self.fc(out[:, -1])


class ValidPool(nn.Module):
    """Unpadded (valid) convolutions, then the mean and the max over the whole window (two outputs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 6, 3)
        self.conv2 = nn.Conv1d(6, 6, 3, dilation=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(y.mean(2)), F.adaptive_max_pool1d(y, 1).flatten(1)
