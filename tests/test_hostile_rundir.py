"""Issue 19, items 3-5 (and parts of 9 and 11): one writer per run directory, a sweep's workers die
with it, refusals before Hydra writes. Each test names the hostile or unlucky case it closes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrun.errors import UserError
from tests.conftest import train

QUICK = ("trainer.device=cpu", "trainer.max_steps=2", "model.hidden=[8]", "logger.diagnostics.every=0")


@pytest.fixture(autouse=True)
def root_logging_as_it_was():
    """An in-process `dlrun train` leaves Hydra's handlers on the root logger, writing to this test's
    captured streams, which are closed once it ends: put the root logger back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def contents(folder: Path) -> dict[str, str]:
    """Every file under folder (hidden ones too) -> a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """`dlrun ARGS` in this process: its exit status and its stderr lines."""
    from dlrun.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def wait_for(condition, proc: subprocess.Popen | None = None, what: str = "", deadline_s: float = 300) -> None:
    """Poll a state (not a time): fail if the deadline passes or `proc` ends first."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {deadline_s} s"
        time.sleep(0.01)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlrun", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})


# --- refusals before Hydra writes (item 4, and item 9's run directories) ---------------------------

@pytest.mark.parametrize("form", ["interpolation", "plus_plus"])
def test_a_run_directory_named_through_an_interpolation_or_plus_plus_is_refused_before_hydra_writes(
        form, tmp_path, capsys, monkeypatch):
    """Item 4: hydra.run.dir='${oc.env:RD}' or ++hydra.run.dir=... rewrote a finished run's .hydra/."""
    run = tmp_path / "run"
    train(run, *QUICK)
    before = contents(run)
    monkeypatch.setenv("RD", str(run))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main sets it for Hydra
    given = "hydra.run.dir=${oc.env:RD}" if form == "interpolation" else f"++hydra.run.dir={run}"
    code, err = cli(capsys, "train", given, *QUICK, "optim.lr=0.02")
    assert code == 2 and err == [f"dlrun train: error: run directory {run} already holds a run (finished); continue "
                                 "it with trainer.resume=auto, or pass a new hydra.run.dir (nothing was written)"]
    assert contents(run) == before  # .hydra/config.yaml, overrides.yaml and hydra.yaml included


def unwritable(tmp_path: Path) -> Path | None:
    """A directory this process cannot write in: a chmod 555 one, or (as root, whom modes do not stop)
    a file system's root that refuses new files, such as /sys; None where there is none."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            os.close(os.open(candidate / ".probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.unlink(candidate / ".probe")
        except OSError:
            return candidate
    return None


@pytest.mark.parametrize("case", ["a file", "a symlink loop", "under a file", "a 5000-character name", "read-only"])
def test_a_run_directory_that_cannot_be_one_is_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    """Item 9: each of these was a traceback (FileExistsError, OSError ELOOP/ENAMETOOLONG, or
    "Unable to configure handler 'file'" for trainer.resume=auto in a read-only directory)."""
    (tmp_path / "file").write_text("mine\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    run, message = {"a file": (tmp_path / "file", "is a file, not a directory"),
                    "a symlink loop": (tmp_path / "loop", "it is a symlink loop"),
                    "under a file": (tmp_path / "file" / "run", "a part of its path is a file"),
                    "a 5000-character name": (tmp_path / ("r" * 5000), "its name is too long"),
                    "read-only": (unwritable(tmp_path), "it cannot be written to")}[case]
    if run is None:
        pytest.skip("no directory here that this process cannot write in")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    code, err = cli(capsys, "train", f"hydra.run.dir={run}", "trainer.resume=auto", *QUICK)
    assert code == 2 and len(err) == 1 and message in err[0] and len(err[0]) < 400, err
    assert (tmp_path / "file").read_text() == "mine\n"


def test_a_5000_character_group_value_is_one_line(capsys, monkeypatch):
    """Item 9: model=<5000 characters> was an OSError (file name too long) from Hydra's config search."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    code, err = cli(capsys, "train", "model=" + "a" * 5000, *QUICK)
    assert code == 2 and len(err) == 1 and "model takes the name of one of its configs: " in err[0], err
    assert len(err[0]) < 400


@pytest.mark.parametrize("name", ["train.log", ".hydra/overrides.yaml"])
def test_symlinks_in_a_run_directory_are_not_written_through(name, tmp_path, capsys, monkeypatch):
    """Item 11: a symlink named train.log or .hydra/overrides.yaml sent a resumed run's writes to its target."""
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    train(run, *QUICK)
    outside.write_text("not dlrun's\n")
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    code, err = cli(capsys, "train", f"hydra.run.dir={run}", "trainer.resume=auto", *QUICK)
    assert code == 2 and err == [f"dlrun train: error: run directory {run} holds a symlink {name} (-> {outside}); "
                                 "dlrun writes no file through a symlink: remove it, or pass a new hydra.run.dir"]
    assert outside.read_text() == "not dlrun's\n"


# --- one writer per run directory (item 3) ----------------------------------------------------------

def test_a_directory_another_process_holds_is_refused_naming_it_and_keeps_its_tmp_files(tmp_path):
    """Item 3: a rerun deleted a live writer's .last.pt.PID.tmp as "left by a killed process". While
    another holds the lock the run is refused and the file stays; once no one holds it, it is stale."""
    run = tmp_path / "run"
    partial = run / "checkpoints" / ".last.pt.4242.tmp"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a checkpoint")
    holder = hold(run)
    try:
        with pytest.raises(UserError, match=rf"run directory {run} is being written by process {os.getpid()} "
                                            rf"\(it holds \.dlrun\.lock there\); wait for it to end or stop it"):
            train(run, *QUICK, "trainer.resume=auto")
        assert partial.read_bytes() == b"half a checkpoint" and not (run / "summary.json").exists()
    finally:
        os.close(holder)  # as the kernel does when a writer dies
    summary = train(run, *QUICK, "trainer.resume=auto")
    assert summary["status"] == "finished" and not partial.exists()


def hold(folder: Path) -> int:
    """Lock folder as a live writer does (the PID written is this process's): the fd to close."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".dlrun.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def test_a_check_into_a_directory_another_process_holds_is_refused(tmp_path, capsys, monkeypatch):
    """dlrun check takes the lock on check.out too: two checks (or a check and a run) never share one."""
    out = tmp_path / "check"
    held = hold(out)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        code, err = cli(capsys, "check", "initial-loss", f"check.out={out}", "trainer.device=cpu", "model.hidden=[8]")
    finally:
        os.close(held)
    assert code == 2 and len(err) == 1, err
    assert f"check.out directory {out} is being written by process {os.getpid()}" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [".dlrun.lock"]


@pytest.mark.slow
def test_two_concurrent_trains_into_one_directory_one_runs_the_other_exits_2_and_changes_nothing(tmp_path):
    """Item 3 / acceptance: the second of two runs started together both passed the reuse check, and
    the directory ended holding the second's .hydra/, summary.json and best.pt."""
    run = tmp_path / "run"
    first = start("train", f"hydra.run.dir={run}", *QUICK, "optim.lr=0.01", cwd=tmp_path)
    try:
        # Hydra has written .hydra/: the first run is starting, with no summary.json yet.
        wait_for(lambda: (run / ".hydra" / "overrides.yaml").is_file(), first, "first run's .hydra/overrides.yaml")
        os.kill(first.pid, signal.SIGSTOP)  # held in that state while the second one tries
        before = contents(run)
        for extra in ([], ["trainer.resume=auto"]):
            second = subprocess.run([sys.executable, "-m", "dlrun", "train", f"hydra.run.dir={run}", *QUICK,
                                     "optim.lr=0.02", *extra], cwd=tmp_path, capture_output=True, text=True,
                                    timeout=300)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
            assert f"run directory {run} is being written by process {first.pid}" in lines[0]
            assert contents(run) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["hparams"]["optim.lr"] == 0.01
    assert "optim.lr=0.01" in (run / ".hydra" / "overrides.yaml").read_text()
    assert "0.02" not in (run / ".hydra" / "overrides.yaml").read_text() + (run / "train.log").read_text()


@pytest.mark.slow
def test_a_run_directory_deleted_mid_run_ends_in_one_line(tmp_path):
    """Item 9: rm -rf of the run directory while training gave three tracebacks (the checkpoint,
    summary.json, and TensorBoard's writer thread)."""
    run = tmp_path / "run"
    proc = start("train", f"hydra.run.dir={run}", "trainer.device=cpu", "model.hidden=[8]", "trainer.epochs=400",
                 "trainer.checkpoint_every_steps=5", cwd=tmp_path)
    wait_for(lambda: "epoch 2/" in ((run / "train.log").read_text() if (run / "train.log").exists() else ""),
             proc, "second epoch")
    os.rename(run, tmp_path / "gone")  # at once: rmtree alone races with the files the run keeps making
    shutil.rmtree(tmp_path / "gone")
    out, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and lines == [
        f"dlrun train: error: run directory {run} was deleted (or moved) while the run was writing it, and the run "
        "stopped; what it held is gone: start again (a new hydra.run.dir, or this one)"], err[-3000:]


# --- a sweep directory holds one sweep (item 5) -------------------------------------------------------

def test_another_sweep_into_a_sweep_directory_is_refused_naming_the_first_difference(tmp_path, capsys, monkeypatch):
    """Item 5: another seed, space or fixed override into an existing hydra.sweep.dir ended "2 of 2
    trials have ended", exit 0, and sweep.json paired the new values with the old results."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    sweep_dir = tmp_path / "sw"
    base = ("train", "-m", "sweep=random", f"hydra.sweep.dir={sweep_dir}", *QUICK, "sweep.n_trials=2")
    assert cli(capsys, *base)[0] == 0
    before = contents(sweep_dir)
    for change, difference in [
            (["sweep.seed=1"], "sweep.seed=1 (it ran with sweep.seed=0)"),
            (["trainer.max_steps=3"], "trainer.max_steps=3 (it ran with trainer.max_steps=2)"),
            (["sweep.space.optim.lr=loguniform(1e-3,1e-2)"],
             "sweep.space.optim.lr=loguniform(1e-3,1e-2) (it ran with sweep.space.optim.lr=loguniform(1e-5, 1e-1))"),
            (["optim=sgd"], "optim._target_=torch.optim.SGD (it ran with optim._target_=torch.optim.Adam)")]:
        code, err = cli(capsys, *base, *change)
        assert code == 2 and err == [f"dlrun train: error: hydra.sweep.dir={sweep_dir} holds another sweep: {difference}; "
                                     "run the same command as before to continue it, or pass a new hydra.sweep.dir "
                                     "(nothing was written)"], err
        assert contents(sweep_dir) == before
    code, err = cli(capsys, "train", "-m", f"hydra.sweep.dir={sweep_dir}", *QUICK, "optim.lr=0.1,0.01")  # Hydra's sweeper
    assert code == 2 and "holds another sweep: optim.lr=0.1,0.01 (it ran without optim.lr)" in err[0]
    assert contents(sweep_dir) == before
    held = hold(sweep_dir / "0")  # a worker of this sweep, killed a moment ago, still saving its step
    try:
        before = contents(sweep_dir)
        code, err = cli(capsys, *base)
    finally:
        os.close(held)
    assert code == 2 and f"run directory {sweep_dir / '0'} is being written by process {os.getpid()}" in err[0], err
    assert contents(sweep_dir) == before
    assert cli(capsys, *base, "sweep.n_jobs=1")[0] == 0  # the same sweep continues: nothing left to run
    assert [t["status"] for t in json.loads((sweep_dir / "sweep.json").read_text())["trials"]] == ["finished"] * 2


# --- a sweep's workers die with it (item 3, acceptance) ----------------------------------------------

def children(pid: int) -> set[int]:
    """The processes whose parent is pid (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_a_parallel_sweeps_process_ends_every_worker_each_saving_its_step(sig, tmp_path):
    """Item 3 / acceptance: SIGKILL or SIGTERM to a sweep.n_jobs=2 sweep left its workers training
    (8 x 730 MB after 650 s); Ctrl-C ended in joblib's traceback. Now no worker is left 10 s after a
    SIGKILL; on SIGINT (SIGTERM takes the same path) the sweep waits for its trials and exits 130 in
    one line; either way each trial it cut short saved its step (status interrupted, last.pt)."""
    sweep_dir = tmp_path / "sw"
    proc = start("train", "-m", "sweep=random", f"hydra.sweep.dir={sweep_dir}", "trainer.device=cpu",
                 "model.hidden=[8]", "trainer.epochs=100000", "sweep.n_trials=2", "sweep.n_jobs=2", cwd=tmp_path)
    logs = [sweep_dir / str(i) / "train.log" for i in (0, 1)]
    wait_for(lambda: all(log.is_file() and "epoch 1/" in log.read_text() for log in logs), proc,
             "both trials training")
    workers = children(proc.pid)  # loky's workers and its resource trackers
    assert len(workers) >= 2
    os.kill(proc.pid, sig)
    if sig != signal.SIGKILL:
        out, err = proc.communicate(timeout=300)  # the sweep's own end: its status, one line, no traceback
        assert proc.returncode == 130 and "Traceback" not in out + err, err[-3000:]
        assert "SIGINT: the sweep stopped; the trials it cut short saved their step" in out + err
        assert [t["status"] for t in json.loads((sweep_dir / "sweep.json").read_text())["trials"]] == \
            ["interrupted", "interrupted"]
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], f"workers alive 10 s after the sweep's process ended ({sig.name})"
    proc.communicate(timeout=60)
    for i in (0, 1):
        summary = json.loads((sweep_dir / str(i) / "summary.json").read_text())
        assert summary["status"] == "interrupted" and (sweep_dir / str(i) / "checkpoints" / "last.pt").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_a_repeat_of_the_signal_a_trial_is_ending_on_does_not_cut_its_ending_short():
    """A SIGKILLed sweep's workers get the parent-death SIGTERM once for each thread of the sweep's
    process that ends. The training loop noted the first and saved; a repeat arriving after the loop's
    handlers were gone raised in the worker and lost summary.json ("running"), 1 run in 4. A first
    signal outside training still stops the trial."""
    from dlrun.sweep.launcher import _Stopped, stop_outside_training
    from dlrun.train.interrupt import StopRequest, catch_signals

    with stop_outside_training():
        request = StopRequest()
        with catch_signals(request):
            os.kill(os.getpid(), signal.SIGTERM)
            signal_delivered(lambda: request.signal == "SIGTERM")
        os.kill(os.getpid(), signal.SIGTERM)  # the repeat, with the worker's handler back: the run goes on ending
        signal_delivered(lambda: True)
    with pytest.raises(_Stopped), stop_outside_training():  # the next trial in that worker: a first signal stops it
        os.kill(os.getpid(), signal.SIGTERM)
        signal_delivered(lambda: False)


def signal_delivered(condition) -> None:
    """Python runs a handler between bytecodes of the main thread: a few of them, then the state."""
    for _ in range(1000):
        if condition():
            return
        time.sleep(0.001)
    assert condition()
