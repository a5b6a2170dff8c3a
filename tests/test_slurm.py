"""hydra/launcher=slurm: the launcher's settings, and a pre-empted trial that saves, hands the signal
to submitit's handler (which requeues the job and exits), and continues when SLURM requeues it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml

from dlrun.rundir import effective_resume, refuse_reuse_before_hydra
from dlrun import checkpoint
from dlrun.train.interrupt import StopRequest, catch_signals, hand_over
from tests.conftest import dlrun, train, dlrun_here

# 3 epochs of 21 steps on the embedded digits; dropout and a per-step schedule make RNG and schedule state matter.
RUN = ("trainer.device=cpu", "trainer.epochs=3", "model.dropout=0.2", "sched.interval=step",
       "logger.diagnostics.every=0")
SIGNAL_AT = 30  # mid-epoch 2; last.pt held epoch 1's step 21 before it

# Stands in for a submitit job: a Python handler for SIGUSR2 that "requeues" (writes a marker) and
# exits -1, installed before dlrun starts; SIGUSR2 then arrives from the OS during step SIGNAL_AT.
DRIVER = textwrap.dedent(f"""
    import os, signal, sys
    from pathlib import Path

    marker = Path(sys.argv[1])

    def requeue(signum, frame):
        marker.write_text(signal.Signals(signum).name)
        sys.exit(-1)

    signal.signal(signal.SIGUSR2, requeue)
    from dlrun.train.loop import Trainer

    step = Trainer.train_step

    def train_step(self, *args):
        step(self, *args)
        if self.step == {SIGNAL_AT}:
            os.kill(os.getpid(), signal.SIGUSR2)

    Trainer.train_step = train_step
    from dlrun.cli import main

    main(sys.argv[2:])
""")


def env(**extra: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("SLURM_RESTART_COUNT", "SUBMITIT_PREEMPT_SIGNAL")}
    return {**base, "COLUMNS": "120", **extra}


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """The driver's run, cut short by SIGUSR2 at step SIGNAL_AT."""
    tmp = tmp_path_factory.mktemp("preempted")
    (tmp / "driver.py").write_text(DRIVER)
    run, marker = tmp / "run", tmp / "requeued"
    proc = subprocess.run([sys.executable, "driver.py", str(marker), "train", f"hydra.run.dir={run}", *RUN],
                          cwd=tmp, capture_output=True, text=True, env=env(SUBMITIT_EXECUTOR="slurm"), timeout=300)
    return {"run": run, "marker": marker, "proc": proc, "tmp": tmp}


@pytest.fixture(scope="module")
def whole_weights(tmp_path_factory):
    """The final weights of the same run, never interrupted (in this process)."""
    run = tmp_path_factory.mktemp("whole")
    train(run, *RUN)
    return checkpoint.load(run / "checkpoints/last.pt")["model"]


def test_cfg_hydra_shows_the_slurm_launchers_settings(tmp_path):
    result = dlrun("train", "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   "hydra.launcher.gpus_per_node=2", "hydra.launcher.account=myproject", cwd=tmp_path, env=env())
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["account"]) == ("gpu", 2, "myproject")
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"], launcher["timeout_min"]) == (120, 3, 240)


def test_the_preemption_signal_saves_the_step_then_goes_to_the_handler_that_wanted_it(preempted):
    proc, run = preempted["proc"], preempted["run"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 255, out  # the handler's sys.exit(-1), not dlrun's 143: it ran, and last
    assert preempted["marker"].read_text() == "SIGUSR2"
    last = checkpoint.load(run / "checkpoints/last.pt")
    assert (last["step"], last["epoch"], last["partial"]["step"]) == (SIGNAL_AT, 1, SIGNAL_AT - 21)  # later than 21
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["signal"], summary["steps"]) == ("interrupted", "SIGUSR2", SIGNAL_AT)
    assert f"SIGUSR2: stopped after step {SIGNAL_AT}" in out
    assert "submitit requeues this job, which continues from it" in out and "continue with" not in out


def test_a_requeued_job_continues_to_the_weights_of_an_unbroken_run(preempted, whole_weights, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(preempted["run"], run)
    again = dlrun_here("train", f"hydra.run.dir={run}", *RUN, cwd=tmp_path, env=env(SLURM_RESTART_COUNT="1"))
    assert again.returncode == 0, again.stderr
    log = (run / "train.log").read_text()
    assert log.count("SLURM_RESTART_COUNT=1: a requeued job; continuing as with trainer.resume=auto") == 1
    assert f"resumed from {run / 'checkpoints/last.pt'} at epoch 1, step {SIGNAL_AT}" in log
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    weights = checkpoint.load(run / "checkpoints/last.pt")["model"]
    assert weights.keys() == whole_weights.keys()
    for name, tensor in whole_weights.items():
        assert torch.allclose(weights[name], tensor, rtol=0, atol=1e-6), name


def test_without_slurm_restart_count_the_rerun_is_refused_in_one_line(preempted, monkeypatch, capsys):
    from dlrun.cli import main

    run = preempted["run"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets it for Hydra
    with pytest.raises(SystemExit) as exit_:
        main(["train", f"hydra.run.dir={run}", *RUN])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [
        f"dlrun train: error: run directory {run} already holds a run (interrupted); continue it with "
        "trainer.resume=auto, or pass a new hydra.run.dir (nothing was written)"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    refuse_reuse_before_hydra([f"hydra.run.dir={run}", *RUN])  # the CLI's check lets a requeued job through


def test_a_requeued_job_resumes_auto_only_when_trainer_resume_is_null(monkeypatch):
    assert effective_resume(None) is None
    for count, expected in (("0", None), ("", None), ("x", None), ("1", "auto"), ("3", "auto")):
        monkeypatch.setenv("SLURM_RESTART_COUNT", count)
        assert effective_resume(None) == expected, count
    assert effective_resume("runs/a/checkpoints/best.pt") == "runs/a/checkpoints/best.pt"  # a choice is kept


def test_the_preemption_signal_is_caught_only_from_a_python_handler(monkeypatch):
    usr2, hup = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGHUP)
    seen = []
    try:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        with catch_signals(StopRequest()):
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # no one wants it: its default stays
        signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append((signum, frame)))
        request = StopRequest()
        with catch_signals(request):
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)  # the handler runs at the next bytecode boundary
            assert request.signal == "SIGUSR2" and seen == []  # noted; the previous handler waits
        hand_over(request.signal)
        assert seen == [(signal.SIGUSR2, None)]
        hand_over("SIGINT")  # Python's own SIGINT handler is not called: no KeyboardInterrupt

        monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "HUP")  # submitit's way to name another
        wants_usr2 = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGHUP, lambda signum, frame: None)
        request = StopRequest()
        with catch_signals(request):
            assert signal.getsignal(signal.SIGUSR2) is wants_usr2  # no longer the pre-emption signal
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.01)
        assert request.signal == "SIGHUP"
    finally:
        signal.signal(signal.SIGUSR2, usr2)
        signal.signal(signal.SIGHUP, hup)
