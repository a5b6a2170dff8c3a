"""Callbacks: your code at the training loop's events, as `callbacks.NAME._target_=...` entries.

    class Counter(dlrun.train.callbacks.Callback):
        def on_step_end(self, trainer, step, loss):        # step: optimizer steps done, from 1
            ...

    dlrun train +callbacks.count._target_=mypkg.Counter    # or callbacks=NAME, a YAML of yours

The events, in order: on_fit_start (once per invocation, after a resume has loaded), then per
optimizer step on_step_start (before the forward), on_before_update (the step's gradients are
in p.grad, unscaled, and the weights not yet changed) and on_step_end (the update, the schedule
and max-norm done); per epoch on_epoch_end (train and val metrics, before the epoch's checkpoint
is written, so state it changes is in it) and on_checkpoint (a last.pt queued, at epoch ends and
mid-epoch saves); and on_fit_end with the run's status ("finished", "early_stopped", "stopped",
"interrupted"). A callback that sets `every = N` gets the three step hooks on every N-th step
only (the run's first step, then each N steps).

A hook you do not override costs nothing: the Trainer calls only the hooks a callback defines,
and on a step no callback's hooks are due it does no work for them at all.
`loss` at on_step_end is the step's loss on its device: reading it (`loss.item()`) waits for the
GPU, which is why the loop itself reads losses only every logger.every steps.

A callback with state to carry across a resume returns it from state_dict() (plain values and
tensors: checkpoints load with weights_only=True); it is saved in last.pt and handed back to
load_state_dict() when `trainer.resume` continues the run. Under DDP every rank runs the
callbacks; `trainer.world.main` says whether this is rank 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `dlrun check NAME --help` reads a check's module, which subclasses Callback, without torch
    import torch

STEP_HOOKS = ("on_step_start", "on_before_update", "on_step_end")
HOOKS = ("on_fit_start", *STEP_HOOKS, "on_epoch_end", "on_checkpoint", "on_fit_end")


class Callback:
    """Override the hooks you need; the Trainer passes itself first."""

    every = 1  # the step hooks run on the steps whose number of steps done before is a multiple of it

    def on_fit_start(self, trainer: Any) -> None: ...

    def on_step_start(self, trainer: Any, step: int) -> None: ...

    def on_before_update(self, trainer: Any, step: int) -> None: ...

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, trainer: Any, path: Path, epoch: int, step: int) -> None: ...

    def on_fit_end(self, trainer: Any, status: str) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Callbacks:
    """The run's callbacks by name; for each hook, the callables of the callbacks that define it
    (an empty list when none does: the loop tests it, and calls nothing)."""

    def __init__(self, callbacks: dict[str, Any] | None = None):
        self.named = dict(callbacks or {})
        for hook in HOOKS:
            setattr(self, hook, [getattr(cb, hook) for cb in self.named.values() if _defines(cb, hook)])
        # The step hooks with the period each runs at: due() picks a step's.
        self.stepping = [cb for cb in self.named.values() if any(_defines(cb, h) for h in STEP_HOOKS)]

    def __bool__(self) -> bool:
        return bool(self.named)

    def call(self, hooks: list, *args: Any) -> None:
        for hook in hooks:
            hook(*args)

    def due(self, step: int) -> dict[str, list]:
        """The step hooks that run on the step after `step` steps done."""
        acting = [cb for cb in self.stepping if step % max(1, int(cb.every)) == 0]
        return {hook: [getattr(cb, hook) for cb in acting if _defines(cb, hook)] for hook in STEP_HOOKS}

    def next_due(self, step: int) -> float:
        """The first number of steps done, from `step` on, at which a step hook is due (inf: never)."""
        return min((-(-step // max(1, int(cb.every))) * max(1, int(cb.every)) for cb in self.stepping),
                   default=math.inf)

    def state_dict(self) -> dict[str, Any]:
        return {name: cb.state_dict() for name, cb in self.named.items() if hasattr(cb, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, cb in self.named.items():
            if name in state and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state[name])


def _defines(callback: Any, hook: str) -> bool:
    """Whether `callback` has a hook of its own (not Callback's empty one)."""
    method = getattr(type(callback), hook, None)
    return callable(getattr(callback, hook, None)) and method is not getattr(Callback, hook, None)


def build_callbacks(node: Any) -> Callbacks:
    """cfg.callbacks ({name: {_target_: ..., ...}}, or None) -> Callbacks, in the config's order."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from dlrun.errors import UserError

    if node is None:
        return Callbacks()
    built = {}
    for name, entry in node.items():
        if entry is None:  # callbacks.NAME=null: switched off
            continue
        if not OmegaConf.is_dict(entry) or "_target_" not in entry:
            raise UserError(f"callbacks.{name} must name a class: callbacks.{name}._target_=mypkg.MyCallback")
        try:
            built[str(name)] = instantiate(entry, _convert_="all")
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise UserError(f"callbacks.{name}: {entry._target_} could not be built: {cause}") from None
    return Callbacks(built)
