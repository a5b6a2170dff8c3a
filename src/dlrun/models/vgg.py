"""VGG (Simonyan & Zisserman 2015), built by torchvision: stacks of 3x3 convs and 2x2 max pools.

depth 11/13/16/19 are the paper's configurations A, B, D and E; vgg16 has 138,357,544 parameters
at 224x224x3 with 1000 classes, as torchvision's. model.batch_norm=true adds BatchNorm after each
conv (torchvision's vgg*_bn); model.norm=layer|group puts that normalisation there instead.
On small inputs the five pools would take a 32x32 image to 1x1 and an 8x8 one below it: pools
that do not fit are dropped and the classifier reads a global average pool of the 512 channels,
with hidden FC layers of 512 instead of 4096 (as CIFAR VGGs have; 4096 would be 19M parameters
reading 512 numbers). model.fc_width sets that width either way.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers

from dlrun.errors import UserError
from dlrun.models import adapt
from dlrun.models.layers import NORMS, Activation

CONFIGS = {11: "A", 13: "B", 16: "D", 19: "E"}


def vgg(input_shape: Sequence[int], num_outputs: int, layout: str = "image", depth: int = 16,
        batch_norm: bool = False, norm: str = "none", dropout: float = 0.5, small_input: bool | str = "auto",
        fc_width: int | None = None, activation: str = "relu", negative_slope: float = 0.01, maxout_pieces: int = 2) -> nn.Module:
    if depth not in CONFIGS:
        raise UserError(f"model.depth={depth} is not a VGG; use one of {', '.join(map(str, CONFIGS))}")
    if norm not in NORMS:
        raise UserError(f"model.norm={norm!r} is unknown; choose one of {', '.join(NORMS)}")
    if batch_norm and norm not in ("none", "batch"):
        raise UserError(f"model.batch_norm=true and model.norm={norm} disagree; set one of them")
    norm = "batch" if batch_norm else norm
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"model.dropout={dropout} must be in [0, 1)")
    act = Activation(activation, negative_slope, maxout_pieces)
    channels, height, width = shape = adapt.image_shape(input_shape, layout)

    model = VGG(make_layers(cfgs[CONFIGS[depth]], batch_norm=norm != "none"), num_classes=num_outputs, dropout=dropout)
    if norm == "batch":
        model.torchvision_name = f"vgg{depth}_bn"  # for model.weights=imagenet
    elif norm == "none":
        model.torchvision_name = f"vgg{depth}"
    if channels != 3:
        model.features[0] = adapt.new_conv(model.features[0], channels)
    if layout != "image":
        adapt.flatten_height(model)
    adapt.drop_pools_that_do_not_fit(model.features, (height, width))
    pool_globally = adapt.is_small(small_input, shape) or layout != "image"
    adapt.fit_classifier(model, pool_globally, 512, 7, fc_width, std=0.01)  # VGG's init for its linears
    return adapt.fit_to_data(model, layout, "vgg", act, norm, negative_slope)
