import torch

from dlrun.monitor.ratios import UpdateRatio
from dlrun.models.mlp import MLP


def test_update_ratio_is_the_norm_of_the_actual_update_over_the_weight_norm():
    torch.manual_seed(0)
    model = MLP((6,), 2, hidden=[5])
    lr = 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model(torch.randn(8, 6)).square().mean().backward()
    ratio = UpdateRatio(list(model.named_parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ratio.snapshot()
    optimizer.step()
    measured = ratio.measure()
    assert set(measured) == set(before)
    for name, p in model.named_parameters():
        # Plain SGD: the update is -lr * grad, as in the notes' example.
        expected = (lr * p.grad).norm() / before[name].norm()
        assert abs(measured[name] - expected.item()) < 1e-6 * max(1.0, expected.item())
        assert measured[name] > 0


def test_update_ratio_skips_tensors_that_are_exactly_zero():
    model = MLP((3,), 2, hidden=[])
    torch.nn.init.zeros_(model[-1].bias)
    ratio = UpdateRatio(list(model.named_parameters()))
    ratio.snapshot()
    assert set(ratio.measure()) == {"1.weight"}
