"""Multi-layer perceptron: [Linear -> activation -> dropout] * len(hidden) -> Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from dlrun.errors import UserError
from dlrun.models.layers import fully_connected


class MLP(nn.Sequential):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", dropout: float = 0.0, layout: str | None = None):
        # layout is accepted like every model's; an MLP flattens any of them the same way.
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout={dropout} must be in [0, 1)")
        if any(int(h) < 1 for h in hidden):
            raise UserError(f"model.hidden={list(hidden)} must be positive widths")
        super().__init__(nn.Flatten(), *fully_connected(math.prod(input_shape), hidden, num_outputs, activation, dropout))
        self.activation = activation  # read by the initialisers to pick a gain
