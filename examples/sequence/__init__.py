"""Sequence classifiers for 1-D signals (mnist1d: 40 steps, 10 classes), written the way users write them.

Each factory returns (model, example_input) with random weights, which is what `qgen compile` accepts:

    qgen compile examples/sequence/models.py:gru --out build/gru

| factory | layers                                                        | input | params |
|---------|---------------------------------------------------------------|-------|--------|
| gru     | nn.GRU(1, 64, batch_first=True), last hidden state, Linear     | 1x40  | 13.5 k |
| lstm    | nn.LSTM(1, 48, batch_first=True), out[:, -1], Linear           | 1x40  | 10.3 k |
| tcn     | causal dilated Conv1d (k=3, dilations 1..16, residual), Linear | 1x40  | 16.0 k |

bench/sequence.py trains both on mnist1d and reports float, int8, int16-state and QAT accuracy (bench/SEQUENCE.md).
"""
