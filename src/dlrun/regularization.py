"""Explicit regularisation: penalties added to the data loss, and max-norm constraints.

Biases and normalisation parameters (every 1-D parameter: biases, norm scales and shifts, PReLU
slopes) are left out of penalties and decay by default (reg.exclude_bias_and_norm=true): they do
not multiply the data, so shrinking them does not smooth the function (the notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun.errors import UserError
from dlrun.schema import EarlyStopping


def penalized_weights(model: nn.Module, exclude_bias_and_norm: bool = True) -> list[torch.Tensor]:
    """The trainable parameters penalties and decay apply to."""
    return [p for p in model.parameters() if p.requires_grad and (p.ndim > 1 or not exclude_bias_and_norm)]


def l2_penalty(weights: list[torch.Tensor], strength: float) -> torch.Tensor:
    """The notes' L2 term: 0.5 * strength * sum of squared weights (its gradient is strength * W)."""
    return 0.5 * strength * torch.stack([w.square().sum() for w in weights]).sum()


def l1_penalty(weights: list[torch.Tensor], strength: float) -> torch.Tensor:
    """strength * sum |W| (its gradient is strength * sign(W))."""
    return strength * torch.stack([w.abs().sum() for w in weights]).sum()


def penalty(weights: list[torch.Tensor], l2: float = 0.0, l1: float = 0.0) -> torch.Tensor:
    """l2 and l1 together; both on is the elastic net, the notes' l1 * |w| + l2 / 2 * w^2."""
    terms = []
    if l2:
        terms.append(l2_penalty(weights, l2))
    if l1:
        terms.append(l1_penalty(weights, l1))
    return torch.stack(terms).sum()


@torch.no_grad()
def apply_maxnorm(weights: list[torch.Tensor], c: float) -> None:
    """Project each unit's incoming weight vector onto ||w||_2 <= c (the notes' max-norm constraint).

    A unit is a row of a Linear weight, an output channel of a conv kernel: dim 0. Units already
    inside the ball are left exactly as they are (torch.renorm scales only the others).
    """
    for w in weights:
        if w.ndim > 1:
            w.copy_(torch.renorm(w, p=2, dim=0, maxnorm=c))


@dataclass(frozen=True)
class Regularization:
    """cfg.reg, composed from any of reg=[l2,l1,elastic_net,maxnorm,dropout,label_smoothing,early_stopping]:
    a setting no chosen option gives is off. (dropout is read by the model builder, label_smoothing
    by the loss.)"""

    l2: float = 0.0
    l1: float = 0.0
    weight_decay: float = 0.0  # decoupled: applied by the optimizer, not added to the loss
    maxnorm: float | None = None
    exclude_bias_and_norm: bool = True
    patience: int | None = None  # early stopping: validations without improvement before stopping
    min_delta: float = 0.0       # the improvement that counts as one

    @property
    def penalized(self) -> bool:
        return bool(self.l2 or self.l1)


def regularization(cfg: DictConfig) -> Regularization:
    """cfg.reg as a run applies it: a setting no chosen option gives is off. Its values are checked
    by reg's schema (dlrun.schema.Reg, before any data is read), and only there."""
    reg = OmegaConf.to_container(cfg.reg, resolve=True)
    stopping = reg.get("early_stopping")
    stopping = None if stopping is None else EarlyStopping(**stopping)  # the schema's defaults for a key left out
    return Regularization(l2=reg.get("l2") or 0.0, l1=reg.get("l1") or 0.0,
                          weight_decay=reg.get("weight_decay") or 0.0, maxnorm=reg.get("maxnorm"),
                          exclude_bias_and_norm=reg.get("exclude_bias_and_norm", True),
                          patience=stopping and stopping.patience, min_delta=stopping.min_delta if stopping else 0.0)


def parameter_groups(model: nn.Module, reg: Regularization, optimizer_target: str) -> list:
    """The trainable parameters as the optimizer gets them: with reg=weight_decay, two groups, the
    decayed weights and the rest (biases and norms, by reg.exclude_bias_and_norm) without decay.

    Adam's decay is made decoupled (AdamW's form, Loshchilov & Hutter 2019): w <- w - lr * wd * w
    beside the adaptive step, instead of wd * w added to the gradient and rescaled with it.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not reg.weight_decay:
        return trainable
    if optimizer_target.endswith("LBFGS"):
        raise UserError("reg=weight_decay cannot go with optim=lbfgs (it takes no parameter groups); use reg=l2")
    decayed = penalized_weights(model, reg.exclude_bias_and_norm)
    ids = {id(p) for p in decayed}
    group = {"params": decayed, "weight_decay": reg.weight_decay}
    if optimizer_target == "torch.optim.Adam":
        group["decoupled_weight_decay"] = True
    return [group, {"params": [p for p in trainable if id(p) not in ids], "weight_decay": 0.0}]
