"""QAT: the fake-quantised module in eval mode == the integer reference of the compiled model, exactly."""
import numpy as np
import pytest
import torch
from models import GlobalPoolNet, PadCatNet, SequenceNet, make_residual
from torch import nn

from codegen import qat
from codegen.demo import digits_data, make_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    x_tr, y_tr, x_te, y_te = digits_data()
    torch.manual_seed(0)
    model = make_model()
    from codegen.demo import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(model, x_tr[:600], y_tr[:600], epochs=3)  # a few epochs: enough for non-trivial weights
    torch.set_num_threads(threads)
    return model, x_tr[:600], y_tr[:600], x_te, y_te


def _assert_exact(qm, x):
    """QAT eval forward == integer reference of qat.compile (dequantised), element for element."""
    result = qat.compile(qm, eval_data=x[:8])
    with torch.no_grad():
        y_qat = qm.eval()(torch.from_numpy(x)).numpy()
    y_ref = result.predict(x)
    assert y_qat.shape == y_ref.shape
    diff = np.argwhere(y_qat != y_ref)
    assert diff.size == 0, f"{len(diff)} elements differ, first at {tuple(diff[0])}: " \
                           f"qat {y_qat[tuple(diff[0])]} vs reference {y_ref[tuple(diff[0])]}"
    return result


@pytest.mark.parametrize("method", ["minmax", "mse"])
def test_digits_qat_equals_integer_reference_after_training(digits, method):
    model, x, y, x_te, _ = digits
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x, method=method)
    before = {k: v.detach().clone() for k, v in qm.state_dict().items()}
    qat.finetune(qm, x, y, epochs=1, lr=1e-3)
    assert any(not torch.equal(before[k], v) for k, v in qm.state_dict().items())  # training moved weights
    _assert_exact(qm, x_te)


def test_qat_compile_generates_c_that_matches(digits):
    model, x, _, x_te, _ = digits
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    result = _assert_exact(qm, x_te[:16])
    check = result.verify(x_te[:16])
    assert check.exact, str(check)


def test_residual_add_pooling_depthwise_exact_after_a_training_step():
    model, example = make_residual()  # add, relu6, depthwise, BN without producer, max + avg pool
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    qm = qat.prepare(model, example, x, method="percentile")
    qm.train()
    opt = torch.optim.SGD(qm.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        qm(torch.from_numpy(x)).square().mean().backward()
        opt.step()
    _assert_exact(qm, x)


def test_sequence_model_with_lut_concat_softmax_is_exact():
    torch.manual_seed(0)
    model = SequenceNet().eval()
    x = np.random.default_rng(1).standard_normal((32, 3, 16)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    _assert_exact(qm, x)
    qm.train()
    out = qm(torch.from_numpy(x))  # train path (float32, STE) runs through every op and has gradients
    out[:, 0].sum().backward()
    assert all(p.grad is not None for p in qm.parameters())


def test_straight_through_gradients_and_train_forward_close_to_eval(digits):
    model, x, _, _, _ = digits
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    xt = torch.from_numpy(x[:64])
    qm.train()
    y_train = qm(xt)
    y_train.sum().backward()
    grads = [p.grad for p in qm.parameters()]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    with torch.no_grad():
        y_eval = qm.eval()(xt)
    # float32 training path and float64 exact path agree to within one output step on nearly all values
    step = 2.0 ** -qm.act_fracs()[qm.float_graph().outputs[0]]
    close = (y_train.detach().double() - y_eval).abs() <= step + 1e-9
    assert close.float().mean() > 0.99


def test_bn_is_folded_and_its_statistics_frozen(digits):
    model, x, _, _, _ = digits
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    g = qat.convert(qm)
    assert not any(n.op.value == "batch_norm" for n in g.nodes)
    assert len(list(qm.parameters())) == 6  # conv, conv, linear: weight + bias each (BN folded in)
    # the prepared module starts as the float model, quantised: close to it in eval
    with torch.no_grad():
        y_f = model.eval()(torch.from_numpy(x[:100])).numpy()
        y_q = qm.eval()(torch.from_numpy(x[:100])).numpy()
    assert (y_f.argmax(1) == y_q.argmax(1)).mean() > 0.95


def test_convert_pins_activation_formats():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x)
    with torch.no_grad():
        for p in qm.parameters():
            p.mul_(3.0)  # training tripled the ranges: formats must still be the QAT ones
    result = qat.compile(qm, eval_data=x)
    fracs = qm.act_fracs()
    for name, t in result.graph.tensors.items():
        if not t.is_const:
            assert t.qformat.frac == fracs[name]
    with torch.no_grad():
        assert np.array_equal(qm(torch.from_numpy(x)).numpy(), result.predict(x))


def _avg3_net():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AvgPool2d(3, stride=1, padding=1),  # 9: not 2^k
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("factory,shape", [(PadCatNet, (1, 16, 12)), (GlobalPoolNet, (2, 8, 8)), (_avg3_net, (2, 8, 8))],
                         ids=["pad-maxpool-luts", "global-avgpool-depthwise-mult2", "avgpool-3x3"])
def test_more_ops_are_exact(factory, shape):
    torch.manual_seed(0)
    model = factory().eval()
    x = np.random.default_rng(2).standard_normal((16, *shape)).astype(np.float32)
    qm = qat.prepare(model, torch.from_numpy(x[:1]), x, method="mse")
    _assert_exact(qm, x)
