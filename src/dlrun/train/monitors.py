"""dlrun's own observers of a run, as callbacks: the epoch's TensorBoard scalars, the diagnostics,
the update/weight ratios, early stopping and the metrics file. Each acts only at the steps its `every` names; the
Trainer builds them from the run's settings (dlrun_callbacks) before the user's own."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import torch

from dlrun.monitor.diagnostics import Diagnostics, DiagnosticsSettings, RatioWatch
from dlrun.monitor.ratios import UpdateRatio
from dlrun.train.callbacks import Callback

log = logging.getLogger("dlrun")


class EpochScalars(Callback):
    """val/* (and the notes' train/val gap: overfitting shows as a growing gap) and val_ema/* each epoch."""

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        scalars = {k: v for k, v in metrics.items() if k.startswith("val/")}
        if "train/acc" in metrics and "val/acc" in metrics:
            scalars["val/gap"] = metrics["train/acc"] - metrics["val/acc"]
        trainer.writer.scalars(scalars, trainer.step)
        trainer.writer.scalars({f"val_ema/{k}": v for k, v in trainer.ema_val.items()}, trainer.step)


class DiagnosticsLog(Callback):
    """logger.diagnostics: every `every` steps, histograms and per-layer statistics of that step's
    forward and gradients (the engine hooks them), read back with one sync at its end; the first
    conv's filters each epoch. The steps between compute nothing."""

    def __init__(self, model: torch.nn.Module, settings: DiagnosticsSettings):
        self.diagnostics, self.every = Diagnostics(model, settings), settings.every

    def on_step_start(self, trainer: Any, step: int) -> None:
        trainer.diagnosing = self.diagnostics

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None:
        self.diagnostics.write(trainer.writer, step - 1)  # logged at the step as update_ratio/ is

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        self.diagnostics.write_filters(trainer.writer, trainer.step)


class UpdateRatios(Callback):
    """logger.ratio_every: each tensor's update/weight ratio of every `every`-th step (the update the
    step made: max-norm's projection included), and at each epoch's end one warning line when the
    notes' ~1e-3 is two orders of magnitude away at every measurement."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, every: int,
                 configured_lr: float | None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.ratio, self.every = UpdateRatio(named), every
        self.watch = RatioWatch(named, optimizer, configured_lr)

    def on_before_update(self, trainer: Any, step: int) -> None:
        self.ratio.snapshot()

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None:
        ratios = self.ratio.measure()
        trainer.writer.scalars({f"update_ratio/{name}": r for name, r in ratios.items()}, step - 1)
        self.watch.add(ratios, step - 1)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        warning = self.watch.end_epoch(epoch)
        if warning:
            log.warning(warning)


class EarlyStopping(Callback):
    """reg=early_stopping: stop once `patience` validations in a row brought no improvement of the
    monitored metric by more than min_delta. Its count is in each epoch's checkpoint, so a resumed
    run stops where the unbroken one would."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None  # the best monitored value so far
        self.waited = 0                 # and the validations since it last improved by min_delta

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics[trainer.monitor]
        gain = (value - self.best) * (1 if trainer.maximize else -1) if self.best is not None else math.inf
        if gain > self.min_delta:
            self.best, self.waited = value, 0
        else:
            self.waited += 1
        if self.waited >= self.patience:
            trainer.stop_reason = "early_stopped"
            trainer.stop_message = (f"early stopping: {trainer.monitor} has not improved by more than "
                                    f"{self.min_delta:g} for {self.patience} epochs; testing the best, "
                                    f"epoch {trainer.best.epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.waited = state.get("best"), int(state.get("waited", 0))


class MetricsFile(Callback):
    """metrics.csv: one row per epoch (epoch, step, the train and val metrics, lr, training seconds),
    as Keras' CSVLogger writes, for pandas.read_csv. A resumed run first drops the rows past the
    epoch it continues from (a killed run's last epochs, done again), so no epoch is there twice."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.world.main or not self.path.is_file():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= trainer.epoch]
        if kept != rows:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if not trainer.world.main:
            return
        row = {"epoch": epoch, "step": trainer.step, **metrics,
               **{f"val_ema/{k}": v for k, v in trainer.ema_val.items()},
               "lr": trainer.optimizer.param_groups[0]["lr"], "train_s": round(trainer.train_seconds, 3)}
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(row)
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row.values()])


def dlrun_callbacks(trainer: Any, ratio_every: int, diagnostics: DiagnosticsSettings | None,
                    configured_lr: float | None) -> dict[str, Callback]:
    """The run's own observers, by the names their state has in a checkpoint."""
    own: dict[str, Callback] = {"dlrun.epoch_scalars": EpochScalars()}
    # logger.diagnostics: None (or every=0, or a disabled writer) computes nothing at all.
    if diagnostics is not None and diagnostics.every > 0 and trainer.writer.writer is not None:
        own["dlrun.diagnostics"] = DiagnosticsLog(trainer.model, diagnostics)
    if ratio_every > 0:
        own["dlrun.update_ratios"] = UpdateRatios(trainer.model, trainer.optimizer, ratio_every, configured_lr)
    if trainer.reg.patience is not None:
        own["dlrun.early_stopping"] = EarlyStopping(trainer.reg.patience, trainer.reg.min_delta)
    return own
