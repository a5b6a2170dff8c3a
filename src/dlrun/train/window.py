"""The logging window: what the steps between two flushes leave on the device, reduced and read
back once every `logger.every` steps.

A step appends its detached loss, logits (or predictions) and targets: no kernel, no sync. A flush
reduces the window in a handful of kernels, reads it back with one sync, logs its means and adds
them to the epoch's sums. The lr each step ran at is kept as (step, lr) points: every step where
it changed, the last step before a change and each epoch's last step, so the curve is exact and a
constant stretch costs two points.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from dlrun.errors import UserError
from dlrun.monitor.tensorboard import RunWriter
from dlrun.train.distributed import World

# A window keeps whole logits when a batch's are at most this many numbers (then the whole window
# is one argmax at flush); bigger outputs keep each step's argmax instead.
KEEP_LOGITS = 1 << 16


class LogWindow:
    def __init__(self, writer: RunWriter, world: World, classification: bool, device: torch.device,
                 diverged: Callable[[str], str]):
        self.writer, self.world, self.classification = writer, world, classification
        self.diverged = diverged  # the one-line message for a loss gone non-finite
        self.loss: list[torch.Tensor] = []
        self.reg: list[torch.Tensor] = []
        self.pred: list[torch.Tensor] = []
        self.target: list[torch.Tensor] = []
        self.samples = 0
        self.keep_logits = True  # pred holds logits (argmax at flush) until an output is big
        self.start = time.perf_counter()
        self.zero = torch.zeros((), device=device)
        self.start_epoch()
        self.train_samples = 0  # the run's, all epochs
        self.lr_points: list[tuple[int, float]] = []
        self.lr_last: tuple[int, float] | None = None  # the latest step's (step, lr)
        self.lr_marked = -1  # the latest step already in lr_points

    def start_epoch(self, partial: dict[str, Any] | None = None) -> None:
        """The epoch's sums from zero, or from a mid-epoch checkpoint's."""
        if partial is None:
            self.sums, self.steps, self.epoch_samples = [0.0, 0.0, 0.0, 0.0], 0, 0
        else:
            self.sums = [float(v) for v in partial["sums"]]
            self.steps, self.epoch_samples = int(partial["steps_logged"]), int(partial["samples_logged"])

    def partial(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "steps_logged": self.steps, "samples_logged": self.epoch_samples}

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's train metrics: means over its steps (losses) and samples (accuracy)."""
        steps, samples = max(1, self.steps), max(1, self.epoch_samples)
        loss, data_loss, reg_loss, correct = self.sums
        metrics = {"loss": loss / steps, "data_loss": data_loss / steps, "reg_loss": reg_loss / steps}
        if self.classification:
            metrics["acc"] = correct / samples
        return metrics

    # ---------------------------------------------------------------------------- per step
    def add(self, loss: torch.Tensor, reg: torch.Tensor | None, out: torch.Tensor, target: torch.Tensor,
            samples: int) -> None:
        self.loss.append(loss)
        if reg is not None:
            self.reg.append(reg)
        if self.classification:
            if self.keep_logits and out.numel() > KEEP_LOGITS:
                self.keep_logits = False
                self.pred = [logits.argmax(1) for logits in self.pred]
            self.pred.append(out if self.keep_logits else out.argmax(1))
            self.target.append(target)
        self.samples += samples

    def record_lr(self, step: int, lr: float) -> None:
        """Note the lr optimizer step `step` (from 1) runs at (a host float: no device work)."""
        if self.lr_last is None or lr != self.lr_last[1]:
            self.mark_lr()  # the previous stretch's last step
            self.lr_points.append((step, lr))
            self.lr_marked = step
        self.lr_last = (step, lr)

    def mark_lr(self) -> None:
        if self.lr_last is not None and self.lr_last[0] != self.lr_marked:
            self.lr_points.append(self.lr_last)
            self.lr_marked = self.lr_last[0]

    # ---------------------------------------------------------------------------- a flush
    def flush(self, step: int, epoch: int, grad_norm: torch.Tensor | None = None) -> dict[str, float] | None:
        """Reduce the window on the device, read it back (one sync) and log its means at `step`;
        returns them (None for an empty window)."""
        for lr_step, lr in self.lr_points:  # host floats; before the window's event, so steps stay in order
            self.writer.scalars({"lr": lr}, lr_step)
        self.lr_points = []
        steps, samples = len(self.loss), self.samples
        if steps == 0:
            return None
        totals = [torch.stack(self.loss).sum()]
        totals.append(torch.stack(self.reg).sum() if self.reg else self.zero)
        if self.classification:
            predicted = torch.cat(self.pred)
            if self.keep_logits:
                predicted = predicted.argmax(1)
            totals.append((predicted == torch.cat(self.target)).sum())
        if grad_norm is not None:
            totals.append(grad_norm)
        values = torch.stack([t.float() for t in totals])
        if self.world.distributed:  # every rank's window, summed; the grad norm is the same on every rank
            summed = self.world.sum(values[:3 if self.classification else 2].clone())
            summed[:2] /= self.world.size  # the ranks' scaled losses add up to ranks x the global mean
            values = torch.cat([summed, values[len(summed):]])
        values = values.tolist()
        loss_sum, reg_sum = values[0], values[1]
        if not math.isfinite(loss_sum):  # checked where the value is read anyway: costs nothing
            losses = torch.stack(self.loss).float().tolist()  # the failure path only
            # (under DDP the non-finite loss may be another rank's: then this window's last step)
            first = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses) - 1)
            at = step - steps + first + 1  # as train/loss counts steps: the first is 1
            raise UserError(self.diverged(f"the loss was {losses[first]} at step {at} (epoch {epoch})"))
        correct = values[2] if self.classification else 0.0
        self.loss, self.reg, self.pred, self.target = [], [], [], []
        now = time.perf_counter()
        scalars = {
            "train/loss": loss_sum / steps,
            "train/data_loss": (loss_sum - reg_sum) / steps,
            "train/reg_loss": reg_sum / steps,
            "throughput": samples / max(now - self.start, 1e-9),
        }
        if self.classification:
            scalars["train/acc"] = correct / samples
        if grad_norm is not None:
            scalars["grad_norm"] = values[-1]
        self.writer.scalars(scalars, step)
        self.sums = [a + b for a, b in zip(self.sums, (loss_sum, loss_sum - reg_sum, reg_sum, correct))]
        self.steps += steps
        self.epoch_samples += samples
        self.train_samples += samples
        self.samples = 0
        self.start = now
        return scalars
