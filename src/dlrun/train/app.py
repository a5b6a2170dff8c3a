"""`dlrun train`: the Hydra app. Heavy imports wait until Hydra has composed the config."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from dlrun.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dlrun.cli import fail
    from dlrun.errors import UserError
    from dlrun.rundir import effective_resume
    from dlrun.train.run import train

    hydra_cfg = HydraConfig.get()
    resume = effective_resume(cfg.trainer.resume)  # "auto" in a requeued SLURM job given none
    if resume != cfg.trainer.resume:
        with open_dict(cfg):
            cfg.trainer.resume = resume
    try:
        summary = train(cfg, Path(hydra_cfg.runtime.output_dir), choices=dict(hydra_cfg.runtime.choices))
    except UserError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed and goes on with the others
        fail("train", exc)  # here, not after Hydra: it would print a line of its own first
    if summary["status"] == "interrupted":  # a signal: last.pt is written; 130 (SIGINT) or 143 (the others)
        from dlrun.train.interrupt import EXIT_CODES, hand_over

        hand_over(summary.get("signal"))  # submitit's pre-emption handler, if any: it requeues the job, exits
        sys.exit(EXIT_CODES.get(summary.get("signal"), 143))
    return summary["best"]["value"]  # the monitored metric, for sweepers that optimise it
