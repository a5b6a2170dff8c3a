import pytest
import torch

from dlrun.errors import UserError
from dlrun.models.mlp import MLP
from dlrun.regularization import apply_maxnorm, l1_penalty, l2_penalty, penalized_weights, penalty


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


def test_l2_step_with_sgd_equals_sgd_weight_decay_the_notes_one_minus_eta_lambda():
    """w <- w - eta * (grad + lambda * w) = (1 - eta * lambda) w - eta * grad."""
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    results = []
    for decay_in_optimizer in (False, True):
        torch.manual_seed(0)
        model = MLP((5,), 3, hidden=[4])
        weights = penalized_weights(model)
        groups = [{"params": weights, "weight_decay": 0.1 if decay_in_optimizer else 0.0},
                  {"params": [p for p in model.parameters() if p.ndim == 1], "weight_decay": 0.0}]
        optimizer = torch.optim.SGD(groups, lr=0.5)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if not decay_in_optimizer:
            loss = loss + penalty(weights, l2=0.1)
        loss.backward()
        optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*results))


def test_l1_gradient_is_lambda_sign_w_and_elastic_net_adds_both():
    torch.manual_seed(0)
    model = MLP((5,), 3, hidden=[4])
    weights = penalized_weights(model)
    l1_penalty(weights, 0.2).backward()
    for w in weights:
        assert torch.equal(w.grad, 0.2 * torch.sign(w.detach()))
    both = penalty(weights, l2=0.1, l1=0.2)
    assert torch.allclose(both, l2_penalty(weights, 0.1) + l1_penalty(weights, 0.2))


def test_exclude_bias_and_norm_false_penalizes_every_parameter():
    model = MLP((5,), 3, hidden=[4], norm="batch")
    assert len(penalized_weights(model)) == 2
    assert len(penalized_weights(model, exclude_bias_and_norm=False)) == len(list(model.parameters()))


def test_maxnorm_projects_only_the_units_outside_the_ball():
    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(10, 6), torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        linear.weight[:3] *= 10  # three units outside c = 3, three inside
        conv.weight *= 20
    before = linear.weight.detach().clone()
    inside = before.norm(dim=1) <= 3.0
    assert 0 < inside.sum() < 6
    apply_maxnorm([linear.weight, conv.weight, linear.bias], 3.0)
    assert (linear.weight.norm(dim=1) <= 3.0 + 1e-6).all()
    assert (conv.weight.flatten(1).norm(dim=1) <= 3.0 + 1e-6).all()
    assert torch.equal(linear.weight[inside], before[inside])  # untouched, bit for bit
    outside = ~inside  # the others keep their direction and land on the sphere
    assert torch.allclose(linear.weight[outside].norm(dim=1), torch.full((int(outside.sum()),), 3.0), atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(linear.weight[outside], before[outside], dim=1)
    assert torch.allclose(cosine, torch.ones_like(cosine))


def test_reg_dropout_sets_the_models_drop_probability_and_composes_with_others():
    from conftest import make_config
    from dlrun.build import build_model
    from dlrun.data.digits import DigitsData

    cfg, _ = make_config("reg=[l2,dropout]", "reg.dropout=0.3", "model.hidden=[8]")
    assert cfg.reg.l2 == 1e-4 and cfg.reg.dropout == 0.3  # both options merged into reg
    data = DigitsData()
    model = build_model(cfg, data)
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert [m.p for m in drops] == [0.3]
    with pytest.raises(UserError, match=r"model.dropout=1.0 must be in \[0, 1\)"):
        build_model(make_config("reg=dropout", "reg.dropout=1.0")[0], data)
    with pytest.raises(UserError, match="no dropout setting"):
        build_model(make_config("reg=dropout", "model=lenet")[0], data)
