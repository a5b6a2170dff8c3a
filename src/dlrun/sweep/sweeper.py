"""`dlrun train -m sweep=random`: a Hydra sweeper that draws n_trials from sweep.space and hands
them to Hydra's launcher (basic: one after the other in this process; joblib: sweep.n_jobs at once).

Its state is the sweep directory itself: trial i runs in DIR/i, and a trial whose summary.json says
it ended (finished, early_stopped, stopped, failed) is not run again. Running the same command
with the same hydra.sweep.dir after a kill runs only the rest; a trial the kill cut short
continues from its own last.pt (every trial runs with trainer.resume=auto). Another sweep (other
overrides, sweep.seed or sweep.space) into that directory is refused before anything is written
(dlrun.rundir.claim_sweep, from the RunDirGuard callback), and so is one while the sweep runs.

A trial that raises or diverges is recorded as failed and the sweep goes on; at the end the exit
status is 1 if any trial failed (0: all ended well), and DIR/sweep.json lists every trial.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from dlrun import runlock, strict_json
from dlrun.sweep.space import as_override, dimensions, sample

log = logging.getLogger("dlrun")

ENDED = ("finished", "early_stopped", "stopped", "failed")


def trial_status(trial_dir: Path) -> dict[str, Any] | None:
    """The trial's summary.json, or None when it has not run (or its summary cannot be read)."""
    try:
        return json.loads((trial_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


class SearchSweeper(Sweeper):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def trials(self, arguments: list[str]) -> list[list[str]]:
        """Every trial's overrides: the command line's, then the sampled values."""
        sweep = OmegaConf.to_container(self.config.sweep, resolve=True)
        from dlrun.schema import Sweep, check_node

        check_node(self.config.sweep, Sweep, "sweep.", "sweep")
        dims = dimensions(sweep["space"])
        sampled_keys = {d.key for d in dims}
        fixed = [a for a in arguments if a.split("=", 1)[0].lstrip("+~") in sampled_keys]
        if fixed:  # the drawn value would silently replace it
            from dlrun.errors import UserError

            key = fixed[0].split("=", 1)[0].lstrip("+~")
            raise UserError(f"{fixed[0]}: sweep.space also samples {key}; drop {fixed[0]} to search it, or "
                            f"drop the dimension with '~sweep.space.{key}' to fix it")
        given = list(arguments)
        if not any(a.startswith("trainer.resume=") for a in given):
            given.append("trainer.resume=auto")  # a trial a kill cut short continues from its last.pt
        n_jobs = int(sweep["n_jobs"])
        # A cluster's launcher gives every trial a job of its own (its cpus_per_task): the cores of
        # the machine that submits them are nobody's business.
        on_this_machine = not str(self.config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")
        if n_jobs > 1 and on_this_machine and not any(a.startswith("trainer.threads=") for a in given):
            # Trials sharing the machine divide its cores: two trials each using every core slow
            # each other down by up to 10x.
            given.append(f"trainer.threads={max(1, (os.cpu_count() or 1) // n_jobs)}")
        return [given + [as_override(k, v) for k, v in sample(dims, int(sweep["seed"]), i).items()]
                for i in range(int(sweep["n_trials"]))]

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        trials = self.trials(arguments)
        # One sweep writes a sweep directory (re-entrant: the RunDirGuard callback locked it if it existed).
        runlock.acquire(sweep_dir, "sweep directory", "pass a new hydra.sweep.dir")
        try:
            return self.run_trials(sweep_dir, trials)
        finally:
            runlock.release(sweep_dir)

    def run_trials(self, sweep_dir: Path, trials: list[list[str]]) -> None:
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        todo = [i for i, _ in enumerate(trials)
                if (trial_status(sweep_dir / str(i)) or {}).get("status") not in ENDED]
        if len(todo) < len(trials):
            log.info(f"sweep: {len(trials) - len(todo)} of {len(trials)} trials in {sweep_dir} have ended; "
                     f"running the other {len(todo)}")
        n_jobs = int(self.config.sweep.n_jobs)
        try:
            for batch in _consecutive_batches(todo, n_jobs):
                # The launcher numbers jobs from initial_job_idx: trial i always runs in DIR/i.
                self.launcher.launch([trials[i] for i in batch], initial_job_idx=batch[0])
                self.write_report(sweep_dir, trials)
        except SystemExit:  # a signal stopped the sweep (130, 143): sweep.json says where each trial is
            self.write_report(sweep_dir, trials)
            raise
        failed = self.write_report(sweep_dir, trials)
        if failed:
            print(f"dlrun train: {failed} of {len(trials)} trials failed; see {sweep_dir / 'sweep.json'}",
                  file=sys.stderr)
            sys.exit(1)  # as dlrun check's failed line: 2 stays a mistake on the command line
        return None

    def write_report(self, sweep_dir: Path, trials: list[list[str]]) -> int:
        """DIR/sweep.json: every trial's overrides, status, monitored metric and error; returns the failed count."""
        rows = []
        for i, overrides in enumerate(trials):
            summary = trial_status(sweep_dir / str(i)) or {}
            best = summary.get("best") or {}
            rows.append({"trial": i, "dir": str(sweep_dir / str(i)), "status": summary.get("status", "pending"),
                         "monitor": best.get("monitor"), "value": best.get("value"),
                         "error": summary.get("error"), "overrides": overrides})
        tmp = sweep_dir / ".sweep.json.tmp"
        tmp.write_text(strict_json.dumps({"trials": rows}, indent=2) + "\n")
        os.replace(tmp, sweep_dir / "sweep.json")
        return sum(row["status"] == "failed" for row in rows)


def _consecutive_batches(numbers: list[int], size: int) -> list[list[int]]:
    """[0, 1, 2, 5, 6] in batches of 2 -> [[0, 1], [2], [5, 6]]: a launch numbers its jobs consecutively."""
    batches: list[list[int]] = []
    for n in numbers:
        if batches and len(batches[-1]) < size and batches[-1][-1] == n - 1:
            batches[-1].append(n)
        else:
            batches.append([n])
    return batches
