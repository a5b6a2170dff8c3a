"""reg= and loss= on the real training path: penalties in the logged loss, maxnorm, early stopping."""

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_config, refused, train
from dlrun.build import build, build_model
from dlrun import checkpoint
from dlrun.train.loop import Trainer

QUICK = ["model.hidden=[32]", "trainer.checkpoint=false", "logger.hparams=false"]


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_l2_and_l1_penalties_are_the_logged_reg_loss_and_raise_the_initial_loss(tmp_path):
    """The notes' check: with regularisation on, the initial loss goes up by the penalty."""
    first = {}
    for name, reg in (("none", []), ("l2", ["reg=l2", "reg.l2=0.1"]), ("l2_big", ["reg=l2", "reg.l2=1.0"]),
                      ("elastic", ["reg=elastic_net", "reg.l1=0.01", "reg.l2=0.1"])):
        run = tmp_path / name
        train(run, *reg, *QUICK, "trainer.max_steps=1", "logger.every=1")
        first[name] = (scalars(run, "train/loss")[0], scalars(run, "train/data_loss")[0],
                       scalars(run, "train/reg_loss")[0] if reg else 0.0)
    # Same seed, same init: the data loss is the same; the total is data + the penalty.
    for name in ("l2", "l2_big", "elastic"):
        loss, data_loss, reg_loss = first[name]
        assert data_loss == pytest.approx(first["none"][1], rel=1e-5)
        assert loss == pytest.approx(data_loss + reg_loss, rel=1e-5) and reg_loss > 0
    assert first["none"][0] < first["l2"][0] < first["l2_big"][0]
    # reg_loss at lambda 0.1 is exactly 0.05 * sum(W^2) of the initial weights: 10x less than at 1.0.
    assert first["l2_big"][2] == pytest.approx(10 * first["l2"][2], rel=1e-5)


def test_maxnorm_holds_after_every_step_of_a_real_run(tmp_path, monkeypatch):
    norms = []
    real_step = Trainer.train_step

    def train_step(self, x, y, mix=None):
        real_step(self, x, y, mix)
        norms.append(max(w.flatten(1).norm(dim=1).max().item() for w in self.constrained))

    monkeypatch.setattr(Trainer, "train_step", train_step)
    train(tmp_path, "reg=maxnorm", "reg.maxnorm=0.5", "optim.lr=0.05", *QUICK, "trainer.epochs=2")
    assert len(norms) == 2 * 21 and max(norms) <= 0.5 + 1e-6


@pytest.mark.parametrize("monitor,values,stop_epoch,best_epoch", [
    # patience 3, min_delta 0.01: gains of 0.005 and 0.009 do not count towards patience.
    ("val/acc", [0.50, 0.60, 0.605, 0.609, 0.60, 0.99], 5, 4),
    ("val/loss", [1.0, 0.8, 0.9, 0.7, 0.695, 0.70, 0.71, 0.1], 7, 5),
])
def test_early_stopping_stops_at_the_right_epoch_and_tests_the_best_checkpoint(tmp_path, monkeypatch, monitor,
                                                                                values, stop_epoch, best_epoch):
    scripted = iter(values)
    real_evaluate = Trainer.evaluate

    def evaluate(self, split, model=None, tta="none"):
        if split is self.data.val:
            value = next(scripted)
            return {"loss": value, "acc": 0.5} if monitor == "val/loss" else {"loss": 1.0, "acc": value}
        return real_evaluate(self, split, model, tta)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    summary = train(tmp_path, "reg=early_stopping", "reg.early_stopping.patience=3",
                    "reg.early_stopping.min_delta=0.01", f"trainer.monitor={monitor}", "trainer.epochs=20",
                    "model.hidden=[32]", "logger.hparams=false")
    assert summary["status"] == "early_stopped" and summary["epochs"] == stop_epoch
    # best.pt is by strict improvement (0.609 at epoch 4 beats 0.60; 0.695 at epoch 5 beats 0.7), and
    # it is the one tested: its weights give the test numbers in summary.json.
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best"]["epoch"] == best_epoch
    cfg, _ = make_config("model.hidden=[32]")
    data = build(cfg.data)
    model = build_model(cfg, data)
    model.load_state_dict(best["model"])
    model.eval()
    with torch.no_grad():
        x, y = data.batch("test", slice(None))
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert summary["test"]["acc"] == pytest.approx(acc, abs=1e-6)


def test_label_smoothing_and_multi_margin_reach_the_trainer(tmp_path):
    plain = train(tmp_path / "plain", *QUICK, "trainer.max_steps=1", "logger.every=1")
    smooth = train(tmp_path / "smooth", "reg=label_smoothing", "reg.label_smoothing=0.5", *QUICK,
                   "trainer.max_steps=1", "logger.every=1")
    train(tmp_path / "hinge", "loss=multi_margin", *QUICK, "trainer.max_steps=1", "logger.every=1",
                  "init=small_normal")
    assert smooth["hparams"]["reg.label_smoothing"] == 0.5 and plain["test"]["loss"] != smooth["test"]["loss"]
    # A small-init net's scores are all about equal: the notes' hinge starts near C - 1 = 9.
    assert scalars(tmp_path / "hinge", "train/loss")[0] == pytest.approx(9.0, abs=0.05)
    assert json.loads((tmp_path / "hinge" / "summary.json").read_text())["choices"]["loss"] == "multi_margin"


def test_weight_decay_with_sgd_equals_l2_and_is_decoupled_for_adam(tmp_path):
    finals = {}
    for name, reg in (("l2", ["reg=l2", "reg.l2=0.1"]), ("wd", ["reg=weight_decay", "reg.weight_decay=0.1"])):
        train(tmp_path / name, *reg, "optim=sgd", "model.hidden=[32]", "trainer.max_steps=3", "logger.hparams=false")
        finals[name] = checkpoint.load(tmp_path / name / "checkpoints" / "last.pt")
    for key, value in finals["l2"]["model"].items():
        assert torch.allclose(value, finals["wd"]["model"][key], atol=1e-6), key
    groups = finals["wd"]["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and len(groups[0]["params"]) == 2  # the 2 weights
    train(tmp_path / "adam", "reg=weight_decay", "model.hidden=[32]", "trainer.max_steps=1", "logger.hparams=false")
    adam = checkpoint.load(tmp_path / "adam" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert adam[0]["decoupled_weight_decay"] is True and adam[0]["weight_decay"] == 5e-4


def test_a_run_resumed_mid_patience_stops_early_at_the_epoch_the_unbroken_run_does(tmp_path, monkeypatch):
    """Early stopping's count is in each epoch's checkpoint: stopped after epoch 3 (two validations
    without gain so far), the resumed run stops after epoch 4, as the unbroken one. (Its count was
    saved before the epoch's validation was counted: the resumed run went on to epoch 5.)"""
    values = {}
    real_evaluate = Trainer.evaluate

    def evaluate(self, split, model=None, tta="none"):
        if split is self.data.val:  # by epoch: improves at 1, then never
            return {"loss": 1.0, "acc": [0.5, 0.6, 0.6, 0.6, 0.6, 0.6][self.epoch - 1]}
        return real_evaluate(self, split, model, tta)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    common = ("reg=early_stopping", "reg.early_stopping.patience=2", "trainer.epochs=6", "model.hidden=[16]",
              "logger.hparams=false")
    values["whole"] = train(tmp_path / "whole", *common)
    train(tmp_path / "first", *common, "trainer.stop_at_epoch=3")
    values["resumed"] = train(tmp_path / "resumed", *common, f"trainer.resume={tmp_path / 'first'}")
    for run in values.values():
        assert run["status"] == "early_stopped" and run["epochs"] == 4 and run["best"]["epoch"] == 2
    assert values["resumed"]["test"] == values["whole"]["test"]


@pytest.mark.parametrize("override,message", [
    ("reg.maxnorm=0", r"reg.maxnorm=0 must be a number > 0"),
    ("reg.l1=-1", r"reg.l1=-1 must be a number >= 0"),
    ("reg.dropout=1.0", r"reg.dropout=1.0 must be a number in \[0, 1\)"),
    ("reg.early_stopping.patience=0", r"reg.early_stopping.patience=0 must be an integer >= 1"),
    ("init.scheme=glorious", r"init.scheme='glorious' must be one of default, small_normal,"),
    ("optim.lr=-0.1", r"optim.lr=-0.1 must be a number > 0"),
])
def test_bad_reg_values_fail_before_training_in_one_line(tmp_path, override, message):
    from dlrun.errors import UserError

    with pytest.raises(UserError, match=message):
        train(tmp_path, "reg=[maxnorm,l1,dropout,early_stopping]", override, *QUICK)
    assert refused(tmp_path)


def test_ema_weights_follow_the_recurrence_and_are_validated_tested_and_checkpointed(tmp_path, monkeypatch):
    """e_1 = w_1, e_t = d e_{t-1} + (1 - d) w_t after each optimizer step (torch's AveragedModel)."""
    weights = []
    real_step = Trainer.train_step

    def train_step(self, x, y, mix=None):
        real_step(self, x, y, mix)
        weights.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    monkeypatch.setattr(Trainer, "train_step", train_step)
    d = 0.9
    summary = train(tmp_path, f"trainer.ema_decay={d}", "model.hidden=[16]", "trainer.max_steps=4",
                    "logger.hparams=false")
    ema = weights[0]
    for w in weights[1:]:
        ema = {k: d * ema[k] + (1 - d) * w[k] if w[k].is_floating_point() else w[k] for k in w}
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["ema"]
    assert int(saved["n_averaged"]) == 4
    for key, value in ema.items():
        assert torch.allclose(saved[f"module.{key}"], value, atol=1e-6), key
    assert set(summary["test_ema"]) == {"loss", "acc"} and summary["test_ema"] != summary["test"]
    assert scalars(tmp_path, "val_ema/acc")


def test_ema_is_torchs_averaged_model_to_the_bit_also_across_a_checkpoint():
    """dlrun's EMA keeps AveragedModel's update (and its n_averaged buffer) but counts on the host."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from dlrun.train.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    ours, torchs = EMA(model, 0.9), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for step in range(5):
        model(torch.randn(16, 4)).sum().backward()  # BatchNorm's running statistics (and its count) move
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        if step == 2:  # a resumed run: a fresh EMA loads the state; its host count comes from the buffer
            ours = EMA(model, 0.9)
            ours.load_state_dict(torchs.state_dict())
            assert ours.updates is None
        ours.update_parameters(model)
        torchs.update_parameters(model)
        for key, value in torchs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), (step, key)
    assert ours.updates == int(ours.n_averaged) == 5


def test_grad_clip_by_value_clamps_each_gradient_element(tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(max(p.grad.abs().max().item() for g in self.param_groups for p in g["params"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train(tmp_path, "trainer.grad_clip=0.001", "trainer.grad_clip_mode=value", *QUICK, "trainer.max_steps=3")
    assert len(seen) == 3 and max(seen) == pytest.approx(0.001)  # clamped to 0.001 (in float32)


def test_a_tie_in_validation_accuracy_goes_to_the_lower_validation_loss(tmp_path, monkeypatch):
    scripted = iter([(0.9, 0.50), (1.0, 0.30), (1.0, 0.10), (1.0, 0.20), (0.95, 0.05)])  # (acc, loss) per epoch
    real_evaluate = Trainer.evaluate

    def evaluate(self, split, model=None, tta="none"):
        if split is self.data.val:
            acc, loss = next(scripted)
            return {"loss": loss, "acc": acc}
        return real_evaluate(self, split, model, tta)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    summary = train(tmp_path, "trainer.epochs=5", "model.hidden=[16]", "logger.hparams=false")
    assert summary["best"]["epoch"] == 3 and summary["best"]["val"] == {"acc": 1.0, "loss": 0.10}
