"""Multi-layer perceptron: [Linear -> norm? -> activation -> dropout?] * len(hidden) -> Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from dlrun.errors import UserError
from dlrun.models.layers import Activation, fully_connected, per_layer


class MLP(nn.Sequential):
    """activation, dropout and norm are one value for every hidden layer, or a list with one per layer."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (256, 256),
                 activation: str | Sequence[str] = "relu", dropout: float | Sequence[float] = 0.0,
                 norm: str | Sequence[str] = "none", negative_slope: float = 0.01, maxout_pieces: int = 2,
                 layout: str | None = None):
        # layout is accepted like every model's; an MLP flattens any of them the same way.
        if any(int(h) < 1 for h in hidden):
            raise UserError(f"model.hidden={list(hidden)} must be positive widths")
        acts = [Activation(name, negative_slope, maxout_pieces) for name in per_layer(activation, len(hidden), "activation")]
        super().__init__(nn.Flatten(), *fully_connected(math.prod(input_shape), hidden, num_outputs, acts, dropout, norm))
        # Read by the initialisers to pick a gain: the first hidden layer's activation.
        self.activation = acts[0].name if acts else "linear"
        self.negative_slope = negative_slope
