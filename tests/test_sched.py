"""Learning-rate schedules: each one's lr sequence against its closed form, warmup included;
ReduceLROnPlateau on scripted metrics, directly and inside the Trainer; per-step lr in TensorBoard."""

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dlrun.errors import UserError
from dlrun.optim import Warmup, after_optimizer_step, after_validation, build_optimizer, build_scheduler
from dlrun.paths import CONFIG_DIR
from dlrun.schema import validate
from dlrun import checkpoint
from dlrun.train.loop import Trainer
from tests.conftest import make_config, train

SCHEDULES = sorted(p.stem for p in (Path(CONFIG_DIR) / "sched").glob("*.yaml"))
STEPS = 100
LR0 = 1.0  # so "to 1e-9" is both absolute and relative to the peak


def cosine_anneal(start, end, pct):
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


# The closed forms, as the YAML comments write them: lr(t) for schedule step t (t schedule steps
# taken), a run of T schedule steps, lr0 = optim.lr, p = the sched config.
CLOSED_FORMS = {
    "constant": lambda t, T, lr0, p: lr0 * (p.factor if t < p.total_iters else 1.0),
    "step": lambda t, T, lr0, p: lr0 * p.gamma ** (t // p.step_size),
    "multistep": lambda t, T, lr0, p: lr0 * p.gamma ** sum(m <= t for m in p.milestones),
    "exponential": lambda t, T, lr0, p: lr0 * p.gamma ** t,
    "inverse_time": lambda t, T, lr0, p: lr0 / (1 + p.k * t),
    "inverse_sqrt": lambda t, T, lr0, p: lr0 / math.sqrt(1 + p.k * t),
    "cosine": lambda t, T, lr0, p: p.eta_min + (lr0 - p.eta_min) * (1 + math.cos(math.pi * t / T)) / 2,
    "linear": lambda t, T, lr0, p: lr0 * (p.start_factor + (p.end_factor - p.start_factor) * min(t, T) / T),
    "onecycle": lambda t, T, lr0, p: (
        cosine_anneal(lr0 / p.div_factor, lr0, t / (p.pct_start * T - 1)) if t <= p.pct_start * T - 1 else
        cosine_anneal(lr0, lr0 / (p.div_factor * p.final_div_factor),
                      (t - (p.pct_start * T - 1)) / (T - 1 - (p.pct_start * T - 1)))),
}


def dummy(*overrides, epochs, total_steps, maximize=True):
    """A one-parameter SGD optimizer and the schedule, both built from the real configs, checked as a run checks them."""
    cfg, _ = make_config("optim=sgd", f"optim.lr={LR0}", *overrides)
    validate(cfg)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(cfg.optim, [param])
    scheduler, interval = build_scheduler(cfg.sched, optimizer, epochs, total_steps, maximize=maximize)
    return cfg.sched, optimizer, scheduler, interval


def drive(optimizer, scheduler, interval, steps, steps_per_epoch, metrics=None):
    """The lr each optimizer step runs at, stepping the schedule exactly as the Trainer does."""
    lrs = []
    for t in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: changes nothing, but torch sees the order it wants
        after_optimizer_step(scheduler, interval)
        if (t + 1) % steps_per_epoch == 0:
            epoch = (t + 1) // steps_per_epoch
            after_validation(scheduler, interval, metrics[epoch - 1] if metrics else 0.0)
    return lrs


def warmup_factor(t, n):
    return min(1.0, (t + 1) / n) if n else 1.0


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize("name", [s for s in SCHEDULES if s != "plateau"])
def test_per_step_schedule_follows_its_closed_form(name, warmup):
    assert name in CLOSED_FORMS, f"configs/sched/{name}.yaml has no closed form in this test: add one"
    p, optimizer, scheduler, interval = dummy(f"sched={name}", "sched.interval=step", f"sched.warmup_steps={warmup}",
                                              epochs=1, total_steps=STEPS)
    assert interval == "step" and isinstance(scheduler, Warmup) == (warmup > 0)
    lrs = drive(optimizer, scheduler, interval, STEPS, steps_per_epoch=STEPS)
    expected = [CLOSED_FORMS[name](t, STEPS, LR0, p) * warmup_factor(t, warmup) for t in range(STEPS)]
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-9, list(zip(lrs, expected))
    if warmup:  # the first step at lr0/N of the schedule, the N-th at the full schedule
        assert lrs[0] == pytest.approx(CLOSED_FORMS[name](0, STEPS, LR0, p) / warmup, abs=1e-12)
        assert lrs[warmup - 1] == pytest.approx(CLOSED_FORMS[name](warmup - 1, STEPS, LR0, p), abs=1e-12)


@pytest.mark.parametrize("name", [s for s in SCHEDULES if s != "plateau"])
def test_per_epoch_schedule_under_a_per_step_warmup(name):
    """interval=epoch: the schedule moves at epoch ends, the warmup every optimizer step."""
    epochs, per_epoch, warmup = 10, 10, 15
    p, optimizer, scheduler, interval = dummy(f"sched={name}", "sched.interval=epoch", f"sched.warmup_steps={warmup}",
                                              epochs=epochs, total_steps=epochs * per_epoch)
    lrs = drive(optimizer, scheduler, interval, epochs * per_epoch, steps_per_epoch=per_epoch)
    expected = [CLOSED_FORMS[name](t // per_epoch, epochs, LR0, p) * warmup_factor(t, warmup)
                for t in range(epochs * per_epoch)]
    assert max(abs(a - b) for a, b in zip(lrs, expected)) < 1e-9


def test_plateau_halves_after_patience_epochs_without_improvement():
    p, optimizer, scheduler, interval = dummy("sched=plateau", epochs=20, total_steps=20, maximize=True)
    assert (p.factor, p.patience) == (0.5, 5) and interval == "epoch"
    acc = [0.5, 0.6, 0.7] + [0.7] * 6 + [0.65] * 5 + [0.8, 0.8]
    lrs = drive(optimizer, scheduler, interval, len(acc) + 1, steps_per_epoch=1, metrics=acc + [0.0])
    # lrs[e] is the lr epoch e (0-based) trains at. Best 0.7 after epoch 2; epochs 3..8 do not beat
    # it: after the 6th of them (more than patience 5) the lr halves; the count restarts, and
    # epochs 9..14 (0.65, then the 0.8 of epoch 14 improves) do not reach 6 again.
    assert lrs[:10] == [1.0] * 9 + [0.5]
    assert lrs[10:] == [0.5] * (len(lrs) - 10)
    # mode follows the monitor: a falling val/loss is improvement, a flat one is not.
    _, optimizer, scheduler, interval = dummy("sched=plateau", "sched.patience=1", epochs=6, total_steps=6,
                                              maximize=False)
    loss = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8]
    lrs = drive(optimizer, scheduler, interval, 7, steps_per_epoch=1, metrics=loss + [0.0])
    assert lrs == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("monitor,values,expected", [
    # patience 1: the lr halves at the end of the 2nd epoch in a row without improvement.
    ("val/acc", [0.5, 0.6, 0.6, 0.6, 0.7, 0.7], [1, 1, 1, 0.5, 0.5, 0.5]),
    ("val/loss", [1.0, 0.9, 0.95, 0.9, 0.5, 0.4], [1, 1, 1, 0.5, 0.5, 0.5]),
])
def test_trainer_steps_plateau_with_the_monitored_validation_metric(tmp_path, monkeypatch, monitor, values, expected):
    scripted = iter(values)
    real_evaluate, real_end_epoch = Trainer.evaluate, Trainer._log_epoch
    lrs = []

    def evaluate(self, split, model=None, tta="none"):
        if split is self.data.val:
            value = next(scripted)
            return {"loss": value, "acc": 0.5} if monitor == "val/loss" else {"loss": 1.0, "acc": value}
        return real_evaluate(self, split, model, tta)

    def end_epoch(self, *args):
        lrs.append(self.optimizer.param_groups[0]["lr"])  # the lr the next epoch trains at
        real_end_epoch(self, *args)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "_log_epoch", end_epoch)
    lr0 = 0.01
    train(tmp_path, "sched=plateau", "sched.patience=1", f"trainer.monitor={monitor}", f"optim.lr={lr0}",
          "trainer.epochs=6", "data.batch_size=512", "model.hidden=[8]", "trainer.checkpoint=false",
          "logger.hparams=false")
    assert lrs == pytest.approx([lr0 * f for f in expected])


def lr_points(run_dir):
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("lr")]


def per_step(points, steps):
    """The lr of each step 1..steps from the logged points (each holds until the next one)."""
    lrs, i = [], 0
    for step in range(1, steps + 1):
        while i + 1 < len(points) and points[i + 1][0] <= step:
            i += 1
        lrs.append(points[i][1])
    return lrs


def test_tensorboard_has_the_lr_of_every_step_warmup_included(tmp_path):
    per_epoch, epochs, warmup, lr0 = 11, 3, 15, 1e-3  # 1294 samples / 128 = 11 steps an epoch
    summary = train(tmp_path / "epoch", "sched=cosine", f"sched.warmup_steps={warmup}", "data.batch_size=128",
                    f"trainer.epochs={epochs}", "logger.every=4", "model.hidden=[16]", "logger.hparams=false")
    assert summary["steps"] == per_epoch * epochs
    points = lr_points(tmp_path / "epoch")
    expected = [lr0 * (1 + math.cos(math.pi * (t // per_epoch) / epochs)) / 2 * min(1, (t + 1) / warmup)
                for t in range(per_epoch * epochs)]
    assert per_step(points, len(expected)) == pytest.approx(expected, rel=1e-6)  # TensorBoard keeps float32
    # Every warmup step has its point; after it, the per-epoch lr is flat: its first and last step.
    assert [s for s, _ in points] == list(range(1, warmup + 1)) + [22, 23, 33]

    overrides = ("sched=onecycle", "data.batch_size=128", "trainer.epochs=2", "logger.every=4", "model.hidden=[16]",
                 "logger.hparams=false")
    train(tmp_path / "step", *overrides)
    points = lr_points(tmp_path / "step")
    assert [s for s, _ in points] == list(range(1, 23))  # a per-step schedule: every step has its point
    p = make_config(*overrides)[0].sched
    expected = [CLOSED_FORMS["onecycle"](t, 22, lr0, p) for t in range(22)]
    assert [v for _, v in points] == pytest.approx(expected, rel=1e-6)


def test_a_run_resumed_mid_warmup_ends_exactly_like_an_unbroken_one(tmp_path):
    overrides = ("sched=step", "sched.step_size=1", "sched.warmup_steps=30", "trainer.epochs=3", "model.hidden=[16]",
                 "logger.hparams=false")
    whole = train(tmp_path / "whole", *overrides)
    train(tmp_path / "first", *overrides, "trainer.stop_at_epoch=1")  # 21 of the 30 warmup steps done
    resumed = train(tmp_path / "resumed", *overrides, f"trainer.resume={tmp_path / 'first'}")
    assert resumed["test"] == whole["test"] and resumed["steps"] == whole["steps"] == 63
    a = checkpoint.load(tmp_path / "whole/checkpoints/last.pt")
    b = checkpoint.load(tmp_path / "resumed/checkpoints/last.pt")
    assert a["scheduler"]["done"] == b["scheduler"]["done"] == 63
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == 1e-3 * 0.5 ** 3


@pytest.mark.parametrize("overrides,message", [
    (("sched.interval=batch",), "sched.interval='batch' must be one of epoch, step"),
    (("sched.warmup_steps=-1",), "sched.warmup_steps=-1 must be an integer >= 0"),
    (("sched.warmup_steps=5000",), "sched.warmup_steps=5000 is longer than the run (100 optimizer steps)"),
    (("sched=plateau", "sched.interval=step"), "sched=plateau is stepped with the validation metric after each epoch"),
    (("sched=plateau", "sched.factor=1"), "sched.factor=1 must be a number in (0, 1)"),
    (("sched=plateau", "sched.patience=-1"), "sched.patience=-1 must be an integer >= 0"),
    (("sched=step", "sched.step_size=0"), "sched.step_size=0 must be an integer >= 1"),
    (("sched=step", "sched.gamma=-0.5"), "sched.gamma=-0.5 must be a number > 0"),
    (("sched=multistep", "sched.milestones=[20,10]"), "sched.milestones=[20, 10] must be increasing integers >= 1"),
    (("sched=inverse_time", "sched.k=-1"), "sched.k=-1 must be a number >= 0"),
    (("sched=linear", "sched.start_factor=0"), "sched.start_factor=0 must be a number in (0, 1]"),
    (("sched=onecycle", "sched.pct_start=1.5"), "sched.pct_start=1.5 must be a number in (0, 1)"),
    (("sched=cosine", "sched.T_max=0"), "sched.T_max=0 must be an integer >= 1 or null (null: the whole run)"),
    # the schemas come from torch's signatures: a typo names the keys, a Literal's values are the choices
    (("sched=step", "+sched.gama=0.1"), "sched.gama: unknown key for torch.optim.lr_scheduler.StepLR; its keys: "
                                        "_target_, _partial_, step_size, gamma, interval, warmup_steps"),
    (("sched=exponential", "~sched.gamma"), "sched.gamma is not set; pass sched.gamma=... (a number > 0"),
    (("sched=onecycle", "sched.anneal_strategy=cosine"), "sched.anneal_strategy='cosine' must be one of cos, linear"),
    (("sched=onecycle", "sched.cycle_momentum=maybe"), "sched.cycle_momentum='maybe' must be auto or true or false"),
    (("sched=plateau", "+sched.mode=min"), "sched.mode: unknown key for torch.optim.lr_scheduler.ReduceLROnPlateau"),
    (("sched=step", "+sched.last_epoch=3"), "sched.last_epoch: unknown key for torch.optim.lr_scheduler.StepLR"),
    # a user's own class: its arguments pass, dlrun's own keys are still checked
    (("sched._target_=mypkg.MySchedule", "sched.interval=batch"), "sched.interval='batch' must be one of epoch, step"),
])
def test_bad_schedule_values_are_one_line(overrides, message):
    with pytest.raises(UserError) as error:
        dummy(*overrides, epochs=10, total_steps=100)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides,expected", [
    (("sched=plateau", "+sched.eps=1e-6"), {"eps": 1e-6}),
    (("sched=constant", "sched.total_iters=null"), {"total_iters": 10}),  # null: the whole run, as cosine's T_max
    (("sched=exponential", "sched._target_=torch.optim.lr_scheduler.PolynomialLR", "~sched.gamma", "+sched.power=2",
      "+sched.total_iters=null"), {"power": 2.0, "total_iters": 10}),
])
def test_every_argument_torch_takes_is_accepted_and_reaches_the_schedule(overrides, expected):
    """Schedule schemas come from torch's signatures, as the optimizers' do: ReduceLROnPlateau's eps
    needs no copy in dlrun, and a torch class no YAML names (PolynomialLR) gets its own."""
    _, _, scheduler, _ = dummy(*overrides, epochs=10, total_steps=100)
    assert {key: getattr(scheduler, key) for key in expected} == expected


def test_every_schedule_rule_names_an_argument_a_schedule_takes():
    """A rule under a misspelt name would never apply: each names some schedule's argument."""
    import inspect

    from dlrun import optim
    from dlrun.schema import SCHED_RULES

    classes = [c for m in (torch.optim.lr_scheduler, optim) for c in vars(m).values()
               if isinstance(c, type) and issubclass(c, torch.optim.lr_scheduler.LRScheduler)]
    arguments = {n for c in classes for p in inspect.signature(c).parameters for n in (p, f"{c.__name__}.{p}")}
    assert set(SCHED_RULES) <= arguments, set(SCHED_RULES) - arguments


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_survives_a_weights_only_checkpoint(name, tmp_path):
    """trainer.resume reads checkpoints with weights_only=True: each schedule's state (warmup
    included) must be plain data, and a restored schedule must go on exactly as the original."""
    overrides = (f"sched={name}", "sched.warmup_steps=7") + (() if name == "plateau" else ("sched.interval=step",))
    metrics = [0.5, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    _, optimizer, scheduler, interval = dummy(*overrides, epochs=10, total_steps=40)
    drive(optimizer, scheduler, interval, 20, steps_per_epoch=4, metrics=metrics)
    checkpoint.save_atomic({"model": {}, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           tmp_path / "s.pt")
    state = checkpoint.load(tmp_path / "s.pt")  # weights_only=True
    rest = drive(optimizer, scheduler, interval, 20, steps_per_epoch=4, metrics=metrics[5:])

    _, optimizer, scheduler, interval = dummy(*overrides, epochs=10, total_steps=40)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert drive(optimizer, scheduler, interval, 20, steps_per_epoch=4, metrics=metrics[5:]) == rest
