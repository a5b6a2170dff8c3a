"""Explicit regularisation terms added to the data loss (reg=none|l2)."""

from __future__ import annotations

import torch
from torch import nn


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weights that multiply the data (matrices and kernels); biases and norm scales are left alone."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim > 1]


def l2_penalty(weights: list[torch.Tensor], strength: float) -> torch.Tensor:
    """The notes' L2 term: 0.5 * strength * sum of squared weights (its gradient is strength * W)."""
    return 0.5 * strength * torch.stack([w.square().sum() for w in weights]).sum()
