"""How the model runs: one optimizer step, and one evaluation pass, as the run's settings make them.

The engine owns what makes a step more than forward-backward-update: mixed precision (autocast,
fp16's GradScaler), the DDP wrapper, torch.compile, micro-batches (gradient accumulation) and
L-BFGS's closure. It decides nothing about logging: the Trainer says whether a step needs its
gradient norm, runs eagerly (a diagnostics step's module hooks would make a compiled graph
recompile), or calls something between backward and the update.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import nn

from dlrun.data import Data, Split, StreamedSplit
from dlrun.errors import UserError
from dlrun.losses import Loss
from dlrun.monitor.diagnostics import Diagnostics
from dlrun.regularization import Regularization, penalized_weights, penalty
from dlrun.train.distributed import World

Mix = tuple[torch.Tensor, float]  # mixup/cutmix: the second targets and the first's weight lam
Step = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]  # out, loss, reg, grad norm
TTA = ("none", "flip")


def micro_batches(samples: int, ranks: int, micro_batch_size: int | None) -> int:
    """How many pieces every rank computes a global batch of `samples` in: enough for the largest
    shard to fit micro_batch_size, the same number on every rank (SyncBatchNorm's forward
    communicates, so the ranks must run as many forwards)."""
    return math.ceil(math.ceil(samples / ranks) / micro_batch_size) if micro_batch_size else 1


def piece_sizes(samples: int, ranks: int = 1, micro_batch_size: int | None = None) -> list[int]:
    """The sizes of the non-empty pieces a batch of `samples` is computed in: each rank's shard
    cut in micro_batches (both tensor_split, as Split.batches and StepEngine._pieces cut them)."""
    def split(n: int, parts: int) -> list[int]:
        q, r = divmod(n, parts)
        return [q + 1] * r + [q] * (parts - r)

    parts = micro_batches(samples, ranks, micro_batch_size)
    return [piece for shard in split(samples, ranks) for piece in split(shard, parts) if piece]


def check_tta(tta: str, data: Data, loss: Loss) -> str:
    """eval.tta: flip needs images and a softmax classifier (it averages class probabilities)."""
    if tta not in TTA:
        raise UserError(f"eval.tta={tta!r} is not a test-time augmentation; use none or flip")
    if tta == "flip" and (data.layout != "image" or loss.name != "cross_entropy"):
        raise UserError(f"eval.tta=flip averages the softmax over an image and its mirror; this run has "
                        f"{data.layout} data and loss {loss.name}: use eval.tta=none")
    return tta


class StepEngine:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Loss, reg: Regularization, *,
                 world: World, device: torch.device, precision: str, grad_clip: float | None = None,
                 grad_clip_mode: str = "norm", compile: bool = False, compile_mode: str = "default",
                 micro_batch_size: int | None = None):
        self.model, self.optimizer, self.loss_fn, self.reg = model, optimizer, loss_fn, reg
        self.world, self.device = world, device
        # Under torchrun: DDP averages the ranks' gradients in backward. Training's forward goes
        # through the wrapper; evaluation, checkpoints and the diagnostics use the model itself.
        self.train_model: nn.Module = model
        self.ddp = None  # the DistributedDataParallel wrapper (its no_sync holds back all but a step's last all-reduce)
        if world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = self.ddp = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        # trainer.compile: training and evaluation run compiled modules (never the DDP wrapper for
        # evaluation: its forward may sync buffers, and ranks evaluate different numbers of batches).
        self.eager_model, self.eval_model = self.train_model, model
        if compile:
            mode = None if compile_mode == "default" else compile_mode
            self.train_model = torch.compile(self.train_model, mode=mode)
            self.eval_model = self.train_model if not world.distributed else torch.compile(model, mode=mode)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.weights = penalized_weights(model, reg.exclude_bias_and_norm) if reg.penalized else []
        self.grad_clip, self.grad_clip_mode = grad_clip, grad_clip_mode
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        # L-BFGS re-evaluates the loss inside its step: it gets a closure (see _closure_step; the
        # settings it cannot take are refused by assembly.build_parts).
        self.closure = isinstance(optimizer, torch.optim.LBFGS)
        self.micro_batch_size = micro_batch_size  # trainer.micro_batch_size: see _pieces
        self.batch_samples = 0  # the global batch's size in the step being taken (all ranks together)
        self.split_step = False  # inside a step computed in several pieces (their losses: shares of the batch's)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    # ------------------------------------------------------------------------------- a step
    def step(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None, samples: int, *, grad_norm: bool = False,
             diagnostics: Diagnostics | None = None, before_update: Callable[[], None] | None = None) -> Step:
        """One optimizer step on a model-ready batch (`samples`: the global batch's size); `mix` (y2, lam):
        the loss is lam L(y) + (1 - lam) L(y2). grad_norm: also return the gradient's norm (before
        clipping); diagnostics: hook the step's first forward (run eagerly: hooks would make a compiled
        graph recompile) and its gradients; before_update: called once the step's gradients are there
        (unscaled), before they are clipped and the weights change."""
        self.batch_samples = samples
        if self.closure:
            return self._closure_step(x, y, mix, grad_norm, diagnostics, before_update)
        return self._gradient_step(x, y, mix, grad_norm, diagnostics, before_update)

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None = None,
                     diagnostics: Diagnostics | None = None,
                     penalize: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The model's output, the loss to minimise (data loss + penalty) and the penalty alone, as
        training computes them; without `penalize`, no penalty (a step's later micro-batches: it counts once)."""
        if diagnostics is None:
            return self._forward(x, y, mix, self.train_model, penalize)
        diagnostics.start()
        try:
            return self._forward(x, y, mix, self.eager_model, penalize)
        finally:
            diagnostics.stop()

    def _forward(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None, model: nn.Module,
                 penalize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        with self.autocast():
            out = model(x)
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

    def _gradient_step(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None, want_norm: bool,
                       diagnostics: Diagnostics | None, before_update: Callable[[], None] | None) -> Step:
        """Forward, backward (per micro-batch), (unscale, clip,) step: every optimizer but L-BFGS."""
        self.optimizer.zero_grad(set_to_none=True)
        pieces = self._pieces(x, y, mix)
        outs, losses, reg_loss = [], [], None
        self.split_step = len(pieces) > 1
        try:
            for i, (x_i, y_i, mix_i) in enumerate(pieces):
                # DDP all-reduces the gradients in the last piece's backward only, once they all add up
                holding_back = self.ddp is not None and i < len(pieces) - 1
                with self.ddp.no_sync() if holding_back else contextlib.nullcontext():
                    out, loss, piece_reg = self.forward_loss(x_i, y_i, mix_i, diagnostics if i == 0 else None,
                                                             penalize=i == 0)
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                reg_loss = piece_reg if i == 0 else reg_loss
                outs.append(out.detach())
                losses.append(loss.detach())
        finally:
            split, self.split_step = self.split_step, False
        out, loss = (torch.cat(outs), torch.stack(losses).sum()) if split else (outs[0], losses[0])
        norm = None
        if self.grad_clip or want_norm or diagnostics is not None or before_update is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if diagnostics is not None:  # the gradients backward made, before clipping and the step
                diagnostics.gradients()
            if before_update is not None:
                before_update()
            if self.grad_clip and self.grad_clip_mode == "norm":
                norm = nn.utils.clip_grad_norm_(self.params, float(self.grad_clip))  # the norm before clipping
            elif self.grad_clip or want_norm:
                if self.grad_clip:  # by value: each gradient element into [-clip, clip]
                    nn.utils.clip_grad_value_(self.params, float(self.grad_clip))
                norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return out, loss, reg_loss.detach() if reg_loss is not None else None, norm

    def _pieces(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> list[tuple]:
        """trainer.micro_batch_size=M: this rank's batch in near-equal parts of at most M (tensor_split),
        each computed alone, so that a step holds one part's activations at a time (gradient accumulation)."""
        parts = micro_batches(self.batch_samples, self.world.size, self.micro_batch_size)
        if parts <= 1:
            return [(x, y, mix)]
        mixes = [(y2, mix[1]) for y2 in mix[0].tensor_split(parts)] if mix is not None else [None] * parts
        return list(zip(x.tensor_split(parts), y.tensor_split(parts), mixes))

    def _closure_step(self, x: torch.Tensor, y: torch.Tensor, mix: Mix | None, want_norm: bool,
                      diagnostics: Diagnostics | None, before_update: Callable[[], None] | None) -> Step:
        """L-BFGS: optimizer.step(closure), the closure evaluating loss (L2 included) and gradient.

        The step calls it up to optim.max_eval times (it reads each loss back, for its line
        search); what is logged comes from the first call, the loss and gradient at the weights
        the step started from, as an SGD step logs them.
        """
        first: dict[str, torch.Tensor | None] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            out, loss, reg_loss = self.forward_loss(x, y, mix, None if first else diagnostics)  # the first's
            loss.backward()
            if not first:
                if diagnostics is not None:
                    diagnostics.gradients()
                if before_update is not None:
                    before_update()
                first["out"], first["loss"] = out.detach(), loss.detach()
                first["reg"] = reg_loss.detach() if reg_loss is not None else None
                first["grad_norm"] = (nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
                                      if want_norm else None)
            return loss

        self.optimizer.step(closure)
        return first["out"], first["loss"], first["reg"], first["grad_norm"]

    # ------------------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, data: Data, split: Split | StreamedSplit, model: nn.Module | None = None,
                 tta: str = "none", layout: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> dict[str, float]:
        """Mean loss (and accuracy) of `model` (the trained one) over a whole split, in eval mode; one sync.

        tta="flip": the notes' test-time augmentation, the mean of the softmax of each image and of
        its mirror image; the loss is then that of the averaged distribution.
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        run = self.eval_model if model is self.model else model  # the compiled module (trainer.compile)
        classification = data.task == "classification"
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for x, y in split.batches(data.eval_batch_size, shard=(self.world.rank, self.world.size)):
            if not len(y):  # a rank's empty part of a last batch smaller than the ranks
                continue
            x = layout(data.prepare(x))
            with self.autocast():
                out = run(x).float()
                if tta == "flip":
                    mirrored = run(x.flip(-1)).float()
                    out = ((out.softmax(1) + mirrored.softmax(1)) / 2).log()  # log-probabilities act as logits
            total_loss += self.loss_fn(out, y, reduction="sum")
            if classification:
                correct += (out.argmax(1) == y).sum()
        model.train(was_training)
        loss_sum, correct_sum = self.world.sum(torch.stack([total_loss, correct])).tolist()
        # A mean per example (classification) or per target value (regression), as the losses' defaults.
        metrics = {"loss": loss_sum / self.loss_fn.count(split.y)}
        if classification:
            metrics["acc"] = correct_sum / len(split)
        return metrics
