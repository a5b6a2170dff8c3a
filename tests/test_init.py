import math

import pytest
import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.init import SCHEMES, initialize
from dlrun.models.mlp import MLP
from dlrun.models.rnn import Recurrent
from tests.conftest import make_config


def first_layer(model):
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


class Conv(nn.Module):
    """One Conv2d 64 -> 128, 3x3: fan_in = 64 * 9 = 576, fan_out = 128 * 9 = 1152."""

    def __init__(self, activation="relu", negative_slope=0.01):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3)
        self.activation, self.negative_slope = activation, negative_slope


def expected_std(scheme, fan_in, fan_out, rows, activation="relu", slope=0.01, mode="fan_in", gain=1.0):
    """Each scheme's published standard deviation (see configs/init/*.yaml and dlrun/init.py).

    rows: the weight's first dimension (out features or channels); the orthogonal init works on
    the weight flattened to rows x fan_in."""
    gain2 = {"relu": 2.0, "tanh": (5 / 3) ** 2, "leaky_relu": 2 / (1 + slope**2), "selu": (3 / 4) ** 2}[activation]
    fan = fan_in if mode == "fan_in" else fan_out
    return {
        "small_normal": 0.01,
        "large_normal": 1.0,
        "xavier_uniform": math.sqrt(2 / (fan_in + fan_out)),  # Glorot: Var = 2 / (fan_in + fan_out)
        "xavier_normal": math.sqrt(2 / (fan_in + fan_out)),
        "xavier_fanin": math.sqrt(1 / fan_in),  # the notes' randn / sqrt(fan_in)
        "lecun_normal": math.sqrt(1 / fan_in),
        "he_normal": math.sqrt(gain2 / fan),  # He: Var = gain^2 / fan
        "he_uniform": math.sqrt(gain2 / fan),
        "orthogonal": gain / math.sqrt(max(rows, fan_in)),  # orthonormal rows or columns, times gain
    }[scheme]


CASES = [
    ("small_normal", "relu"), ("large_normal", "tanh"),
    ("xavier_uniform", "relu"), ("xavier_normal", "tanh"), ("xavier_fanin", "tanh"),
    ("he_normal", "relu"), ("he_uniform", "relu"), ("he_normal", "leaky_relu"), ("he_uniform", "tanh"),
    ("lecun_normal", "selu"), ("orthogonal", "relu"),
]


def test_every_scheme_has_a_case_and_a_config():
    assert {scheme for scheme, _ in CASES} | {"default"} == set(SCHEMES)
    for option in (*SCHEMES, "xavier", "he"):
        cfg, _ = make_config(f"init={option}")
        assert cfg.init.scheme == {"xavier": "xavier_uniform", "he": "he_normal"}.get(option, option)
        assert cfg.init.recurrent is None
        assert cfg.init.bias == (None if option == "default" else 0.0)


@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("scheme,activation", CASES)
def test_weight_std_matches_the_published_formula(scheme, activation, layer):
    torch.manual_seed(0)
    if layer == "linear":  # Linear 1000 -> 800
        model, fan_in, fan_out = MLP((1000,), 10, hidden=[800], activation=activation), 1000, 800
        module = first_layer(model)
    else:
        model, fan_in, fan_out = Conv(activation), 64 * 9, 128 * 9
        module = model.conv
    initialize(model, scheme=scheme, bias=0.0)
    expected = expected_std(scheme, fan_in, fan_out, module.weight.shape[0], activation)
    weight = module.weight
    assert weight.std().item() == pytest.approx(expected, rel=0.02)
    assert abs(weight.mean().item()) < expected * 0.02
    assert torch.count_nonzero(module.bias) == 0


def test_he_gain_follows_the_configured_leaky_slope_and_prelus_initial_slope():
    for activation, slope in (("leaky_relu", 0.2), ("prelu", 0.25)):
        torch.manual_seed(0)
        model = MLP((1000,), 10, hidden=[800], activation=activation, negative_slope=0.2)
        initialize(model, scheme="he_normal")
        expected = math.sqrt(2 / (1 + slope**2) / 1000)
        assert first_layer(model).weight.std().item() == pytest.approx(expected, rel=0.02)
    # The leaky gain is not ReLU's: at slope 0.5 they differ by 12%.
    torch.manual_seed(0)
    model = Conv("leaky_relu", negative_slope=0.5)
    initialize(model, scheme="he_normal")
    assert model.conv.weight.std().item() == pytest.approx(math.sqrt(2 / 1.25 / 576), rel=0.02)


@pytest.mark.parametrize("scheme", ["he_normal", "he_uniform"])
def test_he_fan_out_mode_uses_fan_out(scheme):
    torch.manual_seed(0)
    model = MLP((1000,), 10, hidden=[500])
    initialize(model, scheme=scheme, mode="fan_out")
    assert first_layer(model).weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)
    torch.manual_seed(0)
    conv = Conv()
    initialize(conv, scheme=scheme, mode="fan_out")
    assert conv.conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.02)


def test_orthogonal_square_weight_is_orthogonal_with_its_gain():
    torch.manual_seed(0)
    model = MLP((256,), 10, hidden=[256])
    initialize(model, scheme="orthogonal", gain=2.0)
    w = first_layer(model).weight
    assert torch.allclose(w @ w.T, 4.0 * torch.eye(256), atol=1e-4)
    assert torch.allclose(w.T @ w, 4.0 * torch.eye(256), atol=1e-4)


def test_default_keeps_pytorch_init_and_bias_value_sets_biases():
    torch.manual_seed(0)
    reference = MLP((20,), 3, hidden=[8])
    torch.manual_seed(0)
    model = MLP((20,), 3, hidden=[8])
    initialize(model, scheme="default")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    initialize(model, scheme="default", bias=0.1)
    assert torch.all(first_layer(model).bias == 0.1)
    assert torch.equal(first_layer(model).weight, first_layer(reference).weight)


@pytest.mark.parametrize("scheme", ["he_normal", "xavier_fanin", "small_normal"])
def test_bias_value_sets_every_bias(scheme):
    model = MLP((20,), 3, hidden=[8, 8], activation="relu")
    initialize(model, scheme=scheme, bias=0.01)  # the notes' positive bias against dying ReLUs
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(biases) == 3 and all(torch.all(b == 0.01) for b in biases)
    conv = Conv()
    initialize(conv, scheme=scheme, bias=-0.5)
    assert torch.all(conv.conv.bias == -0.5)


def lstm(hidden=256, features=128, **kwargs):
    return Recurrent((10, features), 5, layout="sequence", cell="lstm", hidden_size=hidden, **kwargs)


def test_recurrent_weights_get_init_recurrent_gate_by_gate():
    torch.manual_seed(0)
    model = lstm(num_layers=2, bidirectional=True)
    initialize(model, scheme="xavier_normal", recurrent="orthogonal")
    params = dict(model.recurrent.named_parameters())
    hh = [name for name in params if name.startswith("weight_hh")]
    assert len(hh) == 4  # 2 layers x 2 directions
    eye = torch.eye(256)
    for name in hh:
        for gate in params[name].chunk(4):  # input, forget, cell, output: each 256 x 256 and orthogonal
            assert torch.allclose(gate @ gate.T, eye, atol=1e-4), name
    # The input weights get the scheme, each gate a 256 x fan_in matrix: Var = 2 / (fan_in + 256).
    assert params["weight_ih_l0"].std().item() == pytest.approx(math.sqrt(2 / (128 + 256)), rel=0.02)
    assert params["weight_ih_l1"].std().item() == pytest.approx(math.sqrt(2 / (512 + 256)), rel=0.02)
    assert first_layer(model).weight.std().item() == pytest.approx(math.sqrt(2 / (512 + 5)), rel=0.05)


def test_recurrent_null_means_the_same_scheme_and_he_uses_the_cells_tanh_gain():
    torch.manual_seed(0)
    model = Recurrent((10, 200), 5, layout="sequence", cell="rnn", hidden_size=300, nonlinearity="relu")
    initialize(model, scheme="he_normal")
    params = dict(model.recurrent.named_parameters())
    assert params["weight_ih_l0"].std().item() == pytest.approx(math.sqrt(2 / 200), rel=0.02)
    assert params["weight_hh_l0"].std().item() == pytest.approx(math.sqrt(2 / 300), rel=0.02)
    torch.manual_seed(0)
    model = lstm()
    initialize(model, scheme="he_normal")  # an LSTM's activation is tanh: gain 5/3
    assert dict(model.recurrent.named_parameters())["weight_hh_l0"].std().item() == pytest.approx(
        5 / 3 / math.sqrt(256), rel=0.02)


def test_recurrent_default_scheme_with_orthogonal_hidden_weights_and_forget_bias_kept():
    torch.manual_seed(0)
    model = lstm(hidden=64, features=32)
    before = {name: p.clone() for name, p in model.recurrent.named_parameters()}
    initialize(model, scheme="default", recurrent="orthogonal", bias=0.0)
    after = dict(model.recurrent.named_parameters())
    assert torch.equal(after["weight_ih_l0"], before["weight_ih_l0"])  # default: left as torch made it
    gate = after["weight_hh_l0"][:64]
    assert torch.allclose(gate @ gate.T, torch.eye(64), atol=1e-4)
    # b_ih and b_hh add up: the value goes on b_ih, b_hh is 0; the forget quarter keeps model.forget_bias = 1.
    b_ih, b_hh = after["bias_ih_l0"], after["bias_hh_l0"]
    assert torch.all(b_ih[64:128] == 1.0) and torch.count_nonzero(b_ih[:64]) == 0
    assert torch.count_nonzero(b_ih[128:]) == 0 and torch.count_nonzero(b_hh) == 0


@pytest.mark.parametrize("options,message", [
    ({"scheme": "glorot"}, "init.scheme='glorot' is unknown; choose one of default, small_normal"),
    ({"scheme": "he_normal", "recurrent": "orthogonl"}, "init.recurrent='orthogonl' is unknown"),
    ({"scheme": "he_normal", "mode": "fan_avg"}, "init.mode='fan_avg' must be fan_in or fan_out"),
    ({"scheme": "he_normal", "bias": "small"}, "init.bias='small' must be a number"),
    ({"scheme": "orthogonal", "gain": 0}, "init.gain=0 must be a number > 0"),
    ({"scheme": "he_normal", "std": 0.1}, "init.std is not an init option"),
])
def test_bad_values_fail_in_one_line_before_any_weight_changes(options, message):
    torch.manual_seed(0)
    model = MLP((20,), 3, hidden=[8])
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(UserError) as info:
        initialize(model, **options)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
