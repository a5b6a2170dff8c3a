"""`dlrun train`: the Hydra app. Heavy imports wait until Hydra has composed the config."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig, open_dict

from dlrun.paths import CONFIG_DIR


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

        from dlrun.cli import fail
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
