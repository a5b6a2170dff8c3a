import torch

from dlrun.models.mlp import MLP
from dlrun.regularization import l2_penalty, penalized_weights


def test_l2_is_half_lambda_sum_of_squared_weights_and_leaves_biases_alone():
    torch.manual_seed(0)
    model = MLP((5,), 3, hidden=[4])
    weights = penalized_weights(model)
    assert [tuple(w.shape) for w in weights] == [(4, 5), (3, 4)]  # no biases
    strength = 0.3
    penalty = l2_penalty(weights, strength)
    expected = 0.5 * strength * sum((w.detach() ** 2).sum() for w in weights)
    assert torch.allclose(penalty, expected)
    penalty.backward()
    # Its gradient is strength * W: the notes' "every weight is decayed linearly towards zero".
    for w in weights:
        assert torch.allclose(w.grad, strength * w.detach())
