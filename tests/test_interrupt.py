"""Nothing lost: signals save a resumable mid-epoch last.pt, trainer.checkpoint_every_steps,
trainer.resume=auto, and summary.json's status from "running" to how the run ended."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dlrun.errors import UserError
from dlrun import checkpoint
from dlrun.train.interrupt import StopRequest, catch_signals
from dlrun.train.loop import Trainer
from tests.conftest import dlrun_here, train

NUMBERS = ("test", "best", "epochs", "steps", "params")
# Fast on 2 CPU cores: 21 steps an epoch; dropout and a per-step schedule make RNG and schedule state matter.
FAST = ("trainer.device=cpu", "model.dropout=0.2", "sched.interval=step", "logger.every=7",
        "logger.diagnostics.every=0")


def numbers(summary: dict) -> dict:
    return {k: summary[k] for k in NUMBERS}


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def noted(request: StopRequest, name: str) -> bool:
    """Wait until the handler has noted signal `name` (Python runs it soon after the C-level one)."""
    deadline = time.monotonic() + 30
    while request.signal != name and time.monotonic() < deadline:
        time.sleep(0.001)
    return request.signal == name


# ----------------------------------------------------------------------------------- in-process
def test_signal_handlers_note_the_signal_and_are_restored(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    request = StopRequest()
    with catch_signals(request):
        os.kill(os.getpid(), signal.SIGUSR1)
        assert noted(request, "SIGUSR1")
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 30  # until the handler has run: it gives SIGINT back to the OS
        while signal.getsignal(signal.SIGINT) is not signal.SIG_DFL and time.monotonic() < deadline:
            time.sleep(0.001)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # a second Ctrl-C kills at once
        assert request.signal == "SIGUSR1"  # the first one counts
    assert {s: signal.getsignal(s) for s in before} == before

    seen = {}

    def in_a_thread():  # Python refuses handlers outside the main thread: nothing is installed
        with catch_signals(StopRequest()):
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen["handler"] == before[signal.SIGTERM]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted 3-epoch run of FAST, without mid-epoch checkpoints."""
    return train(tmp_path_factory.mktemp("whole"), *FAST, "trainer.epochs=3")


def stop_at_step(patch, stop_at: int) -> None:
    """Make Trainer note a SIGTERM during optimizer step `stop_at`, as the handler would."""
    step = Trainer.train_step

    def train_step(self, x, y, mix=None):
        step(self, x, y, mix)
        if self.step == stop_at:
            self.stop_request.signal = "SIGTERM"

    patch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("stop_at", [7, 50])  # mid-epoch 1; mid-epoch 3 (after two epoch checkpoints)
def test_a_signal_mid_epoch_saves_a_checkpoint_that_resumes_to_the_same_numbers(tmp_path, monkeypatch, whole,
                                                                                stop_at):
    with monkeypatch.context() as patch:
        stop_at_step(patch, stop_at)
        first = train(tmp_path, *FAST, "trainer.epochs=3")
    assert first["status"] == "interrupted" and first["signal"] == "SIGTERM" and first["test"] == {}
    assert first["steps"] == stop_at and first["epochs"] == stop_at // 21
    last = checkpoint.load(tmp_path / "checkpoints/last.pt")
    assert last["step"] == stop_at and last["epoch"] == stop_at // 21
    assert last["partial"]["step"] == stop_at % 21  # the position within the epoch it stopped in

    resumed = train(tmp_path, *FAST, "trainer.epochs=3", "trainer.resume=auto")
    assert resumed["status"] == "finished"
    assert numbers(resumed) == numbers(whole)


def test_checkpoint_every_steps_writes_mid_epoch_and_resume_auto_falls_back_past_a_corrupt_one(
        tmp_path, monkeypatch, whole):
    every = ("trainer.checkpoint_every_steps=5",)
    assert numbers(train(tmp_path / "every", *FAST, "trainer.epochs=3", *every)) == numbers(whole)  # changes nothing
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop_at_step(patch, 27)  # last.pt: step 27; previous.pt: step 25, the latest of every 5
        train(run, *FAST, "trainer.epochs=3", *every)
    last, previous = checkpoint.load(run / "checkpoints/last.pt"), checkpoint.load(run / "checkpoints/previous.pt")
    assert (last["step"], last["epoch"], last["partial"]["step"]) == (27, 1, 6)
    assert (previous["step"], previous["epoch"], previous["partial"]["step"]) == (25, 1, 4)

    (run / "checkpoints/last.pt").write_bytes(b"cut short")
    resumed = train(run, *FAST, "trainer.epochs=3", *every, "trainer.resume=auto")
    assert numbers(resumed) == numbers(whole)  # from previous.pt, mid-epoch 2
    assert checkpoint.load(run / "checkpoints/last.pt")["step"] == 63


def test_resume_auto_without_a_checkpoint_starts_fresh(tmp_path, caplog):
    with caplog.at_level("INFO", logger="dlrun"):
        summary = train(tmp_path, "trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]", "trainer.resume=auto")
    assert summary["status"] == "finished" and summary["steps"] == 21
    assert "trainer.resume=auto: no checkpoint to continue from" in caplog.text and "starting fresh" in caplog.text


def test_a_diverging_run_leaves_status_failed_with_the_error(tmp_path):
    with pytest.raises(UserError) as error:
        train(tmp_path, "optim=sgd", "optim.lr=1e6", "trainer.epochs=2", "logger.every=5")
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"] == str(error.value).splitlines()[0]
    assert summary["error"].startswith("training diverged: the loss was nan at step")


def test_summary_says_running_while_training(tmp_path, monkeypatch):
    seen = {}
    fit = Trainer.fit

    def spy(self):
        seen["summary"] = read_summary(tmp_path)
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", spy)
    final = train(tmp_path, "trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]")
    assert seen["summary"]["status"] == "running" and seen["summary"]["steps"] == 0
    assert final["status"] == "finished"


# ----------------------------------------------------------------------------------- subprocesses
LONG = (*FAST, "trainer.epochs=8")  # 168 steps: a few seconds of training to interrupt


def popen(run_dir: Path, *overrides: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlrun", "train", f"hydra.run.dir={run_dir}", *overrides],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "120"})


def watch_until(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> list[int]:
    """Poll until last.pt holds at least `step`; load every checkpoint on disk each time (all must load).

    Returns the steps last.pt held, as seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]  # still training
        for path in sorted((run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []:
            state = checkpoint.load(path)  # raises if any checkpoint present is not whole
            if path.name == "last.pt":
                seen.append(state["step"])
        if seen and seen[-1] >= step:
            return seen
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} in {timeout} s; saw {seen}")


@pytest.fixture(scope="module")
def whole_long(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole_long")
    return {**train(run_dir, *LONG), "run_dir": run_dir}


def tensorboard_steps(tb: Path, tag: str) -> list[int]:
    """The steps TensorBoard shows for `tag`, after its purge of steps a resumed run logs again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [event.step for event in EventAccumulator(str(tb)).Reload().Scalars(tag)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_auto_ends_like_an_unbroken_run(tmp_path, whole_long, seed):
    kill_at = random.Random(seed).randrange(4, 150)  # a random step of the 168
    run = tmp_path / "run"
    proc = popen(run, *LONG, "trainer.checkpoint_every_steps=3", cwd=tmp_path)
    seen = watch_until(proc, run, kill_at)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_summary(run)["status"] == "running"  # nobody could say otherwise
    on_disk = {p.name: checkpoint.load(p) for p in (run / "checkpoints").glob("*.pt")}
    assert on_disk["last.pt"]["step"] >= seen[-1] >= kill_at
    (run / "checkpoints" / ".last.pt.99999.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves

    resumed = dlrun_here("train", f"hydra.run.dir={run}", *LONG, "trainer.checkpoint_every_steps=3",
                         "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoints/last.pt'} at epoch" in resumed.stdout
    assert numbers(read_summary(run)) == numbers(whole_long)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    # Every step the unbroken run logged is there (flushed with each checkpoint), each once, though two
    # processes logged; the resumed run also logged the windows its mid-epoch checkpoints closed.
    steps = tensorboard_steps(run / "tb", "train/loss")
    assert steps == sorted(set(steps)) and set(tensorboard_steps(whole_long["run_dir"] / "tb", "train/loss")) <= set(steps)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_last_pt_and_exit_with_their_codes(tmp_path, whole_long, sig, code):
    run = tmp_path / "run"
    proc = popen(run, *LONG, "trainer.checkpoint_every_steps=3", cwd=tmp_path)
    watch_until(proc, run, 30)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    summary = read_summary(run)
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    last = checkpoint.load(run / "checkpoints/last.pt")
    assert last["step"] == summary["steps"] and last["epoch"] == summary["epochs"] < 8
    assert f"{sig.name}: stopped after step {summary['steps']}" in out
    assert f"trainer.resume={run}" in out
    if sig != signal.SIGTERM:
        return  # one resume through the CLI is enough: the in-process tests resume from every kind of stop
    resumed = dlrun_here("train", f"hydra.run.dir={run}", *LONG, "trainer.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert numbers(read_summary(run)) == numbers(whole_long)


def test_a_resumed_writer_hides_what_the_killed_run_logged_past_its_checkpoint(tmp_path):
    from dlrun.monitor.tensorboard import RunWriter

    killed = RunWriter(tmp_path)
    for step in range(1, 11):
        killed.scalars({"val/loss": 1.0 / step}, step)
    killed.flush()  # on disk now, as with each checkpoint: a reader sees it while the run goes on
    assert tensorboard_steps(tmp_path, "val/loss") == list(range(1, 11))
    killed.close()
    resumed = RunWriter(tmp_path)  # resumed from a checkpoint of step 4; logs other tags first
    resumed.resumed_at(4)
    resumed.scalars({"train/loss": 0.5}, 5)
    resumed.close()
    assert tensorboard_steps(tmp_path, "val/loss") == [1, 2, 3, 4]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_final_test_evaluation_lets_it_finish(tmp_path, monkeypatch, sig, caplog):
    original = Trainer.test
    # What the process had, not Python's default: a suite started in the background by a script
    # inherits SIGINT ignored, and Python leaves it so (this test failed there, passing alone).
    before = signal.getsignal(sig)

    def test_then_signalled(self):
        os.kill(os.getpid(), sig)
        assert noted(self.stop_request, sig.name)  # noted before the test split is evaluated
        return original(self)

    monkeypatch.setattr(Trainer, "test", test_then_signalled)
    summary = train(tmp_path, "trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]")
    assert summary["status"] == "finished" and "acc" in summary["test"]
    assert f"{sig.name} arrived during the final test evaluation" in caplog.text
    assert signal.getsignal(sig) == before  # handlers given back


def test_a_resumed_writers_event_file_sorts_after_the_killed_runs_made_in_the_same_second(tmp_path):
    """TensorBoard reads event files in name order (second, host, PID): a run resumed within the
    second the killed run's file was made in (an in-process resume is that fast) wrote a file that
    sorted first by PID, and TensorBoard then hid the killed run's steps instead of its later ones."""
    import time

    from dlrun.monitor.tensorboard import RunWriter

    killed = tmp_path / f"events.out.tfevents.{int(time.time())}.zzzz.99999999.0"  # sorts after this host's name
    killed.write_bytes(b"")
    writer = RunWriter(tmp_path)
    writer.close()
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == killed.name
