"""Weight initialisation schemes (init=default|xavier|he), applied to every Linear and Conv layer.

Xavier uses Glorot's gain of 1; He takes its gain from the model's activation
(torch.nn.init.calculate_gain), so a leaky ReLU's slope is included. Conv fan-in is
in_channels x kernel size, as torch computes it.
"""

from __future__ import annotations

from torch import nn

from dlrun.errors import UserError

SCHEMES = ("default", "xavier_uniform", "xavier_normal", "he_normal", "he_uniform")
# Activations torch has a gain for; the rest are ReLU-like (gelu, silu, elu, softplus, maxout) and take ReLU's.
_GAIN_NAMES = {"relu", "leaky_relu", "tanh", "sigmoid", "selu", "linear"}
_PRELU_SLOPE = 0.25  # nn.PReLU's initial slope; He et al. 2015 derive their init with it
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def initialize(model: nn.Module, scheme: str = "default", bias: float | None = None, mode: str = "fan_in") -> None:
    if scheme not in SCHEMES:
        raise UserError(f"init.scheme={scheme!r} is unknown; choose one of {', '.join(SCHEMES)}")
    if mode not in ("fan_in", "fan_out"):
        raise UserError(f"init.mode={mode!r} must be fan_in or fan_out")
    activation = getattr(model, "activation", "relu")
    slope = 0.0
    if activation == "prelu":
        activation, slope = "leaky_relu", _PRELU_SLOPE
    elif activation == "leaky_relu":
        slope = float(getattr(model, "negative_slope", 0.01))
    nonlinearity = activation if activation in _GAIN_NAMES else "relu"
    for module in model.modules():
        if not isinstance(module, _WEIGHTED):
            continue
        weight = module.weight
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(weight)  # Glorot: gain 1, Var = 2 / (fan_in + fan_out)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(weight)
        elif scheme == "he_normal":
            nn.init.kaiming_normal_(weight, a=slope, mode=mode, nonlinearity=nonlinearity)
        elif scheme == "he_uniform":
            nn.init.kaiming_uniform_(weight, a=slope, mode=mode, nonlinearity=nonlinearity)
        if bias is not None and module.bias is not None:
            nn.init.constant_(module.bias, float(bias))
