"""logger.diagnostics (issue 5, "babysitting the learning process"), the ratio warnings and the NaN guard."""

import copy
import logging
import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from dlrun.errors import UserError
from dlrun.monitor.diagnostics import Diagnostics, DiagnosticsSettings
from dlrun import checkpoint
from tests.conftest import make_config, train, dlrun_here

FAST = ("logger.hparams=false", "trainer.checkpoint=false")


def events(run_dir):
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "histograms": 0, "images": 0,
                                                                "tensors": 0, "compressedHistograms": 0})
    acc.Reload()
    return acc


def scalar(acc, tag):
    return {e.step: e.value for e in acc.Scalars(tag)}


def diagnose(model, x):
    """One diagnostics step by hand on `model`: forward with hooks, backward, read back."""
    diag = Diagnostics(model, DiagnosticsSettings(every=1))
    diag.start()
    out = model(x)
    diag.stop()
    out = out[0] if isinstance(out, tuple) else out  # an LSTM's (output, state)
    out.square().mean().backward()
    diag.gradients()
    return diag.read()


# ------------------------------------------------------------------------------ in the event files
def test_mlp_run_logs_histograms_norms_activation_stats_and_the_gap(tmp_path):
    # 2 epochs of 21 steps; one logging window an epoch, so train/acc at step 21 is the epoch's accuracy.
    train(tmp_path, "trainer.epochs=2", "model.hidden=[32,16]", "logger.every=21", "logger.diagnostics.every=10",
          *FAST)
    acc = events(tmp_path)
    params = [f"{i}.{kind}" for i in (1, 3, 5) for kind in ("weight", "bias")]
    histograms = set(acc.Tags()["histograms"])
    assert {f"weights/{p}" for p in params} | {f"grads/{p}" for p in params} <= histograms
    assert {"activations/2", "activations/4"} <= histograms
    scalars = set(acc.Tags()["scalars"])
    assert {f"grad_norm/{p}" for p in params} <= scalars
    for layer in (2, 4):
        assert {f"activations/{layer}/{s}" for s in ("mean", "std", "dead")} <= scalars
        dead = scalar(acc, f"activations/{layer}/dead")
        assert sorted(dead) == [0, 10, 20, 30, 40] and all(0 <= v < 1 for v in dead.values())
    assert all(v > 0 for v in scalar(acc, "grad_norm/1.weight").values())
    assert acc.Tags()["images"] == []  # an MLP has no conv layer
    hist = acc.Histograms("weights/1.weight")[0]
    assert hist.step == 0 and hist.histogram_value.num == 64 * 32
    assert sum(hist.histogram_value.bucket) == 64 * 32
    # val/gap = the epoch's train accuracy - val/acc, each epoch.
    gap, train_acc, val_acc = scalar(acc, "val/gap"), scalar(acc, "train/acc"), scalar(acc, "val/acc")
    assert sorted(gap) == [21, 42]
    for step in gap:
        assert gap[step] == pytest.approx(train_acc[step] - val_acc[step], abs=1e-6)


def test_lenet_run_logs_saturation_and_the_first_conv_filters(tmp_path):
    train(tmp_path, "model=lenet", "trainer.max_steps=3", "logger.diagnostics.every=2", *FAST)
    acc = events(tmp_path)
    images = acc.Tags()["images"]
    assert images == ["filters/features.0"]
    image = acc.Images("filters/features.0")[0]
    assert image.step == 3  # one epoch (cut to 3 steps)
    # 6 filters of 5 x 5, each scaled 7x to 35 px (>= 32), in a 3 x 2 grid with 1 px of padding
    assert (image.width, image.height) == (3 * 35 + 4, 2 * 35 + 3)
    scalars = set(acc.Tags()["scalars"])
    tanh_layers = [t.rsplit("/", 1)[0] for t in scalars if t.endswith("/saturated")]
    assert len(tanh_layers) >= 3  # LeNet's tanh after each conv and hidden Linear
    for layer in tanh_layers:
        assert sorted(scalar(acc, f"{layer}/saturated")) == [0, 2]
        assert f"{layer}/mean" in scalars and f"{layer}/std" in scalars


def test_every_zero_turns_all_diagnostics_off_but_the_gap(tmp_path):
    train(tmp_path, "model=lenet", "trainer.max_steps=3", "logger.diagnostics.every=0", *FAST)
    acc = events(tmp_path)
    assert acc.Tags()["histograms"] == [] and acc.Tags()["images"] == []
    scalars = set(acc.Tags()["scalars"])
    assert not {t for t in scalars if t.startswith(("grad_norm/", "activations/", "weights/", "grads/"))}
    assert "val/gap" in scalars


def test_a_disabled_writer_computes_nothing(tmp_path):
    from dlrun.train.assembly import build_parts, build_trainer

    cfg, _ = make_config("trainer.max_steps=2", "trainer.device=cpu")
    trainer = build_trainer(build_parts(cfg), None)
    assert cfg.logger.diagnostics.every > 0 and "dlrun.diagnostics" not in trainer.callbacks.named


# --------------------------------------------------------------------------- the numbers themselves
def test_dead_fraction_of_a_relu_layer_with_a_hopeless_bias_is_one():
    torch.manual_seed(0)
    dead = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
    healthy = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
    nn.init.constant_(dead[0].bias, -100.0)
    x = torch.randn(64, 6)
    assert diagnose(dead, x)[0]["activations/1/dead"] == 1.0
    assert diagnose(healthy, x)[0]["activations/1/dead"] < 0.2


def test_relu_reused_in_one_forward_gets_one_name_a_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.relu = nn.Linear(4, 4), nn.ReLU()

        def forward(self, x):
            return self.relu(self.fc(self.relu(x)))

    scalars, histograms = diagnose(Twice(), torch.randn(8, 4))
    assert {"activations/relu/dead", "activations/relu#2/dead"} <= set(scalars)
    assert {"activations/relu", "activations/relu#2"} <= set(histograms)


def test_tanh_fed_large_inputs_is_reported_saturated():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh())
    x = torch.randn(32, 16)
    big = diagnose(model, x * 100)[0]["activations/1/saturated"]
    small = diagnose(model, x)[0]["activations/1/saturated"]
    assert big > 0.9 and small < 0.1


def test_recurrent_output_is_a_hidden_layer_with_saturation():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 8, batch_first=True)
    scalars, histograms = diagnose(lstm, torch.randn(4, 5, 3))
    assert {"activations/LSTM/mean", "activations/LSTM/std", "activations/LSTM/saturated"} <= set(scalars)
    assert 0 <= scalars["activations/LSTM/saturated"] <= 1


def test_grad_norm_is_the_norm_of_that_step_gradient(tmp_path):
    """The first step's grad_norm/<name> against torch's norm of the gradient of the same batch."""
    from dlrun.train.assembly import build_parts, build_trainer

    cfg, _ = make_config("trainer.max_steps=1", "trainer.device=cpu", "model.hidden=[32]", "reg=l2",
                         "logger.diagnostics.every=1", *FAST)
    parts = build_parts(cfg)
    trainer = build_trainer(parts, tmp_path / "tb")
    # The same first batch, by the same shuffle generator, through a copy of the same weights.
    shuffle = torch.Generator().manual_seed(0)
    shuffle.set_state(trainer.shuffle.get_state())
    index = torch.randperm(len(parts.data.train), generator=shuffle)[:parts.data.batch_size]
    twin = copy.deepcopy(parts.model).train()
    x, y = parts.data.batch("train", index)
    loss = nn.functional.cross_entropy(twin(x), y)
    loss = loss + 0.5 * 1e-4 * sum(p.square().sum() for n, p in twin.named_parameters() if n.endswith("weight"))
    loss.backward()
    before = {n: p.detach().clone() for n, p in twin.named_parameters()}
    try:
        trainer.fit()
    finally:
        trainer.writer.close()
    acc = events(tmp_path)
    for name, p in twin.named_parameters():
        logged = scalar(acc, f"grad_norm/{name}")[0]
        assert logged == pytest.approx(p.grad.norm().item(), rel=1e-5), name
        hist = acc.Histograms(f"weights/{name}")[0].histogram_value  # the weights before the step
        assert (hist.min, hist.max) == pytest.approx((before[name].min().item(), before[name].max().item()))


# ------------------------------------------------------------------------------ ratio warnings
RATIO_RUN = ("trainer.epochs=6", "logger.ratio_every=10", "logger.diagnostics.every=0", *FAST)


def ratio_warnings(tmp_path, caplog, *overrides):
    with caplog.at_level(logging.WARNING, logger="dlrun"):
        train(tmp_path, *RATIO_RUN, *overrides)
    return [r.getMessage() for r in caplog.records if "update/weight ratio" in r.getMessage()]


def test_a_too_high_learning_rate_is_named(tmp_path, caplog):
    warnings = ratio_warnings(tmp_path, caplog, "optim=rmsprop", "optim.lr=0.02", "sched=constant")
    assert warnings and all("likely too high (optim.lr=0.02)" in w for w in warnings)
    assert warnings[0].startswith("epoch 5: ") and "weight" in warnings[0]


def test_a_too_low_learning_rate_is_named(tmp_path, caplog):
    warnings = ratio_warnings(tmp_path, caplog, "optim=sgd", "optim.lr=1e-7", "sched=constant")
    assert warnings and all("likely too low (optim.lr=1e-07)" in w for w in warnings)
    assert "\n" not in warnings[0]


def test_a_good_learning_rate_and_a_cosine_tail_warn_nothing(tmp_path, caplog):
    # Adam 1e-3 with cosine to 0: the last epochs' ratios fall far below 1e-5 by design.
    assert ratio_warnings(tmp_path, caplog) == []


# ---------------------------------------------------------------------------------- NaN guard
def test_a_diverging_cli_run_exits_with_one_line_naming_the_step_and_the_lr(tmp_path):
    result = dlrun_here("train", "optim=sgd", "optim.lr=1e6", "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(r"dlrun train: error: training diverged: the loss was (nan|inf) at step \d+ \(epoch 1\); "
                    r"the learning rate is likely too high or the init too large: lower optim\.lr", lines[0])
    assert "optim.lr (now 1e+06)" in lines[0] and "no checkpoint was written by this run" in lines[0]


def _good_epoch_then(tmp_path):
    """A Trainer after one good epoch (checkpointed), its last.pt's bytes, and the trainer."""
    from dlrun.train.assembly import build_parts, build_trainer

    cfg, _ = make_config("trainer.epochs=3", "trainer.device=cpu", "optim=sgd", "sched=constant",
                         "logger.hparams=false", "trainer.stop_at_epoch=1")
    trainer = build_trainer(build_parts(cfg), tmp_path / "tb", tmp_path / "checkpoints")
    assert trainer.fit() == "stopped"
    last = tmp_path / "checkpoints" / "last.pt"
    trainer.stop_at_epoch = None
    trainer.checkpoints = checkpoint.BackgroundWriter()  # fit closed the first one
    return trainer, last, last.read_bytes()


def _check_untouched(last, good_bytes):
    assert last.read_bytes() == good_bytes
    state = checkpoint.load(last)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_divergence_after_a_good_epoch_keeps_that_epochs_checkpoint(tmp_path):
    trainer, last, good = _good_epoch_then(tmp_path)
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e6
    with pytest.raises(UserError) as error:
        try:
            trainer.fit()
        finally:
            trainer.writer.close()
    message = str(error.value)
    assert "\n" not in message
    # The first non-finite step of the window flushed at the epoch's end (step 42), not its last.
    step = int(re.search(r"the loss was (?:nan|inf|-inf) at step (\d+) \(epoch 2\)", message).group(1))
    assert 21 < step < 42
    assert f"the last good checkpoint is {last} (epoch 1)" in message
    assert "lower optim.lr (now 0.1, 1e+06 when it diverged)" in message
    _check_untouched(last, good)


def test_a_nan_validation_loss_stops_before_the_epochs_checkpoint(tmp_path, monkeypatch):
    trainer, last, good = _good_epoch_then(tmp_path)
    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda split, model=None: {**evaluate(split, model), "loss": math.nan})
    with pytest.raises(UserError, match=r"the validation loss is nan after epoch 2 \(step 42\).*"
                                        r"the last good checkpoint is .*last\.pt \(epoch 1\)"):
        try:
            trainer.fit()
        finally:
            trainer.writer.close()
    _check_untouched(last, good)
    assert not (tmp_path / "checkpoints" / "best.pt").exists() or checkpoint.load(
        tmp_path / "checkpoints" / "best.pt")["epoch"] == 1
