"""loss=: the notes' hinge, label smoothing's targets, and the task checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlrun.errors import UserError
from dlrun.losses import build_loss, check_targets


def test_multi_margin_is_the_notes_hinge_and_starts_at_c_minus_1():
    torch.manual_seed(0)
    out, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    hinge = build_loss("multi_margin", "classification")
    a = out.tolist()
    by_hand = sum(sum(max(0.0, 1 + a[i][j] - a[i][y[i]]) for j in range(5) if j != y[i]) for i in range(7)) / 7
    assert hinge(out, y).item() == pytest.approx(by_hand, rel=1e-6)
    assert hinge(out, y).item() == pytest.approx(5 * F.multi_margin_loss(out, y).item(), rel=1e-6)  # C x torch's
    small = 1e-4 * torch.randn(64, 10)  # a small-init net's scores: all about equal
    assert hinge(small, torch.randint(0, 10, (64,))).item() == pytest.approx(9.0, abs=0.01)


def test_label_smoothing_one_ninth_on_ten_classes_gives_the_notes_targets():
    loss = build_loss("cross_entropy", "classification", label_smoothing=1 / 9)
    out, y = torch.randn(3, 10), torch.tensor([0, 4, 9])
    targets = torch.full((3, 10), 0.1 / 9)
    targets[torch.arange(3), y] = 0.9
    assert targets[0, 0] == pytest.approx(0.9) and targets[0, 1] == pytest.approx(0.0111, abs=1e-4)
    by_hand = -(targets * out.log_softmax(1)).sum(1).mean()
    assert loss(out, y).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_auto_picks_by_task_and_sums_are_means_times_count():
    assert build_loss("auto", "classification").name == "cross_entropy"
    assert build_loss("auto", "regression").name == "mse"
    huber = build_loss("huber", "regression", huber_delta=1.0)
    out, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 3.0]])
    assert huber(out, y).item() == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2)
    assert huber(out, y, reduction="sum").item() / huber.count(y) == pytest.approx(huber(out, y).item())
    bce = build_loss("bce", "regression")
    assert bce(torch.zeros(4, 1), torch.ones(4, 1)).item() == pytest.approx(math.log(2))


def test_losses_that_do_not_fit_the_data_are_refused():
    with pytest.raises(UserError, match="needs integer class labels"):
        build_loss("multi_margin", "regression")
    with pytest.raises(UserError, match="needs float targets"):
        build_loss("mse", "classification")
    with pytest.raises(UserError, match=r"label_smoothing=1.0 must be in \[0, 1\)"):
        build_loss("cross_entropy", "classification", label_smoothing=1.0)
    with pytest.raises(UserError, match="unknown"):
        build_loss("focal", "classification")
    with pytest.raises(UserError, match=r"targets in \[0, 1\]"):
        check_targets(build_loss("bce", "regression"), torch.tensor([[0.0], [2.0]]), "train")
