"""`dlrun train`: the Hydra app. Heavy imports wait until Hydra has composed the config."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dlrun.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dlrun.errors import UserError
    from dlrun.train.run import train

    hydra_cfg = HydraConfig.get()
    try:
        summary = train(cfg, Path(hydra_cfg.runtime.output_dir), choices=dict(hydra_cfg.runtime.choices))
    except UserError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweep records this job as failed and goes on with the others
        # A single run: one line and exit 2 (Hydra would add a line of its own before re-raising).
        print(f"dlrun train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary["best"]["value"]  # the monitored metric, for sweepers that optimise it
