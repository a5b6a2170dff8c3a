"""The sequence datasets (data=digits_rows, adding, copy): shapes, targets, seeds, and one learning run."""

import inspect
import json
import sys

import numpy as np
import pytest
import torch

from dlrun.data import sequences
from dlrun.data.digits import DigitsData
from dlrun.data.sequences import AddingData, CopyData, DigitsRowsData, adding_problem, copy_task
from dlrun.errors import UserError
from tests.conftest import make_config


def arrays(data, split="train"):
    return data.splits[split].x.numpy(), data.splits[split].y.numpy()


# ------------------------------------------------------------------------------------ digits_rows
def test_digits_rows_are_the_digits_images_row_by_row():
    rows = DigitsRowsData(preprocess="none")
    images = DigitsData(preprocess="none")
    assert rows.layout == "sequence" and rows.input_shape == (8, 8)
    assert rows.task == "classification" and rows.num_outputs == 10
    for split in ("train", "val", "test"):
        x, y = arrays(rows, split)
        x_img, y_img = arrays(images, split)
        assert x.dtype == np.float32 and x.shape == (len(x_img), 8, 8)
        np.testing.assert_array_equal(y, y_img)  # the same seeded holdout as data=digits
        for t in range(8):  # step t is image row t
            np.testing.assert_array_equal(x[:, t, :], x_img[:, 0, t, :])
    assert len(rows.train) == 1294 and len(rows.test) == 359


def test_digits_rows_standardizes_each_pixel_column_by_default():
    data = DigitsRowsData()
    assert data.preprocess.method == "channel_standardize"
    x = data.prepare(data.train.x)  # (N, 8, 8), one statistic per feature (pixel column) over N and T
    assert torch.allclose(x.mean(dim=(0, 1)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 1)), torch.ones(8), atol=1e-2)


# ------------------------------------------------------------------------------------------ adding
def test_adding_shapes_markers_and_targets():
    data = AddingData(seq_len=21, train_samples=300, val_samples=50, test_samples=70, seed=3)
    assert data.layout == "sequence" and data.input_shape == (21, 2)
    assert data.task == "regression" and data.num_outputs == 1 and data.preprocess.method == "none"
    for split, n in (("train", 300), ("val", 50), ("test", 70)):
        x, y = arrays(data, split)
        assert x.shape == (n, 21, 2) and x.dtype == np.float32 and y.shape == (n, 1) and y.dtype == np.float32
        values, markers = x[..., 0], x[..., 1]
        assert ((values >= 0) & (values < 1)).all()
        assert set(np.unique(markers)) == {0.0, 1.0}
        assert (markers.sum(1) == 2).all()  # exactly two markers ...
        assert (markers[:, :10].sum(1) == 1).all() and (markers[:, 10:].sum(1) == 1).all()  # ... one per half
        np.testing.assert_allclose(y[:, 0], (values * markers).sum(1), rtol=1e-6)


def test_adding_markers_cover_every_position_of_each_half():
    x, _ = adding_problem(4000, 10, np.random.default_rng(0))
    first, second = x[:, :5, 1].argmax(1), x[:, 5:, 1].argmax(1) + 5
    assert set(first) == {0, 1, 2, 3, 4} and set(second) == {5, 6, 7, 8, 9}
    assert np.bincount(first).min() > 600 and np.bincount(second - 5).min() > 600  # uniform: 800 each


def test_predicting_one_scores_a_sixth_on_adding():
    _, y = adding_problem(200_000, 30, np.random.default_rng(1))
    assert abs(float(np.mean((y - 1.0) ** 2)) - 1 / 6) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.01


# -------------------------------------------------------------------------------------------- copy
def test_copy_shapes_and_targets_are_the_shown_values():
    data = CopyData(length=4, delay=7, train_samples=200, val_samples=30, test_samples=40, seed=2)
    assert data.input_shape == (4 + 7 + 1, 2) and data.task == "regression" and data.num_outputs == 4
    for split, n in (("train", 200), ("val", 30), ("test", 40)):
        x, y = arrays(data, split)
        assert x.shape == (n, 12, 2) and x.dtype == np.float32 and y.shape == (n, 4) and y.dtype == np.float32
        np.testing.assert_array_equal(x[:, :4, 0], y)  # shown one a step
        assert (np.abs(y) <= 1).all() and len(np.unique(y)) == y.size
        assert (x[:, 4:, 0] == 0).all()  # blanks and the recall step carry no value
        assert (x[:, :-1, 1] == 0).all() and (x[:, -1, 1] == 1).all()  # the marker: the last step only


def test_predicting_zero_scores_a_third_on_copy():
    _, y = copy_task(50_000, 5, 3, np.random.default_rng(0))
    assert abs(float(np.mean(y ** 2)) - 1 / 3) < 0.02
    assert abs(float(y.mean())) < 0.01 and y.min() < -0.99 and y.max() > 0.99


# -------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("make", [
    lambda **kw: AddingData(seq_len=12, train_samples=64, val_samples=16, test_samples=32, **kw),
    lambda **kw: CopyData(length=3, delay=4, train_samples=64, val_samples=16, test_samples=32, **kw),
], ids=["adding", "copy"])
def test_same_seed_same_data_other_seed_other_data(make):
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split].x, b.splits[split].x) and torch.equal(a.splits[split].y, b.splits[split].y)
        assert not torch.equal(a.splits[split].y, c.splits[split].y)
    assert not torch.equal(a.train.y[:16], a.val.y)  # the splits are independent draws
    # The test set depends on the seed and the task's shape only: not on how many train samples there are,
    # and a bigger test set starts with the smaller one.
    for cls, kw in ((AddingData, dict(seq_len=12)), (CopyData, dict(length=3, delay=4))):
        small = cls(**kw, train_samples=10, val_samples=5, test_samples=20, seed=5)
        big = cls(**kw, train_samples=99, val_samples=7, test_samples=50, seed=5)
        assert torch.equal(small.test.x, big.test.x[:20]) and torch.equal(small.test.y, big.test.y[:20])


@pytest.mark.parametrize("cls, kwargs, message", [
    (AddingData, dict(seq_len=1), "data.seq_len=1 must be an integer >= 2"),
    (AddingData, dict(train_samples=0), "data.train_samples=0 must be an integer >= 1"),
    (AddingData, dict(seed=-1), "data.seed=-1 must be an integer >= 0"),
    (CopyData, dict(length=0), "data.length=0 must be an integer >= 1"),
    (CopyData, dict(delay=-1), "data.delay=-1 must be an integer >= 0"),
    (CopyData, dict(test_samples=2.5), "data.test_samples=2.5 must be an integer >= 1"),
    (DigitsRowsData, dict(test_fraction=1.0), "data.test_fraction=1.0 must be in (0, 1)"),
])
def test_bad_arguments_are_one_line_user_errors_naming_the_key(cls, kwargs, message):
    with pytest.raises(UserError) as error:
        cls(**kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize("name, target", [("digits_rows", "DigitsRowsData"), ("adding", "AddingData"),
                                          ("copy", "CopyData")])
def test_the_configs_build_their_dataset_with_the_documented_defaults(name, target):
    from dlrun.build import build

    cfg, _ = make_config(f"data={name}", "model=lstm")
    assert cfg.data._target_ == f"dlrun.data.sequences.{target}"
    defaults = {k: p.default for k, p in inspect.signature(getattr(sequences, target)).parameters.items()}
    assert {k: v for k, v in cfg.data.items() if k != "_target_"} == defaults  # the YAML says what the class does
    if name != "digits_rows":
        cfg.data.train_samples, cfg.data.val_samples, cfg.data.test_samples = 8, 4, 4
    data = build(cfg.data)
    assert type(data).__name__ == target and data.layout == "sequence"
    assert data.preprocess.method == ("channel_standardize" if name == "digits_rows" else "none")
    if name == "adding":
        assert data.input_shape == (cfg.data.seq_len, 2) == (30, 2)
    if name == "copy":
        assert data.input_shape == (5 + 10 + 1, 2) and data.num_outputs == 5


# ------------------------------------------------------------------------------------- end to end
def test_an_lstm_learns_the_adding_problem_through_the_cli(tmp_path, monkeypatch):
    from dlrun.cli import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets sys.argv for Hydra
    monkeypatch.chdir(tmp_path)
    # lr 1e-2 finds the two marked values in ~250 steps at T=10 (lr 1e-3 needs several thousand).
    main(["train", "model=lstm", "data=adding", "data.seq_len=10", "data.train_samples=2000", "data.batch_size=32",
          "model.hidden_size=32", "optim.lr=0.01", "trainer.epochs=8", "trainer.device=cpu", "trainer.threads=1",
          "logger.hparams=false", f"hydra.run.dir={tmp_path / 'run'}"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["task"] == "regression"
    assert summary["choices"]["data"] == "adding" and summary["steps"] == 8 * 63
    assert summary["test"]["loss"] < 0.05  # the constant 1.0 scores 1/6
