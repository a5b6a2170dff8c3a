"""Fitting image architectures (LeNet, AlexNet, VGG, GoogLeNet, ResNet) to the data they are given.

- 1-D data (feature vectors, signals (C, L), sequences (T, F)) is read as an image of height 1,
  (C, 1, L), and every k x k kernel becomes 1 x k: each conv is then exactly a Conv1d over L.
- Small inputs (the smaller side under SMALL_SIDE pixels, e.g. 8x8 digits, 28x28, 32x32) get the
  stem CIFAR-style nets use (a 3x3 stride-1 first conv, no early downsampling), pools that would
  shrink a map below 1x1 are dropped, and the classifier reads a global average pool.
- Another channel count than 3 replaces the first conv with one that takes it.
- The activation is swapped in for torchvision's ReLUs, the normalisation for its BatchNorms.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.utils import _pair

from dlrun.errors import UserError
from dlrun.models.layers import Activation, norm_layer

SMALL_SIDE = 64  # AlexNet's stride-4 stem and its three 3/2 pools need at least this much
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def image_shape(input_shape: Sequence[int], layout: str) -> tuple[int, int, int]:
    """(C, H, W) as the convolutions see one sample; 1-D data is (C, 1, L)."""
    if layout == "image":
        return tuple(input_shape)
    if layout == "features":
        return (1, 1, input_shape[0])
    if layout == "signal":
        return (input_shape[0], 1, input_shape[1])
    if layout == "sequence":
        steps, features = input_shape
        return (features, 1, steps)
    raise UserError(f"an image model cannot read {layout!r} data")


class ToImage:
    """Forward pre-hook: (N, F), (N, C, L) or (N, T, F) batches -> (N, C, 1, L) images.

    A hook rather than a wrapper module keeps the parameter names torchvision's state dicts use.
    """

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        if self.layout == "features":
            x = x[:, None, None, :]
        elif self.layout == "signal":
            x = x.unsqueeze(2)
        elif self.layout == "sequence":
            x = x.transpose(1, 2).unsqueeze(2)
        return (x, *rest)


def is_small(flag: bool | str, shape: tuple[int, int, int]) -> bool:
    """model.small_input: true, false, or auto (the smaller real side is under SMALL_SIDE)."""
    if flag == "auto":
        sides = [s for s in shape[1:] if s > 1] or [1]
        return min(sides) < SMALL_SIDE
    if isinstance(flag, bool):
        return flag
    raise UserError(f"model.small_input={flag!r} must be auto, true or false")


def new_conv(conv: nn.Conv2d, in_channels: int | None = None, kernel_size=None, stride=None, padding=None) -> nn.Conv2d:
    """A conv like `conv` with some settings changed, initialised as torchvision's ResNet and VGG do."""
    out = nn.Conv2d(in_channels or conv.in_channels, conv.out_channels,
                    kernel_size or conv.kernel_size, stride or conv.stride, conv.padding if padding is None else padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
    nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="relu")
    if out.bias is not None:
        nn.init.zeros_(out.bias)
    return out


def flatten_height(model: nn.Module) -> None:
    """Turn every k x k conv and pool into 1 x k, for (C, 1, L) inputs: each becomes a 1-D layer over L."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = new_conv(child, kernel_size=(1, child.kernel_size[1]), stride=(1, child.stride[1]),
                               padding=(0, child.padding[1]))
            elif isinstance(child, nn.MaxPool2d):
                new = nn.MaxPool2d((1, _pair(child.kernel_size)[1]), (1, _pair(child.stride)[1]),
                                   (0, _pair(child.padding)[1]), ceil_mode=child.ceil_mode)
            elif isinstance(child, nn.AvgPool2d):
                new = nn.AvgPool2d((1, _pair(child.kernel_size)[1]), (1, _pair(child.stride)[1]),
                                   (0, _pair(child.padding)[1]), ceil_mode=child.ceil_mode,
                                   count_include_pad=child.count_include_pad)
            else:
                continue
            setattr(parent, name, new)


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    """The notes' (W - F + 2P) / S + 1 as torch rounds it (down, or up in ceil mode)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:  # torch: the last window must start inside
        out -= 1
    return out


def next_sizes(layer: nn.Module, sizes: tuple[int, int]) -> tuple[int, int]:
    """(H, W) after `layer`; layers that keep the size (activations, norms, inception blocks) keep it."""
    conv = getattr(layer, "conv", layer)  # a conv block (conv -> norm -> act) sizes like its conv
    if isinstance(conv, nn.Conv2d):
        return tuple(output_size(s, k, st, p, d) for s, k, st, p, d in
                     zip(sizes, conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    if isinstance(layer, POOLS):
        dilation = _pair(getattr(layer, "dilation", 1))
        return tuple(output_size(s, k, st, p, d, layer.ceil_mode) for s, k, st, p, d in
                     zip(sizes, _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding), dilation))
    return sizes


def drop_pools_that_do_not_fit(parent: nn.Module, sizes: tuple[int, int],
                               names: Sequence[str] | None = None) -> tuple[int, int]:
    """Walk the layers `names` of `parent` (all its children) in order from a `sizes` input map; a
    pool that would shrink the map below 1 is dropped.

    Returns the map size after the last one. A conv that does not fit is refused with the sizes.
    """
    for name in names or [name for name, _ in parent.named_children()]:
        layer = getattr(parent, name)
        after = next_sizes(layer, sizes)
        if min(after) >= 1:
            sizes = after
        elif isinstance(layer, POOLS):
            setattr(parent, name, nn.Identity())
        else:
            raise UserError(f"layer {name} does not fit the {sizes[0]}x{sizes[1]} feature map (it would be "
                            f"{after[0]}x{after[1]}); give larger inputs or set model.small_input=true")
    return sizes


def refit_classifier(classifier: nn.Sequential, in_features: int, width: int, std: float | None = None) -> None:
    """New sizes for the Linear layers of a classifier: in_features -> width -> ... -> width -> classes.

    The activations and dropouts between them stay. std: normal init as torchvision's VGG (else torch's).
    """
    linears = [i for i, m in enumerate(classifier) if isinstance(m, nn.Linear)]
    for i in linears:
        new = nn.Linear(in_features if i == linears[0] else width,
                        classifier[i].out_features if i == linears[-1] else width)
        if std is not None:
            nn.init.normal_(new.weight, 0, std)
            nn.init.zeros_(new.bias)
        classifier[i] = new


def fit_classifier(model: nn.Module, pool_globally: bool, channels: int, pooled: int, fc_width: int | None,
                   std: float | None = None) -> None:
    """AlexNet's and VGG's head: an avgpool to pooled x pooled, then FC fc_width, fc_width, classes.

    pool_globally: a global average pool, and hidden FCs of 512 (4096 would be millions of
    parameters reading `channels` numbers) unless fc_width says otherwise.
    """
    width = fc_width or (512 if pool_globally else 4096)
    if pool_globally:
        model.avgpool = nn.AdaptiveAvgPool2d(1)
    if pool_globally or width != 4096:
        refit_classifier(model.classifier, channels * (1 if pool_globally else pooled * pooled), width, std)


def refuse_maxout(act: Activation, model_name: str) -> None:
    if act.name == "maxout":
        raise UserError(f"model.activation=maxout widens the layer before it, and model={model_name} takes its widths "
                        "from torchvision's builder: use maxout with model=mlp, cnn or lenet")


def swap_activation(model: nn.Module, act: Activation, model_name: str) -> None:
    """Put `act` wherever torchvision's builder put a ReLU module."""
    refuse_maxout(act, model_name)
    if act.name == "relu":
        return
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, act.module())


def swap_norm(model: nn.Module, kind: str) -> None:
    """Replace torchvision's BatchNorm2d layers: none -> Identity, layer/group -> GroupNorm."""
    if kind == "batch":
        return
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, norm_layer(kind, child.num_features, dims=2) or nn.Identity())


def fit_to_data(model: nn.Module, layout: str, name: str, act: Activation, norm: str | None = None,
                negative_slope: float = 0.01) -> nn.Module:
    """The last steps every torchvision-built model shares, once its stem and pools fit the data."""
    swap_activation(model, act, name)
    if norm is not None:
        swap_norm(model, norm)
    if layout != "image":  # the builder has made the kernels 1 x k (flatten_height) before fitting its pools
        model.register_forward_pre_hook(ToImage(layout))
    model.activation, model.negative_slope = act.name, negative_slope  # read by the initialisers
    return model
