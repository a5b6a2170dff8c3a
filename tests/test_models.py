import pytest
import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models.layers import ACTIVATIONS, activation
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


def test_lenet_reads_signals_with_1x5_kernels_padded_to_32():
    model = LeNet((40,), 3, layout="features")
    assert [m.kernel_size for m in model.features if isinstance(m, nn.Conv2d)] == [(1, 5), (1, 5)]
    assert model.classifier[1].in_features == 16 * 7  # 40 -> conv 36 -> pool 18 -> conv 14 -> pool 7
    assert model(torch.zeros(2, 40)).shape == (2, 3)
    short = LeNet((12, 5), 3, layout="sequence")  # 12 steps padded to 32, 5 features as channels
    assert short.features[0].in_channels == 5 and short.classifier[1].in_features == 16 * 5


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
    with pytest.raises(UserError, match="one entry per hidden layer"):
        MLP((4,), 2, hidden=[8, 8], dropout=[0.1])
    with pytest.raises(UserError, match="maxout_pieces"):
        MLP((4,), 2, activation="maxout", maxout_pieces=1)


def test_mlp_takes_activation_dropout_and_norm_per_hidden_layer():
    model = MLP((6,), 2, hidden=[8, 8, 8], activation=["tanh", "relu", "gelu"], dropout=[0.0, 0.3, 0.0],
                norm=["batch", "none", "layer"])
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "Tanh", "Linear", "ReLU", "Dropout", "Linear", "LayerNorm",
                     "GELU", "Linear"]
    assert model(torch.randn(4, 6)).shape == (4, 2)


@pytest.mark.parametrize("pieces", [2, 3])
def test_maxout_is_the_max_of_k_linear_pieces_with_k_times_the_parameters(pieces):
    torch.manual_seed(0)
    plain = MLP((5,), 2, hidden=[4], activation="relu")
    maxout = MLP((5,), 2, hidden=[4], activation="maxout", maxout_pieces=pieces)
    assert n_params(maxout[1]) == pieces * n_params(plain[1])  # the Linear it replaces, k times over
    x = torch.randn(7, 5)
    pieces_out = maxout[1](x).reshape(7, 4, pieces)  # unit j's pieces are outputs j*k .. j*k + k - 1
    expected = pieces_out[..., 0]
    for i in range(1, pieces):
        expected = torch.maximum(expected, pieces_out[..., i])
    assert torch.equal(maxout[2](maxout[1](x)), expected)
    assert maxout[3].in_features == 4  # the next layer sees one value a unit


def test_prelu_slope_is_learned_and_leaky_relu_takes_its_slope():
    model = MLP((3,), 2, hidden=[4], activation="prelu")
    prelu = model[2]
    assert isinstance(prelu.weight, nn.Parameter) and prelu.weight.item() == pytest.approx(0.25)
    assert any(p is prelu.weight for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(torch.randn(16, 3)), torch.randint(0, 2, (16,))).backward()
    assert prelu.weight.grad is not None and prelu.weight.grad.abs().item() > 0
    optimizer.step()
    assert prelu.weight.item() != pytest.approx(0.25)
    leaky = activation("leaky_relu", negative_slope=0.2)
    assert torch.equal(leaky(torch.tensor([-1.0, 2.0])), torch.tensor([-0.2, 2.0]))


def test_selu_uses_the_papers_constants_and_the_others_their_formulas():
    # Klambauer et al. 2017: alpha_01 and lambda_01 to 16 digits.
    alpha, scale = 1.6732632423543772, 1.0507009873554805
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.allclose(activation("selu")(x), scale * torch.where(x > 0, x, alpha * (torch.exp(x) - 1)))
    assert torch.allclose(activation("elu")(x), torch.where(x > 0, x, torch.exp(x) - 1))
    assert torch.allclose(activation("softplus")(x), torch.log1p(torch.exp(x)))
    assert torch.allclose(activation("sigmoid")(x), 1 / (1 + torch.exp(-x)))
    assert torch.allclose(activation("tanh")(x), torch.tanh(x))
    assert torch.allclose(activation("gelu")(x), x * 0.5 * (1 + torch.erf(x / 2 ** 0.5)))
    assert set(ACTIVATIONS) == {"sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "softplus",
                                "silu", "maxout"}


@pytest.mark.parametrize("name", ["cnn", "lenet"])
def test_conv_models_build_maxout_with_k_channels_a_unit(name):
    from dlrun.models.cnn import CNN

    model = CNN((1, 8, 8), 10, channels=[8], activation="maxout", maxout_pieces=3) if name == "cnn" else \
        LeNet((1, 8, 8), 10, activation="maxout", maxout_pieces=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 3 * (8 if name == "cnn" else 6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
