"""model=cnn (the notes' ConvNet pattern) and model=rnn|lstm|gru."""

import pytest
import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models.cnn import CNN, conv_output_size
from dlrun.models.rnn import Recurrent


@pytest.mark.parametrize("width,kernel,stride,padding", [(32, 3, 1, 1), (32, 5, 1, 2), (31, 3, 2, 0), (227, 11, 4, 0),
                                                         (8, 3, 1, 0), (7, 1, 2, 0)])
def test_output_size_formula_matches_real_tensors(width, kernel, stride, padding):
    expected = conv_output_size(width, kernel, stride, padding)
    assert nn.Conv2d(1, 1, kernel, stride, padding)(torch.zeros(1, 1, width, width)).shape[-1] == expected
    assert nn.Conv1d(1, 1, kernel, stride, padding)(torch.zeros(1, 1, width)).shape[-1] == expected


def test_impossible_sizes_are_refused_with_the_computed_sizes():
    with pytest.raises(ValueError, match=r"\(32 - 3 \+ 2\*0\) / 2 \+ 1 = 15.5"):
        conv_output_size(32, 3, 2, 0)  # a stride that does not divide
    with pytest.raises(UserError, match=r"block 2 conv 2 does not fit the 2x2 input: .* = 0; sizes so far 8x8 -> 6x6 -> 4x4 -> 2x2"):
        CNN((1, 8, 8), 10, padding=0, pool="none")
    with pytest.raises(UserError, match=r"block 4's 2-pool does not fit its 1x1 feature map"):
        CNN((1, 8, 8), 10, channels=[8, 8, 8, 8])


def test_cnn_follows_the_pattern_and_picks_conv1d_or_conv2d():
    model = CNN((3, 32, 32), 10, channels=[16, 32, 64], convs_per_block=2, fc=[100, 50])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64]  # N=2 convs in each of M=3 blocks
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [100, 50, 10]  # K=2 + FC
    assert model.feature_sizes[-1] == "4x4" and model.classifier[1].in_features == 64 * 4 * 4
    signal = CNN((40,), 3, layout="features")
    assert any(isinstance(m, nn.Conv1d) for m in signal.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in signal.modules())


def rnn_layer_params(cell, features=7, hidden=11):
    return sum(p.numel() for p in Recurrent((5, features), 2, cell=cell, hidden_size=hidden).recurrent.parameters())


def test_lstm_has_4x_and_gru_3x_the_parameters_of_a_vanilla_rnn():
    assert rnn_layer_params("lstm") == 4 * rnn_layer_params("rnn")
    assert rnn_layer_params("gru") == 3 * rnn_layer_params("rnn")


@pytest.mark.parametrize("merge,width", [("concat", 32), ("sum", 16), ("mul", 16)])
def test_bidirectional_merges_set_the_readout_width(merge, width):
    model = Recurrent((12, 5), 3, cell="gru", hidden_size=16, bidirectional=True, merge=merge)
    assert model.head.in_features == width
    assert model(torch.randn(4, 12, 5)).shape == (4, 3)


def test_images_are_read_row_by_row():
    model = Recurrent((3, 8, 6), 2, layout="image", hidden_size=4)
    x = torch.arange(2 * 3 * 8 * 6, dtype=torch.float32).reshape(2, 3, 8, 6)
    steps = model.to_steps(x)
    assert steps.shape == (2, 8, 18)  # T = H rows, F = C * W
    assert torch.equal(steps[1, 5], torch.cat([x[1, c, 5] for c in range(3)]))


def test_lstm_forget_gate_bias_starts_at_one():
    model = Recurrent((4, 3), 2, cell="lstm", hidden_size=5, num_layers=2)
    for layer in range(2):
        b_ih = getattr(model.recurrent, f"bias_ih_l{layer}")
        b_hh = getattr(model.recurrent, f"bias_hh_l{layer}")
        assert torch.all(b_ih[5:10] + b_hh[5:10] == 1.0)
