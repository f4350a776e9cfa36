"""Refusals name the user's layer as the user wrote it: `nn.GRU 'rnn' (GRU(10, 16, batch_first=True)) at
model.py:12`, never a tensor torch.export made up (a GRU's implicit initial state is `aten.zeros`), and with
the constructor values the user typed (issue 16, item 3)."""
from __future__ import annotations

import inspect
import re

import pytest
import torch
from torch import nn

from codegen.errors import UserError
from codegen.frontend import from_module

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's GRU export warns about _flat_weights


def _line_of(cls, text: str) -> int:
    lines, first = inspect.getsourcelines(cls.forward)
    return first + next(i for i, line in enumerate(lines) if text in line)


class Recurrent(nn.Module):
    """A recurrent layer with an initial state computed from the input (refused: qgen takes a constant one)."""

    def __init__(self, kind: type[nn.Module]):
        super().__init__()
        self.rnn = kind(10, 16, batch_first=True)
        self.init = nn.Linear(10, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        h0 = self.init(x[:, 0]).unsqueeze(0)
        y, _ = self.rnn(x, (h0, h0) if isinstance(self.rnn, nn.LSTM) else h0)
        return self.fc(y.flatten(1)[:, :16])


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM, nn.RNN])
def test_a_recurrent_layer_is_named_as_the_user_wrote_it(kind):
    with pytest.raises(UserError) as err:
        from_module(Recurrent(kind), torch.zeros(1, 49, 10))
    msg = str(err.value)
    line = _line_of(Recurrent, "self.rnn(x")
    assert msg.startswith(f"nn.{kind.__name__} 'rnn' ({kind.__name__}(10, 16, batch_first=True)) at "
                          f"test_error_names.py:{line}: its initial state h_0 is computed from the input"), msg
    assert "aten.zeros" not in msg


class PadValue(nn.Module):  # (padding_mode='reflect' was the example until qgen lowered it: slices and a cat)
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.ConstantPad2d(1, 0.25))

    def forward(self, x):
        return self.body(x)


def test_a_refused_parameter_shows_the_constructor_values():
    with pytest.raises(UserError) as err:
        from_module(PadValue(), torch.zeros(1, 3, 8, 8))
    msg = str(err.value)
    assert msg.startswith("nn.ConstantPad2d 'body.0' (ConstantPad2d(padding=(1, 1, 1, 1), value=0.25)) at "
                          "test_error_names.py:"), msg
    assert "0.25" in msg.split(":", 2)[-1]  # the reason names the refused value too


class OwnForward(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


def test_an_op_in_the_models_own_forward_is_named_by_its_call_site():
    with pytest.raises(UserError) as err:
        from_module(OwnForward(), torch.zeros(1, 5))
    msg = str(err.value)
    assert re.match(rf"'cumsum' at test_error_names.py:{_line_of(OwnForward, 'cumsum')} uses aten.cumsum", msg), msg
