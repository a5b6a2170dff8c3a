"""A run directory that already holds a run is never overwritten: it is continued or refused.

Hydra's default run directory has microseconds in its name, so a clash comes only from an
explicit `hydra.run.dir=...` (or `hydra.sweep.dir=...`), given in any form: plain, with + or ++,
or through an interpolation such as '${oc.env:RD}'. Continuing that run needs trainer.resume=auto
(or a checkpoint inside it); anything else is refused in one line before a file is written:
Hydra's callback (dlrun.train.app.RunDirGuard) checks the resolved directory before Hydra writes
.hydra/ or train.log, and takes the directory's lock (dlrun.runlock) for the run.
A requeued SLURM job (SLURM_RESTART_COUNT >= 1) with no trainer.resume continues as with auto.

A sweep directory is refused the same way when it holds another sweep: other fixed overrides,
another sweep.seed or sweep.space. Continuing the same sweep (sweep=random's sweeper runs the
trials that have not ended) may change only how it runs: sweep.n_jobs, sweep.n_trials,
trainer.resume, trainer.threads, trainer.device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

from dlrun import runlock
from dlrun.paths import CHECKPOINTS
from dlrun.errors import UserError

log = logging.getLogger("dlrun")

# What a sweep may change when it is run again into its own directory: how it runs, not what.
MAY_CHANGE = ("sweep.n_jobs", "sweep.n_trials", "trainer.resume", "trainer.threads", "trainer.device")


def held_run(run_dir: Path) -> str | None:
    """What run `run_dir` holds ("finished", "interrupted", "checkpoints", ...), or None when none."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            return str(json.loads(summary.read_text()).get("status", "unknown status"))
        except (OSError, ValueError):
            return "unreadable summary.json"
    if any((run_dir / CHECKPOINTS).glob("*.pt")) or any((run_dir / "tb").glob("events.*")):
        return "checkpoints and event files"
    return None


def effective_resume(resume: object, say: bool = True) -> object:
    """trainer.resume, or "auto" when it is null in a requeued SLURM job (SLURM_RESTART_COUNT >= 1).

    SLURM (or submitit, on pre-emption or a time-out) starts a requeued job over with its command
    unchanged, into the run directory it had begun: continuing that run from its newest checkpoint
    is what it needs, and refusing the directory would end the job instead."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    if resume is not None or not restarts.isdigit() or int(restarts) < 1:
        return resume
    if say:
        log.info(f"SLURM_RESTART_COUNT={restarts}: a requeued job; continuing as with trainer.resume=auto")
    return "auto"


def refuse_reuse(run_dir: Path, resume: object, option: str = "hydra.run.dir") -> None:
    """UserError unless run_dir is new, or trainer.resume continues the run it holds."""
    run_dir = Path(run_dir).resolve()
    status = held_run(run_dir)
    if status is None or str(resume) == "auto":
        return
    target = Path(str(resume)).expanduser().resolve() if resume is not None else None
    if target is not None and (target == run_dir or run_dir in target.parents):
        return  # continuing this run from one of its own checkpoints
    raise UserError(f"run directory {run_dir} already holds a run ({status}); continue it with trainer.resume=auto, "
                    f"or pass a new {option} (nothing was written)")


def check_location(run_dir: Path, option: str = "hydra.run.dir", writes: tuple[str, ...] = ()) -> None:
    """UserError when run_dir cannot be a run directory: a file, a symlink loop, a name too long,
    or a symlink among the files `writes` names (Hydra and dlrun write those in place: a link
    there would send the write elsewhere)."""
    what = "sweep directory" if option == "hydra.sweep.dir" else "run directory"
    try:
        is_dir = Path(run_dir).is_dir()  # follows a link to a directory, which is fine
        if not is_dir and os.path.lexists(run_dir):
            os.stat(run_dir)  # a dangling link or a loop raises here
            raise UserError(f"{option}={runlock.shown(run_dir)} is a file, not a directory; pass a new {option} "
                            "(nothing was written)")
    except OSError as exc:
        raise UserError(f"{what} {runlock.shown(run_dir)} cannot be used: {runlock.location_problem(exc)}; "
                        f"pass a new {option} (nothing was written)") from None
    for name in writes:  # e.g. hydra.job.name=<300 characters>.log: Hydra's log handler would fail
        if any(len(part.encode()) > 255 for part in Path(name).parts):
            raise UserError(f"{what} {runlock.shown(run_dir)}: {runlock.shown(name)} cannot be written there: "
                            "its name is too long for the file system (at most 255 characters a name); shorten it")
    if not is_dir:
        return
    for name in (".hydra", *writes, runlock.LOCK_NAME):
        path = Path(run_dir) / name
        try:
            link = stat.S_ISLNK(os.lstat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. hydra.job.name too long for a file name
            raise UserError(f"{what} {runlock.shown(run_dir)}: {runlock.shown(name)} cannot be written: "
                            f"{runlock.location_problem(exc)}; pass a new {option}") from None
        if link:
            raise UserError(f"{what} {run_dir} holds a symlink {name} (-> {os.readlink(path)}); "
                            f"dlrun writes no file through a symlink: remove it, or pass a new {option}")


def claim(run_dir: Path, resume: object, option: str = "hydra.run.dir", writes: tuple[str, ...] = ()) -> None:
    """Check run_dir (check_location, refuse_reuse) and lock it for this process, or one UserError.

    A live writer is named first (its PID): whatever the directory holds, it is not ours to use.
    An existing run refused leaves the directory as it was: the lock file is made only after."""
    run_dir = Path(os.path.abspath(run_dir))
    check_location(run_dir, option, writes)
    fix = f"pass a new {option}"
    if runlock.holds(run_dir):
        runlock.acquire(run_dir)
        return
    pid = runlock.holder(run_dir)  # a probe: a refused run changes nothing, its lock file included
    if pid is not None:
        raise runlock.busy(run_dir, pid, fix=fix)
    refuse_reuse(run_dir, resume, option)
    runlock.acquire(run_dir, fix=fix)


@contextlib.contextmanager
def deleted_mid_run(run_dir: Path) -> Iterator[None]:
    """A run directory deleted (or moved away) while the run writes it makes every later write fail,
    in the training loop and in TensorBoard's writer thread: that becomes one UserError line, and
    the thread's own traceback is not printed. Other errors pass through as they are."""
    run_dir = Path(run_dir)
    start = os.stat(run_dir)

    def gone() -> bool:
        try:
            now = os.stat(run_dir)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != (start.st_dev, start.st_ino)

    previous = threading.excepthook

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and gone()):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    except Exception:
        if not gone():
            raise
        raise UserError(f"run directory {run_dir} was deleted (or moved) while the run was writing it, and the run "
                        "stopped; what it held is gone: start again (a new hydra.run.dir, or this one)") from None
    finally:
        threading.excepthook = previous


def written_in_place(job_name: str = "train") -> tuple[str, ...]:
    """The files Hydra (and dlrun, before a rename) open for writing by name in a run directory."""
    return (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", f"{job_name}.log", ".summary.json.tmp")


def claim_sweep(sweep_dir: Path, config: Any, continues: bool) -> bool:
    """Check an existing sweep directory, and lock it, before the sweeper writes there; `config` is
    Hydra's composed multirun config. `continues`: the sweeper continues its own sweep
    (sweep=random); Hydra's does not, so there trials that hold runs need trainer.resume=auto, as a
    run directory does. A new directory is made and locked by the sweeper (or the launcher) once
    its settings are checked: a refused sweep leaves no folder behind. Returns whether it locked."""
    sweep_dir = Path(os.path.abspath(sweep_dir))
    option, fix = "hydra.sweep.dir", "pass a new hydra.sweep.dir"
    check_location(sweep_dir, option, ("multirun.yaml", ".sweep.json.tmp"))
    pid = runlock.holder(sweep_dir)
    if pid is not None:
        raise runlock.busy(sweep_dir, pid, "sweep directory", fix)
    refuse_other_sweep(sweep_dir, config)
    if sweep_dir.is_dir():
        resume = effective_resume(config.trainer.get("resume"), say=False)
        for trial in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            check_location(trial, option, written_in_place(str(config.hydra.job.name)))
            pid = runlock.holder(trial)  # a worker of a sweep killed a moment ago, still saving its step
            if pid is not None:
                raise runlock.busy(trial, pid, fix=fix)
            if not continues:
                refuse_reuse(trial, resume, option)
        runlock.acquire(sweep_dir, "sweep directory", fix)
        return True
    return False


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config tree as {"a.b.c": leaf}; an empty dict or list is a leaf."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree:
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def _sweeps(overrides: list[str]) -> dict[str, str]:
    """The overrides that sweep a key (optim.lr=0.1,0.01): Hydra leaves them out of the composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    return {o.key_or_group: o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()}


def sweep_difference(old: Any, new: Any) -> str | None:
    """The first difference between two composed multirun configs that makes them other sweeps:
    a value of the job's config (fixed overrides, sweep.seed, sweep.space, ...) or a swept key;
    None when only how the sweep runs (MAY_CHANGE) differs."""
    from omegaconf import OmegaConf

    def job(config: Any) -> dict[str, Any]:
        tree = OmegaConf.to_container(config, resolve=False)
        tree.pop("hydra", None)
        return _flat(tree)

    def swept(config: Any) -> dict[str, str]:
        return _sweeps(list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or []))

    for before, now in ((swept(old), swept(new)), (job(old), job(new))):
        for key in [*now, *(k for k in before if k not in now)]:
            if key in MAY_CHANGE or before.get(key, "<unset>") == now.get(key, "<unset>"):
                continue
            if key not in before:
                return f"{key}={now[key]} (it ran without {key})"
            if key not in now:
                return f"no {key} (it ran with {key}={before[key]})"
            return f"{key}={now[key]} (it ran with {key}={before[key]})"
    return None


def refuse_other_sweep(sweep_dir: Path, config: Any) -> None:
    """UserError when sweep_dir's multirun.yaml is another sweep's (sweep_difference names the first
    difference): its trials' results would be read as this sweep's."""
    from omegaconf import OmegaConf

    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return
    try:
        old = OmegaConf.load(saved)
        difference = sweep_difference(old, config)
    except Exception:  # noqa: BLE001 - whatever it holds, it cannot be told to be this sweep
        raise UserError(f"hydra.sweep.dir={sweep_dir} holds a multirun.yaml that cannot be read; "
                        "pass a new hydra.sweep.dir (nothing was written)") from None
    if difference is not None:
        raise UserError(f"hydra.sweep.dir={sweep_dir} holds another sweep: {difference}; run the same command "
                        "as before to continue it, or pass a new hydra.sweep.dir (nothing was written)")


def refuse_reuse_before_hydra(args: list[str]) -> str | None:
    """The run directory `args` give (hydra.run.dir in any form, interpolations resolved), checked
    before Hydra starts: a process that starts others (torchrun's rank 0) refuses for them all.
    Returns the resolved directory, or None when it is a fresh ${now:...} one. Takes no lock: the
    run takes it (RunDirGuard) when Hydra starts it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dlrun.paths import CONFIG_DIR

    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in args if not a.startswith("-")]
    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the directory's name
            if "${now:" in str(OmegaConf.to_container(cfg.hydra.run, resolve=False).get("dir")):
                return None  # a new directory, named by the clock
            run_dir = Path(os.path.abspath(str(cfg.hydra.run.dir)))
            resume = effective_resume(OmegaConf.select(cfg, "trainer.resume"), say=False)
            job_name = str(cfg.hydra.job.name)
    except (HydraException, OmegaConfBaseException):
        return None  # a mistake in the overrides: Hydra says it, in one line, when it starts
    check_location(run_dir, "hydra.run.dir", written_in_place(job_name))
    pid = runlock.holder(run_dir)
    if pid is not None:
        raise runlock.busy(run_dir, pid)
    refuse_reuse(run_dir, resume)
    return str(run_dir)
