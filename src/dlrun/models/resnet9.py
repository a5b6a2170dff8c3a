"""ResNet-9 (David Page, "How to train your ResNet", 2018): the net of the DAWNBench CIFAR-10
record runs, a ResNet sized for speed (94% test accuracy in 24 epochs in its author's runs).

    prep    conv 64
    layer1  conv 128, max pool 2, + residual(conv 128, conv 128)
    layer2  conv 256, max pool 2
    layer3  conv 512, max pool 2, + residual(conv 512, conv 512)
    head    global max pool, linear, outputs x scale (0.125)

Every conv is 3x3 with padding 1 and no bias, followed by BatchNorm and ReLU: 6,573,130
parameters for 32x32x3 and 10 classes. Few, wide layers at low resolution keep a GPU busy
with large matrix products, which is what makes it fast; the output scale stands in for a
softmax temperature (Page's choice, which trains better than scale 1 with his lr schedule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import NORMS, Activation


def conv_bn(c_in: int, c_out: int, norm) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + f(x)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, in_channels: int, num_outputs: int, width: int, scale: float, norm):
        super().__init__()
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 8 * width
        self.features = nn.Sequential(
            conv_bn(in_channels, w1, norm),
            conv_bn(w1, w2, norm), nn.MaxPool2d(2), Residual(conv_bn(w2, w2, norm), conv_bn(w2, w2, norm)),
            conv_bn(w2, w3, norm), nn.MaxPool2d(2),
            conv_bn(w3, w4, norm), nn.MaxPool2d(2), Residual(conv_bn(w4, w4, norm), conv_bn(w4, w4, norm)),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(w4, num_outputs)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.scale


def resnet9(input_shape: Sequence[int], num_outputs: int, layout: str = "image", width: int = 64,
            scale: float = 0.125, norm: str = "batch", activation: str = "relu", negative_slope: float = 0.01,
            maxout_pieces: int = 2) -> nn.Module:
    if norm not in NORMS:
        raise UserError(f"model.norm={norm!r} is unknown; choose one of {', '.join(NORMS)}")
    if width < 1 or scale <= 0:
        raise UserError(f"model.width={width} must be >= 1 and model.scale={scale} > 0")
    act = Activation(activation, negative_slope, maxout_pieces)
    channels, _, _ = adapt.image_shape(input_shape, layout)
    model = ResNet9(channels, num_outputs, width, scale, nn.BatchNorm2d)
    if layout != "image":
        adapt.flatten_height(model)
    return adapt.fit_to_data(model, layout, "resnet9", act, norm=norm, negative_slope=negative_slope)
