import math

import pytest
import torch
from torch import nn

from dlrun.init import initialize
from dlrun.models.mlp import MLP


def first_layer(model):
    return next(m for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("scheme,activation,expected_std", [
    # Glorot: Var = 2 / (fan_in + fan_out), whatever the activation.
    ("xavier_uniform", "relu", math.sqrt(2 / (1000 + 800))),
    ("xavier_normal", "tanh", math.sqrt(2 / (1000 + 800))),
    # He: Var = gain^2 / fan_in; ReLU's gain^2 = 2, leaky ReLU's 2 / (1 + 0.01^2).
    ("he_normal", "relu", math.sqrt(2 / 1000)),
    ("he_uniform", "relu", math.sqrt(2 / 1000)),
    ("he_normal", "leaky_relu", math.sqrt(2 / (1 + 0.01**2) / 1000)),
])
def test_weight_std_matches_the_published_formula(scheme, activation, expected_std):
    torch.manual_seed(0)
    model = MLP((1000,), 10, hidden=[800], activation=activation)
    initialize(model, scheme=scheme, bias=0.0)
    weight = first_layer(model).weight
    assert weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(weight.mean().item()) < expected_std * 0.01
    assert torch.count_nonzero(first_layer(model).bias) == 0


def test_he_gain_follows_the_configured_leaky_slope_and_prelus_initial_slope():
    for activation, slope in (("leaky_relu", 0.2), ("prelu", 0.25)):
        torch.manual_seed(0)
        model = MLP((1000,), 10, hidden=[800], activation=activation, negative_slope=0.2)
        initialize(model, scheme="he_normal")
        expected = math.sqrt(2 / (1 + slope**2) / 1000)
        assert first_layer(model).weight.std().item() == pytest.approx(expected, rel=0.02)


def test_he_fan_out_mode_uses_fan_out():
    torch.manual_seed(0)
    model = MLP((1000,), 10, hidden=[500])
    initialize(model, scheme="he_normal", mode="fan_out")
    assert first_layer(model).weight.std().item() == pytest.approx(math.sqrt(2 / 500), rel=0.02)


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
