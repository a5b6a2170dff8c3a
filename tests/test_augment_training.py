"""Augmentation and test-time augmentation inside real training runs: train batches only, seeded,
resumed exactly, mixed losses as the formula says, and the mirror-averaged test evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlrun.errors import UserError
from dlrun import checkpoint
from dlrun.train.assembly import build_parts, build_trainer
from tests.conftest import make_config, train

FAST = ("trainer.device=cpu", "logger.hparams=false", "logger.ratio_every=0", "model=cnn")
AUGMENTED = ("augment=cutout", "augment.cutout=3", "augment.crop_padding=1")


def test_an_augmented_run_is_seeded_and_differs_from_a_plain_one(tmp_path):
    first = train(tmp_path / "a", *FAST, *AUGMENTED, "trainer.max_steps=15")
    again = train(tmp_path / "b", *FAST, *AUGMENTED, "trainer.max_steps=15")
    plain = train(tmp_path / "c", *FAST, "trainer.max_steps=15")
    assert first["test"] == again["test"]
    assert first["test"]["loss"] != plain["test"]["loss"]


def test_evaluation_never_augments(tmp_path):
    plain_cfg, _ = make_config(*FAST)
    augmented_cfg, _ = make_config(*FAST, *AUGMENTED, "augment.mixup=0.4", "augment.flip=true")
    plain, augmented = build_parts(plain_cfg), build_parts(augmented_cfg)  # the same seed: the same init
    a, b = build_trainer(plain, None), build_trainer(augmented, None)
    assert b.augment is not None and a.augment is None
    for split in ("val", "test"):
        assert a.evaluate(plain.data.splits[split]) == b.evaluate(augmented.data.splits[split])


def test_a_resumed_augmented_run_ends_as_the_unbroken_one(tmp_path):
    overrides = (*FAST, *AUGMENTED, "augment.mixup=0.4", "trainer.epochs=2", "data.batch_size=256")
    whole = train(tmp_path / "whole", *overrides)
    train(tmp_path / "half", *overrides, "trainer.stop_at_epoch=1")
    state = checkpoint.load(tmp_path / "half" / "checkpoints" / "last.pt")
    assert state["rng"]["augment"] is not None  # the augmentation's generators are in the checkpoint
    resumed = train(tmp_path / "rest", *overrides, f"trainer.resume={tmp_path / 'half'}")
    assert resumed["test"] == whole["test"] and resumed["steps"] == whole["steps"]


def test_a_mixed_batch_loss_is_lam_times_one_target_plus_the_rest_times_the_other():
    cfg, _ = make_config(*FAST)
    parts = build_parts(cfg)
    trainer = build_trainer(parts, None)
    x, y = parts.data.batch("train", slice(0, 32))
    y2 = y.roll(1)
    _, loss, _ = trainer.forward_loss(x, y, mix=(y2, 0.3))
    out = parts.model(x)
    expected = 0.3 * F.cross_entropy(out, y) + 0.7 * F.cross_entropy(out, y2)
    torch.testing.assert_close(loss, expected)


def test_tta_flip_scores_the_mean_softmax_of_each_image_and_its_mirror():
    cfg, _ = make_config(*FAST, "eval.tta=flip")
    parts = build_parts(cfg)
    trainer = build_trainer(parts, None)
    assert trainer.tta == "flip"
    model = parts.model.eval()
    x, y = parts.data.batch("test", slice(None))
    with torch.no_grad():
        p = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    got = trainer.evaluate(parts.data.test, tta="flip")
    assert got["acc"] == pytest.approx((p.argmax(1) == y).sum().item() / len(y), abs=1e-12)
    assert got["loss"] == pytest.approx(F.nll_loss(p.log(), y).item(), rel=1e-5)
    assert got != trainer.evaluate(parts.data.test)  # the mirror images change the numbers
    summary_test = trainer.test()
    assert summary_test == got  # the final test evaluation uses eval.tta


def test_augmentations_that_do_not_fit_the_data_are_one_line(tmp_path):
    cfg, _ = make_config(*FAST, "augment.jitter=0.2")  # digits are grey: one channel
    with pytest.raises(UserError, match="augment.jitter"):
        build_trainer(build_parts(cfg), None)
    cfg, _ = make_config("trainer.device=cpu", "data=digits_rows", "model=lstm", "eval.tta=flip")
    with pytest.raises(UserError, match="eval.tta=flip .* use eval.tta=none"):
        build_trainer(build_parts(cfg), None)
