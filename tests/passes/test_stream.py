"""passes/stream.py: the step graph of a whole-window model, its refusals, and the streaming spec
(codegen/stream.py StreamRunner) equal to the whole-window spec on every window ending at t."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stream_models import KWS, TCN, SeqOut, ValidPool
from torch import nn

import codegen
from codegen.errors import UserError
from codegen.ir import Op
from codegen.passes import stream
from codegen.stream import StreamRunner, window_reference


def _quantised(model, shape, seed=0):
    torch.manual_seed(seed)
    model = model.eval()
    calib = torch.randn(32, *shape[1:])
    return codegen.compile(model, torch.randn(*shape), calib).graph


@pytest.fixture(scope="module")
def tcn():
    torch.manual_seed(0)
    return _quantised(TCN(), (1, 10, 32))  # window 32 >= receptive field 29


def test_step_graph_reads_one_frame_and_keeps_histories(tcn):
    step = stream.run(tcn)
    assert step.tensors[step.inputs[0]].shape == (1, 1, 10)
    histories = [n for n in step.nodes if n.op is Op.HISTORY]
    assert [n.attrs["frames"] for n in histories] == [3, 3, 5, 5, 9, 9]  # (k - 1) * d + 1, d = 1, 2, 4
    assert not [n for n in step.nodes if n.op is Op.CONV2D]  # one output frame: fully connected over the taps
    assert [step.tensors[n.outputs[0]].shape for n in histories][-1] == (1, 3, 16)  # the 3 taps of 9 frames
    assert stream.receptive_field(tcn) == 1 + 2 * (2 + 4 + 8)
    assert stream.state_size(step) == 16 * (3 + 3 + 5 + 5 + 9 + 9)


def _check_stream(whole, frames, window):
    runner = StreamRunner(stream.run(whole))
    outs = runner.run(frames)
    first = 0 if window is None else window - 1
    for t in range(first, frames.shape[2]):
        np.testing.assert_array_equal(outs[:, t], window_reference(whole, frames, t, window), err_msg=f"step {t}")
    return outs


def test_stream_equals_the_whole_window_model_on_every_window(tcn, rng):
    frames = rng.integers(-128, 128, (3, 1, 48, 10))
    frames[0, :, :5] = 127  # saturation runs into the histories
    _check_stream(tcn, frames, 32)


def test_causal_stream_equals_the_window_from_frame_zero(tcn, rng):
    """Every padding is causal: before the window is full, the stream is the model on frames 0..t."""
    frames = rng.integers(-128, 128, (2, 1, 30, 10))
    _check_stream(tcn, frames, None)


def test_sequence_output_streams_its_last_frame(rng):
    whole = _quantised(SeqOut(), (1, 6, 16))
    step = stream.run(whole)
    assert step.tensors[step.outputs[0]].shape == (1, 1, 8)
    _check_stream(whole, rng.integers(-128, 128, (2, 1, 30, 6)), 16)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_recurrent_stream_equals_the_whole_model_on_frames_from_zero(cell, rng):
    """A recurrent layer sees every frame since the reset: step t == the whole model run on frames 0..t."""
    whole = _quantised(KWS(f=6, c=8, h=12, classes=4, cell=cell), (1, 6, 20))
    step = stream.run(whole)
    rnn = next(n for n in step.nodes if n.attrs.get("stream"))
    assert step.tensors[rnn.inputs[0]].shape == (1, 1, 8)
    assert stream.receptive_field(whole) is None
    assert stream.state_size(step) == 20 + 8 * 5 + 2 * 12 * (2 if cell == "lstm" else 1)  # histories, h (c)
    _check_stream(whole, rng.integers(-128, 128, (2, 1, 26, 6)), None)


def test_two_layer_lstm_on_a_batch_first_input_streams(rng):
    """No conv front end: the (N, T, F) input of a batch-first LSTM is the sequence (io_layout nlc), 2 layers."""
    class _Stacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(5, 8, batch_first=True, num_layers=2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    whole = codegen.compile(_Stacked().eval(), torch.randn(1, 12, 5), torch.randn(32, 12, 5)).graph
    assert whole.io_layout[whole.inputs[0]] == "nlc"
    assert sum(bool(n.attrs.get("stream")) for n in stream.run(whole).nodes) == 2
    _check_stream(whole, rng.integers(-128, 128, (2, 1, 16, 5)), None)


def test_backward_recurrent_layer_is_refused():
    class _Bi(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 1)
            self.rnn = nn.GRU(4, 4, batch_first=True, bidirectional=True)

        def forward(self, x):
            return self.rnn(self.conv(x).transpose(1, 2))[0][:, -1]

    whole = _quantised(_Bi(), (1, 4, 8))
    with pytest.raises(UserError, match="backwards"):
        stream.run(whole)


class _ChompTCN(nn.Module):
    """The common TCN spelling: Conv1d(padding=(k-1)*d) on both sides, then Chomp1d (x[:, :, :-p])."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=2, dilation=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=4, dilation=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x)[:, :, :-2])
        y = torch.relu(self.conv2(y)[:, :, :-4])
        return self.fc(y[:, :, -1])


def test_chomped_conv_streams_like_a_causal_one(rng):
    whole = _quantised(_ChompTCN(), (1, 4, 12))
    assert stream.receptive_field(whole) == 7
    _check_stream(whole, rng.integers(-128, 128, (2, 1, 24, 4)), 12)
    _check_stream(whole, rng.integers(-128, 128, (1, 1, 10, 4)), None)  # causal from frame 0 too


def test_pooling_over_the_window_of_valid_convs_streams(rng):
    """A window of 12 frames: two valid convs (6 frames) leave 6 frames, each pooling reads all 12."""
    whole = _quantised(ValidPool(), (1, 4, 12))
    assert stream.receptive_field(whole) == 12
    step = stream.run(whole)
    assert [n.attrs["frames"] for n in step.nodes if n.op is Op.HISTORY] == [3, 5, 6, 6]
    _check_stream(whole, rng.integers(-128, 128, (2, 1, 30, 4)), 12)


def test_with_time_length_follows_the_last_step(tcn):
    g = stream.with_time_length(tcn, 7)
    assert g.tensors[g.inputs[0]].shape == (1, 7, 10)
    assert [n.attrs["start"] for n in g.nodes if n.op is Op.SLICE] == [6]


class _Same(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)[:, :, -1]


class _PaddedMean(nn.Module):
    """A mean over the window after a causally padded conv: the window's first outputs read its zero padding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)

    def forward(self, x):
        return self.conv(F.pad(x, (2, 0))).mean(2)


class _Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (2, 0)))[:, :, -1]


class _Decimate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return nn.functional.max_pool1d(self.conv(x), 2)[:, :, -1]


class _Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), scale_factor=2)[:, :, -1]


class _Flatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(x), 1))


@pytest.mark.parametrize("model, words", [
    (_Same(), ["conv2d 'conv'", "right", "F.pad(x, (2, 0))"]),
    (_PaddedMean(), ["avgpool2d 'mean'", "zero padding", "x[:, :, -1]"]),
    (_Strided(), ["conv2d 'conv'", "stride 2"]),
    (_Flatten(), ["reshape", "time axis", "x[:, :, -1]"]),
    (_Decimate(), ["maxpool2d", "every 2 frames", "dilation"]),
    (_Upsample(), ["resize", "8 -> 16 frames"]),
], ids=["same_padding", "mean_after_padding", "stride", "flatten", "decimating_pool", "upsample"])
def test_what_does_not_stream_is_refused_naming_the_layer(model, words):
    whole = _quantised(model, (1, 4, 8))
    with pytest.raises(UserError) as err:
        stream.run(whole)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_an_image_input_is_refused():
    whole = _quantised(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), (1, 1, 5, 5))
    with pytest.raises(UserError, match="sequence input"):
        stream.run(whole)
