"""experiment=NAME presets (configs/experiment/): each architecture's published training recipe, as
the lecture notes record it (seeds 001) and, where they are silent, as the paper (or, for GoogLeNet,
the BVLC Caffe replication) gives it. The numbers below are those sources', asserted on the composed
config, on the torch objects a run builds from it, and on a short real run."""

import math

import pytest
import torch
from torch import nn

from dlrun.build import build, build_model
from dlrun.errors import UserError
from dlrun.optim import after_validation, build_optimizer, build_scheduler
from dlrun.regularization import parameter_groups, regularization
from tests.conftest import make_config, train

# name -> the recipe: the group options it picks and the values it sets.
RECIPES = {
    # Notes: SGD momentum 0.9, L2 decay 0.0005, batch 128, lr 0.01 lowered when validation error
    # stopped improving, dropout p=0.5. Paper: lr divided by 10; weights N(0, 0.01^2).
    "alexnet": dict(model="alexnet", init="small_normal", sched="plateau", lr=0.01, weight_decay=5e-4,
                    batch_size=128, dropout=[0.5, 0.5], factor=0.1),
    # Notes: batch 256, SGD momentum 0.9, L2 0.0005, dropout on the first two FC layers, lr "as in
    # AlexNet", Xavier init. Paper: lr 1e-2 divided by 10 on a plateau, dropout 0.5, VGG-16 (D).
    "vgg": dict(model="vgg", init="xavier_uniform", sched="plateau", lr=0.01, weight_decay=5e-4,
                batch_size=256, dropout=[0.5, 0.5], factor=0.1),
    # Notes: SGD 0.9 momentum, lr down 4% every 8 epochs. Paper: dropout 40%. BVLC replication:
    # lr 0.01, weight decay 2e-4, batch 32, Caffe "xavier" (Var = 1/fan_in).
    "googlenet": dict(model="googlenet", init="xavier_fanin", sched="step", lr=0.01, weight_decay=2e-4,
                      batch_size=32, dropout=[0.4], step_size=8, gamma=0.96),
    # Notes: batch 256, SGD momentum 0.9, L2 0.0001, lr 0.1 divided by 10 when the error plateaus,
    # no dropout. Paper: He init.
    "resnet": dict(model="resnet", init="he_normal", sched="plateau", lr=0.1, weight_decay=1e-4,
                   batch_size=256, dropout=[], factor=0.1),
}
NAMES = list(RECIPES)
# Formula std of a weight for each init scheme (ReLU nets: He's gain^2 = 2), fans as torch counts them.
STD = {
    "small_normal": lambda fan_in, fan_out: 0.01,
    "xavier_uniform": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "xavier_fanin": lambda fan_in, fan_out: math.sqrt(1.0 / fan_in),
    "he_normal": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
}


@pytest.mark.parametrize("name", NAMES)
def test_preset_composes_the_published_recipe(name):
    r = RECIPES[name]
    cfg, choices = make_config(f"experiment={name}")
    assert choices["experiment"] == name
    assert (choices["model"], choices["init"], choices["reg"], choices["optim"], choices["sched"]) == \
        (r["model"], r["init"], "weight_decay", "momentum", r["sched"])
    assert cfg.optim._target_ == "torch.optim.SGD"
    assert cfg.optim.lr == r["lr"] and cfg.optim.momentum == 0.9 and cfg.optim.nesterov is False
    assert cfg.optim.weight_decay == 0.0  # the decay is reg.weight_decay's, on the weights only
    assert cfg.reg.weight_decay == r["weight_decay"] and cfg.reg.exclude_bias_and_norm is True
    assert "l2" not in cfg.reg and "dropout" not in cfg.reg  # decay by the optimizer; model.dropout is the model's
    assert cfg.data.batch_size == r["batch_size"]
    assert cfg.init.scheme == r["init"] and cfg.init.bias == 0.0
    if r["sched"] == "plateau":
        assert cfg.sched._target_ == "torch.optim.lr_scheduler.ReduceLROnPlateau"
        assert cfg.sched.factor == 0.1 and cfg.sched.interval == "epoch"
    else:
        assert cfg.sched._target_ == "torch.optim.lr_scheduler.StepLR"
        assert (cfg.sched.step_size, cfg.sched.gamma) == (8, 0.96)
    if r["dropout"]:
        assert cfg.model.dropout == r["dropout"][0]
    else:
        assert "dropout" not in cfg.model  # resnet: the notes' "no dropout"
    assert cfg.trainer.epochs == 30 and cfg.trainer.monitor == "auto"  # the rest stays the defaults
    if name == "vgg":
        assert cfg.model.depth == 16 and cfg.model.batch_norm is False and cfg.model.norm == "none"
    if name == "resnet":
        assert cfg.model.depth == 20 and cfg.model.residual is True


@pytest.mark.parametrize("name", NAMES)
def test_preset_builds_that_recipe_into_the_model_optimizer_and_schedule(name):
    """What a run builds from the preset: dropout layers and initialised weights in the real model,
    decay on its weights only, and the schedule's lr sequence (plateau: /10 once val stops improving)."""
    r = RECIPES[name]
    cfg, _ = make_config(f"experiment={name}")
    torch.manual_seed(0)
    data = build(cfg.data)
    assert data.batch_size == r["batch_size"]
    model = build_model(cfg, data)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == r["dropout"]

    # The init: the largest weight's empirical std against the scheme's formula.
    weight = max((p for p in model.parameters() if p.ndim > 1), key=torch.Tensor.numel)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    assert weight.std().item() == pytest.approx(STD[r["init"]](fan_in, fan_out), rel=0.02)

    optimizer = build_optimizer(cfg.optim, parameter_groups(model, regularization(cfg), str(cfg.optim._target_)))
    assert type(optimizer) is torch.optim.SGD
    decayed, rest = optimizer.param_groups
    assert decayed["weight_decay"] == r["weight_decay"] and rest["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.ndim > 1}
    assert all(p.ndim == 1 for p in rest["params"]) and rest["params"]  # biases (and norms) are not decayed
    for group in optimizer.param_groups:
        assert (group["lr"], group["momentum"], group["nesterov"], group["dampening"]) == (r["lr"], 0.9, False, 0.0)

    scheduler, interval = build_scheduler(cfg.sched, optimizer, epochs=30, total_steps=30 * 6, maximize=True)
    assert interval == "epoch"
    lrs = []
    for _ in range(17):  # 17 epochs: (no-op) optimizer steps, then a validation accuracy that never improves
        optimizer.step()
        after_validation(scheduler, interval, 0.5)
        lrs.append(optimizer.param_groups[0]["lr"])
    lr0 = r["lr"]
    if r["sched"] == "plateau":
        assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.mode == "max"
        # epoch 1 sets the best; after 5 more without improvement (patience 5) the next one divides by 10
        assert lrs[:6] == [lr0] * 6
        assert lrs[6] == pytest.approx(lr0 / 10, rel=1e-12) and lrs[12] == pytest.approx(lr0 / 100, rel=1e-12)
    else:
        assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
        # "decrease learning rate by 4% every 8 epochs": lr after epoch e is 0.01 * 0.96 ** (e // 8)
        assert lrs == pytest.approx([lr0 * 0.96 ** (epoch // 8) for epoch in range(1, 18)], rel=1e-12)
        assert lrs[7] == pytest.approx(0.0096, rel=1e-12) and lrs[15] == pytest.approx(0.009216, rel=1e-12)


def test_values_given_on_the_command_line_win_over_the_preset():
    cfg, choices = make_config("experiment=vgg", "model.depth=11", "trainer.epochs=5", "optim.lr=0.02",
                               "data.batch_size=64", "reg.weight_decay=0", "model.dropout=0.3")
    assert (cfg.model.depth, cfg.trainer.epochs, cfg.optim.lr, cfg.data.batch_size) == (11, 5, 0.02, 64)
    assert (cfg.reg.weight_decay, cfg.model.dropout) == (0, 0.3)
    assert cfg.init.scheme == "xavier_uniform" and cfg.sched.factor == 0.1  # the rest of the recipe stays
    # Hydra applies value overrides after composing, so their place on the command line does not matter.
    cfg, _ = make_config("optim.lr=0.05", "experiment=resnet")
    assert cfg.optim.lr == 0.05
    # A group option given on the command line wins over the preset's choice too.
    cfg, choices = make_config("experiment=resnet", "init=xavier_uniform", "model.depth=32")
    assert choices["init"] == "xavier_uniform" and cfg.init.scheme == "xavier_uniform" and cfg.model.depth == 32


def test_swapping_a_group_the_preset_tunes_keeps_its_keys_until_removed():
    """experiment=alexnet sched=cosine keeps the preset's sched.factor, which cosine does not take:
    refused in one line; ~sched.factor drops it."""
    cfg, _ = make_config("experiment=alexnet", "sched=cosine")
    assert cfg.sched.factor == 0.1
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.01)
    with pytest.raises(UserError, match="CosineAnnealingLR refused its settings.*factor"):
        build_scheduler(cfg.sched, optimizer, epochs=30, total_steps=30)
    cfg, _ = make_config("experiment=alexnet", "sched=cosine", "~sched.factor")
    scheduler, _ = build_scheduler(cfg.sched, optimizer, epochs=30, total_steps=30)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 30


def test_no_experiment_leaves_the_defaults_alone():
    cfg, choices = make_config()
    assert choices["experiment"] is None
    assert (choices["model"], choices["optim"], choices["sched"], choices["reg"]) == ("mlp", "adam", "cosine", "none")
    assert cfg.data.batch_size == 64


# Kept small so a real run takes seconds: VGG-11 instead of VGG-16; two optimizer steps.
SHORT = {"vgg": ("model.depth=11",)}


@pytest.mark.parametrize("name", NAMES)
def test_preset_trains_on_the_digits(tmp_path, name):
    r = RECIPES[name]
    summary = train(tmp_path, f"experiment={name}", *SHORT.get(name, ()), "trainer.max_steps=2", "trainer.epochs=1",
                    "trainer.checkpoint=false", "logger.hparams=false")
    assert summary["status"] == "finished" and summary["steps"] == 2 and summary["epochs"] == 1
    assert summary["choices"]["experiment"] == name and summary["choices"]["model"] == r["model"]
    hp = summary["hparams"]
    assert (hp["optim.lr"], hp["optim.momentum"], hp["reg.weight_decay"], hp["data.batch_size"]) == \
        (r["lr"], 0.9, r["weight_decay"], r["batch_size"])
    assert math.isfinite(summary["test"]["loss"]) and 0.0 <= summary["test"]["acc"] <= 1.0
