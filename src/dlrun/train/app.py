"""`dlrun train`: the Hydra app. Heavy imports wait until Hydra has composed the config."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from dlrun.paths import CONFIG_DIR


class RunDirGuard(Callback):
    """configs/train.yaml's hydra.callbacks: the run (or sweep) directory, as Hydra resolved it,
    checked and locked (dlrun.rundir.claim) before Hydra writes .hydra/ and train.log there.

    A refusal ends the process here, in one line: Hydra turns a callback's exception into a
    warning and goes on writing."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks write nothing there
            return
        from dlrun.rundir import claim, effective_resume, held_run, written_in_place

        with _one_line():
            run_dir = _resolved(config, "hydra.run.dir")
            resume = effective_resume(OmegaConf.select(config, "trainer.resume"), say=False)
            claim(run_dir, resume, "hydra.run.dir", written_in_place(str(config.hydra.job.name)))
            self.run_dir = run_dir
            if resume and held_run(run_dir):  # continuing a run under another recipe is refused
                from dlrun.train.resume import pick  # before Hydra rewrites that run's .hydra/

                job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
                pick(job, run_dir, resume)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dlrun import runlock

        if getattr(self, "run_dir", None) is not None:
            runlock.release(self.run_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from dlrun.rundir import claim_sweep

        with _one_line():
            sweep_dir = _resolved(config, "hydra.sweep.dir")
            continues = str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith("SearchSweeper")
            if claim_sweep(sweep_dir, config, continues):
                self.sweep_dir = sweep_dir

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from dlrun import runlock

        if getattr(self, "sweep_dir", None) is not None:
            runlock.release(self.sweep_dir)


def _resolved(config: DictConfig, key: str) -> Path:
    """hydra.run.dir or hydra.sweep.dir as Hydra will resolve it (its ${now:...} is cached in config)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # for ${hydra:...}, as run_job sets it
    return Path(os.path.abspath(str(OmegaConf.select(config, key))))


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """A UserError, or a directory's name that cannot be resolved, as the CLI's one line and exit 2."""
    from omegaconf.errors import OmegaConfBaseException

    from dlrun.errors import UserError

    try:
        yield
    except (UserError, OmegaConfBaseException) as exc:
        from dlrun.say import fail

        try:
            fail("train", exc)
        except (UserError, OmegaConfBaseException):  # HYDRA_FULL_ERROR=1: the traceback asked for, then 2
            import traceback

            traceback.print_exc()
            sys.exit(2)


# Hydra's own sweeper and launcher: a plain -m runs its jobs one after the other in this process
# and stops at the first that fails.
BASIC = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
         "hydra._internal.core_plugins.basic_launcher.BasicLauncher")


def one_line_errors(task: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """A mistake found inside the job ends here in the CLI's one line: past this, Hydra would print
    "Error executing job with overrides: [...]" before it. A trial of sweep=random raises it on: its
    sweeper records the trial as failed and goes on with the others."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.errors import HydraException
        from hydra.types import RunMode
        from omegaconf.errors import OmegaConfBaseException

        from dlrun.say import fail
        from dlrun.errors import UserError

        try:
            return task(cfg)
        except (UserError, HydraException, OmegaConfBaseException) as exc:  # e.g. an interpolation of nothing
            hydra_cfg = HydraConfig.get()
            plugins = (hydra_cfg.sweeper._target_, hydra_cfg.launcher._target_)
            if hydra_cfg.mode == RunMode.MULTIRUN and plugins != BASIC:
                raise
            fail("train", exc)

    return run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@one_line_errors
def train_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from dlrun.rundir import effective_resume
    from dlrun.train.run import train

    hydra_cfg = HydraConfig.get()
    resume = effective_resume(cfg.trainer.resume)  # "auto" in a requeued SLURM job given none
    if resume != cfg.trainer.resume:
        with open_dict(cfg):
            cfg.trainer.resume = resume
    summary = train(cfg, Path(hydra_cfg.runtime.output_dir), choices=dict(hydra_cfg.runtime.choices))
    if summary["status"] == "interrupted":  # a signal: last.pt is written; 130 (SIGINT) or 143 (the others)
        from dlrun.train.interrupt import EXIT_CODES, hand_over

        hand_over(summary.get("signal"))  # submitit's pre-emption handler, if any: it requeues the job, exits
        sys.exit(EXIT_CODES.get(summary.get("signal"), 143))
    return summary["best"]["value"]  # the monitored metric, for sweepers that optimise it
