"""From the composed config to objects: the data and the model, as `dlrun train` and `dlrun summary` build them."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from dlrun.errors import UserError
from dlrun.init import initialize

# Keys of every model config that dlrun reads itself instead of passing to the model's constructor.
TRANSFER_KEYS = ("weights", "freeze")


def build(node: DictConfig, **kwargs: Any) -> Any:
    """instantiate(node), letting our own UserError through instead of Hydra's wrapper around it."""
    try:
        return instantiate(node, **kwargs, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise


def split_model_node(node: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """cfg.model without the keys dlrun reads itself (TRANSFER_KEYS), and those keys' values."""
    node = node.copy()
    with open_dict(node):
        options = {key: node.pop(key, None) for key in TRANSFER_KEYS}
    return node, options


def apply_reg_dropout(node: DictConfig, cfg: DictConfig) -> None:
    """reg=dropout sets the model's dropout probability (of dropping, PyTorch's convention)."""
    p = OmegaConf.select(cfg, "reg.dropout")
    if p is None:
        return
    if "dropout" not in node:
        raise UserError(f"reg=dropout: this model has no dropout setting (model._target_={node.get('_target_')}); "
                        "use a model with model.dropout (mlp, cnn, alexnet, vgg, googlenet, rnn, lstm, gru)")
    with open_dict(node):
        node.dropout = p


def build_model(cfg: DictConfig, data: Any) -> nn.Module:
    """cfg.model shaped to the data, initialised as cfg.init says, then model.weights and model.freeze applied."""
    node, options = split_model_node(cfg.model)
    apply_reg_dropout(node, cfg)
    model = build(node, input_shape=data.input_shape, num_outputs=data.num_outputs, layout=data.layout)
    initialize(model, **OmegaConf.to_container(cfg.init, resolve=True))
    from dlrun.models.transfer import freeze, load_weights

    if options["weights"] is not None:  # the models layer takes plain values, not OmegaConf's
        load_weights(model, str(options["weights"]), OmegaConf.to_container(cfg.model, resolve=True))
    freeze(model, OmegaConf.to_container(options["freeze"], resolve=True)
           if OmegaConf.is_config(options["freeze"]) else options["freeze"])
    return model
