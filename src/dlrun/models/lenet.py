"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998).

conv 6@5x5 -> pool 2 -> conv 16@5x5 -> pool 2 -> FC 120 -> FC 84 -> FC classes.
The paper fed 32x32 images (28x28 MNIST digits centred in a 32x32 field); smaller images are
zero-padded to 32x32 the same way, larger ones keep their size and FC 120 widens to fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models.layers import activation as make_activation

PAPER_SIZE = 32


class LeNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, activation: str = "tanh", pool: str = "avg",
                 layout: str = "image"):
        super().__init__()
        if layout != "image" or len(input_shape) != 3:
            raise UserError(f"model=lenet needs images (C, H, W); the data gives samples of shape {tuple(input_shape)} "
                            "(pick model=mlp, or data.layout=image)")
        if pool not in ("avg", "max"):
            raise UserError(f"model.pool={pool!r} must be avg or max")
        channels, height, width = input_shape
        pad_h, pad_w = max(0, PAPER_SIZE - height), max(0, PAPER_SIZE - width)
        # (left, right, top, bottom): centre the image in the padded field.
        self.pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5), make_activation(activation), Pool(2),
            nn.Conv2d(6, 16, kernel_size=5), make_activation(activation), Pool(2),
        )
        # Output size per conv/pool: (W - F + 2P) / S + 1, from the padded size.
        h, w = height + pad_h, width + pad_w
        for _ in range(2):
            h, w = (h - 5 + 1) // 2, (w - 5 + 1) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h * w, 120), make_activation(activation),
            nn.Linear(120, 84), make_activation(activation),
            nn.Linear(84, num_outputs),
        )
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.pad(x)))
