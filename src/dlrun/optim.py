"""Optimizers and learning-rate schedules from their configs (torch's classes via _target_)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlrun.config import number
from dlrun.errors import UserError


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    number(cfg, "lr", float, 0, above=True, name="optim.lr")  # named before torch complains
    # _convert_=all: plain lists in param_groups, so checkpoints load with weights_only=True.
    return instantiate(cfg, _convert_="all")(params)


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int,
                    total_steps: int) -> tuple[torch.optim.lr_scheduler.LRScheduler, str]:
    """Return the scheduler and when to step it: once per "epoch" or per optimizer "step"."""
    spec: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    interval = spec.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise UserError(f"sched.interval={interval!r} must be epoch or step")
    if "T_max" in spec and spec["T_max"] is None:  # cosine over the whole run
        spec["T_max"] = epochs if interval == "epoch" else total_steps
    return instantiate(spec)(optimizer), interval
