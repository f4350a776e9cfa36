import numpy as np
import pytest
import torch
import torch.nn as nn

from codegen.errors import UserError
from codegen.frontend import from_module
from codegen.passes import assign_precision, calibrate, fold_bn, fuse_activation, quantize
from codegen.passes.assign_precision import candidates, parse_spec, tensor_bits


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = y + self.conv2(y)
        return torch.softmax(self.fc(y.flatten(1)), dim=1)


def _graph():
    torch.manual_seed(0)
    return fuse_activation.run(fold_bn.run(from_module(Net().eval(), torch.zeros(1, 2, 6, 6))))


def test_parse_spec_accepts_lists_and_names_the_bad_item():
    assert parse_spec(["conv=int16,fc=int8", "pool = 16"]) == {"conv": 16, "fc": 8, "pool": 16}
    with pytest.raises(UserError, match="expected LAYER=int8, LAYER=int16 \\(activations\\) or LAYER=w4"):
        parse_spec(["conv=int12"])


def test_types_follow_through_pools_and_reshapes():
    g = assign_precision.run(_graph(), {"conv": 16})
    bits = tensor_bits(g)
    by_op = {n.name: bits[n.outputs[0]] for n in g.nodes}
    assert by_op["conv"] == 16 and by_op["pool"] == 16  # the pool keeps its input's type
    assert by_op["conv2"] == 8 and bits[g.inputs[0]] == 8


@pytest.mark.parametrize("spec,message", [
    ({"nope": 16}, "does not have; layers whose precision can be set: input, conv, conv2, add, fc"),
    ({"pool": 16}, "keeps its input's type; set the precision on the layer that produces its input \\(conv\\)"),
    ({"fc": 16}, "softmax .* computes in int8 only .* keep linear 'fc'"),
    ({"softmax": 16}, "computes in int8 only"),
])
def test_refusals_name_the_layer_and_the_fix(spec, message):
    with pytest.raises(UserError, match=message):
        assign_precision.run(_graph(), spec)


def test_model_outputs_stay_int8():
    torch.manual_seed(0)
    g = from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU()).eval(), torch.zeros(1, 3))
    g = fuse_activation.run(g)
    with pytest.raises(UserError, match="model outputs are int8 .* keep linear '0' int8"):
        assign_precision.run(g, {"0": 16})


def test_candidates_are_the_layers_that_can_be_raised_alone():
    assert candidates(_graph()) == ["input", "conv", "conv2", "add"]


def test_quantize_gives_int16_formats_and_wider_bounds():
    g = assign_precision.run(_graph(), {"conv": 16, "add": 16})
    g = quantize.run(calibrate.run(g, np.random.default_rng(0).standard_normal((16, 2, 6, 6))))
    conv = next(n for n in g.nodes if n.name == "conv")
    out = g.tensors[conv.outputs[0]]
    assert out.dtype == "int16" and out.qformat.bits == 16
    assert conv.attrs["act_min"] == 0 and conv.attrs["act_max"] == 32767  # fused ReLU at int16
    conv2 = next(n for n in g.nodes if n.name == "conv2")
    assert g.tensors[conv2.outputs[0]].dtype == "int8"
    # int16 input: the proven bound uses |x| <= 2^15
    w = g.tensors[conv2.inputs[1]].data.astype(np.int64)
    b = g.tensors[conv2.inputs[2]].data.astype(np.int64)
    assert conv2.attrs["acc_bound"] == int((np.abs(w).reshape(4, -1).sum(1) * 32768 + np.abs(b)).max())


def test_int16_input_gets_int64_accumulator_instead_of_coarser_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 600), nn.Linear(600, 4)).eval()
    with torch.no_grad():
        model[1].weight.fill_(0.9)  # sum|w_q| * 2^15 far above 2^31
    g = from_module(model, torch.zeros(1, 8))
    g = assign_precision.run(g, {"0": 16})
    g = quantize.run(calibrate.run(g, np.random.default_rng(0).standard_normal((16, 8))))
    second = g.nodes[1]
    assert second.attrs.get("acc64") is True and second.attrs["acc_bound"] > 2**31
    assert g.tensors[second.inputs[1]].data.max() >= 64  # weights keep their full int8 resolution
