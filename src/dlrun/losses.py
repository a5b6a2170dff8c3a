"""Data losses (loss=auto|cross_entropy|multi_margin|mse|huber|bce), each as f(output, target, reduction).

reduction="sum" adds up the per-example losses of classification losses and the per-target
losses of regression ones; the Trainer divides by `count(target)` to report means either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from dlrun.errors import UserError

CLASSIFICATION = ("cross_entropy", "multi_margin")
REGRESSION = ("mse", "huber", "bce")


def multiclass_hinge(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The notes' multiclass SVM loss: sum over j != y of max(0, 1 + a_j - a_y), per example.

    torch's multi_margin_loss divides that sum by the number of classes C; this is C times it,
    so a net whose outputs are all equal starts at C - 1, the notes' check.
    """
    return F.multi_margin_loss(out, y, margin=1.0, reduction=reduction) * out.shape[1]


@dataclass(frozen=True)
class Loss:
    name: str
    fn: Callable[..., torch.Tensor]
    classification: bool  # integer class labels (else float targets, averaged per target)

    def __call__(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.fn(out, y, reduction=reduction)

    def count(self, y: torch.Tensor) -> int:
        """What a "sum" is divided by for a mean: examples for classification, targets otherwise."""
        return len(y) if self.classification else y.numel()

    def shard_mean(self, out: torch.Tensor, y: torch.Tensor, samples: int, ranks: int) -> torch.Tensor:
        """Data-parallel training: this shard's loss sum over 1/ranks of what the whole batch of
        `samples` examples counts. The ranks' values average to the whole batch's mean loss, and
        so DDP's average of their gradients is its gradient, whatever the shards' sizes."""
        per_sample = 1 if self.classification else math.prod(y.shape[1:])
        return self(out, y, reduction="sum") * (ranks / (samples * per_sample))


def build_loss(name: str, task: str, label_smoothing: float = 0.0, huber_delta: float = 1.0) -> Loss:
    """The configured loss for the data's task; `auto` is cross_entropy or mse."""
    if name == "auto":
        name = "cross_entropy" if task == "classification" else "mse"
    if name not in CLASSIFICATION + REGRESSION:
        raise UserError(f"loss.name={name!r} is unknown; choose auto, {', '.join(CLASSIFICATION + REGRESSION)}")
    if (name in CLASSIFICATION) != (task == "classification"):
        needs = "integer class labels" if name in CLASSIFICATION else "float targets (bce: 0/1 floats)"
        fits = "cross_entropy or multi_margin" if task == "classification" else "mse, huber or bce"
        raise UserError(f"loss={name} needs {needs}, but the data's task is {task}; use loss={fits} (or loss=auto)")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"loss.label_smoothing={label_smoothing} must be in [0, 1)")
    if label_smoothing and name != "cross_entropy":
        raise UserError(f"loss.label_smoothing applies to loss=cross_entropy, not {name}")
    if huber_delta <= 0:
        raise UserError(f"loss.huber_delta={huber_delta} must be > 0")
    fn = {
        # label_smoothing e: target (1 - e) + e/C on the true class, e/C on the others (torch's form);
        # e = 1/9 on 10 classes gives the notes' 0.9 and 0.0111.
        "cross_entropy": partial(F.cross_entropy, label_smoothing=label_smoothing),
        "multi_margin": multiclass_hinge,
        "mse": F.mse_loss,
        "huber": partial(F.huber_loss, delta=huber_delta),
        "bce": F.binary_cross_entropy_with_logits,  # outputs are logits; targets probabilities in [0, 1]
    }[name]
    return Loss(name, fn, name in CLASSIFICATION)


def check_targets(loss: Loss, y: torch.Tensor, split: str) -> None:
    """bce's targets are probabilities: refuse anything outside [0, 1] before training."""
    if loss.name == "bce" and (y.min() < 0 or y.max() > 1):
        raise UserError(f"loss=bce needs targets in [0, 1]; y_{split} spans [{y.min():g}, {y.max():g}]; "
                        "use loss=mse or huber for other targets")
