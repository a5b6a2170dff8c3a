"""Weight initialisation schemes (init=...), applied to every Linear and Conv layer and to recurrent cells.

Each scheme fills a weight of shape (out, in, *kernel) with the variance its paper derives. Fans
are torch's (_calculate_fan_in_and_fan_out): a conv's fan-in is in_channels x kernel size, its
fan-out out_channels x kernel size, as the notes say ("Din is filter_size^2 * input_channels").

| scheme         | W ~                                  | source                                      |
|----------------|--------------------------------------|---------------------------------------------|
| default        | left as the layer made it            | PyTorch (Linear/Conv: U(+-1/sqrt(fan_in)))  |
| small_normal   | N(0, 0.01^2)                         | the notes' "first idea"                     |
| large_normal   | N(0, 1)                              | the notes' saturation demo                  |
| xavier_uniform | U(+-sqrt(6 / (fan_in + fan_out)))    | Glorot & Bengio 2010, Var = 2/(in + out)    |
| xavier_normal  | N(0, 2 / (fan_in + fan_out))         | Glorot & Bengio 2010                        |
| xavier_fanin   | N(0, 1 / fan_in)                     | the notes' "Xavier": randn / sqrt(fan_in)   |
| he_normal      | N(0, gain^2 / fan)                   | He et al. 2015; gain^2 = 2 / (1 + slope^2)  |
| he_uniform     | U(+-gain * sqrt(3 / fan))            | He et al. 2015                              |
| lecun_normal   | N(0, 1 / fan_in)                     | LeCun et al. 1998, Klambauer et al. 2017    |
| orthogonal     | gain x a (semi-)orthogonal matrix    | Saxe et al. 2013                            |

He's gain comes from the model's activation (torch.nn.init.calculate_gain), the leaky slope
included (model.negative_slope; PReLU's initial 0.25); activations torch has no gain for (gelu,
silu, elu, softplus, maxout) take ReLU's. `fan` is fan_in or fan_out (init.mode).

Recurrent cells (nn.RNN, nn.LSTM, nn.GRU): the scheme fills the input weights weight_ih_l*, and
init.recurrent (null: the same scheme) the hidden-to-hidden weights weight_hh_l*. Each gate's
matrix is filled on its own (an LSTM's weight_hh is 4 stacked hidden x hidden matrices), so its
fan-out is hidden_size and an orthogonal weight_hh is orthogonal gate by gate.

Biases: init.bias=VALUE sets every bias (null leaves them). In a recurrent cell b_ih and b_hh are
added, so b_ih gets VALUE and b_hh 0; an LSTM's forget-gate quarter keeps what the model set
(model.forget_bias).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from dlrun.errors import UserError

SCHEMES = ("default", "small_normal", "large_normal", "xavier_uniform", "xavier_normal", "xavier_fanin",
           "he_normal", "he_uniform", "lecun_normal", "orthogonal")
ALIASES = {"xavier": "xavier_uniform", "he": "he_normal"}  # the configs init=xavier and init=he
FIXED_STD = {"small_normal": 0.01, "large_normal": 1.0}
OPTIONS = ("scheme", "bias", "mode", "recurrent", "gain")
# Activations torch has a gain for; the rest are ReLU-like (gelu, silu, elu, softplus, maxout) and take ReLU's.
_GAIN_NAMES = {"relu", "leaky_relu", "tanh", "sigmoid", "selu", "linear"}
_PRELU_SLOPE = 0.25  # nn.PReLU's initial slope; He et al. 2015 derive their init with it
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}  # matrices stacked in each weight_ih / weight_hh


def canonical(scheme: object, key: str = "init.scheme") -> str:
    """A scheme name as given (xavier and he are aliases), checked; UserError names the choices."""
    name = ALIASES.get(scheme, scheme) if isinstance(scheme, str) else scheme
    if name not in SCHEMES:
        raise UserError(f"{key}={scheme!r} is unknown; choose one of {', '.join(SCHEMES)} (or xavier, he)")
    return name


def gain_of(activation: str, negative_slope: float = 0.01) -> tuple[str, float]:
    """(nonlinearity, slope) for torch.nn.init's kaiming_*: leaky slope included, PReLU at its 0.25."""
    slope = 0.0
    if activation == "prelu":
        activation, slope = "leaky_relu", _PRELU_SLOPE
    elif activation == "leaky_relu":
        slope = float(negative_slope)
    return (activation if activation in _GAIN_NAMES else "relu"), slope


@torch.no_grad()
def init_weight(weight: torch.Tensor, scheme: str, nonlinearity: str = "relu", slope: float = 0.0,
                mode: str = "fan_in", gain: float = 1.0, generator: torch.Generator | None = None) -> None:
    """Fill one weight (out, in, *kernel) in place with `scheme` (a canonical name).

    "default" here is what nn.Linear and nn.Conv do (kaiming_uniform with a = sqrt(5):
    U(+-1/sqrt(fan_in)), Var = 1 / (3 fan_in)); `initialize` leaves such layers alone instead.
    """
    if scheme in FIXED_STD:
        nn.init.normal_(weight, 0.0, FIXED_STD[scheme], generator=generator)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, generator=generator)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, generator=generator)
    elif scheme in ("xavier_fanin", "lecun_normal"):
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        nn.init.normal_(weight, 0.0, 1.0 / math.sqrt(fan_in), generator=generator)
    elif scheme == "he_normal":
        nn.init.kaiming_normal_(weight, a=slope, mode=mode, nonlinearity=nonlinearity, generator=generator)
    elif scheme == "he_uniform":
        nn.init.kaiming_uniform_(weight, a=slope, mode=mode, nonlinearity=nonlinearity, generator=generator)
    elif scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain, generator=generator)
    elif scheme == "default":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    else:
        raise UserError(f"init.scheme={scheme!r} is unknown; choose one of {', '.join(SCHEMES)}")


def _number(value: object, key: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or (positive and value <= 0):
        raise UserError(f"{key}={value!r} must be a {'number > 0' if positive else 'number'}")
    return float(value)


def initialize(model: nn.Module, scheme: str = "default", bias: float | None = None, mode: str = "fan_in",
               recurrent: str | None = None, gain: float = 1.0, **unknown: object) -> None:
    """Apply cfg.init to `model` in place. Every value is checked before any weight changes."""
    if unknown:
        key = next(iter(unknown))
        raise UserError(f"init.{key} is not an init option; the options are {', '.join(OPTIONS)}")
    scheme = canonical(scheme)
    hidden_scheme = scheme if recurrent is None else canonical(recurrent, "init.recurrent")
    if mode not in ("fan_in", "fan_out"):
        raise UserError(f"init.mode={mode!r} must be fan_in or fan_out")
    if bias is not None:
        bias = _number(bias, "init.bias")
    gain = _number(gain, "init.gain", positive=True)
    nonlinearity, slope = gain_of(getattr(model, "activation", "relu"), getattr(model, "negative_slope", 0.01))
    options = {"nonlinearity": nonlinearity, "slope": slope, "mode": mode, "gain": gain}
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            if scheme != "default":
                init_weight(module.weight, scheme, **options)
            if bias is not None and module.bias is not None:
                nn.init.constant_(module.bias, bias)
        elif isinstance(module, nn.RNNBase):
            _init_recurrent(module, scheme, hidden_scheme, bias, options)


@torch.no_grad()
def _init_recurrent(cell: nn.RNNBase, scheme: str, hidden_scheme: str, bias: float | None, options: dict) -> None:
    gates = _GATES.get(type(cell), 1)
    hidden = cell.hidden_size
    for name, param in cell.named_parameters():
        if name.startswith("weight_"):
            chosen = hidden_scheme if name.startswith("weight_hh") else scheme
            if chosen != "default":
                blocks = param.chunk(gates, dim=0) if name.startswith(("weight_ih", "weight_hh")) else (param,)
                for block in blocks:  # views: each gate's matrix, filled in place
                    init_weight(block, chosen, **options)
        elif name.startswith("bias_") and bias is not None:
            forget = param[hidden:2 * hidden].clone() if isinstance(cell, nn.LSTM) else None
            param.fill_(bias if name.startswith("bias_ih") else 0.0)
            if forget is not None:
                param[hidden:2 * hidden] = forget  # model.forget_bias's quarter (gate order i, f, g, o)
