"""Sequence classifiers for mnist1d-shaped signals: (N, 1, 40) in, like a Conv1d, 10 classes out.

`gru`: a GRU reads the 40 samples one step at a time; its final hidden state (h_n) feeds a linear layer.
`lstm`: the same with an LSTM, reading its output sequence's last step (out[:, -1]).
`tcn`: a causal temporal convolutional network (Bai et al. 2018): Conv1d layers with dilations 1, 2, 4, 8, 16,
each padded on the left only ((k - 1) * dilation frames, so step t sees no later step), residual adds, and a
linear layer on the last time step (which sees all 40 steps: receptive field 63). Both are causal, so both can be
compiled for streaming (`qgen compile --stream`), one new sample at a time.

    model, example = gru()     # random weights; bench/sequence.py trains them on mnist1d
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STEPS, CLASSES = 40, 10


class GRUClassifier(nn.Module):
    def __init__(self, hidden: int = 64, n_classes: int = CLASSES):
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):  # x (N, 1, T): one feature per step
        _, h = self.gru(x.transpose(1, 2))  # (N, T, 1) batch first; h (1, N, hidden): the final state
        return self.fc(h[-1])


class LSTMClassifier(nn.Module):
    def __init__(self, hidden: int = 48, n_classes: int = CLASSES):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):  # x (N, 1, T)
        y, _ = self.lstm(x.transpose(1, 2))  # (N, T, hidden)
        return self.fc(y[:, -1])  # the output at the last step (= h_n)


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads (kernel - 1) * dilation frames on the left only: output t reads inputs <= t."""

    def forward(self, x):
        return super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))


class TCNClassifier(nn.Module):
    def __init__(self, channels: int = 32, dilations=(1, 2, 4, 8, 16), kernel: int = 3, n_classes: int = CLASSES):
        super().__init__()
        self.inp = CausalConv1d(1, channels, kernel)
        self.blocks = nn.ModuleList([CausalConv1d(channels, channels, kernel, dilation=d) for d in dilations])
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):  # x (N, 1, T)
        y = torch.relu(self.inp(x))
        for conv in self.blocks:
            y = torch.relu(y + conv(y))
        return self.fc(y[:, :, -1])  # the last step: it has seen the whole sequence


def gru():
    torch.manual_seed(0)
    return GRUClassifier().eval(), torch.zeros(1, 1, STEPS)


def lstm():
    torch.manual_seed(0)
    return LSTMClassifier().eval(), torch.zeros(1, 1, STEPS)


def tcn():
    torch.manual_seed(0)
    return TCNClassifier().eval(), torch.zeros(1, 1, STEPS)


FACTORIES = {"gru": gru, "lstm": lstm, "tcn": tcn}


def mnist1d(num_samples: int = 10000, train_split: float = 0.6, seed: int = 42):
    """(x_train, y_train, x_test, y_test), x float32 (N, 1, 40): the mnist1d package's procedural generator
    (no download; pip install mnist1d), its default transforms with more samples."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    d = make_dataset(args)
    f32 = lambda a: np.asarray(a, dtype=np.float32)[:, None, :]  # noqa: E731
    return f32(d["x"]), np.asarray(d["y"], dtype=np.int64), f32(d["x_test"]), np.asarray(d["y_test"], dtype=np.int64)
