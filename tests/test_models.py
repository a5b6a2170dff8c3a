import pytest
import torch

from dlrun.errors import UserError
from dlrun.models.lenet import LeNet
from dlrun.models.mlp import MLP


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_lenet5_has_the_papers_61706_parameters_at_32x32():
    model = LeNet((1, 32, 32), 10)
    assert n_params(model) == 61_706
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_lenet_pads_small_images_to_32_and_keeps_the_papers_sizes(shape):
    model = LeNet(shape, 10)
    # Padded to 32x32, the layers are the paper's: only conv1's input channels vary.
    assert n_params(model) == 61_706 + (shape[0] - 1) * 6 * 25
    assert model(torch.zeros(4, *shape)).shape == (4, 10)


def test_lenet_grows_its_first_fc_layer_for_larger_images():
    model = LeNet((1, 40, 40), 7)
    # 40 -> conv 36 -> pool 18 -> conv 14 -> pool 7: 16 * 7 * 7 inputs to FC 120.
    assert model.classifier[1].in_features == 16 * 7 * 7
    assert model(torch.zeros(2, 1, 40, 40)).shape == (2, 7)


def test_lenet_refuses_non_images():
    with pytest.raises(UserError, match="needs images"):
        LeNet((64,), 10)


def test_mlp_flattens_any_input_and_counts_its_layers():
    model = MLP((1, 8, 8), 10, hidden=[32, 16], activation="tanh", dropout=0.5)
    assert n_params(model) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model) == 2
    assert sum(isinstance(m, torch.nn.Tanh) for m in model) == 2


def test_mlp_refuses_bad_settings():
    with pytest.raises(UserError, match="dropout"):
        MLP((4,), 2, dropout=1.0)
    with pytest.raises(UserError, match="activation"):
        MLP((4,), 2, activation="swishy")
