"""ResNets (He et al. 2016), with and without their skip connections.

depth 18/34/50/101/152: the ImageNet nets, built by torchvision's ResNet class with its blocks
(11,689,512 parameters for resnet18 at 224x224x3 with 1000 classes, as torchvision's builder).
depth 20/32/44/56/110: the paper's CIFAR nets (section 4.2): a 3x3 conv of 16 channels, three
stages of n = (depth - 2) / 6 basic blocks with 16, 32 and 64 channels, global average pooling,
FC. Where the channels double, the shortcut is the paper's option A: subsample and pad with
zeros, no parameters; resnet-20 has the paper's 0.27M parameters.

residual=false builds the plain counterpart: the same layers without the skip connections
(and without the projection shortcuts, which are part of them), for the degradation experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet as TorchvisionResNet

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import NORMS, Activation, norm_layer

IMAGENET = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
            101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}
CIFAR = (20, 32, 44, 56, 110)


class PlainBasicBlock(BasicBlock):
    """A BasicBlock without its skip connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class PlainBottleneck(Bottleneck):
    """A Bottleneck without its skip connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)))


class ZeroPadShortcut(nn.Module):
    """He et al.'s option A: take every other position and pad the new channels with zeros."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]  # height 1 (1-D data) stays 1
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, residual: bool, norm_layer):
        super().__init__()
        blocks = (depth - 2) // 6
        block = BasicBlock if residual else PlainBasicBlock
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], 16
        for width in (16, 32, 64):
            layers = []
            for i in range(blocks):
                stride = 2 if i == 0 and width != 16 else 1
                shortcut = ZeroPadShortcut(width - channels) if stride != 1 and residual else None
                layers.append(block(channels, width, stride, downsample=shortcut, norm_layer=norm_layer))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # as torchvision initialises its ResNets
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(input_shape: Sequence[int], num_outputs: int, layout: str = "image", depth: int = 20,
           residual: bool = True, norm: str = "batch", small_input: bool | str = "auto", activation: str = "relu",
           negative_slope: float = 0.01, maxout_pieces: int = 2) -> nn.Module:
    if depth not in IMAGENET and depth not in CIFAR:
        raise UserError(f"model.depth={depth} is not a ResNet depth; use {'|'.join(map(str, IMAGENET))} (ImageNet-style) "
                        f"or {'|'.join(map(str, CIFAR))} (CIFAR-style)")
    if norm not in NORMS:
        raise UserError(f"model.norm={norm!r} is unknown; choose one of {', '.join(NORMS)}")
    act = Activation(activation, negative_slope, maxout_pieces)
    channels, height, width = shape = adapt.image_shape(input_shape, layout)
    # torchvision's blocks call norm_layer(channels); nn.Identity ignores its arguments.
    norms = partial(norm_layer, norm, dims=2) if norm not in ("none", "batch") else \
        {"none": nn.Identity, "batch": nn.BatchNorm2d}[norm]
    if depth in CIFAR:
        model = CifarResNet(depth, num_outputs, channels, residual, norms)
    else:
        kind, layers = IMAGENET[depth]
        if not residual:
            kind = PlainBasicBlock if kind is BasicBlock else PlainBottleneck
        model = TorchvisionResNet(kind, layers, num_classes=num_outputs, norm_layer=norms)
        if residual and norm == "batch":
            model.torchvision_name = f"resnet{depth}"  # for model.weights=imagenet
        if adapt.is_small(small_input, shape):
            # The CIFAR-style stem: 3x3 stride 1 and no max pool, so an 8x8 or 32x32 input is
            # not cut to 2x2 or 8x8 before the first block.
            model.conv1 = adapt.new_conv(model.conv1, channels, kernel_size=3, stride=1, padding=1)
            model.maxpool = nn.Identity()
        elif channels != 3:
            model.conv1 = adapt.new_conv(model.conv1, channels)
    if layout != "image":
        adapt.flatten_height(model)
    return adapt.fit_to_data(model, layout, "resnet", act, negative_slope=negative_slope)
