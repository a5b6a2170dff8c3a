"""A run directory that already holds a run is never overwritten: it is continued or refused.

Hydra's default run directory has microseconds in its name, so a clash comes only from an
explicit `hydra.run.dir=...` (or `hydra.sweep.dir=...`). Continuing that run needs
trainer.resume=auto (or a checkpoint inside it); anything else is refused in one line before a
file is written. The CLI checks before Hydra starts, so even Hydra's .hydra/ files stay as they were.
A requeued SLURM job (SLURM_RESTART_COUNT >= 1) with no trainer.resume continues as with auto.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dlrun.errors import UserError

log = logging.getLogger("dlrun")


def held_run(run_dir: Path) -> str | None:
    """What run `run_dir` holds ("finished", "interrupted", "checkpoints", ...), or None when none."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            return str(json.loads(summary.read_text()).get("status", "unknown status"))
        except (OSError, ValueError):
            return "unreadable summary.json"
    if any((run_dir / "checkpoints").glob("*.pt")) or any((run_dir / "tb").glob("events.*")):
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


def refuse_reuse_before_hydra(args: list[str]) -> None:
    """The CLI's check for an explicit hydra.run.dir (or, with -m, hydra.sweep.dir's trial folders)."""
    values = dict(arg.split("=", 1) for arg in args if "=" in arg and not arg.startswith(("-", "+", "~")))
    resume = values.get("trainer.resume")
    # Said by app.py, into train.log: logging starts with Hydra.
    resume = effective_resume(None if resume in (None, "null") else resume, say=False)
    if "-m" in args or "--multirun" in args:
        if values.get("sweep") == "random":
            return  # its sweeper continues the sweep directory: ended trials kept, the rest resumed
        sweep = values.get("hydra.sweep.dir")
        if sweep and "${" not in sweep and Path(sweep).is_dir():
            for trial in sorted(p for p in Path(sweep).iterdir() if p.is_dir()):
                refuse_reuse(trial, resume, "hydra.sweep.dir")
        return
    run = values.get("hydra.run.dir")
    if run and "${" not in run:
        refuse_reuse(Path(run), resume)
