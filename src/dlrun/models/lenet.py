"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998).

conv 6@5x5 -> pool 2 -> conv 16@5x5 -> pool 2 -> FC 120 -> FC 84 -> FC classes.
The paper fed 32x32 images (28x28 MNIST digits centred in a 32x32 field); smaller images are
zero-padded to 32x32 the same way, larger ones keep their size and FC 120 widens to fit.
1-D data is read as (C, 1, L) with 1x5 kernels and 1x2 pools, L padded to 32 likewise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import Activation

PAPER_SIZE = 32


class LeNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_outputs: int, activation: str = "tanh", pool: str = "avg",
                 layout: str = "image", negative_slope: float = 0.01, maxout_pieces: int = 2):
        super().__init__()
        if pool not in ("avg", "max"):
            raise UserError(f"model.pool={pool!r} must be avg or max")
        act = Activation(activation, negative_slope, maxout_pieces)
        channels, height, width = adapt.image_shape(input_shape, layout)
        one_d = layout != "image"
        pad_h = 0 if one_d else max(0, PAPER_SIZE - height)
        pad_w = max(0, PAPER_SIZE - width)
        # (left, right, top, bottom): centre the sample in the padded field.
        self.pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        Pool = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        k = act.widen  # a maxout conv or FC layer makes k outputs per unit
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6 * k, kernel_size=5), act.module(), Pool(2),
            nn.Conv2d(6, 16 * k, kernel_size=5), act.module(), Pool(2),
        )
        if one_d:
            adapt.flatten_height(self.features)
        # Output size per conv/pool, (W - F + 2P) / S + 1, from the padded size.
        h, w = height + pad_h, width + pad_w
        for layer in self.features:
            h, w = adapt.next_sizes(layer, (h, w))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h * w, 120 * k), act.module(),
            nn.Linear(120, 84 * k), act.module(),
            nn.Linear(84, num_outputs),
        )
        self.activation, self.negative_slope = activation, negative_slope
        self.to_image = adapt.ToImage(layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (x,) = self.to_image(self, (x,))
        return self.classifier(self.features(self.pad(x)))
