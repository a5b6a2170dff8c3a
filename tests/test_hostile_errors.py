"""One line every time: a mistake or a Ctrl-C ends in one stderr line on every path, and the line
is never lost to a race between processes.

The subprocess tests steer the processes with a sitecustomize.py on their PYTHONPATH (Python
imports it at start-up, in the launcher and in every rank): it holds a rank at a given point until
a signal comes, so the tests wait for states (a file a rank touches, a process ending), not times.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrun.cli import main as cli_main
from tests.conftest import train

ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "120"}
INTERRUPTED = ("dlrun train: error: interrupted by SIGINT (Ctrl-C) before it finished; what was on disk before is as "
               "it was: run the command again")

# The ranks the test names (rank 0: also the one process) stop at a function of dlrun.train.assembly and
# wait for a signal: SIGTERM's default action (the launcher ending a rank) or dlrun's SIGINT handler
# ends the wait. A launcher imports it too, and never calls it.
HOOK = """
import os, signal
from pathlib import Path

if os.environ.get("RANK", "0") in os.environ["DLRUN_TEST_HOLD_RANKS"].split(","):
    import dlrun.train.assembly
    import dlrun.train.run

    name = os.environ["DLRUN_TEST_HOLD"]
    real = getattr(dlrun.train.assembly, name)

    def held(*args, **kwargs):
        Path(os.environ["DLRUN_TEST_READY"], "rank" + os.environ.get("RANK", "0")).touch()
        signal.pause()
        return real(*args, **kwargs)

    for module in (dlrun.train.assembly, dlrun.train.run):  # where it is defined, and where run imported it
        if hasattr(module, name):
            setattr(module, name, held)
"""


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal():
    """The processes these tests start get SIGINT at its default, as from a terminal, even where
    this suite runs as a script's background job (SIGINT ignored, which children inherit)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def start(args: list[str], cwd: Path, hold: str, ranks: str = "0",
          command: list[str] | None = None) -> subprocess.Popen:
    hook = cwd / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    (cwd / "ready").mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **ENV, "PYTHONPATH": path, "DLRUN_TEST_HOLD": hold, "DLRUN_TEST_HOLD_RANKS": ranks,
           "DLRUN_TEST_READY": str(cwd / "ready")}
    command = command or [sys.executable, "-m", "dlrun", "train"]
    return subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_until_held(proc: subprocess.Popen, ready: Path, ranks: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(ready.iterdir())) < ranks:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"not held at the hook: {proc.communicate()}")
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dlrun train: error:")]


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a run but Hydra's .hydra/ and train.log (a resume rewrites and appends to them)
    and a run-directory lock (it names the process that holds it)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.name not in ("train.log", ".dlrun.lock")}


# ------------------------------------------------------------------------------- item 10: the line reaches the user
BATCH_33 = ["trainer.devices=2", "trainer.device=cpu", "data.batch_size=33"]
BATCH_33_LINE = ("dlrun train: error: data.batch_size=33 is the global batch, split over 2 processes, and 2 does not "
                 "divide it; use a multiple of 2, e.g. data.batch_size=32")


def test_a_mistake_rank_0_reaches_last_still_reaches_the_user_once(tmp_path):
    """Rank 1 finds the mistake first and ends; the launcher then ends rank 0, which has not said it yet.
    The line was lost every time (rank 0 alone printed it); now the first rank to find it says it."""
    proc = start([*BATCH_33, f"hydra.run.dir={tmp_path / 'r'}"], tmp_path, "check_world")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert [line for line in err.splitlines() if line.strip()] == [BATCH_33_LINE], err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.pt"))


@pytest.mark.slow
def test_under_torchrun_the_mistake_is_said_once_whichever_rank_finds_it_first(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlrun",
                "train"]
    proc = start(["trainer.device=cpu", "data.batch_size=33", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path,
                 "check_world", command=torchrun)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert error_lines(err) == [BATCH_33_LINE], err  # torchrun's own report of the failed rank follows it


# ------------------------------------------------------------------------------- item 9: Ctrl-C during start-up
def test_ctrl_c_during_start_up_is_one_line_exit_130_and_the_run_it_continues_is_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]")
    before = snapshot(run_dir)
    assert "checkpoints/last.pt" in before and "summary.json" in before
    proc = start(["trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]", "trainer.resume=auto",
                  f"hydra.run.dir={run_dir}"], tmp_path, "build_parts")  # its own recipe: a resume may not change it
    wait_until_held(proc, tmp_path / "ready")  # composed, checked, about to build data and model
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [INTERRUPTED], err
    assert snapshot(run_dir) == before


def test_ctrl_c_during_the_start_up_of_two_ranks_is_one_line_and_exit_130(tmp_path):
    """A terminal's Ctrl-C reaches the launcher and both ranks, and the launcher passes it on to the
    ranks again: each rank ends, one of them says so, once."""
    proc = start(["trainer.devices=2", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'r'}"], tmp_path,
                 "build_parts", ranks="0,1")
    wait_until_held(proc, tmp_path / "ready", ranks=2)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [INTERRUPTED], err


@pytest.mark.slow
def test_ctrl_c_on_a_parallel_sweep_is_at_most_one_line_and_exit_130(tmp_path):
    """It was joblib's KeyboardInterrupt traceback. A sweeper that catches the signal itself may say
    so in its log, as an interrupted run does, and leave stderr empty. (What the workers save is the
    sweeper's part.)"""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "dlrun", "train", "-m", "sweep=random", "sweep.n_jobs=2",
                             "sweep.n_trials=4", "trainer.epochs=30", "trainer.device=cpu", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while statuses(sweep).count("running") < 2:  # both workers are training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the sweep and its workers
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err, err
    assert [line for line in err.splitlines() if line.strip()] in ([], [INTERRUPTED]), err


def statuses(sweep: Path) -> list[str]:
    found = []
    for path in sorted(sweep.glob("*/summary.json")):
        try:
            found.append(json.loads(path.read_text())["status"])
        except ValueError:  # being written
            pass
    return found


# ------------------------------------------------------------------------------- item 9: Hydra's preamble
@pytest.mark.parametrize("overrides,expected", [
    (["optim.eps='${oops}'"], "dlrun train: error: optim.eps: Interpolation key 'oops' not found; a ${...} value "
                              "names another key of the config"),
    (["trainer.resume='${oops}'"], "dlrun train: error: trainer.resume: Interpolation key 'oops' not found;"),
    (["-m", "optim.lr=0.01,-1"], "dlrun train: error: optim.lr=-1 must be a number > 0"),  # Hydra's own sweeper
], ids=["in-the-schema", "in-app.py", "plain-multirun"])
def test_an_error_raised_inside_the_job_is_one_line_without_hydras_preamble(tmp_path, capsys, overrides, expected):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", *overrides, "trainer.max_steps=1", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'r'}",
                  f"hydra.sweep.dir={tmp_path / 's'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(expected), err
