"""`dlrun train`: the Hydra app. Heavy imports wait until Hydra has composed the config."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dlrun.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train_app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from dlrun.train.run import train

    runtime = HydraConfig.get().runtime
    summary = train(cfg, Path(runtime.output_dir), choices=dict(runtime.choices))
    return summary["best"]["value"]  # the monitored metric, for sweepers that optimise it
