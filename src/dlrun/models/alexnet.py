"""AlexNet (Krizhevsky et al. 2012) as torchvision builds it: 61,100,840 parameters at 224x224x3, 1000 classes.

Five convs (the first 11x11 stride 4), three 3x3 stride-2 max pools, FC 4096, 4096, classes.
On small inputs the stem is a 3x3 stride-1 conv, pools that would shrink the map below 1x1 are
dropped, and the classifier reads a global average pool of the 256 channels with hidden FC
layers of 512 instead of 4096; model.fc_width sets that width either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.alexnet import AlexNet

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import Activation


def alexnet(input_shape: Sequence[int], num_outputs: int, layout: str = "image", dropout: float = 0.5,
            small_input: bool | str = "auto", fc_width: int | None = None, activation: str = "relu",
            negative_slope: float = 0.01, maxout_pieces: int = 2) -> nn.Module:
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout={dropout} must be in [0, 1)")
    act = Activation(activation, negative_slope, maxout_pieces)
    channels, height, width = shape = adapt.image_shape(input_shape, layout)
    model = AlexNet(num_classes=num_outputs, dropout=dropout)
    model.torchvision_name = "alexnet"  # for model.weights=imagenet
    small = adapt.is_small(small_input, shape)
    if small:
        model.features[0] = adapt.new_conv(model.features[0], channels, kernel_size=3, stride=1, padding=1)
    elif channels != 3:
        model.features[0] = adapt.new_conv(model.features[0], channels)
    if layout != "image":
        adapt.flatten_height(model)
    adapt.drop_pools_that_do_not_fit(model.features, (height, width))
    adapt.fit_classifier(model, small or layout != "image", 256, 6, fc_width)
    return adapt.fit_to_data(model, layout, "alexnet", act, negative_slope=negative_slope)
