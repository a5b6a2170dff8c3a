"""hydra/launcher=parallel: Hydra's joblib launcher, with workers that end with the sweep.

joblib's (loky's) workers outlive a sweep process that is killed: they go on training, and
writing, for as long as their trials take, and a rerun of the sweep then writes the same trials.
Here each trial, in its worker:
  - asks the kernel for a SIGTERM when the sweep's process dies, however it dies, SIGKILL
    included (prctl PR_SET_PDEATHSIG, Linux): the trial saves its step as on any SIGTERM, and
    the worker, with nobody left to report to, exits;
  - leaves the terminal's process group: a Ctrl-C reaches the sweep's process alone, which passes
    it on to the trials running (as SIGTERM) and never to an idle worker, whose death joblib would
    answer by killing every other worker mid-checkpoint;
  - locks its run directory (dlrun.runlock) before Hydra writes .hydra/ there;
  - returns, never raises: an exception from one job also makes joblib kill the others.
The sweep's process, on SIGINT or SIGTERM, starts no more trials, waits for the running ones to
save their step and end "interrupted", and exits 130 or 143 after one line, as a run does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from dlrun import runlock
from dlrun.errors import UserError
from dlrun.train import interrupt

log = logging.getLogger("dlrun")

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class Trial:
    """What a worker hands back: Hydra's JobReturn, or why there is none."""

    job: JobReturn | None = None
    exit_code: int | None = None  # a signal ended it (130, 143), or it was never started (None)
    refused: str | None = None    # its run directory was another process's


class ParallelLauncher(JoblibLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = [self.job_config(idx, overrides) for idx, overrides in enumerate(job_overrides, initial_job_idx)]
        sweep_config = HydraConfig.instance().cfg
        dirs = [trial_dir(config) for config in jobs]
        HydraConfig.instance().cfg = sweep_config  # trial_dir set each trial's: the sweep's again
        for run_dir in dirs:  # refused before any trial starts, not one by one
            pid = runlock.holder(run_dir)
            if pid is not None:
                raise runlock.busy(run_dir, pid, fix="pass a new hydra.sweep.dir")
        runlock.acquire(sweep_dir, "sweep directory", "pass a new hydra.sweep.dir")  # re-entrant: the sweeper's
        try:
            return self.run_batch(sweep_dir, jobs, dirs, job_overrides)
        finally:
            runlock.release(sweep_dir)

    def run_batch(self, sweep_dir: Path, jobs: list[DictConfig], dirs: list[Path],
                  job_overrides: Sequence[Sequence[str]]) -> Sequence[JobReturn]:
        from joblib import Parallel, delayed

        settings = joblib_settings(self.joblib)
        log.info(f"launching {len(jobs)} trials, {settings['n_jobs']} at once, into {sweep_dir}")
        for config, overrides in zip(jobs, job_overrides):
            log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
        state = Singleton.get_state()
        with forward_stop(dirs) as stop:
            # A generator: joblib takes the next trial only when a worker is free, by then a stop is seen.
            calls = (delayed(run_trial)(config, run_dir, os.getpid(), self.hydra_context, self.task_function, state)
                     if not stop.signal else delayed(Trial)() for config, run_dir in zip(jobs, dirs))
            trials = Parallel(**settings)(calls)
        refused = next((t.refused for t in trials if t.refused), None)
        if refused:
            raise UserError(refused)
        codes = [t.exit_code for t in trials if t.exit_code]
        if stop.signal or codes:
            name = stop.signal or next((k for k, v in EXIT_CODES.items() if v == codes[0]), "SIGTERM")
            log.warning(f"{name}: the sweep stopped; the trials it cut short saved their step (checkpoints/last.pt); "
                        f"continue with the same command (trainer.resume=auto, hydra.sweep.dir={sweep_dir})")
            raise SystemExit(EXIT_CODES.get(stop.signal, codes[0] if codes else 143))
        return [t.job for t in trials]

    def job_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        """Trial idx's config, as Hydra's joblib launcher makes it (in the sweep's process here, so
        that the trial's directory is known before its worker starts)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
            config.hydra.job.num = idx
        return config


def trial_dir(config: DictConfig) -> Path:
    """hydra.sweep.dir/hydra.sweep.subdir, as run_job resolves it."""
    HydraConfig.instance().set_config(config)
    return Path(os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))))


def joblib_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """joblib.Parallel's arguments from the launcher's config: loky processes, numbers as numbers."""
    out = {k: v for k, v in dict(settings).items() if v is not None}
    out["backend"] = "loky"  # Hydra's choice too: the threading backend cannot run Hydra jobs
    for key in ("pre_dispatch", "batch_size", "max_nbytes"):
        if isinstance(out.get(key), str) and out[key].isdigit():
            out[key] = int(out[key])
    return out


class Stop:
    signal: str | None = None


@contextlib.contextmanager
def forward_stop(dirs: list[Path]) -> Iterator[Stop]:
    """While a batch runs, in the sweep's process: the first SIGINT or SIGTERM is noted, and passed
    on as SIGTERM to each worker whose trial in `dirs` has started (its PID in the trial's lock
    file), once; a trial that starts later gets it as it starts. A second Ctrl-C quits at once."""
    stop, done, sent = Stop(), threading.Event(), set()

    def forward() -> None:
        while True:
            for run_dir in dirs:
                pid = _pid(run_dir)
                if pid is not None and (pid, run_dir) not in sent and _our_child(pid):
                    sent.add((pid, run_dir))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            if done.wait(0.1):
                return

    def note(signum: int, frame: object) -> None:
        if stop.signal is None:
            stop.signal = signal.Signals(signum).name
            threading.Thread(target=forward, daemon=True).start()
        elif signum == signal.SIGINT:  # a second Ctrl-C: out at once (the trials still save: they die with us)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield stop
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _pid(run_dir: Path) -> int | None:
    try:
        text = (run_dir / runlock.LOCK_NAME).read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _our_child(pid: int) -> bool:
    """Whether pid is a child of this process (a worker), not whoever holds a PID an old lock file names.
    /proc: multiprocessing.active_children() would reap the workers loky itself waits for."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid()


class _Stopped(BaseException):
    """SIGINT or SIGTERM in a worker outside the training loop (which notes them itself)."""


def run_trial(config: DictConfig, run_dir: Path, parent: int, hydra_context: Any, task_function: Any,
              singleton_state: dict[Any, Any]) -> Trial:
    """One trial in a worker: see the module's docstring."""
    from dlrun.rundir import claim, effective_resume, written_in_place

    worker = os.getpid() != parent  # joblib runs a single job at a time in the sweep's own process
    if worker:
        die_with(parent)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # out of the terminal's process group: signals come from the sweep's process
    trial = Trial()
    try:
        with stop_outside_training():
            setup_globals()
            Singleton.set_state(singleton_state)
            HydraConfig.instance().set_config(config)
            claim(run_dir, effective_resume(OmegaConf.select(config, "trainer.resume"), say=False),
                  "hydra.sweep.dir", written_in_place(str(config.hydra.job.name)))
            try:
                trial.job = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                                    job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            finally:
                runlock.release(run_dir)
    except UserError as exc:
        trial.refused = str(exc)
    except SystemExit as exc:  # the run ended "interrupted": 130 or 143
        trial.exit_code = exc.code if isinstance(exc.code, int) else 1
    except _Stopped as exc:
        trial.exit_code = EXIT_CODES[signal.Signals(exc.args[0]).name]
    if worker and os.getppid() != parent:  # the sweep's process is gone: nobody to report to
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(trial.exit_code or 143)
    return trial


def die_with(parent: int) -> None:
    """SIGTERM to this process when `parent` dies (Linux; elsewhere a no-op). The kernel sends it
    when the thread that started this worker ends: loky starts workers from the sweep's main thread
    or from its executor's manager thread, which lives as long as the workers are needed."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def stop_outside_training() -> Iterator[None]:
    """SIGINT and SIGTERM end the trial where it stands (the training loop puts its own handlers in,
    which save the step first); the worker's own handlers come back after it."""
    raised = []
    interrupt.forget()  # a worker runs trial after trial

    def stop(signum: int, frame: object) -> None:
        # Once the training loop has noted a signal it is saving and ending: a repeat must not cut
        # that short (a SIGKILLed sweep's workers get SIGTERM once per thread of the sweep's process).
        if not raised and interrupt.noted() is None:
            raised.append(signum)
            raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
