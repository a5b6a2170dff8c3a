"""The notes' minibatch SGD loop: shuffle, step, validate, checkpoint; resumable to the bit on the CPU.

The Trainer is made of parts: the step engine (train/step.py: precision, DDP, compile, micro-batches,
L-BFGS's closure), the logging window (train/window.py), the checkpoint contents and resume
(train/state.py, with dlrun.checkpoint's CheckpointSaver for files and write order), and callbacks
(train/callbacks.py; dlrun's own observers in train/monitors.py). What is left here is the loop.

Nothing in the per-step path reads a value back from the device, or launches a kernel for the
logs: a step leaves its detached loss and logits in the window, and every `logger.every` steps
the window is reduced and read back with one sync. A step at which no flush and no callback is
due is the step itself, the schedule, and a counter.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrun import checkpoint
from dlrun.data import Data, Split, StreamedSplit
from dlrun.data.augment import Augment
from dlrun.errors import UserError
from dlrun.monitor.diagnostics import DiagnosticsSettings, lr_reference
from dlrun.monitor.progress import StepProgress
from dlrun.monitor.tensorboard import RunWriter
from dlrun.optim import after_optimizer_step, after_validation
from dlrun.regularization import Regularization, apply_maxnorm
from dlrun.train import state as run_state
from dlrun.train.callbacks import Callbacks
from dlrun.train.distributed import World
from dlrun.train.ema import EMA
from dlrun.train.interrupt import StopRequest, catch_signals
from dlrun.train.monitors import dlrun_callbacks
from dlrun.train.step import Mix, StepEngine, check_tta
from dlrun.train.window import LogWindow

log = logging.getLogger("dlrun")

# For each monitored metric: does bigger mean better?
MONITORS = {"val/acc": True, "val/loss": False}


def resolve_monitor(monitor: str, classification: bool) -> tuple[str, bool]:
    """trainer.monitor as a metric name (auto: val/acc, or val/loss for regression) and whether bigger is better."""
    if monitor == "auto":
        monitor = "val/acc" if classification else "val/loss"
    if monitor not in MONITORS or (monitor == "val/acc" and not classification):
        allowed = "val/acc, val/loss" if classification else "val/loss (regression has no accuracy)"
        raise UserError(f"trainer.monitor={monitor!r} is not a metric of this run; use auto, {allowed}")
    return monitor, MONITORS[monitor]


def plan(n_train: int, batch_size: int, epochs: int, max_steps: int | None,
         drop_last: bool = False) -> tuple[int, int, int]:
    """(steps per epoch, epochs, total steps); max_steps, when set, decides the other two.
    drop_last: an epoch leaves out its last, partial batch."""
    steps_per_epoch = n_train // batch_size if drop_last else math.ceil(n_train / batch_size)
    if max_steps:
        epochs = math.ceil(max_steps / steps_per_epoch)
    return steps_per_epoch, epochs, max_steps or epochs * steps_per_epoch


@dataclass
class Settings:
    """What trainer.*, logger.* and eval.* ask of the loop (assembly.trainer_settings reads them)."""

    epochs: int
    max_steps: int | None = None
    monitor: str = "auto"
    seed: int = 0
    log_every: int = 10
    ratio_every: int = 0
    stop_at_epoch: int | None = None
    checkpoint_every_steps: int | None = None  # also write last.pt every N steps mid-epoch
    ema_decay: float | None = None
    tta: str = "none"
    channels_last: bool = False
    drop_last: bool = False
    diagnostics: DiagnosticsSettings | None = None
    configured_lr: float | None = None  # optim.lr as given, for the messages


@dataclass
class Best:
    """The best validation result so far, by the monitored metric."""

    epoch: int = 0
    value: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None  # a CPU copy of the model's weights then


class Trainer:
    def __init__(self, model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, scheduler: Any,
                 sched_interval: str, engine: StepEngine, settings: Settings, *, writer: RunWriter,
                 reg: Regularization, checkpoint_dir: Path | None = None, config: dict[str, Any] | None = None,
                 augment: Augment | None = None, callbacks: Callbacks | None = None, world: World = World()):
        self.model, self.data, self.optimizer, self.scheduler = model, data, optimizer, scheduler
        self.sched_interval, self.engine, self.settings, self.world = sched_interval, engine, settings, world
        self.writer, self.reg, self.checkpoint_dir, self.config = writer, reg, checkpoint_dir, config or {}
        self.device, self.classification = engine.device, data.task == "classification"
        self.steps_per_epoch, self.epochs, self.total_steps = plan(
            len(data.train), data.batch_size, settings.epochs, settings.max_steps, settings.drop_last)
        self.monitor, self.maximize = resolve_monitor(settings.monitor, self.classification)
        self.tta = check_tta(settings.tta, data, engine.loss_fn)  # the test evaluations' test-time augmentation
        self.augment = augment if augment is not None and augment.enabled else None  # training batches only
        self.ema = EMA(model, settings.ema_decay) if settings.ema_decay else None  # Polyak averaging
        self.ema_val: dict[str, float] = {}
        self.constrained = [p for p in engine.params if p.ndim > 1] if reg.maxnorm else []  # reg=maxnorm's units
        self.log_every = max(1, int(settings.log_every))
        self.checkpoints = checkpoint.CheckpointSaver(checkpoint_dir if world.main else None)
        self.checkpoint_written: str | None = None  # where in the run the last checkpoints/last.pt written is
        self.stop_request = StopRequest()  # a signal's name; the loop stops after the step it is in
        self.stop_reason: str | None = None  # a callback's (early stopping's) end of the run, and its line
        self.stop_message = ""
        self.shuffle = torch.Generator().manual_seed(settings.seed)  # saved and restored with the run
        self.inputs = run_state.inputs(data)  # in every checkpoint: what using the weights needs
        self.window = LogWindow(writer, world, self.classification, self.device, self._diverged)
        own = dlrun_callbacks(self, settings.ratio_every, settings.diagnostics, settings.configured_lr)
        self.callbacks = Callbacks({**own, **(callbacks.named if callbacks else {})})
        self.diagnosing = None  # the Diagnostics the engine hooks into this step (set by its callback)
        self.epoch = self.step = 0  # epochs and optimizer steps completed
        self.best, self.train_seconds = Best(), 0.0
        self.position: int | None = None  # inside train_epoch: the steps of this epoch done so far,
        self.epoch_shuffle_state: torch.Tensor | None = None  # and the shuffle's state before its permutation
        self.resume_position: dict[str, Any] | None = None  # a mid-epoch checkpoint's, until train_epoch takes it
        self.global_samples: int | None = None  # train_epoch's next batch's size over all ranks
        self.next_event = 0  # the next step (by steps done) at which a flush or a callback is due
        self.progress: StepProgress | None = None

    # ----------------------------------------------------------------------------- training
    def fit(self) -> str:
        """Train until the last epoch (or max_steps); returns "finished", "early_stopped", "stopped",
        or "interrupted" (a signal: self.stop_request says which; checkpoints/last.pt holds the state)."""
        self.progress = StepProgress(self.total_steps, done=self.step) if self.world.main else None
        try:
            with catch_signals(self.stop_request):
                self.callbacks.call(self.callbacks.on_fit_start, self)
                status = self._fit()
                self.callbacks.call(self.callbacks.on_fit_end, self, status)
                return status
        finally:
            if self.progress is not None:
                self.progress.close()
            self.checkpoints.close()  # every checkpoint asked for is on disk (or its failure raised)

    def _fit(self) -> str:
        while self.epoch < self.epochs and not self._out_of_steps():
            if self._stopping(boundary=True):  # between epochs: last.pt of the epoch before is on its way
                return "interrupted"
            self.epoch += 1
            train = self.train_epoch()
            if train is None:  # a signal, mid-epoch
                self.epoch -= 1  # epochs completed
                return "interrupted"
            val = self.evaluate(self.data.val)
            if not math.isfinite(val["loss"]):  # before this epoch's checkpoint: none holds diverged weights
                raise UserError(self._diverged(f"the validation loss is {val['loss']} after epoch {self.epoch} "
                                               f"(step {self.step})"))
            if self.ema is not None:
                self.ema_val = self.evaluate(self.data.val, self.ema.module)
            improved = self._track_best(val)
            after_validation(self.scheduler, self.sched_interval, val[self.monitor.split("/", 1)[1]])
            metrics = {**{f"train/{k}": v for k, v in train.items()}, **{f"val/{k}": v for k, v in val.items()}}
            self.callbacks.call(self.callbacks.on_epoch_end, self, self.epoch, metrics)
            self._log_epoch(train, val, improved)
            self._save(best=improved)
            if self.stop_reason is not None:
                log.info(self.stop_message)
                return self.stop_reason
            if self.settings.stop_at_epoch is not None and self.settings.stop_at_epoch <= self.epoch < self.epochs:
                return "stopped"
        return "finished"

    def _out_of_steps(self) -> bool:
        return self.settings.max_steps is not None and self.step >= self.settings.max_steps

    def train_epoch(self) -> dict[str, float] | None:
        """One epoch of steps (or the rest of one a mid-epoch checkpoint left); its train metrics,
        or None when a signal stopped it (last.pt then holds the position within it)."""
        self.model.train()  # norm layers frozen by model.freeze stay in eval mode (see dlrun.models.transfer)
        train, batch_size = self.data.train, self.data.batch_size
        resume, self.resume_position = self.resume_position, None
        if resume is not None:  # the same permutation again, then on from the step it reached
            self.shuffle.set_state(resume["shuffle"])
        self.epoch_shuffle_state = self.shuffle.get_state()
        order = torch.randperm(len(train), generator=self.shuffle)
        started = time.perf_counter()
        self.window.start_epoch(resume)
        self.position = int(resume["step"]) if resume is not None else 0
        every = self.settings.checkpoint_every_steps if self.checkpoint_dir is not None else None
        last = min(self.steps_per_epoch, self.position + self.settings.max_steps - self.step) \
            if self.settings.max_steps is not None else self.steps_per_epoch  # (a dropped last batch, max_steps)
        prepare = self.data.prepare if self.augment is None else None  # else training_batch's pipeline
        try:
            for x, y in train.batches(batch_size, order, start=self.position, shard=(self.world.rank, self.world.size),
                                      prepare=prepare, elementwise=self.data.elementwise):
                if self.position >= last:
                    break
                if self._stopping():  # the step in flight has finished: save the position and stop
                    self.train_seconds += time.perf_counter() - started
                    self._save_mid_epoch()
                    return None
                # the global batch's size (under DDP x is this rank's shard of it)
                self.global_samples = min(batch_size, len(train) - self.position * batch_size)
                self.train_step(*self.training_batch(x, y, prepared=prepare is not None))
                self.position += 1
                if every and self.step % every == 0 and self.position < last:
                    self._save_mid_epoch()
        finally:
            self.position = None
        self.window.mark_lr()  # the epoch's last step's lr: constant stretches end at epoch ends
        self._flush()  # the epoch's last partial window; also syncs, so the timing below is real
        self.train_seconds += time.perf_counter() - started
        return self.window.epoch_metrics()

    def training_batch(self, x: torch.Tensor, y: torch.Tensor,
                       prepared: bool = False) -> tuple[torch.Tensor, torch.Tensor, Mix | None]:
        """A stored batch -> the model's input and targets: augmented and preprocessed on the device.

        Pixel augmentations (crop, flip, jitter) see [0, 1] pixels; cutout comes after the
        normalisation, so its square is the mean; mixup/cutmix blend the normalised inputs.
        """
        if self.augment is None:  # prepared: the batches came preprocessed (Split.batches)
            return self._layout(x if prepared else self.data.prepare(x)), y, None
        x = self.data.to_unit(x)
        if self.augment.pixel_ops:
            x = self.augment.pixels(x)
        x = self.augment.erase(self.data.normalize(x))
        x, y, y2, lam = self.augment.mix(x, y)
        return self._layout(x), y, (y2, lam) if y2 is not None else None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """trainer.channels_last: the batch in NHWC memory order (the same tensor when it already is)."""
        return x.contiguous(memory_format=torch.channels_last) if self.settings.channels_last and x.ndim == 4 else x


    def _stopping(self, boundary: bool = False) -> bool:
        """Whether a signal stops the run before the next step.

        Under DDP every rank must stop at the same step (a rank that stopped alone would leave the
        others waiting in backward's all-reduce), so the ranks agree (one tiny gloo all-reduce,
        no GPU sync) at each epoch's start and every logger.every steps: a signal stops the run
        within that many steps, well inside torchrun's 30 s and SLURM's warning.
        """
        if not self.world.distributed:
            return bool(self.stop_request)
        if not boundary and self.step % self.log_every:
            return False
        if not self.world.any(bool(self.stop_request)):
            return False
        signals = self.world.gather(self.stop_request.signal)
        self.stop_request.signal = self.stop_request.signal or next(s for s in signals if s)  # another rank's
        return True


    def train_step(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None = None) -> None:
        """One optimizer step on a model-ready batch; `mix` (y2, lam): the loss is lam L(y) + (1 - lam) L(y2)."""
        # the global batch's size: train_epoch's (under DDP x is this rank's shard of it), else x's
        samples, self.global_samples = self.global_samples or len(y), None
        self.window.record_lr(self.step + 1, self.optimizer.param_groups[0]["lr"])  # as train/loss counts steps
        target = y if mix is None or mix[1] >= 0.5 else mix[0]  # a mixed batch: the class most of each input is
        if self.step < self.next_event:  # no flush and no callback due: the step alone
            out, loss, reg, _ = self.engine.step(x, y, mix, samples)
            self._after_update()
            self.window.add(loss, reg, out, target, samples)
            return
        due, log_now = self.callbacks.due(self.step), (self.step + 1) % self.log_every == 0
        self.callbacks.call(due["on_step_start"], self, self.step)
        before = due["on_before_update"]
        out, loss, reg, grad_norm = self.engine.step(
            x, y, mix, samples, grad_norm=log_now, diagnostics=self.diagnosing,
            before_update=(lambda: self.callbacks.call(before, self, self.step)) if before else None)
        self.diagnosing = None
        self._after_update()
        self.window.add(loss, reg, out, target, samples)
        if log_now:
            self._flush(grad_norm)
        self.callbacks.call(due["on_step_end"], self, self.step, loss)
        flush = self.step + (self.log_every - 1 - self.step) % self.log_every
        self.next_event = min(flush, self.callbacks.next_due(self.step))

    def _after_update(self) -> None:
        if self.constrained:
            apply_maxnorm(self.constrained, self.reg.maxnorm)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        after_optimizer_step(self.scheduler, self.sched_interval)
        self.step += 1


    def _flush(self, grad_norm: torch.Tensor | None = None) -> None:
        scalars = self.window.flush(self.step, self.epoch, grad_norm)
        if scalars is not None and self.progress is not None:
            self.progress.update(self.step, f"epoch {self.epoch}/{self.epochs}  loss {scalars['train/loss']:.4f}")

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None = None) -> tuple:
        """The model's output, the loss (data + penalty) and the penalty, as a training step computes them."""
        return self.engine.forward_loss(x, y, mix)

    def _diverged(self, what: str) -> str:
        """The one-line message for a run whose loss went non-finite: what, the likely cause, the fix,
        and the last good checkpoint (none ever holds diverged weights: see fit)."""
        lr = self.settings.configured_lr
        lr = lr_reference(self.optimizer.param_groups[0]) if lr is None else lr
        now = self.optimizer.param_groups[0]["lr"]
        lr_text = f"now {lr:g}" + (f", {now:g} when it diverged" if not math.isclose(now, lr, rel_tol=1e-6) else "")
        if self.checkpoint_dir is None:
            where = "no checkpoint was written (trainer.checkpoint=false)"
        elif self.checkpoint_written is None:
            where = "no checkpoint was written by this run"
        else:
            where = f"the last good checkpoint is {self.checkpoint_dir / checkpoint.LAST} ({self.checkpoint_written})"
        return (f"training diverged: {what}; the learning rate is likely too high or the init too large: "
                f"lower optim.lr ({lr_text}), set trainer.grad_clip, or choose a smaller init=; {where}")

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(self, split: Split | StreamedSplit, model: nn.Module | None = None,
                 tta: str = "none") -> dict[str, float]:
        """Mean loss (and accuracy) of `model` (the trained one) over a whole split, in eval mode; one sync."""
        return self.engine.evaluate(self.data, split, model, tta, self._layout)

    def test(self) -> dict[str, float]:
        """Evaluate the best weights (by the monitored metric) on the test split."""
        if self.best.state is not None:
            self.model.load_state_dict(self.best.state)
        return self.evaluate(self.data.test, tta=self.tta)

    def test_ema(self) -> dict[str, float]:
        """Evaluate the final averaged weights (trainer.ema_decay) on the test split."""
        return self.evaluate(self.data.test, self.ema.module, tta=self.tta) if self.ema is not None else {}

    def _track_best(self, val: dict[str, float]) -> bool:
        value = val[self.monitor.split("/", 1)[1]]
        if not math.isfinite(value):
            return False
        better = self.best.value is None or (value > self.best.value if self.maximize else value < self.best.value)
        if not better and self.monitor == "val/acc" and value == self.best.value:
            # A small validation set saturates (acc 1.0 at several epochs): the lower loss breaks the tie,
            # rather than the first epoch to get there.
            better = val["loss"] < self.best.val.get("loss", math.inf)
        if better:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = Best(epoch=self.epoch, value=value, val=dict(val), state=state)
        return better

    def _log_epoch(self, train: dict[str, float], val: dict[str, float], improved: bool) -> None:
        acc = lambda m: f" acc {m['acc']:.4f}" if "acc" in m else ""  # noqa: E731
        ema = f"  ema val loss {self.ema_val['loss']:.4f}{acc(self.ema_val)}" if self.ema_val else ""
        log.info(f"epoch {self.epoch}/{self.epochs}  train loss {train['loss']:.4f}{acc(train)}  "
                 f"val loss {val['loss']:.4f}{acc(val)}{ema}  lr {self.optimizer.param_groups[0]['lr']:.3g}"
                 + ("  *" if improved else ""))

    # ------------------------------------------------------------------------- checkpoints
    def _save(self, best: bool = False) -> None:
        """Queue checkpoints/last.pt (and best.pt when this epoch improved) at this step."""
        if self.checkpoint_dir is None:
            return
        state = self.state_dict()  # on every rank: it gathers the ranks' random states
        if self.world.main:  # best.state is already a private CPU copy: best.pt needs no second snapshot
            self.checkpoints.save(state, best=run_state.best_payload(self) if best else None, before=self.writer.flush)
        self.checkpoint_written = f"epoch {self.epoch}" + (f", step {self.step}" if self.position is not None else "")
        self.callbacks.call(self.callbacks.on_checkpoint, self, self.checkpoint_dir / checkpoint.LAST, self.epoch,
                            self.step)

    def _save_mid_epoch(self) -> None:
        """Queue checkpoints/last.pt at this step, mid-epoch (trainer.checkpoint_every_steps, or a signal).

        The logging window is flushed first, so the epoch's sums are whole and the NaN guard has
        seen every loss; weights that are no longer finite are not written over the last good ones.
        """
        if self.checkpoint_dir is None:
            return
        self.window.mark_lr()
        self._flush()
        params = self.engine.params
        if params and not bool(torch.stack([p.detach().isfinite().all() for p in params]).all()):
            return  # the next step's loss is not finite: the NaN guard stops the run there
        self._save()

    def state_dict(self) -> dict[str, Any]:
        return run_state.state_dict(self)

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        run_state.load_state_dict(self, state, path)
