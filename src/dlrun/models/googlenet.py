"""GoogLeNet (Szegedy et al. 2015) as torchvision builds it, without the auxiliary heads.

6,624,904 parameters at 224x224x3 with 1000 classes, as torchvision's googlenet(aux_logits=False).
Nine inception blocks between a conv stem and a global average pool. On small inputs the stem
is one 3x3 stride-1 conv and its two max pools go (as in the usual CIFAR adaptations); later
pools that would shrink the map below 1x1 are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models.googlenet import GoogLeNet, Inception, InceptionAux

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import NORMS, Activation


class ConvBlock(nn.Module):
    """torchvision's BasicConv2d (conv -> BatchNorm -> ReLU, same parameter names) with the
    activation as a module, so model.activation reaches it (BasicConv2d calls F.relu)."""

    def __init__(self, in_channels: int, out_channels: int, act: Activation, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.act = act.module() if act.name != "relu" else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def googlenet(input_shape: Sequence[int], num_outputs: int, layout: str = "image", norm: str = "batch",
              dropout: float = 0.2, small_input: bool | str = "auto", activation: str = "relu",
              negative_slope: float = 0.01, maxout_pieces: int = 2) -> nn.Module:
    if norm not in NORMS:
        raise UserError(f"model.norm={norm!r} is unknown; choose one of {', '.join(NORMS)}")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout={dropout} must be in [0, 1)")
    act = Activation(activation, negative_slope, maxout_pieces)
    adapt.refuse_maxout(act, "googlenet")
    channels, height, width = shape = adapt.image_shape(input_shape, layout)
    conv_block = partial(ConvBlock, act=act)
    model = GoogLeNet(num_classes=num_outputs, aux_logits=False, transform_input=False, init_weights=True,
                      dropout=dropout, blocks=[conv_block, partial(Inception, conv_block=conv_block), InceptionAux])
    if norm == "batch":
        model.torchvision_name = "googlenet"  # for model.weights=imagenet
    if adapt.is_small(small_input, shape):
        model.conv1 = conv_block(channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool1 = model.maxpool2 = nn.Identity()
    elif channels != 3:
        model.conv1 = conv_block(channels, 64, kernel_size=7, stride=2, padding=3)
    if layout != "image":
        adapt.flatten_height(model)
    adapt.drop_pools_that_do_not_fit(model, (height, width),
                                     ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "maxpool3", "maxpool4"])
    return adapt.fit_to_data(model, layout, "googlenet", act, norm, negative_slope)
