"""Building blocks shared by the models: activations by name, fully connected stacks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        from dlrun.errors import UserError

        raise UserError(f"model.activation={name!r} is unknown; choose one of {', '.join(ACTIVATIONS)}") from None


def fully_connected(width: int, hidden: Sequence[int], num_outputs: int, activation_name: str,
                    dropout: float = 0.0) -> list[nn.Module]:
    """[Linear -> activation -> dropout?] for each hidden width, then the output Linear."""
    layers: list[nn.Module] = []
    for units in hidden:
        layers += [nn.Linear(width, int(units)), activation(activation_name)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(units)
    return layers + [nn.Linear(width, num_outputs)]
