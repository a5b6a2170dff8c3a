"""The notes' minibatch SGD loop: shuffle, step, validate, checkpoint; resumable to the bit on the CPU.

Nothing in the per-step path reads a value back from the device, or even launches a kernel for
the logs: a step keeps its detached loss and logits, and every `logger.every` steps the window
is reduced in a handful of kernels and read back with one sync. A GPU never waits for the host.
The diagnostics (logger.diagnostics: histograms, per-layer statistics) run only on every
`every`-th step, with one sync of their own; the steps between them do no diagnostics work.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrun.data import Data, Split, StreamedSplit
from dlrun.data.augment import Augment
from dlrun.errors import UserError
from dlrun.monitor.diagnostics import Diagnostics, DiagnosticsSettings, RatioWatch
from dlrun.monitor.progress import StepProgress
from dlrun.monitor.ratios import UpdateRatio
from dlrun.monitor.tensorboard import RunWriter
from dlrun.optim import after_optimizer_step, after_validation, check_closure_optimizer
from dlrun.losses import Loss, build_loss
from dlrun.regularization import Regularization, apply_maxnorm, penalized_weights, penalty
from dlrun import checkpoint
from dlrun.train.distributed import World
from dlrun.train.ema import EMA
from dlrun.train.callbacks import Callbacks
from dlrun.train.interrupt import StopRequest, catch_signals

log = logging.getLogger("dlrun")

# For each monitored metric: does bigger mean better?
MONITORS = {"val/acc": True, "val/loss": False}
# A logging window keeps whole logits when a batch's are at most this many numbers (then the
# whole window is one argmax at flush); bigger outputs keep each step's argmax instead.
KEEP_LOGITS = 1 << 16


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


def micro_batches(samples: int, ranks: int, micro_batch_size: int | None) -> int:
    """How many pieces every rank computes a global batch of `samples` in: enough for the largest
    shard to fit micro_batch_size, the same number on every rank (SyncBatchNorm's forward
    communicates, so the ranks must run as many forwards)."""
    return math.ceil(math.ceil(samples / ranks) / micro_batch_size) if micro_batch_size else 1


def piece_sizes(samples: int, ranks: int = 1, micro_batch_size: int | None = None) -> list[int]:
    """The sizes of the non-empty pieces a batch of `samples` is computed in: each rank's shard
    cut in micro_batches (both tensor_split, as Split.batches and Trainer._pieces cut them)."""
    def split(n: int, parts: int) -> list[int]:
        q, r = divmod(n, parts)
        return [q + 1] * r + [q] * (parts - r)

    parts = micro_batches(samples, ranks, micro_batch_size)
    return [piece for shard in split(samples, ranks) for piece in split(shard, parts) if piece]


Mix = tuple[torch.Tensor, float]  # mixup/cutmix: the second targets and the first's weight lam

TTA = ("none", "flip")


def check_tta(tta: str, data: Data, loss: Loss) -> str:
    """eval.tta: flip needs images and a softmax classifier (it averages class probabilities)."""
    if tta not in TTA:
        raise UserError(f"eval.tta={tta!r} is not a test-time augmentation; use none or flip")
    if tta == "flip" and (data.layout != "image" or loss.name != "cross_entropy"):
        raise UserError(f"eval.tta=flip averages the softmax over an image and its mirror; this run has "
                        f"{data.layout} data and loss {loss.name}: use eval.tta=none")
    return tta


@dataclass
class Best:
    """The best validation result so far, by the monitored metric."""

    epoch: int = 0
    value: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None  # a CPU copy of the model's weights then


class Trainer:
    def __init__(self, model: nn.Module, data: Data, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, sched_interval: str, *,
                 device: torch.device, precision: str, epochs: int, max_steps: int | None,
                 reg: Regularization, grad_clip: float | None, monitor: str, seed: int,
                 writer: RunWriter, checkpoint_dir: Path | None, log_every: int, ratio_every: int,
                 stop_at_epoch: int | None = None, config: dict[str, Any] | None = None, loss: Loss | None = None,
                 ema_decay: float | None = None, grad_clip_mode: str = "norm",
                 diagnostics: DiagnosticsSettings | None = None, checkpoint_every_steps: int | None = None,
                 augment: Augment | None = None, tta: str = "none", world: World = World(),
                 channels_last: bool = False, compile: bool = False, compile_mode: str = "default",
                 drop_last: bool = False, micro_batch_size: int | None = None, callbacks: Callbacks | None = None):
        self.model, self.data, self.optimizer, self.scheduler = model, data, optimizer, scheduler
        self.callbacks = callbacks or Callbacks()
        # Under torchrun: DDP averages the ranks' gradients in backward. Training's forward goes
        # through the wrapper; evaluation, checkpoints and the diagnostics use the model itself.
        self.world = world
        self.train_model = model
        self.ddp = None  # the DistributedDataParallel wrapper (its no_sync holds back all but a step's last all-reduce)
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = self.ddp = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        # trainer.compile: training and evaluation run compiled modules (never the DDP wrapper for
        # evaluation: its forward may sync buffers, and ranks evaluate different numbers of batches).
        # A diagnostics step runs eagerly (eager_model): its hooks would make the compiled graph recompile.
        self.eager_model, self.eval_model = self.train_model, model
        if compile:
            mode = None if compile_mode == "default" else compile_mode
            self.train_model = torch.compile(self.train_model, mode=mode)
            self.eval_model = self.train_model if not world.distributed else torch.compile(model, mode=mode)
        self.channels_last = channels_last  # trainer.channels_last: every batch in NHWC, as the model's weights
        self.global_samples: int | None = None  # train_epoch's next batch's size over all ranks
        self.batch_samples = 0  # the global batch's size in the step being taken (all ranks together)
        self.sched_interval = sched_interval
        self.device, self.precision = device, precision
        self.max_steps, self.stop_at_epoch = max_steps, stop_at_epoch
        self.steps_per_epoch, self.epochs, self.total_steps = plan(len(data.train), data.batch_size, epochs, max_steps,
                                                                  drop_last)
        self.reg, self.grad_clip, self.grad_clip_mode = reg, grad_clip, grad_clip_mode
        self.classification = data.task == "classification"
        self.loss_fn = loss or build_loss("auto", data.task)
        # augment=...: training batches only (never validation or test), with its own saved random state.
        self.augment = augment if augment is not None and augment.enabled else None
        self.tta = check_tta(tta, data, self.loss_fn)  # eval.tta: the test evaluations' test-time augmentation
        self.monitor, self.maximize = resolve_monitor(monitor, self.classification)
        self.writer, self.checkpoint_dir, self.config = writer, checkpoint_dir, config or {}
        self.checkpoints = checkpoint.CheckpointSaver(checkpoint_dir if self.world.main else None)
        self.log_every, self.ratio_every = max(1, int(log_every)), int(ratio_every or 0)

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.weights = penalized_weights(model, reg.exclude_bias_and_norm) if reg.penalized else []
        # reg=maxnorm: every unit's incoming weights (rows of matrices, output channels of kernels).
        self.constrained = [p for p in self.params if p.ndim > 1] if reg.maxnorm else []
        self.early_best: float | None = None  # reg=early_stopping: the best monitored value so far
        self.early_waited = 0                 # and the validations since it last improved by min_delta
        # trainer.ema_decay: Polyak averaging, e <- d * e + (1 - d) * w after every step (buffers
        # too: BatchNorm statistics follow); torch's AveragedModel without its per-step syncs.
        self.ema = EMA(model, ema_decay) if ema_decay else None
        self.ema_val: dict[str, float] = {}
        self.update_ratio = UpdateRatio([(n, p) for n, p in model.named_parameters() if p.requires_grad])
        # logger.diagnostics: None (or every=0, or a disabled writer) computes nothing at all.
        on = diagnostics is not None and diagnostics.every > 0 and writer.writer is not None
        self.diagnostics = Diagnostics(model, diagnostics) if on else None
        self.diagnostics_every = diagnostics.every if on else 0
        optim_lr = (self.config.get("optim") or {}).get("lr") if isinstance(self.config, dict) else None
        self.ratio_watch = RatioWatch([(n, p) for n, p in model.named_parameters() if p.requires_grad], optimizer,
                                      float(optim_lr) if isinstance(optim_lr, (int, float)) else None)
        self.checkpoint_every_steps = checkpoint_every_steps  # also write last.pt every N steps mid-epoch
        self.checkpoint_written: str | None = None  # where in the run the last checkpoints/last.pt written is
        # SIGINT/SIGTERM/SIGUSR1 during fit: the signal's name; the loop stops after the step it is in.
        self.stop_request = StopRequest()
        # Inside train_epoch: the steps of this epoch done so far and the shuffle generator's
        # state before this epoch's permutation, so a checkpoint taken mid-epoch can continue it.
        self.position: int | None = None
        self.epoch_shuffle_state: torch.Tensor | None = None
        self.resume_position: dict[str, Any] | None = None  # a mid-epoch checkpoint's, until train_epoch takes it
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        # L-BFGS re-evaluates the loss inside its step: it gets a closure (see _closure_step).
        self.closure_step = isinstance(optimizer, torch.optim.LBFGS)
        if self.closure_step:
            check_closure_optimizer(precision, grad_clip, micro_batch_size)
        self.micro_batch_size = micro_batch_size  # trainer.micro_batch_size: see _pieces
        self.split_step = False  # inside a step computed in several pieces (their losses: shares of the batch's)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
        # The shuffle order has its own generator, so it is saved and restored with the run.
        self.shuffle = torch.Generator().manual_seed(seed)

        self.epoch = 0  # epochs completed
        self.step = 0   # optimizer steps completed
        self.best = Best()
        self.train_samples = 0
        self.train_seconds = 0.0
        # This logging window's per-step losses, logits (or predictions) and targets, on the device.
        self.window_loss: list[torch.Tensor] = []
        self.window_reg: list[torch.Tensor] = []
        self.window_pred: list[torch.Tensor] = []
        self.window_target: list[torch.Tensor] = []
        self.window_samples = 0
        self.keep_logits = True  # window_pred holds logits (argmax at flush) until an output is big
        self.window_start = time.perf_counter()
        self.epoch_sums = [0.0, 0.0, 0.0, 0.0]
        self.epoch_steps = self.epoch_samples = 0
        self.zero = torch.zeros((), device=device)
        self.progress: StepProgress | None = None
        # The lr each optimizer step used, as (step, lr) points for TensorBoard: every step where
        # it changed, the last step before a change and each epoch's last step, so the curve is
        # exact and a constant stretch costs two points. Written at the next flush.
        self.lr_points: list[tuple[int, float]] = []
        self.lr_last: tuple[int, float] | None = None  # the latest step's (step, lr)
        self.lr_marked = -1  # the latest step already in lr_points

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
            train_metrics = self.train_epoch()
            if train_metrics is None:  # a signal, mid-epoch
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
            self._end_epoch(train_metrics, val, improved)
            if self.callbacks.on_epoch_end:
                metrics = {**{f"train/{k}": v for k, v in train_metrics.items()}, **{f"val/{k}": v for k, v in val.items()}}
                self.callbacks.call(self.callbacks.on_epoch_end, self, self.epoch, metrics)
            if self._early_stop(val):
                log.info(f"early stopping: {self.monitor} has not improved by more than {self.reg.min_delta:g} "
                         f"for {self.reg.patience} epochs; testing the best, epoch {self.best.epoch}")
                return "early_stopped"
            if self.stop_at_epoch is not None and self.epoch >= self.stop_at_epoch and self.epoch < self.epochs:
                return "stopped"
        return "finished"

    def _early_stop(self, val: dict[str, float]) -> bool:
        """reg=early_stopping: whether `patience` validations in a row brought no improvement > min_delta."""
        if self.reg.patience is None:
            return False
        value = val[self.monitor.split("/", 1)[1]]
        gain = (value - self.early_best) * (1 if self.maximize else -1) if self.early_best is not None else math.inf
        if gain > self.reg.min_delta:
            self.early_best, self.early_waited = value, 0
        else:
            self.early_waited += 1
        return self.early_waited >= self.reg.patience

    def _out_of_steps(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

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
        if resume is not None:
            self.epoch_sums = [float(v) for v in resume["sums"]]
            self.epoch_steps, self.epoch_samples = int(resume["steps_logged"]), int(resume["samples_logged"])
            self.position = int(resume["step"])
        else:
            self.epoch_sums, self.epoch_steps, self.epoch_samples = [0.0, 0.0, 0.0, 0.0], 0, 0
            self.position = 0
        every = self.checkpoint_every_steps if self.checkpoint_dir is not None else None
        try:
            shard = (self.world.rank, self.world.size)
            for x, y in train.batches(batch_size, order, start=self.position, shard=shard):
                if self._out_of_steps() or self.position >= self.steps_per_epoch:  # (a dropped last batch)
                    break
                if self._stopping():  # the step in flight has finished: save the position and stop
                    self.train_seconds += time.perf_counter() - started
                    self._save_mid_epoch()
                    return None
                # the global batch's size (under DDP x is this rank's shard of it)
                self.global_samples = min(batch_size, len(train) - self.position * batch_size)
                x, y, mix = self.training_batch(x, y)
                self.train_step(x, y, mix)
                self.position += 1
                more = self.position < self.steps_per_epoch
                if every and self.step % every == 0 and more and not self._out_of_steps():
                    self._save_mid_epoch()
        finally:
            self.position = None
        self._mark_lr()  # the epoch's last step's lr: constant stretches end at epoch ends
        self._flush()  # the epoch's last partial window; also syncs, so the timing below is real
        self.train_seconds += time.perf_counter() - started
        steps, samples = max(1, self.epoch_steps), max(1, self.epoch_samples)
        loss, data_loss, reg_loss, correct = self.epoch_sums
        metrics = {"loss": loss / steps, "data_loss": data_loss / steps, "reg_loss": reg_loss / steps}
        if self.classification:
            metrics["acc"] = correct / samples
        return metrics

    def training_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Mix | None]:
        """A stored batch -> the model's input and targets: augmented and preprocessed on the device.

        Pixel augmentations (crop, flip, jitter) see [0, 1] pixels; cutout comes after the
        normalisation, so its square is the mean; mixup/cutmix blend the normalised inputs.
        """
        if self.augment is None:
            return self._layout(self.data.prepare(x)), y, None
        x = self.data.to_unit(x)
        if self.augment.pixel_ops:
            x = self.augment.pixels(x)
        x = self.augment.erase(self.data.normalize(x))
        x, y, y2, lam = self.augment.mix(x, y)
        return self._layout(x), y, (y2, lam) if y2 is not None else None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """trainer.channels_last: the batch in NHWC memory order (the same tensor when it already is)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

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
        self.batch_samples, self.global_samples = self.global_samples or len(y), None
        measure_ratio = self.ratio_every > 0 and self.step % self.ratio_every == 0
        log_now = (self.step + 1) % self.log_every == 0
        diagnose = self.diagnostics_every > 0 and self.step % self.diagnostics_every == 0
        self._record_lr()
        if self.closure_step:
            out, loss, grad_norm = self._closure_step(x, y, measure_ratio, log_now, diagnose, mix)
        else:
            out, loss, grad_norm = self._gradient_step(x, y, measure_ratio, log_now, diagnose, mix)
        if diagnose:  # the one sync of a diagnostics step; logged at the step as update_ratio/ is
            self.diagnostics.write(self.writer, self.step)
        if self.constrained:
            apply_maxnorm(self.constrained, self.reg.maxnorm)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        after_optimizer_step(self.scheduler, self.sched_interval)
        self.step += 1

        self.window_loss.append(loss.detach())
        if self.classification:
            if self.keep_logits and out.numel() > KEEP_LOGITS:
                self.keep_logits = False
                self.window_pred = [logits.argmax(1) for logits in self.window_pred]
            self.window_pred.append(out.detach() if self.keep_logits else out.argmax(1))
            # A mixed batch counts as correct the class that makes up most of each input.
            self.window_target.append(y if mix is None or mix[1] >= 0.5 else mix[0])
        self.window_samples += self.batch_samples
        if log_now:
            self._flush(grad_norm)
        if self.callbacks.on_step_end:
            self.callbacks.call(self.callbacks.on_step_end, self, self.step, loss.detach())

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor, diagnose: bool = False, mix: Mix | None = None,
                     penalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The model's output, the loss to minimise (data loss + penalty) and the penalty alone,
        as training computes them; with `diagnose`, the diagnostics hook this forward only;
        without `penalize`, no penalty (a step's later micro-batches: it counts once a step)."""
        if diagnose:
            self.diagnostics.start()
            try:
                return self._forward(x, y, mix, eager=True, penalize=penalize)
            finally:
                self.diagnostics.stop()
        return self._forward(x, y, mix, penalize=penalize)

    def _forward(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None = None, eager: bool = False,
                 penalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        with self.autocast():
            out = (self.eager_model if eager else self.train_model)(x)
            data_loss = self._data_loss(out.float(), y)
            if mix is not None:  # mixup/cutmix: cross-entropy is linear in the target distribution
                y2, lam = mix
                data_loss = lam * data_loss + (1 - lam) * self._data_loss(out.float(), y2)
        if not self.weights or not penalize:
            return out, data_loss, None
        reg_loss = penalty(self.weights, self.reg.l2, self.reg.l1)
        return out, data_loss + reg_loss, reg_loss

    def _data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss; under DDP this shard's sum over 1/ranks of the global batch's count,
        so that DDP's mean of the ranks' gradients is the global batch's (shards may differ in size).
        A micro-batch's, likewise: the gradients its pieces add up are the whole batch's."""
        if not self.world.distributed and not self.split_step:
            return self.loss_fn(out, y)
        return self.loss_fn.shard_mean(out, y, self.batch_samples, self.world.size)

    def _gradient_step(self, x: torch.Tensor, y: torch.Tensor, measure_ratio: bool, log_now: bool,
                       diagnose: bool = False,
                       mix: Mix | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Forward, backward (per micro-batch), (unscale, clip,) step: every optimizer but L-BFGS."""
        self.optimizer.zero_grad(set_to_none=True)
        pieces = self._pieces(x, y, mix)
        outs, losses = [], []
        self.split_step = len(pieces) > 1
        try:
            for i, (x_i, y_i, mix_i) in enumerate(pieces):
                # DDP all-reduces the gradients in the last piece's backward only, once they all add up
                holding_back = self.ddp is not None and i < len(pieces) - 1
                with self.ddp.no_sync() if holding_back else contextlib.nullcontext():
                    out, loss, reg_loss = self.forward_loss(x_i, y_i, diagnose and i == 0, mix_i, penalize=i == 0)
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                if reg_loss is not None:
                    self.window_reg.append(reg_loss.detach())
                outs.append(out.detach())
                losses.append(loss.detach())
        finally:
            split, self.split_step = self.split_step, False
        if split:  # the step's output and loss: the whole batch's (each piece's loss is its share of it)
            out, loss = torch.cat(outs), torch.stack(losses).sum()
        grad_norm = None
        if self.grad_clip or log_now or diagnose:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if diagnose:  # the gradients backward made, before clipping and the step
                self.diagnostics.gradients()
            if self.grad_clip and self.grad_clip_mode == "norm":
                grad_norm = nn.utils.clip_grad_norm_(self.params, float(self.grad_clip))  # the norm before clipping
            elif self.grad_clip or log_now:
                if self.grad_clip:  # by value: each gradient element into [-clip, clip]
                    nn.utils.clip_grad_value_(self.params, float(self.grad_clip))
                grad_norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if measure_ratio:
            self.update_ratio.snapshot()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if measure_ratio:
            self._log_ratios()
        return out, loss, grad_norm

    def _pieces(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> list[tuple]:
        """trainer.micro_batch_size=M: this rank's batch in near-equal parts of at most M (tensor_split),
        each computed alone, so that a step holds one part's activations at a time (gradient accumulation)."""
        parts = micro_batches(self.batch_samples, self.world.size, self.micro_batch_size)
        if parts <= 1:
            return [(x, y, mix)]
        mixes = [(y2, mix[1]) for y2 in mix[0].tensor_split(parts)] if mix is not None else [None] * parts
        return list(zip(x.tensor_split(parts), y.tensor_split(parts), mixes))

    def _closure_step(self, x: torch.Tensor, y: torch.Tensor, measure_ratio: bool, log_now: bool,
                      diagnose: bool = False,
                      mix: Mix | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """L-BFGS: optimizer.step(closure), the closure evaluating loss (L2 included) and gradient.

        The step calls it up to optim.max_eval times (it reads each loss back, for its line
        search); what is logged comes from the first call, the loss and gradient at the weights
        the step started from, as an SGD step logs them.
        """
        first: dict[str, torch.Tensor | None] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            out, loss, reg_loss = self.forward_loss(x, y, diagnose and not first, mix)  # diagnose the first evaluation
            loss.backward()
            if not first:
                if diagnose:
                    self.diagnostics.gradients()
                first["out"], first["loss"] = out.detach(), loss.detach()
                first["reg"] = reg_loss.detach() if reg_loss is not None else None
                first["grad_norm"] = (nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
                                      if log_now else None)
            return loss

        if measure_ratio:
            self.update_ratio.snapshot()
        self.optimizer.step(closure)
        if measure_ratio:
            self._log_ratios()
        if first["reg"] is not None:
            self.window_reg.append(first["reg"])
        return first["out"], first["loss"], first["grad_norm"]

    def _log_ratios(self) -> None:
        """After the step a snapshot was taken for: log each tensor's update/weight ratio, watch it."""
        ratios = self.update_ratio.measure()
        self.writer.scalars({f"update_ratio/{name}": r for name, r in ratios.items()}, self.step)
        self.ratio_watch.add(ratios, self.step)

    def _record_lr(self) -> None:
        """Note the lr this optimizer step runs at (a host float: no device work)."""
        step, lr = self.step + 1, self.optimizer.param_groups[0]["lr"]  # step: as train/loss counts it
        if self.lr_last is None or lr != self.lr_last[1]:
            self._mark_lr()  # the previous stretch's last step
            self.lr_points.append((step, lr))
            self.lr_marked = step
        self.lr_last = (step, lr)

    def _mark_lr(self) -> None:
        if self.lr_last is not None and self.lr_last[0] != self.lr_marked:
            self.lr_points.append(self.lr_last)
            self.lr_marked = self.lr_last[0]

    def _flush(self, grad_norm: torch.Tensor | None = None) -> None:
        """Reduce the window on the device, read it back (one sync) and log its means."""
        for step, lr in self.lr_points:  # host floats; before the window's event, so steps stay in order
            self.writer.scalars({"lr": lr}, step)
        self.lr_points = []
        steps, samples = len(self.window_loss), self.window_samples
        if steps == 0:
            return
        totals = [torch.stack(self.window_loss).sum()]
        totals.append(torch.stack(self.window_reg).sum() if self.window_reg else self.zero)
        if self.classification:
            predicted = torch.cat(self.window_pred)
            if self.keep_logits:
                predicted = predicted.argmax(1)
            totals.append((predicted == torch.cat(self.window_target)).sum())
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
            losses = torch.stack(self.window_loss).float().tolist()  # the failure path only
            # (under DDP the non-finite loss may be another rank's: then this window's last step)
            first = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses) - 1)
            step = self.step - steps + first + 1  # as train/loss counts steps: the first is 1
            raise UserError(self._diverged(f"the loss was {losses[first]} at step {step} (epoch {self.epoch})"))
        correct = values[2] if self.classification else 0.0
        self.window_loss, self.window_reg, self.window_pred, self.window_target = [], [], [], []
        now = time.perf_counter()
        scalars = {
            "train/loss": loss_sum / steps,
            "train/data_loss": (loss_sum - reg_sum) / steps,
            "train/reg_loss": reg_sum / steps,
            "throughput": samples / max(now - self.window_start, 1e-9),
        }
        if self.classification:
            scalars["train/acc"] = correct / samples
        if grad_norm is not None:
            scalars["grad_norm"] = values[-1]
        self.writer.scalars(scalars, self.step)
        self.epoch_sums = [a + b for a, b in zip(self.epoch_sums, (loss_sum, loss_sum - reg_sum, reg_sum, correct))]
        self.epoch_steps += steps
        self.epoch_samples += samples
        self.train_samples += samples
        self.window_samples = 0
        self.window_start = now
        if self.progress is not None:
            self.progress.update(self.step, f"epoch {self.epoch}/{self.epochs}  loss {scalars['train/loss']:.4f}")

    def _diverged(self, what: str) -> str:
        """The one-line message for a run whose loss went non-finite: what, the likely cause, the fix,
        and the last good checkpoint (none ever holds diverged weights: see fit)."""
        lr = self.ratio_watch.configured_lr
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
    @torch.inference_mode()
    def evaluate(self, split: Split | StreamedSplit, model: nn.Module | None = None,
                 tta: str = "none") -> dict[str, float]:
        """Mean loss (and accuracy) of `model` (the trained one) over a whole split, in eval mode; one sync.

        tta="flip": the notes' test-time augmentation, the mean of the softmax of each image and of
        its mirror image; the loss is then that of the averaged distribution.
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        run = self.eval_model if model is self.model else model  # the compiled module (trainer.compile)
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for x, y in split.batches(self.data.eval_batch_size, shard=(self.world.rank, self.world.size)):
            if not len(y):  # a rank's empty part of a last batch smaller than the ranks
                continue
            x = self._layout(self.data.prepare(x))
            with self.autocast():
                out = run(x).float()
                if tta == "flip":
                    mirrored = run(x.flip(-1)).float()
                    out = ((out.softmax(1) + mirrored.softmax(1)) / 2).log()  # log-probabilities act as logits
            total_loss += self.loss_fn(out, y, reduction="sum")
            if self.classification:
                correct += (out.argmax(1) == y).sum()
        model.train(was_training)
        loss_sum, correct_sum = self.world.sum(torch.stack([total_loss, correct])).tolist()
        # A mean per example (classification) or per target value (regression), as the losses' defaults.
        metrics = {"loss": loss_sum / self.loss_fn.count(split.y)}
        if self.classification:
            metrics["acc"] = correct_sum / len(split)
        return metrics

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

    def _end_epoch(self, train: dict[str, float], val: dict[str, float], improved: bool) -> None:
        scalars = {f"val/{k}": v for k, v in val.items()}
        if "acc" in train and "acc" in val:  # the notes' train/val gap: overfitting shows as a growing gap
            scalars["val/gap"] = train["acc"] - val["acc"]
        self.writer.scalars(scalars, self.step)
        if self.diagnostics is not None:
            self.diagnostics.write_filters(self.writer, self.step)
        warning = self.ratio_watch.end_epoch(self.epoch)
        if warning:
            log.warning(warning)
        self.writer.scalars({f"val_ema/{k}": v for k, v in self.ema_val.items()}, self.step)
        acc = lambda m: f" acc {m['acc']:.4f}" if "acc" in m else ""  # noqa: E731
        ema = f"  ema val loss {self.ema_val['loss']:.4f}{acc(self.ema_val)}" if self.ema_val else ""
        log.info(f"epoch {self.epoch}/{self.epochs}  train loss {train['loss']:.4f}{acc(train)}  "
                 f"val loss {val['loss']:.4f}{acc(val)}{ema}  lr {self.optimizer.param_groups[0]['lr']:.3g}"
                 + ("  *" if improved else ""))
        if self.checkpoint_dir is not None:
            state = self.state_dict()  # on every rank: it gathers the ranks' random states
            if self.world.main:  # best.state is already a private CPU copy: best.pt needs no second snapshot
                self.checkpoints.save(state, best=self._best_payload() if improved else None)
                self.writer.flush()
            self.checkpoint_written = f"epoch {self.epoch}"
            self.callbacks.call(self.callbacks.on_checkpoint, self, self.checkpoint_dir / checkpoint.LAST, self.epoch,
                                self.step)

    # ------------------------------------------------------------------------- checkpoints
    def _save_mid_epoch(self) -> None:
        """Queue checkpoints/last.pt at this step, mid-epoch (trainer.checkpoint_every_steps, or a signal).

        The logging window is flushed first, so the epoch's sums are whole and the NaN guard has
        seen every loss; weights that are no longer finite are not written over the last good ones.
        """
        if self.checkpoint_dir is None:
            return
        self._mark_lr()
        self._flush()
        finite = torch.stack([p.detach().isfinite().all() for p in self.params]).all() if self.params else True
        if not bool(finite):
            return  # the next step's loss is not finite: the NaN guard stops the run there
        state = self.state_dict()  # on every rank: it gathers the ranks' random states
        if self.world.main:
            self.checkpoints.save(state)
            self.writer.flush()
        self.checkpoint_written = f"epoch {self.epoch}, step {self.step}"
        self.callbacks.call(self.callbacks.on_checkpoint, self, self.checkpoint_dir / checkpoint.LAST, self.epoch,
                            self.step)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one is.

        Mid-epoch (inside train_epoch), "epoch" counts the epochs completed and "partial" says
        where in the current one the run is: the shuffle state its permutation was drawn from,
        the steps done, and the epoch's train-metric sums so far.
        """
        rng = self._rng_state()
        ranks = self.world.gather(rng) if self.world.distributed else None
        partial = None
        if self.position is not None:
            partial = {"step": self.position, "shuffle": self.epoch_shuffle_state, "sums": list(self.epoch_sums),
                       "steps_logged": self.epoch_steps, "samples_logged": self.epoch_samples}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch - 1 if partial is not None else self.epoch,
            "partial": partial,
            "step": self.step,
            "best": {"epoch": self.best.epoch, "value": self.best.value, "val": self.best.val},
            "early_stopping": {"best": self.early_best, "waited": self.early_waited},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            # rank 0's generators, and under DDP every rank's ("ranks": dropout and augmentation
            # draw per rank; the shuffle is one permutation for all)
            "rng": {**rng, "shuffle": self.shuffle.get_state(), **({"ranks": ranks} if ranks else {})},
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            "config": self.config,
            **({"callbacks": self.callbacks.state_dict()} if self.callbacks else {}),
        }

    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "augment": self.augment.state_dict() if self.augment is not None else None}

    def _best_payload(self) -> dict[str, Any]:
        return {"model": self.best.state, "epoch": self.best.epoch, "monitor": self.monitor,
                "value": self.best.value, "val": self.best.val, "config": self.config}

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        checkpoint.load_model_state(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise UserError(f"checkpoint '{path}' was written with another optimizer or schedule ({exc}); "
                            "resume with the optim and sched overrides it was trained with") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        best = state["best"]
        self.best = Best(epoch=best["epoch"], value=best["value"], val=best["val"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        early = state.get("early_stopping") or {}
        self.early_best, self.early_waited = early.get("best"), int(early.get("waited", 0))
        best_file = path.parent / checkpoint.BEST
        if best["value"] is not None and best_file.is_file():
            self.best.state = checkpoint.load(best_file)["model"]
            self.checkpoints.save_best_now(self._best_payload())  # the new run directory gets its own copy
        rng = state["rng"]
        ranks = rng.get("ranks") or [rng]
        if len(ranks) != self.world.size and self.world.distributed:
            log.warning(f"{path} was written by {len(ranks)} process(es), this run has {self.world.size}: the data "
                        "order continues exactly; dropout and augmentation draw anew on the ranks it lacks")
        mine = ranks[self.world.rank] if self.world.rank < len(ranks) else None
        if mine is not None:
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine["cuda"]:
                torch.cuda.set_rng_state_all(mine["cuda"])
            if self.augment is not None and mine.get("augment") is not None:
                self.augment.load_state_dict(mine["augment"])
        self.shuffle.set_state(rng["shuffle"])
        self.resume_position = state.get("partial")  # a mid-epoch checkpoint: train_epoch continues that epoch
        self.train_samples = int(state.get("train_samples", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if isinstance(state.get("callbacks"), dict):
            self.callbacks.load_state_dict(state["callbacks"])

    def test(self) -> dict[str, float]:
        """Evaluate the best weights (by the monitored metric) on the test split."""
        if self.best.state is not None:
            self.model.load_state_dict(self.best.state)
        return self.evaluate(self.data.test, tta=self.tta)

    def test_ema(self) -> dict[str, float]:
        """Evaluate the final averaged weights (trainer.ema_decay) on the test split."""
        return self.evaluate(self.data.test, self.ema.module, tta=self.tta) if self.ema is not None else {}
