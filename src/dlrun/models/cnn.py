"""The notes' ConvNet pattern: INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC.

Conv2d for images (C, H, W); Conv1d for signals (C, L), for feature vectors read as one-channel
signals, and for sequences (T, F) read as F channels over T steps. Every size is worked out with
the notes' formula (W - F + 2P) / S + 1 before a layer is built, and a config whose sizes cannot
work is refused with the sizes it computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models.layers import Activation, fully_connected, norm_layer


def conv_output_size(width: int, kernel: int, stride: int, padding: int) -> int:
    """The notes' (W - F + 2P) / S + 1, refusing what does not come out whole and positive."""
    span = width - kernel + 2 * padding
    if span < 0 or span % stride:
        raise ValueError(f"(W - F + 2P) / S + 1 = ({width} - {kernel} + 2*{padding}) / {stride} + 1 = "
                         f"{span / stride + 1:g}")
    return span // stride + 1


def as_channels_first(input_shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """The shape the convolutions see: (C, H, W) or (C, L)."""
    if layout == "features":
        return (1, input_shape[0])
    if layout == "sequence":
        steps, features = input_shape
        return (features, steps)
    return tuple(input_shape)


class CNN(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, layout: str = "image",
                 channels: Sequence[int] = (32, 64), convs_per_block: int = 2, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, pool: str = "max", pool_size: int = 2,
                 fc: Sequence[int] = (128,), activation: str = "relu", dropout: float = 0.0, norm: str = "none",
                 negative_slope: float = 0.01, maxout_pieces: int = 2):
        super().__init__()
        if pool not in ("max", "avg", "none"):
            raise UserError(f"model.pool={pool!r} must be max, avg or none")
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"model.dropout={dropout} must be in [0, 1)")
        self.layout = layout
        act = Activation(activation, negative_slope, maxout_pieces)
        shape = as_channels_first(input_shape, layout)
        dims = len(shape) - 1
        Conv = nn.Conv2d if dims == 2 else nn.Conv1d
        Pool = {"max": nn.MaxPool2d if dims == 2 else nn.MaxPool1d,
                "avg": nn.AvgPool2d if dims == 2 else nn.AvgPool1d}.get(pool)

        in_channels, sizes = shape[0], list(shape[1:])
        trace = ["x".join(map(str, sizes))]
        layers: list[nn.Module] = []
        for block, out_channels in enumerate(channels, start=1):
            for conv in range(1, convs_per_block + 1):
                try:
                    sizes = [conv_output_size(s, kernel_size, stride, padding) for s in sizes]
                except ValueError as exc:
                    raise UserError(f"model=cnn: block {block} conv {conv} does not fit the {'x'.join(map(str, sizes))} "
                                    f"input: {exc}; sizes so far {' -> '.join(trace)}; change model.kernel_size, "
                                    "model.stride, model.padding or use fewer model.channels") from None
                # CONV -> norm? -> ACT; a maxout conv makes k channels per output channel.
                layers.append(Conv(in_channels, out_channels * act.widen, kernel_size, stride, padding))
                normalise = norm_layer(norm, out_channels * act.widen, dims)
                layers += [normalise, act.module()] if normalise is not None else [act.module()]
                in_channels = out_channels
                trace.append("x".join(map(str, sizes)))
            if Pool is not None:
                if min(sizes) < pool_size:
                    raise UserError(f"model=cnn: block {block}'s {pool_size}-pool does not fit its "
                                    f"{'x'.join(map(str, sizes))} feature map; sizes so far {' -> '.join(trace)}; "
                                    "use fewer model.channels (blocks) or model.pool=none")
                sizes = [(s - pool_size) // pool_size + 1 for s in sizes]  # as torch: the remainder is dropped
                layers.append(Pool(pool_size))
                trace.append("x".join(map(str, sizes)))
        self.features = nn.Sequential(*layers)
        self.feature_sizes = trace  # for the log and the tests: the map size after each layer

        self.classifier = nn.Sequential(
            nn.Flatten(), *fully_connected(in_channels * math.prod(sizes), fc, num_outputs, act, dropout))
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "features":
            x = x.unsqueeze(1)
        elif self.layout == "sequence":
            x = x.transpose(1, 2)
        return self.classifier(self.features(x))
