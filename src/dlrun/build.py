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


def apply_reg_dropout(node: DictConfig, cfg: DictConfig, takes: Any = None) -> None:
    """reg=dropout sets the model's dropout probability (of dropping, PyTorch's convention): its
    model.dropout, or the `dropout` argument of a class whose config does not name one."""
    p = OmegaConf.select(cfg, "reg.dropout")
    if p is None:
        return
    if "dropout" not in node and not (takes is not None and takes("dropout")):
        raise UserError(f"reg=dropout: this model has no dropout setting (model._target_={node.get('_target_')}); "
                        "use a model with model.dropout (mlp, cnn, alexnet, vgg, googlenet, rnn, lstm, gru), "
                        "or give your class a dropout argument")
    with open_dict(node):
        node.dropout = p


def build_model(cfg: DictConfig, data: Any) -> nn.Module:
    """cfg.model shaped to the data, initialised as cfg.init says, then model.weights and model.freeze applied."""
    node, options = split_model_node(cfg.model)
    shape = {"input_shape": data.input_shape, "num_outputs": data.num_outputs, "layout": data.layout}
    if str(node.get("_target_", "")).startswith("dlrun."):  # the zoo: every class takes all of it
        apply_reg_dropout(node, cfg)
        model = build(node, **shape)
    else:
        takes = accepted(node)
        apply_reg_dropout(node, cfg, takes)
        model = build(user_model_node(node, takes), **{k: v for k, v in shape.items() if takes(k)})
    initialize(model, **OmegaConf.to_container(cfg.init, resolve=True))
    from dlrun.models.transfer import freeze, load_weights

    if options["weights"] is not None:  # the models layer takes plain values, not OmegaConf's
        load_weights(model, str(options["weights"]), OmegaConf.to_container(cfg.model, resolve=True))
    freeze(model, OmegaConf.to_container(options["freeze"], resolve=True)
           if OmegaConf.is_config(options["freeze"]) else options["freeze"])
    return model


# ------------------------------------------------------------------------ a user's own model class
def accepted(node: DictConfig) -> Any:
    """For model._target_ naming a user's class (or function): whether it takes a keyword argument."""
    import inspect

    from hydra.utils import get_object

    target = node.get("_target_")
    try:
        signature = inspect.signature(get_object(str(target)))
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise UserError(f"model._target_={target}: cannot be imported ({exc}); put its package on PYTHONPATH "
                        "or install it") from None
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return lambda name: True
    names = {name for name, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names.__contains__


def zoo_keys() -> set[str]:
    """The keys of dlrun's own model configs (configs/model/*.yaml)."""
    import yaml

    from dlrun.paths import CONFIG_DIR
    from pathlib import Path

    keys: set[str] = set()
    for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"):
        keys.update(k for k in (yaml.safe_load(path.read_text()) or {}) if not k.startswith("_"))
    return keys


def user_model_node(node: DictConfig, takes: Any) -> DictConfig:
    """The model config a user's class is called with: the keys of the zoo's config it replaced
    (model._target_=mypkg.Tiny over model=mlp leaves hidden, activation, ...) that it does not take
    are left out; any other key it does not take is a mistake, said in one line."""
    import logging

    node = node.copy()
    extra = [k for k in node if not str(k).startswith("_") and not takes(k)]
    zoo = zoo_keys()
    wrong = [k for k in extra if k not in zoo]
    if wrong:
        raise UserError(f"model.{wrong[0]}: {node.get('_target_')} takes no argument '{wrong[0]}'; drop it, or "
                        f"give the class that argument")
    if extra:
        logging.getLogger("dlrun").info(f"model: {node.get('_target_')} takes none of {', '.join(map(str, extra))} "
                                        "(the zoo model's config it replaced): left out")
    with open_dict(node):
        for key in extra:
            del node[key]
    return node
