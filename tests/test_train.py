"""The training loop end to end, in-process on the digits and on npz files the tests write."""

import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from dlrun.errors import UserError
from dlrun import checkpoint
from tests.conftest import blobs, refused, train

# The summary.json numbers that must not depend on timing.
NUMBERS = ("status", "test", "best", "epochs", "steps", "params")
SMALL = ("trainer.epochs=3", "model.hidden=[32]")


def numbers(summary):
    return {k: summary[k] for k in NUMBERS}


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a = train(tmp_path / "a", *SMALL, "model.dropout=0.2")
    b = train(tmp_path / "b", *SMALL, "model.dropout=0.2")
    c = train(tmp_path / "c", *SMALL, "model.dropout=0.2", "trainer.seed=1")
    assert numbers(a) == numbers(b)
    assert numbers(a)["test"] != numbers(c)["test"]
    assert a["status"] == "finished" and a["epochs"] == 3 and a["steps"] == 3 * math.ceil(1294 / 64)
    assert a["choices"] == {"data": "digits", "model": "mlp", "init": "default", "reg": "none", "loss": "auto", "optim": "adam",
                            "sched": "cosine", "trainer": "default", "logger": "tensorboard", "augment": "none",
                            "callbacks": "none"}


@pytest.mark.parametrize("recipe", [
    ("optim=sgd", "sched=step", "sched.step_size=2", "model.dropout=0.3"),
    ("optim=adam", "sched=cosine", "sched.interval=step", "reg=l2", "model=lenet"),
])
def test_stopped_and_resumed_run_ends_exactly_like_an_unbroken_one(tmp_path, recipe):
    overrides = ("trainer.epochs=4", "logger.every=7", *recipe)
    whole = train(tmp_path / "whole", *overrides)
    first = train(tmp_path / "first", *overrides, "trainer.stop_at_epoch=2")
    assert first["status"] == "stopped" and first["epochs"] == 2 and first["test"] == {}
    resumed = train(tmp_path / "resumed", *overrides, f"trainer.resume={tmp_path / 'first'}")
    assert numbers(resumed) == numbers(whole)
    last_whole = checkpoint.load(tmp_path / "whole/checkpoints/last.pt")
    last_resumed = checkpoint.load(tmp_path / "resumed/checkpoints/last.pt")
    for name, tensor in last_whole["model"].items():
        assert torch.equal(tensor, last_resumed["model"][name]), name
    assert last_whole["optimizer"]["param_groups"][0]["lr"] == last_resumed["optimizer"]["param_groups"][0]["lr"]


def test_run_directory_holds_event_files_with_every_tag_and_hparams(tmp_path):
    summary = train(tmp_path, "trainer.epochs=2", "logger.every=5", "logger.ratio_every=10", "reg=l2")
    assert (tmp_path / "checkpoints/last.pt").is_file() and (tmp_path / "checkpoints/best.pt").is_file()
    tb = tmp_path / "tb"
    assert [p.is_file() for p in tb.iterdir()] == [True]  # one event file, no stray hparams subfolder
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/data_loss", "train/reg_loss", "train/acc", "val/loss", "val/acc",
                "lr", "grad_norm", "throughput", "test/acc", "test/loss"}
    assert expected <= tags
    ratio_tags = {t for t in tags if t.startswith("update_ratio/")}
    assert ratio_tags == {f"update_ratio/{i}.{kind}" for i in (1, 3, 5) for kind in ("weight", "bias")}
    for tag in ratio_tags:
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 5  # steps 0, 10, 20, 30, 40 of 42
        assert all(math.isfinite(v) and v > 0 for v in values)
    # L2 is on: the reg loss is logged and is part of the total loss.
    reg = [e.value for e in events.Scalars("train/reg_loss")]
    data = [e.value for e in events.Scalars("train/data_loss")]
    total = [e.value for e in events.Scalars("train/loss")]
    assert all(r > 0 for r in reg) and all(abs(t - d - r) < 1e-4 for t, d, r in zip(total, data, reg))
    assert [e.step for e in events.Scalars("val/acc")] == [21, 42]
    assert events.Scalars("test/acc")[0].value == pytest.approx(summary["test"]["acc"])
    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(1e-3)
    assert start.session_start_info.hparams["reg.l2"].number_value == pytest.approx(1e-4)


def test_max_steps_stops_mid_epoch_and_sizes_the_schedule(tmp_path):
    summary = train(tmp_path, "trainer.max_steps=30", "sched=cosine", "sched.interval=step")
    assert summary["steps"] == 30 and summary["epochs"] == 2
    last = checkpoint.load(tmp_path / "checkpoints/last.pt")
    assert last["scheduler"]["T_max"] == 30 and last["scheduler"]["last_epoch"] == 30
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_float_targets_train_a_regression_with_mse(npz, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    w = rng.normal(size=(5, 2))
    y = (x @ w).astype(np.float32)
    path = npz(x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    summary = train(tmp_path / "run", "data=arrays", f"data.path={path}", "trainer.epochs=40", "optim.lr=0.01", "model.hidden=[16]")
    assert summary["task"] == "regression" and set(summary["test"]) == {"loss"}
    assert summary["best"]["monitor"] == "val/loss"
    assert summary["test"]["loss"] < 0.05 * float(y.var())  # a linear map is easy to learn


def test_sequences_and_signals_from_npz_train_with_the_mlp(npz, tmp_path):
    x, y = blobs(120, features=12)
    path = npz(x_train=x[:100].reshape(100, 3, 4), y_train=y[:100], x_test=x[100:].reshape(20, 3, 4), y_test=y[100:])
    summary = train(tmp_path / "run", "data=arrays", f"data.path={path}", "data.layout=signal", "trainer.epochs=15")
    assert summary["test"]["acc"] >= 0.9


def test_resume_refuses_missing_corrupt_hostile_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(UserError, match="trainer.resume=.*nowhere': no such file or directory"):
        train(tmp_path / "a", f"trainer.resume={tmp_path / 'nowhere'}")
    (tmp_path / "empty_run").mkdir()  # a directory with no checkpoint in it
    with pytest.raises(UserError, match="no checkpoint at"):
        train(tmp_path / "b", f"trainer.resume={tmp_path / 'empty_run'}")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoint.load(corrupt)

    class Payload:  # unpickling this would call print: weights_only must refuse it
        def __reduce__(self):
            return (print, ("pwned",))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": Payload()}, hostile)
    with pytest.raises(UserError, match="refused"):
        checkpoint.load(hostile)

    train(tmp_path / "small", "trainer.epochs=1", "model.hidden=[8]")
    # The saved recipe is compared before any weight is loaded (issue 19 item 6): the key is named.
    with pytest.raises(UserError, match=r"another recipe \(model.hidden: \[8\] there, \[16\] now;"):
        train(tmp_path / "big", "trainer.epochs=2", "model.hidden=[16]", f"trainer.resume={tmp_path / 'small'}")


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"model": {"w": torch.ones(2)}}, path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2))  # the old one is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind

    # In the background, the failure comes back as one line naming the file and the fix.
    writer = checkpoint.BackgroundWriter()
    writer.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match=r"could not write checkpoint .*last.pt.*No space left.*trainer.checkpoint=false"):
        writer.close()
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(2))


def test_background_checkpoint_is_a_snapshot_of_the_moment_it_was_asked_for(tmp_path):
    weights = torch.ones(1000)
    writer = checkpoint.BackgroundWriter()
    writer.save({"model": {"w": weights}}, tmp_path / "a.pt")
    weights.mul_(5)  # training goes on changing the tensors in place
    writer.close()
    assert torch.equal(checkpoint.load(tmp_path / "a.pt")["model"]["w"], torch.ones(1000))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_paths_train_on_the_cpu(tmp_path, precision):
    """autocast (and fp16's GradScaler) as a CUDA run uses them; tiny, as bf16 is slow on this CPU."""
    summary = train(tmp_path, f"trainer.precision={precision}", "trainer.epochs=4", "model.hidden=[32]")
    assert summary["precision"] == precision
    assert summary["test"]["acc"] > 0.8  # it learns, in reduced precision
    last = checkpoint.load(tmp_path / "checkpoints/last.pt")
    assert (last["scaler"] is not None) == (precision == "fp16")
    if precision == "fp16":
        assert last["scaler"]["scale"] > 0


def test_a_diverging_run_stops_with_the_notes_advice(tmp_path):
    with pytest.raises(UserError, match=r"training diverged: the loss was nan at step \d+ \(epoch 1\); the learning rate is likely too high"):
        train(tmp_path, "optim=sgd", "optim.lr=1e6", "trainer.epochs=2", "logger.every=5")


def test_bad_values_fail_before_training(tmp_path):
    with pytest.raises(UserError, match="optim.lr"):
        train(tmp_path / "a", "optim.lr=0")
    with pytest.raises(UserError, match="trainer.epochs"):
        train(tmp_path / "b", "trainer.epochs=0")
    with pytest.raises(UserError, match="trainer.precision"):
        train(tmp_path / "c", "trainer.precision=8")
    with pytest.raises(UserError, match="trainer.monitor"):
        train(tmp_path / "d", "trainer.monitor=val/f1")
    assert all(refused(tmp_path / d) for d in "abcd")


def test_fast_crc_is_tensorboards_masked_crc32c():
    import os

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from dlrun.monitor.tensorboard import masked_crc32c, use_fast_crc

    assert use_fast_crc()
    for size in (0, 1, 7, 8, 100, 4097):
        data = os.urandom(size)
        assert masked_crc32c(data) == reference(data)


def test_train_accuracy_is_the_same_whether_the_window_keeps_logits_or_predictions(tmp_path, monkeypatch):
    import dlrun.train.window as window

    def train_acc(run_dir):
        events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("train/acc")]

    overrides = ("trainer.epochs=2", "logger.every=4", "model.hidden=[16]")
    train(tmp_path / "logits", *overrides)
    monkeypatch.setattr(window, "KEEP_LOGITS", 0)  # every batch is "big": keep each step's argmax
    train(tmp_path / "argmax", *overrides)
    assert train_acc(tmp_path / "logits") == train_acc(tmp_path / "argmax")
    assert len(train_acc(tmp_path / "logits")) == 12  # 5 windows of 4 steps and a last one of 1, twice


@pytest.mark.parametrize("model,target", [("cnn", 0.97), ("lstm", 0.95)])
def test_cnn_and_lstm_on_the_digits_reach_their_targets_with_the_defaults(tmp_path, model, target):
    summary = train(tmp_path, f"model={model}")  # the LSTM reads the 8 rows as 8 steps of 8 pixels
    assert summary["test"]["acc"] >= target


@pytest.mark.parametrize("model", ["rnn", "gru"])
def test_recurrent_models_read_digit_rows_and_train(tmp_path, model):
    summary = train(tmp_path, f"model={model}", "trainer.epochs=10")
    assert summary["test"]["acc"] > 0.8  # 10 epochs; the full 30-epoch figures are in the README


def test_a_last_batch_of_one_sample_that_batchnorm_cannot_train_on_is_left_out(tmp_path, caplog):
    """1,281 training digits (val_fraction 0.1092) in batches of 64 leave a last batch of 1, on which
    BatchNorm1d sees one value per channel and torch raises mid-epoch: dlrun leaves it out, says so,
    and sizes the schedule for 20 steps an epoch. A norm-free model, or a last batch of 2, keeps it."""
    one_left = ("data.val_fraction=0.1092", "trainer.epochs=2", "trainer.checkpoint=false")
    summary = train(tmp_path / "bn", "model.norm=batch", *one_left)
    assert summary["status"] == "finished" and summary["steps"] == 2 * 20
    assert "BatchNorm layer '2' would see one value per channel" in caplog.text
    assert "holds 1 of the 1281 training samples (20 x 64 + 1) and gives the model 1 sample" in caplog.text
    assert train(tmp_path / "plain", *one_left)["steps"] == 2 * 21
    assert train(tmp_path / "two", "model.norm=batch", "data.val_fraction=0.1085", "trainer.epochs=1")["steps"] == 21


def test_which_last_batches_batchnorm_cannot_train_on_under_ddp():
    """The last batch's shards (tensor_split) hold 1 sample on some rank exactly when 0 < last < 2 x ranks."""
    from dlrun.train.distributed import World
    from dlrun.train.assembly import build_parts, last_batch_breaks_batchnorm
    from tests.conftest import make_config

    parts = build_parts(make_config("model.norm=batch", "data.batch_size=64")[0])  # 1294 = 20 x 64 + 14
    n = len(parts.data.train)
    for ranks in (1, 2, 4, 7, 8):
        world = World(rank=0, size=ranks, local_rank=0, local_size=ranks)
        sizes = [len(s) for s in torch.arange(n % 64).tensor_split(ranks)]
        assert last_batch_breaks_batchnorm(parts.model, parts.data, world) == (1 in sizes), ranks
    assert parts.model.training  # the probe left the model's mode as it was


@pytest.mark.parametrize("samples, ranks, micro", [(64, 1, None), (14, 8, None), (64, 1, 16), (64, 1, 24),
                                                   (63, 2, 5), (3, 2, 2), (7, 4, 1), (9, 2, 4), (5, 2, 4)])
def test_piece_sizes_are_the_shards_and_micro_batches_the_trainer_cuts(samples, ranks, micro):
    from dlrun.train.distributed import World
    from dlrun.train.step import StepEngine, piece_sizes

    engine = StepEngine.__new__(StepEngine)  # _pieces needs only these
    engine.micro_batch_size, engine.batch_samples, engine.world = micro, samples, World(size=ranks)
    cut, counts = [], set()
    for shard in torch.arange(samples).tensor_split(ranks):
        pieces = engine._pieces(shard, shard, None)
        counts.add(len(pieces))
        cut += [len(x) for x, _, _ in pieces if len(x)]
    assert piece_sizes(samples, ranks, micro) == cut and sum(cut) == samples
    assert micro is None or max(cut) <= micro
    assert len(counts) == 1  # as many forwards on every rank (SyncBatchNorm's forward communicates)


def test_micro_batches_of_one_sample_under_batchnorm_are_refused_in_one_line():
    from dlrun.train.assembly import build_parts, build_trainer
    from tests.conftest import make_config

    with pytest.raises(UserError, match=r"^trainer.micro_batch_size=1 leaves pieces of 1 sample, on which BatchNorm "
                                        r"layer '2' would see one value per channel.*use a larger trainer.micro_batch_size"):
        build_trainer(build_parts(make_config("model.norm=batch", "trainer.micro_batch_size=1")[0]), None)
    build_trainer(build_parts(make_config("trainer.micro_batch_size=1")[0]), None)  # no BatchNorm: fine


def test_micro_batches_add_up_to_the_whole_batchs_step(tmp_path):
    """trainer.micro_batch_size=24 computes each batch of 64 as 22 + 21 + 21 samples (the last, 14, whole):
    with an L2 penalty (counted once a step), mixup and gradient clipping, the weights, the logged
    training loss and the test loss are the whole-batch run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = ("reg=l2", "augment=mixup", "trainer.grad_clip=1.0", "trainer.epochs=2", "logger.every=5")
    whole = train(tmp_path / "whole", *common)
    pieces = train(tmp_path / "pieces", *common, "trainer.micro_batch_size=24")
    ours, theirs = (checkpoint.load(tmp_path / run / "checkpoints" / "last.pt")["model"] for run in ("pieces", "whole"))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)
    assert pieces["test"]["loss"] == pytest.approx(whole["test"]["loss"], rel=1e-5)
    assert pieces["hparams"]["trainer.micro_batch_size"] == 24  # in the HParams tab, as the other trainer settings

    def logged(run, tag):
        events = EventAccumulator(str(tmp_path / run / "tb"))
        events.Reload()
        return [e.value for e in events.Scalars(tag)]

    for tag in ("train/loss", "train/reg_loss", "train/acc", "grad_norm"):
        assert logged("pieces", tag) == pytest.approx(logged("whole", tag), rel=1e-5), tag
