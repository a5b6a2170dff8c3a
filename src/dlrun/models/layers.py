"""Building blocks shared by the models: activations and normalisations by name, maxout, FC stacks.

Every model takes `activation` (with `negative_slope` for leaky_relu and `maxout_pieces` for
maxout) and, where it fits, `norm`; this module turns those config values into layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dlrun.errors import UserError

ELEMENTWISE = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "softplus", "silu", "tanh", "sigmoid")
ACTIVATIONS = (*ELEMENTWISE, "maxout")
NORMS = ("none", "batch", "layer", "group")
GROUPS = 32  # GroupNorm's groups (Wu & He 2018), or the largest divisor of the channels below it


class Maxout(nn.Module):
    """Goodfellow et al. 2013: the max over k linear pieces.

    It follows a layer with k times the units (or channels); the pieces of unit j are that layer's
    outputs j*k ... j*k + k - 1, and the max is taken over them: (N, units*k, ...) -> (N, units, ...).
    """

    def __init__(self, pieces: int):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (x.shape[1] // self.pieces, self.pieces)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


@dataclass(frozen=True)
class Activation:
    """model.activation with its options: model.negative_slope, model.maxout_pieces."""

    name: str = "relu"
    negative_slope: float = 0.01
    maxout_pieces: int = 2

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise UserError(f"model.activation={self.name!r} is unknown; choose one of {', '.join(ACTIVATIONS)}")
        if self.name == "maxout" and (not isinstance(self.maxout_pieces, int) or self.maxout_pieces < 2):
            raise UserError(f"model.maxout_pieces={self.maxout_pieces!r} must be an integer >= 2")

    @property
    def widen(self) -> int:
        """How many outputs the layer before this activation makes per unit: k for maxout, else 1."""
        return self.maxout_pieces if self.name == "maxout" else 1

    def module(self) -> nn.Module:
        if self.name == "maxout":
            return Maxout(self.maxout_pieces)
        if self.name == "leaky_relu":
            return nn.LeakyReLU(self.negative_slope)
        if self.name == "prelu":
            return nn.PReLU()  # one learned slope, initialised at 0.25 (He et al. 2015)
        if self.name == "elu":
            return nn.ELU(alpha=1.0)
        return {"relu": nn.ReLU, "selu": nn.SELU, "gelu": nn.GELU, "softplus": nn.Softplus, "silu": nn.SiLU,
                "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[self.name]()


def activation(name: str, negative_slope: float = 0.01, maxout_pieces: int = 2) -> nn.Module:
    """One elementwise activation module by name (maxout needs its layer: use Activation.widen)."""
    return Activation(name, negative_slope, maxout_pieces).module()


def norm_layer(kind: str, channels: int, dims: int) -> nn.Module | None:
    """A normalisation over `channels` for (N, C) (dims=0), (N, C, L) (1) or (N, C, H, W) (2) maps.

    layer: LayerNorm over a sample's units; for feature maps GroupNorm with one group, which is
    LayerNorm over (C, H, W) with a scale and shift per channel.
    """
    if kind not in NORMS:
        raise UserError(f"model.norm={kind!r} is unknown; choose one of {', '.join(NORMS)}")
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels) if dims == 0 else nn.GroupNorm(1, channels)
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


def per_layer(value, count: int, key: str) -> list:
    """A config value given once for all `count` layers, or as a list with one entry a layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise UserError(f"model.{key}={list(value)} needs one entry per hidden layer ({count}), or one value")
        return list(value)
    return [value] * count


def fully_connected(width: int, hidden: Sequence[int], num_outputs: int, act: Activation | Sequence[Activation],
                    dropout: float | Sequence[float] = 0.0, norm: str | Sequence[str] = "none") -> list[nn.Module]:
    """[Linear -> norm? -> activation -> dropout?] for each hidden width, then the output Linear.

    `act`, `dropout` and `norm` are one value for every hidden layer or a list, one per layer.
    """
    acts = per_layer(act, len(hidden), "activation")
    drops = per_layer(dropout, len(hidden), "dropout")
    norms = per_layer(norm, len(hidden), "norm")
    layers: list[nn.Module] = []
    for units, a, p, n in zip(hidden, acts, drops, norms):
        if not 0.0 <= p < 1.0:
            raise UserError(f"model.dropout={p} must be in [0, 1)")
        units = int(units)
        layers.append(nn.Linear(width, units * a.widen))
        normalise = norm_layer(n, units * a.widen, dims=0)
        if normalise is not None:  # before the nonlinearity, as Ioffe & Szegedy place it
            layers.append(normalise)
        layers.append(a.module())
        if p > 0:
            layers.append(nn.Dropout(p))
        width = units
    return layers + [nn.Linear(width, num_outputs)]
