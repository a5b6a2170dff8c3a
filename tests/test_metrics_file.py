"""metrics.csv: one row per epoch, the same numbers as the event files, and after a stop and a
resume in the same directory no epoch twice and none missing."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import train

COMMON = ("trainer.epochs=3", "model.hidden=[16]", "logger.hparams=false")


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_row_per_epoch_with_the_event_files_values(tmp_path):
    summary = train(tmp_path, *COMMON, "trainer.ema_decay=0.9")
    table = rows(tmp_path)
    assert [int(r["epoch"]) for r in table] == [1, 2, 3] and int(table[-1]["step"]) == summary["steps"]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val_ema/loss", "lr", "train_s"} <= set(table[0])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("val/loss", "val/acc", "val_ema/acc"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        written = [(int(r["step"]), float(r[tag])) for r in table]
        assert [s for s, _ in logged] == [s for s, _ in written]
        assert [v for _, v in logged] == pytest.approx([v for _, v in written], rel=1e-6)  # TensorBoard: float32
    best = table[summary["best"]["epoch"] - 1]
    assert float(best["val/acc"]) == summary["best"]["val"]["acc"] and float(best["val/loss"]) == summary["best"]["val"]["loss"]


def test_a_resume_in_the_same_directory_drops_the_rows_past_its_checkpoint(tmp_path):
    train(tmp_path / "whole", *COMMON)
    whole = rows(tmp_path / "whole")
    run = tmp_path / "run"
    train(run, *COMMON, "trainer.stop_at_epoch=1")
    # As a run killed after epoch 2's row but before its checkpoint would leave it:
    with open(run / "metrics.csv", "a", newline="") as f:
        f.write("2,42,0.5,0.5,0.0,0.5,0.5,0.5,0.001,1.0\n")
    train(run, *COMMON, "trainer.resume=auto")
    resumed = rows(run)
    assert [int(r["epoch"]) for r in resumed] == [1, 2, 3]
    for a, b in zip(resumed, whole):  # exact resume: the same numbers but the times
        assert {k: v for k, v in a.items() if k != "train_s"} == {k: v for k, v in b.items() if k != "train_s"}


def test_dlrun_train_resume_of_a_run_directory_continues_in_it(tmp_path):
    """`dlrun train trainer.resume=RUN` (no hydra.run.dir) continues in RUN itself: one summary.json,
    one metrics.csv with every epoch once, one TensorBoard run; no new timestamped directory."""
    from tests.conftest import dlrun_here

    run = tmp_path / "my run, first"  # a space and a comma: the path stays one value
    first = dlrun_here("train", *COMMON, "trainer.stop_at_epoch=1", f"hydra.run.dir='{run}'", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = dlrun_here("train", *COMMON, f"trainer.resume='{run}'", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 3 and summary["resumed"]["epoch"] == 1
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2, 3]
    assert not (tmp_path / "outputs").exists() and len(list((run / "tb").glob("events.*"))) == 2
