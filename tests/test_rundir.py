"""An existing run directory is never overwritten: it is continued with trainer.resume, or refused."""

from __future__ import annotations

import json

import pytest

from dlrun.errors import UserError
from dlrun.rundir import held_run, refuse_reuse
from tests.conftest import train, dlrun_here

QUICK = ("trainer.device=cpu", "trainer.epochs=1", "model.hidden=[8]")


def files(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_second_run_into_a_finished_run_directory_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    train(run, *QUICK)
    before = files(run)
    with pytest.raises(UserError, match=rf"run directory {run} already holds a run \(finished\); continue it with "
                                        r"trainer.resume=auto, or pass a new hydra.run.dir"):
        train(run, *QUICK, "optim.lr=0.01")
    assert files(run) == before
    other = tmp_path / "other"
    train(other, *QUICK)
    with pytest.raises(UserError, match="already holds a run"):  # continuing another run into this one
        train(run, *QUICK, f"trainer.resume={other}")
    assert files(run) == before


def test_resume_continues_the_run_a_directory_holds(tmp_path):
    run = tmp_path / "run"
    train(run, "trainer.device=cpu", "trainer.epochs=2", "trainer.stop_at_epoch=1", "model.hidden=[8]")
    assert held_run(run) == "stopped"
    refuse_reuse(run, "auto")  # neither raises
    refuse_reuse(run, run / "checkpoints" / "last.pt")
    summary = train(run, "trainer.device=cpu", "trainer.epochs=2", "model.hidden=[8]", "trainer.resume=auto")
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert held_run(tmp_path / "new") is None


@pytest.mark.slow
def test_the_cli_refuses_a_used_hydra_run_dir_before_hydra_writes_into_it(tmp_path):
    run = tmp_path / "run"
    first = dlrun_here("train", f"hydra.run.dir={run}", *QUICK, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = files(run)
    second = dlrun_here("train", f"hydra.run.dir={run}", *QUICK, "optim.lr=0.01", cwd=tmp_path)
    assert second.returncode == 2 and second.stderr.strip().splitlines() == [
        f"dlrun train: error: run directory {run} already holds a run (finished); continue it with "
        "trainer.resume=auto, or pass a new hydra.run.dir (nothing was written)"]
    assert files(run) == before  # .hydra/overrides.yaml and train.log too
    assert "optim.lr=0.01" not in (run / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
