"""Optimizers and learning-rate schedules from their configs (torch's classes via _target_).

A schedule is stepped by the Trainer through two calls, so a test can drive it exactly as a run
does: `after_optimizer_step` after every optimizer step (the warmup advances; a schedule with
interval=step steps) and `after_validation` after every epoch's validation (a schedule with
interval=epoch steps; ReduceLROnPlateau with the monitored metric).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR, ReduceLROnPlateau

from dlrun.errors import UserError

# ------------------------------------------------------------------------------- optimizers


def check_optimizer(cfg: DictConfig) -> None:
    """Refuse combinations torch would take and train badly with. Each value on its own is checked
    by the optimizer's schema (dlrun.schema) before this runs."""
    if cfg.get("nesterov") and (float(cfg.get("momentum", 0)) <= 0 or float(cfg.get("dampening", 0)) != 0):
        raise UserError(f"optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0 "
                        f"(got momentum {cfg.get('momentum')}, dampening {cfg.get('dampening', 0)}); "
                        "or use optim=sgd for plain SGD")


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    check_optimizer(cfg)
    # _convert_=all: plain lists in param_groups, so checkpoints load with weights_only=True.
    make = instantiate(cfg, _convert_="all")
    try:
        return make(params)
    except (TypeError, ValueError) as exc:  # what the checks above do not know, still in one line
        raise UserError(f"optim: {cfg.get('_target_')} refused its settings: {exc}") from None


def check_closure_optimizer(precision: str, grad_clip: float | None, micro_batch_size: int | None = None) -> None:
    """L-BFGS (a closure-driven optimizer): what it cannot run with, in one line each."""
    if micro_batch_size:
        raise UserError(f"optim=lbfgs cannot run with trainer.micro_batch_size={micro_batch_size}: its line search "
                        "re-evaluates the whole batch's loss many times a step; drop trainer.micro_batch_size")
    if precision == "fp16":
        raise UserError("optim=lbfgs cannot run with trainer.precision=fp16: fp16's GradScaler cannot wrap the "
                        "closure its line search re-evaluates; use trainer.precision=32 (or bf16)")
    if grad_clip:
        raise UserError(f"optim=lbfgs cannot run with trainer.grad_clip={grad_clip:g}: a clipped gradient is not "
                        "the loss's gradient its line search and curvature pairs need; drop trainer.grad_clip")


# -------------------------------------------------------------------------------- schedules


class InverseTimeLR(LRScheduler):
    """1/t decay: lr = lr0 / (1 + k t), t the number of schedule steps taken."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: float = 0.1, last_epoch: int = -1):
        self.k = float(k)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1.0 + self.k * self.last_epoch) for base in self.base_lrs]


class InverseSqrtLR(LRScheduler):
    """The notes' AdaGrad-style decay: lr = lr0 / sqrt(1 + k t) (the notes: eta / sqrt(t + 1), k = 1)."""

    def __init__(self, optimizer: torch.optim.Optimizer, k: float = 1.0, last_epoch: int = -1):
        self.k = float(k)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / math.sqrt(1.0 + self.k * self.last_epoch) for base in self.base_lrs]


class Warmup:
    """A linear warmup over the first N optimizer steps, on top of any schedule.

    Optimizer step t (t = 0, 1, 2, ... counts the steps already taken) runs at
        lr(t) = S(t) * min(1, (t + 1) / N)
    where S(t) is the learning rate the schedule alone would give at that moment (its own
    interval decides when S changes). The first step runs at S / N, step N - 1 and every later
    one at S itself. The schedule never sees the factor: before it steps, the optimizer's lr is
    put back to S, so chainable schedules (cosine, step, ...) and ReduceLROnPlateau compute from
    the scheduled value, not from the warmed-down one.
    """

    def __init__(self, scheduler: LRScheduler, steps: int):
        self.scheduler, self.steps = scheduler, int(steps)
        self.optimizer = scheduler.optimizer
        self.done = 0  # optimizer steps taken
        self.scheduled = [group["lr"] for group in self.optimizer.param_groups]
        self._apply()

    def factor(self) -> float:
        return min(1.0, (self.done + 1) / self.steps)

    def _apply(self) -> None:
        factor = self.factor()
        for group, lr in zip(self.optimizer.param_groups, self.scheduled):
            group["lr"] = lr * factor

    def advance(self) -> None:
        """One optimizer step was taken."""
        self.done += 1
        self._apply()

    def step(self, *args: Any) -> None:
        """The schedule's own step (ReduceLROnPlateau's with its metric), under the warmup."""
        for group, lr in zip(self.optimizer.param_groups, self.scheduled):
            group["lr"] = lr
        self.scheduler.step(*args)
        self.scheduled = [group["lr"] for group in self.optimizer.param_groups]
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_steps": self.steps, "done": self.done, "scheduled": list(self.scheduled),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps, self.done, self.scheduled = int(state["warmup_steps"]), int(state["done"]), list(state["scheduled"])
        self._apply()


def unwrap(scheduler: Any) -> LRScheduler:
    """The torch schedule itself, under a Warmup if there is one."""
    return scheduler.scheduler if isinstance(scheduler, Warmup) else scheduler


def after_optimizer_step(scheduler: Any, interval: str) -> None:
    """What the Trainer does after every optimizer step."""
    if isinstance(scheduler, Warmup):
        scheduler.advance()
    if interval == "step":
        scheduler.step()


def after_validation(scheduler: Any, interval: str, metric: float) -> None:
    """What the Trainer does after every epoch's validation; `metric` is trainer.monitor's value."""
    if interval == "epoch":
        if isinstance(unwrap(scheduler), ReduceLROnPlateau):
            scheduler.step(metric)
        else:
            scheduler.step()


# Keys a schedule's YAML may leave null for the run to fill in: its length in schedule steps (the
# schedules' schemas, dlrun.schema.recipe, take null for these).
RUN_LENGTH = ("T_max", "total_iters", "total_steps")


def _increasing(milestones: Any) -> None:
    if milestones is not None and list(milestones) != sorted(set(milestones)):
        raise UserError(f"sched.milestones={list(milestones)} must be increasing integers >= 1, e.g. [15,22]")


def check_schedule(cfg: DictConfig) -> tuple[dict[str, Any], type, str, int]:
    """The schedule's values, checked together without an optimizer or a run (so a run can refuse
    them before it reads any data): (torch's arguments, the class, interval, warmup steps)."""
    spec: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    # Each value on its own (interval and warmup_steps too, whatever the class) is checked by the
    # schedule's schema (dlrun.schema.validate) first; what is left are the values taken together.
    interval = spec.pop("interval", "epoch")
    warmup = spec.pop("warmup_steps", 0)
    _increasing(spec.get("milestones"))
    target = spec.get("_target_")
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - hydra raises its own error types; say it in one line
        raise UserError(f"sched._target_={target!r} is not a schedule class") from None
    if issubclass(cls, ReduceLROnPlateau) and interval != "epoch":
        raise UserError("sched=plateau is stepped with the validation metric after each epoch; "
                        "sched.interval=step does not apply (use sched.interval=epoch)")
    return spec, cls, interval, int(warmup)


def uses_closure(cfg: DictConfig) -> bool:
    """Whether optim= is L-BFGS, which re-evaluates the loss through a closure in its step."""
    try:
        return issubclass(get_class(cfg.get("_target_")), torch.optim.LBFGS)
    except Exception:  # noqa: BLE001 - an unknown target fails in build_optimizer, in one line
        return False


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, total_steps: int, *,
                    maximize: bool = True) -> tuple[Any, str]:
    """Return the schedule and when to step it: once per "epoch" or per optimizer "step".

    `maximize` says which way trainer.monitor improves (val/acc: up, val/loss: down), for
    ReduceLROnPlateau. With sched.warmup_steps > 0 the schedule comes wrapped in a Warmup.
    """
    spec, cls, interval, warmup = check_schedule(cfg)
    if warmup > total_steps:
        raise UserError(f"sched.warmup_steps={warmup} is longer than the run ({total_steps} optimizer steps); "
                        "use fewer warmup steps")
    target = spec["_target_"]
    length = epochs if interval == "epoch" else total_steps
    for key in RUN_LENGTH:
        if key in spec and spec[key] is None:  # cosine's T_max, linear's total_iters, onecycle's total_steps
            spec[key] = length
    if issubclass(cls, ReduceLROnPlateau):
        spec["mode"] = "max" if maximize else "min"  # follows trainer.monitor
    if issubclass(cls, OneCycleLR):
        if spec.get("max_lr") is None:  # the peak is optim.lr
            spec["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        if spec.get("cycle_momentum") == "auto":  # cycle momentum (or Adam's beta1) where there is one
            group = optimizer.param_groups[0]
            spec["cycle_momentum"] = "betas" in group or float(group.get("momentum", 0)) > 0
    try:
        # _convert_=all: plain lists (milestones, max_lr) in the state dict, for weights_only loading.
        scheduler = instantiate(spec, _convert_="all")(optimizer)
    except (TypeError, ValueError) as exc:
        raise UserError(f"sched: {target} refused its settings: {exc}") from None
    if warmup:
        scheduler = Warmup(scheduler, int(warmup))
    return scheduler, interval
