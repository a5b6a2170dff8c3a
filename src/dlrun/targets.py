"""A saved config is data: the `_target_`s dlrun will instantiate when it rebuilds one.

`dlrun eval` and `dlrun ensemble` rebuild the data and the model from the config saved in a
checkpoint, a file that may come from anyone. Hydra's instantiate calls whatever a `_target_`
names, and ordinary functions chain into running code (torch.load(weights_only=False) of an
io.BytesIO of codecs.encode'd pickle bytes). So a saved config may name only what dlrun's own
config tree produces (every `_target_` in configs/, the classes dlrun has schemas for) and the
torch optimizers and schedules dlrun builds, plus the targets the user allows for classes of
their own in the environment variable DLRUN_ALLOW_TARGETS: comma-separated dotted names, a
trailing `.*` for a whole package (`mypkg.Tiny,otherpkg.*`). An environment variable, not a
config key: a key could be written into the very checkpoint it is meant to judge.

What a user types on `dlrun train`'s command line (`model._target_=mypkg.Tiny`) is their own
code and is not checked here; the check applies where a config comes from a file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterator

from dlrun.errors import UserError

ALLOW_ENV = "DLRUN_ALLOW_TARGETS"


def _config_targets(tree: Any) -> Iterator[tuple[str, Any]]:
    """(where, target) for every `_target_` in a plain tree of dicts and lists, at any depth."""
    stack = [("", tree)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            if "_target_" in node:
                yield where, node["_target_"]
            stack += [(f"{where}.{k}" if where else str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(node)]


def _strings(tree: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(tree, str):
        yield where, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _strings(v, f"{where}[{i}]")


@functools.cache
def shipped() -> frozenset[str]:
    """Every target dlrun's config tree can produce, read from configs/ and the schemas, and the
    optimizers and schedules of torch.optim (under both names a config may use for them)."""
    import torch
    import yaml
    from torch.optim import lr_scheduler

    from dlrun.paths import CONFIG_DIR
    from dlrun.schema import TARGETS

    found = set(TARGETS)
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        if path.relative_to(CONFIG_DIR).parts[0] == "hydra":  # Hydra's own launcher and sweeper settings
            continue
        found.update(str(t) for _, t in _config_targets(yaml.safe_load(path.read_text())))
    bases = ((torch.optim, torch.optim.Optimizer),
             (lr_scheduler, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)))
    abstract = (torch.optim.Optimizer, lr_scheduler.LRScheduler)
    for module, base in bases:
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, base) and obj not in abstract and not name.startswith("_"):
                found.update({f"{module.__name__}.{name}", f"{obj.__module__}.{obj.__qualname__}"})
    return frozenset(found)


def user_allowed() -> list[str]:
    """DLRUN_ALLOW_TARGETS, split: dotted names and `package.*` prefixes."""
    return [name.strip() for name in os.environ.get(ALLOW_ENV, "").split(",") if name.strip()]


def allowed(target: str) -> bool:
    if target in shipped():
        return True
    for name in user_allowed():
        if name == target or (name.endswith(".*") and target.startswith(name[:-1])):
            return True
    return False


def refuse_foreign(cfg: Any, source: str) -> None:
    """Refuse, before anything is called or imported, a config (a DictConfig or a plain dict) that
    names a target outside the allowed ones, at any depth. `source` names the file it came from."""
    from omegaconf import OmegaConf

    # Resolved, as instantiate resolves it: ${oc.decode:...} can make a node with a _target_.
    tree = OmegaConf.to_container(cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg), resolve=True)
    for where, target in sorted(_config_targets(tree)):
        key = f"{where}._target_" if where else "_target_"
        if not isinstance(target, str):
            raise UserError(f"{source}: its config's {key} is a {type(target).__name__}, not a dotted name; "
                            "refused, nothing in it was run")
        if not allowed(target):
            raise UserError(f"{source}: its config's {key}={target} is not a class dlrun's configs build (nor a "
                            f"torch optimizer or schedule), so it was refused and nothing was run; if it is a "
                            f"class of your own that you trust, allow it with {ALLOW_ENV}={target}")
    for where, text in _strings(tree):
        # An escaped interpolation survives resolution as text and becomes a live one when Hydra
        # recreates the config: a saved config (resolved when written) never holds one.
        if "${" in text:
            raise UserError(f"{source}: its config's {where} holds an interpolation ('${{...}}') after it was "
                            "resolved, which a config dlrun saved never does; refused, nothing in it was run")
