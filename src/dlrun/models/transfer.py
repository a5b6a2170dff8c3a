"""Transfer learning: model.weights (start from saved or pretrained weights) and model.freeze.

model.weights takes a dlrun run directory (its checkpoints/best.pt, else last.pt), a dlrun
checkpoint, a torch.save'd state dict (name -> tensor, as torchvision publishes its weights), or
`imagenet` (torchvision's pretrained weights, for the models built from torchvision's builders).
Files are read by dlrun.checkpoint.load: weights_only=True, so no pickled code runs.

The classifier head is the model's last nn.Linear (in named_modules order): MLP's output layer,
CNN/LeNet's classifier.<last>, the RNNs' `head`, torchvision's `fc` or `classifier.6`. When the
weights were trained for another number of classes, the head keeps its fresh initialisation;
any other difference between the weights and the model is refused in one line.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import urllib.error
import urllib.parse
from typing import Any

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun import checkpoint

log = logging.getLogger("dlrun")

IMAGENET = "imagenet"
ACCEPTS = "a run directory, a .pt/.pth file, or imagenet"
FIX = "pass model.weights= a dlrun run directory or checkpoint, or a torch.save'd state dict"
# Keys of a model config that say nothing about its architecture (left out of the refusals' hints).
_NOT_ARCHITECTURE = ("weights", "freeze")


# --------------------------------------------------------------------------------- the head
def head_name(model: nn.Module) -> str | None:
    """The classifier head: the model's last nn.Linear in named_modules() order ("" if the model is one)."""
    name = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return name


def _under(name: str, prefix: str) -> bool:
    """Whether a dotted name lies under a prefix, on a dotted boundary: layer10.weight is not under layer1."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _key(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


# ------------------------------------------------------------------------------ model.weights
def load_weights(model: nn.Module, weights: str, node: Any = None) -> None:
    """Load model.weights into `model` (already initialised); the head is replaced if the class count differs.

    `node` is the run's model config, used to say which of its values differ from the ones the
    weights were trained with when they do not fit.
    """
    weights = str(weights).strip()
    trained_with = None
    if weights.lower() == IMAGENET:
        state, source = imagenet_state_dict(model)
    else:
        path = checkpoint.resolve(weights, option="model.weights", names=(checkpoint.BEST, checkpoint.LAST), accepts=ACCEPTS)
        loaded = checkpoint.load(path, state_dict_ok=True, fix=FIX)
        state, source = loaded["model"], str(path)
        config = loaded.get("config")
        trained_with = config.get("model") if isinstance(config, dict) else None
    load_state(model, state, source, node=node, trained_with=trained_with)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, node: Any = None,
               trained_with: dict[str, Any] | None = None) -> None:
    """Copy `state` into `model`: the head may differ in shape (it then keeps its init); nothing else may."""
    own = model.state_dict()
    state, prefix_note = _align_prefix(own, state)
    # Submodules the model dropped by setting them to None: torchvision's GoogLeNet and Inception
    # drop their auxiliary classifiers (aux1, aux2, AuxLogits) but their published weights have them.
    dropped = [k for k in state if k not in own and _removed(model, k)]
    state = {k: v for k, v in state.items() if k not in dropped}
    head = head_name(model)
    head_keys = set() if head is None else {_key(head, k) for k in model.get_submodule(head).state_dict()}
    wrong, missing, unexpected = checkpoint.compare(own, state)
    outside = [k for k in wrong if k not in head_keys]
    if outside or missing or unexpected:
        details = checkpoint.describe_mismatch(own, state, outside, missing, unexpected, source="weights")
        only_head = f"; only the classifier head '{head}' may differ" if head else ""
        fix = (f"use the same model and data overrides the weights were trained with"
               f"{_differences(trained_with, node)}")
        if trained_with is None and getattr(model, "torchvision_name", None):
            fix += ("; torchvision's weights fit its own stem only: 3-channel images large enough for "
                    "model.small_input=auto to keep it (or model.small_input=false)")
        raise UserError(f"model.weights: '{source}' does not fit this model ({details}){only_head}; {fix}")

    replaced = bool(set(wrong) & head_keys)
    line = f"weights: loaded {len(state) - (len(head_keys) if replaced else 0)} tensors from {source}{prefix_note}"
    if dropped:
        line += f", ignored {len(dropped)} of {_top_names(dropped)} (submodules this model leaves out)"
    if head is not None:
        weight = _key(head, "weight")
        if replaced:
            line += (f"; head '{head}' replaced ({state[weight].shape[0]} -> {own[weight].shape[0]} "
                     "outputs, fresh init)")
            state = {**state, **{k: own[k] for k in head_keys}}  # the head keeps its fresh initialisation
        else:
            line += f"; head '{head}' kept ({own[weight].shape[0]} outputs)"
    model.load_state_dict(state)
    log.info(line)


def _align_prefix(own: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The same weights under a wrapper's prefix: add it ('net.' + torchvision's keys) or strip it ('module.')."""
    if not state or any(k in own for k in state):
        return state, ""
    first_state, first_own = next(iter(state)), next(iter(own), "")
    candidates = [(o[: -len(first_state)], "") for o in own if o.endswith("." + first_state)]
    candidates += [("", k[: -len(first_own)]) for k in state if first_own and k.endswith("." + first_own)]
    for add, strip in candidates:
        if all(k.startswith(strip) for k in state):
            renamed = {add + k[len(strip):]: v for k, v in state.items()}
            if set(renamed) == set(own):
                note = f" (keys prefixed with '{add}')" if add else f" (prefix '{strip}' stripped from the keys)"
                return renamed, note
    return state, ""


def _removed(model: nn.Module, key: str) -> bool:
    """Whether `key` belongs to a submodule the model set to None (`self.aux1 = None`, before or after it was one)."""
    module = model
    for part in key.split(".")[:-1]:
        if part not in module._modules:
            return part in vars(module) and vars(module)[part] is None
        module = module._modules[part]
        if module is None:
            return True
    return False


def _top_names(keys: list[str]) -> str:
    return ", ".join(dict.fromkeys(k.split(".")[0] for k in keys))


def _differences(trained_with: dict[str, Any] | None, node: Any) -> str:
    """' (the weights were trained with model.hidden=[8]; this run has [16])', from a dlrun checkpoint's config."""
    if not isinstance(trained_with, dict) or node is None:
        return ""
    ours = dict(node)
    keys = [k for k in dict.fromkeys([*trained_with, *ours]) if k not in _NOT_ARCHITECTURE
            and trained_with.get(k) != ours.get(k)]
    if not keys:
        return " (the model config is the same: the data's input shape differs)"
    shown = ", ".join(f"model.{k}={_value(trained_with.get(k))}" for k in keys[:3])
    here = ", ".join(_value(ours.get(k)) for k in keys[:3])
    return f" (they were trained with {shown}; this run has {here})"


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(str, value)) + "]"
    return "null" if value is None else str(value)


# ---------------------------------------------------------------------- model.weights=imagenet
def imagenet_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's DEFAULT ImageNet weights for model.torchvision_name, through torch.hub's cache."""
    name = getattr(model, "torchvision_name", None)
    if not name:
        raise UserError(f"model.weights=imagenet: {type(model).__name__} has no ImageNet weights; the models built "
                        "from torchvision's builders have them (model=alexnet, vgg, googlenet, and resnet at an "
                        "ImageNet depth: 18|34|50|101|152); or pass model.weights=PATH (a dlrun run directory or "
                        "checkpoint, or a state dict)")
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise UserError(f"model.weights=imagenet: torchvision has no pretrained weights for '{name}'; pass "
                        "model.weights=PATH instead") from None
    url = weights.url
    hub = torch.hub.get_dir()
    cached = os.path.join(hub, "checkpoints", os.path.basename(urllib.parse.urlparse(url).path))
    # What weights.get_state_dict(progress=False) does (torchvision calls this function), called
    # through torch.hub here so that it is looked up at call time, with weights_only=True (no
    # pickled code runs) and the hash check of the file name's sha256 prefix on download.
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True,
                                                   check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"model.weights=imagenet: could not download {name}'s ImageNet weights ({reason}); it needs "
                        f"the internet once, to download {url} into the torch hub cache {os.path.dirname(cached)} "
                        f"(read offline from there after that); or download that file elsewhere and pass "
                        f"model.weights=/path/to/{os.path.basename(cached)}") from None
    except OSError as exc:  # a socket error that is no URLError, or the cache itself: read-only, disk full
        raise UserError(f"model.weights=imagenet: could not get {name}'s ImageNet weights into the torch hub cache "
                        f"{hub} ({exc.strerror or exc}); it needs the internet and a writable cache (set TORCH_HOME), "
                        f"or download {url} elsewhere and pass model.weights=/path/to/{os.path.basename(cached)}") \
            from None
    except Exception as exc:  # a corrupt cached file or a download that fails its hash
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.weights=imagenet: torchvision's {name} weights could not be read or failed their "
                        f"hash check ({type(exc).__name__}: {reason}); delete {cached} if it is there and run again "
                        "to download it anew") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.weights=imagenet: {cached} is not a state dict; delete it and run again")
    return state, f"torchvision {name} ImageNet weights ({weights})"


# ------------------------------------------------------------------------------- model.freeze
def freeze(model: nn.Module, spec: Any) -> None:
    """model.freeze: none | backbone (all but the head) | prefixes of parameter names (a list, or comma-separated).

    Frozen parameters get requires_grad=False; the optimizer is given only the trainable ones.
    """
    if spec is None or spec is False or spec == [] or str(spec).strip().lower() in ("none", ""):
        return
    names = [name for name, _ in model.named_parameters()]
    if isinstance(spec, str) and spec.strip().lower() == "backbone":
        head = head_name(model)
        if head is None:
            raise UserError(f"model.freeze=backbone: {type(model).__name__} has no nn.Linear head to leave trainable; "
                            f"freeze by prefix instead, model.freeze=[...] of its modules: {_children(model)}")
        if head == "":
            return  # the model is its head: nothing else to freeze
        frozen_by = lambda name: not _under(name, head)  # noqa: E731
        described = f"backbone (all but the head '{head}')"
    else:
        items = spec.split(",") if isinstance(spec, str) else spec if isinstance(spec, (list, tuple)) else [spec]
        prefixes = [str(p).strip() for p in items if str(p).strip()]
        unknown = [p for p in prefixes if not any(_under(n, p) for n in names)]
        if unknown:
            parts = names[0].split(".")[:-1] if names else []
            example = " or ".join(".".join(parts[:i + 1]) for i in range(min(2, len(parts)))) or names[0]
            raise UserError(f"model.freeze: {', '.join(repr(p) for p in unknown)} matches no parameter of "
                            f"{type(model).__name__}; give prefixes of its parameter names made of whole dotted "
                            f"parts (e.g. {example}), or backbone; its modules: {_children(model)}")
        frozen_by = lambda name: any(_under(name, p) for p in prefixes)  # noqa: E731
        described = "[" + ",".join(prefixes) + "]"

    total = frozen = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if frozen_by(name):
            param.requires_grad_(False)
            frozen += param.numel()
    if frozen == total:
        raise UserError(f"model.freeze={described} freezes every parameter, leaving nothing to train; freeze less "
                        f"(model.freeze=backbone keeps the head trainable)")
    norms = keep_frozen_norms_in_eval(model, frozen_by)
    log.info(f"freeze {described}: {frozen:,} of {total:,} parameters frozen, {total - frozen:,} trainable"
             + (f"; {norms} frozen norm layer(s) kept in eval mode (running statistics fixed)" if norms else ""))


def _children(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none)"


# BatchNorm in a frozen part. A frozen layer should compute what it computed when the weights
# were saved; a BatchNorm in train mode would instead normalise with each batch's statistics and
# keep overwriting its running mean and variance with the new data's, changing the "frozen"
# features under the head (and, with small fine-tuning batches, making them noisy). So, as
# torchvision's fine-tuning recipes (FrozenBatchNorm2d) and timm's freeze() do, a norm layer
# whose parameters are all frozen (or, without affine parameters, that lies in the frozen part)
# stays in eval mode: it normalises with its stored statistics and never updates them. Its
# `train` is pinned, so the Trainer's model.train() (every epoch, and after each validation)
# leaves it in eval mode; the state dict is unchanged (no module is swapped for another class),
# so the checkpoints still load into the same model unfrozen, and resume works.
def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def keep_frozen_norms_in_eval(model: nn.Module, frozen_by) -> int:
    """Pin the frozen norm layers that track running statistics to eval mode; returns how many."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._NormBase) or not module.track_running_stats:
            continue
        params = [_key(name, p) for p, _ in module.named_parameters(recurse=False)]
        if all(frozen_by(p) for p in params) if params else frozen_by(_key(name, "running_mean")):
            module.train = functools.partial(_stay_in_eval, module)
            module.eval()
            count += 1
    return count
