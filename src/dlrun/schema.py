"""Structured-config schemas: every group's keys, their types and the values they allow.

`validate(cfg)` runs before any data is read. Each group's node is merged into its schema (an
OmegaConf structured config, so OmegaConf does the type conversion), then every field's range,
choices and path are checked. A wrong type, an unknown key, a value out of range or a missing file
ends in one line that names the key, the value and what is allowed:

    optim.lr=0.0 must be a number > 0
    model.hiden: unknown key for dlrun.models.mlp.MLP; its keys: hidden, activation, ...

A group with a `_target_` has one schema per target class (SGD's keys are not Adam's). A target
dlrun has no schema for (a user's own class in a new YAML file) gets its keys passed through
unchecked, as Hydra would; its constructor is the judge.
"""

import dataclasses
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from dlrun.errors import UserError

# ------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class Rule:
    """What a field allows beyond its type. Floats must also be finite (nan and inf never are settings)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple = ()          # the value (as text) must be one of these
    also: tuple = ()             # words allowed besides the type (auto, imagenet, ...)
    path: bool = False           # a file or directory that must exist (the `also` words excepted)
    kind: type | None = None     # for an Any field: the type of the value, or of each element with `many`
    many: bool = False           # a value, or a list with one per layer
    nonempty: bool = False       # a list that must have at least one element
    length: int | None = None    # a list of exactly this many elements
    hint: str = ""               # said after what is allowed, e.g. "(0.9 is the notes' usual value)"


def setting(default: Any = MISSING, **rule: Any) -> Any:
    """A schema field: its default and its Rule."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": Rule(**rule)})
    return field(default=default, metadata={"rule": Rule(**rule)})


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
          str: ("a name", "names")}


def _strip_optional(kind: Any) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return kind, False


def describe(kind: Any, rule: Rule) -> str:
    """What a field allows, in words: "a number in [0, 1)", "an integer >= 1 or null", ..."""
    kind, optional = _strip_optional(kind)
    if dataclasses.is_dataclass(kind):
        keys = ", ".join(f.name for f in dataclasses.fields(kind))
        return f"a group of settings ({keys})" + (" or null" if optional else "")
    element, plural = kind, False
    if typing.get_origin(kind) is list:
        element, plural = typing.get_args(kind)[0], True
    elif kind is Any and rule.kind is not None:
        element = rule.kind
    singular, several = _NOUNS.get(element, ("a value", "values"))
    if rule.choices:
        text = "one of " + ", ".join(map(_word, rule.choices))
    else:
        text = f"a list of {several}" if plural else singular
        low = f"[{rule.ge:g}" if rule.ge is not None else f"({rule.gt:g}" if rule.gt is not None else None
        high = f"{rule.le:g}]" if rule.le is not None else f"{rule.lt:g})" if rule.lt is not None else None
        if low and high:
            text += f" in {low}, {high}"
        elif low:
            text += f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
        elif high:
            text += f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    if rule.path:
        text = rule.hint or "an existing file"
        rule = dataclasses.replace(rule, hint="")
    if rule.nonempty:
        text = text.replace("a list of", "a non-empty list of")
    if rule.length:
        text = text.replace("a list of", f"a list of {rule.length}")
    if rule.many:
        text += ", or a list with one per layer"
    words = [*rule.also, "null"] if optional else list(rule.also)
    if words:
        text = f"{', '.join(words)} or {text}" if rule.also else f"{text} or null"
    return text + (f" {rule.hint}" if rule.hint else "")


def _word(value: Any) -> str:
    """A value as a user types it on the command line (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fits(value: Any, kind: Any, rule: Rule) -> bool:
    """Whether one (converted) value satisfies the rule."""
    if rule.also and str(value) in map(str, rule.also):
        return True
    if kind is Any and rule.kind is not None:
        if rule.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return False
        if rule.kind in (str, bool, int) and (type(value) is not rule.kind):
            return False
    if rule.choices and str(value) not in map(str, rule.choices):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return False
        if ((rule.ge is not None and value < rule.ge) or (rule.gt is not None and value <= rule.gt)
                or (rule.le is not None and value > rule.le) or (rule.lt is not None and value >= rule.lt)):
            return False
    if rule.path and not os.path.exists(os.path.expanduser(str(value))):  # False for a name too long, too
        return False
    return True


def _shown(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_node(node: Any, schema: type, prefix: str, owner: str) -> None:
    """Merge node (a dict or DictConfig) into `schema` and check every field; UserError on the first problem."""
    if not isinstance(node, (dict, DictConfig)):
        raise UserError(f"{prefix.rstrip('.')}={_shown(node)!r} must be a group of settings ({owner})")
    given = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    kinds = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in given:
        if key not in fields:
            raise UserError(f"{prefix}{key}: unknown key for {owner}; its keys: {', '.join(fields)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), given)
    except (ValidationError, ConfigKeyError) as exc:
        name = str(exc.full_key).split(".")[0].split("[")[0]
        raise UserError(f"{prefix}{name}={_shown(given.get(name))!r} must be "
                        f"{describe(kinds[name], fields[name].metadata.get('rule', Rule()))}") from None
    for name in given:  # the converted value replaces what was given (lr=1 -> 1.0, "1e-3" -> 0.001)
        if OmegaConf.is_missing(merged, name):
            continue
        converted = _shown(merged[name])
        if isinstance(node, DictConfig) and not isinstance(converted, dict) and (
                converted != given[name] or type(converted) is not type(given[name])):
            node[name] = converted
    for name, f in fields.items():
        rule, kind = f.metadata.get("rule", Rule()), kinds[name]
        if OmegaConf.is_missing(merged, name):
            raise UserError(f"{prefix}{name} is not set; pass {prefix}{name}=... ({describe(kind, rule)})")
        value = merged[name]
        if dataclasses.is_dataclass(_strip_optional(kind)[0]):
            if value is not None:
                check_node(node[name] if name in given else value, _strip_optional(kind)[0], f"{prefix}{name}.", owner)
            continue
        if value is None:
            continue
        values = _shown(value) if isinstance(_shown(value), list) and (rule.many or typing.get_origin(
            _strip_optional(kind)[0]) is list) else [_shown(value)]
        element = _strip_optional(kind)[0]
        element = typing.get_args(element)[0] if typing.get_origin(element) is list else element
        shown = given.get(name, _shown(value))
        if rule.path and all(_fits(v, element, dataclasses.replace(rule, path=False)) for v in values):
            if not all(_fits(v, element, rule) for v in values):
                raise UserError(f"{prefix}{name}={shown!r}: no such file or directory; "
                                f"{prefix}{name} takes {describe(kind, rule)}")
        if (not all(_fits(v, element, rule) for v in values) or (rule.nonempty and values == [])
                or (rule.length is not None and len(values) != rule.length)):
            raise UserError(f"{prefix}{name}={shown!r} must be {describe(kind, rule)}")


# ------------------------------------------------------------------------------------ data

BATCH = dict(ge=1)
FRACTION = dict(ge=0, lt=1)  # a share of something, or a probability of dropping
SEED = dict(ge=0, le=2**32 - 1)  # what numpy's and torch's generators all take


PREPROCESS = ("none", "mean_image", "channel_mean", "channel_standardize", "pca_whiten")


@dataclass
class Batched:
    """Keys every dataset has."""

    _target_: str = MISSING
    batch_size: int = setting(64, **BATCH)
    eval_batch_size: int = setting(1024, **BATCH)
    preprocess: str = setting("channel_standardize", choices=PREPROCESS)
    on_device: Any = setting("auto", choices=("auto", True, False))


@dataclass
class DigitsData(Batched):
    val_fraction: float = setting(0.1, **FRACTION)
    test_fraction: float = setting(0.2, gt=0, lt=1)
    split_seed: int = setting(0, **SEED)


@dataclass
class ArrayData(Batched):
    path: str = setting(path=True, hint="an .npz file with x_train, y_train, x_test, y_test")
    layout: str = setting("auto", choices=("auto", "features", "signal", "image", "sequence"))
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class VisionData(Batched):
    root: str = "~/.cache/dlrun/data"
    download: bool = False
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class ImageFolder(Batched):
    root: str = setting(path=True, hint="a folder with train/ and test/ (and maybe val/), one subfolder per class")
    image_size: int = setting(32, ge=1, hint="(images are resized to image_size x image_size)")
    grayscale: bool = False
    workers: int = setting(2, ge=0)
    val_fraction: float = setting(0.1, **FRACTION)
    split_seed: int = setting(0, **SEED)


@dataclass
class Generated(Batched):
    """Sequence tasks generated from their own seed (no files)."""

    batch_size: int = setting(16, **BATCH)  # small batches: more steps for the same samples on a CPU
    eval_batch_size: int = setting(1000, **BATCH)
    preprocess: str = setting("none", choices=PREPROCESS)
    train_samples: int = setting(5000, ge=1)
    val_samples: int = setting(1000, ge=1)
    test_samples: int = setting(2000, ge=1)
    seed: int = setting(0, **SEED)


@dataclass
class AddingData(Generated):
    seq_len: int = setting(30, ge=2)


@dataclass
class CopyData(Generated):
    length: int = setting(5, ge=1)
    delay: int = setting(10, ge=0)


@dataclass
class Augment:
    crop_padding: int = setting(0, ge=0)
    flip: bool = False
    cutout: int = setting(0, ge=0)
    jitter: float = setting(0.0, ge=0, lt=1)
    mixup: float = setting(0.0, ge=0, hint="(Beta's alpha; 0: off)")
    cutmix: float = setting(0.0, ge=0, hint="(Beta's alpha; 0: off)")


@dataclass
class Eval:
    tta: str = setting("none", choices=("none", "flip"))


# ------------------------------------------------------------------------------------ models

ACTIVATIONS = ("relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "softplus", "silu", "tanh", "sigmoid", "maxout")
NORMS = ("none", "batch", "layer", "group")


@dataclass
class Model:
    """Keys every model has: transfer learning (read by dlrun, not passed to the model)."""

    _target_: str = MISSING
    weights: Optional[str] = setting(None, also=("imagenet",), path=True,
                                     hint="a dlrun run directory or a .pt/.pth file")
    freeze: Any = setting("none", kind=str, many=True)  # none | backbone | [prefix, ...]


@dataclass
class Activated(Model):
    activation: str = setting("relu", choices=ACTIVATIONS)
    negative_slope: float = 0.01
    maxout_pieces: int = setting(2, ge=1)


@dataclass
class MLP(Activated):
    hidden: list[int] = setting([256, 256], ge=1)
    activation: Any = setting("relu", kind=str, many=True, choices=ACTIVATIONS)
    dropout: Any = setting(0.0, kind=float, many=True, **FRACTION)
    norm: Any = setting("none", kind=str, many=True, choices=NORMS)


@dataclass
class CNN(Activated):
    channels: list[int] = setting([32, 64], ge=1, nonempty=True)
    convs_per_block: int = setting(2, ge=1)
    kernel_size: int = setting(3, ge=1)
    stride: int = setting(1, ge=1)
    padding: int = setting(1, ge=0)
    pool: str = setting("max", choices=("max", "avg", "none"))
    pool_size: int = setting(2, ge=1)
    fc: list[int] = setting([128], ge=1)
    norm: str = setting("none", choices=NORMS)
    dropout: float = setting(0.0, **FRACTION)


@dataclass
class LeNet(Activated):
    activation: str = setting("tanh", choices=ACTIVATIONS)
    pool: str = setting("avg", choices=("avg", "max"))


@dataclass
class TorchvisionNet(Activated):
    small_input: Any = setting("auto", choices=("auto", True, False))
    norm: str = setting("batch", choices=NORMS)


@dataclass
class AlexNet(TorchvisionNet):
    dropout: float = setting(0.5, **FRACTION)
    fc_width: Optional[int] = setting(None, ge=1)


@dataclass
class VGG(TorchvisionNet):
    depth: int = setting(16, choices=(11, 13, 16, 19))
    batch_norm: bool = False
    norm: str = setting("none", choices=NORMS)
    dropout: float = setting(0.5, **FRACTION)
    fc_width: Optional[int] = setting(None, ge=1)


@dataclass
class ResNet(TorchvisionNet):
    depth: int = setting(20, choices=(18, 34, 50, 101, 152, 20, 32, 44, 56, 110))
    residual: bool = True


@dataclass
class ResNet9(Activated):
    width: int = setting(64, ge=1)
    scale: float = setting(0.125, gt=0)
    norm: str = setting("batch", choices=NORMS)


@dataclass
class GoogLeNet(TorchvisionNet):
    dropout: float = setting(0.2, **FRACTION)


@dataclass
class Recurrent(Model):
    cell: str = setting("lstm", choices=("rnn", "lstm", "gru"))
    hidden_size: int = setting(128, ge=1)
    num_layers: int = setting(1, ge=1)
    bidirectional: bool = True
    merge: str = setting("concat", choices=("concat", "sum", "mul"))
    dropout: float = setting(0.0, **FRACTION)
    readout: str = setting("last", choices=("last", "mean", "max"))
    nonlinearity: str = setting("tanh", choices=("tanh", "relu"))
    forget_bias: float = 1.0


# ------------------------------------------------------------------------------------ init, reg, loss

SCHEMES = ("default", "small_normal", "large_normal", "xavier", "xavier_uniform", "xavier_normal", "xavier_fanin",
           "he", "he_normal", "he_uniform", "lecun_normal", "orthogonal")


@dataclass
class Init:
    scheme: str = setting("default", choices=SCHEMES)
    bias: Optional[float] = None
    mode: str = setting("fan_in", choices=("fan_in", "fan_out"))
    recurrent: Optional[str] = setting(None, choices=SCHEMES)
    gain: float = setting(1.0, gt=0)


@dataclass
class EarlyStopping:
    patience: int = setting(5, ge=1, hint="(validations without improvement)")
    min_delta: float = setting(0.0, ge=0)


@dataclass
class Reg:
    dropout: Optional[float] = setting(None, **FRACTION)
    l1: Optional[float] = setting(None, ge=0)
    l2: Optional[float] = setting(None, ge=0)
    weight_decay: Optional[float] = setting(None, ge=0)
    maxnorm: Optional[float] = setting(None, gt=0)
    label_smoothing: Optional[float] = setting(None, **FRACTION)
    early_stopping: Optional[EarlyStopping] = None
    exclude_bias_and_norm: bool = True


@dataclass
class Loss:
    name: str = setting("auto", choices=("auto", "cross_entropy", "multi_margin", "mse", "huber", "bce"))
    label_smoothing: float = setting(0.0, **FRACTION)
    huber_delta: float = setting(1.0, gt=0)


# ------------------------------------------------------------------------------------ optimizers

LR = dict(gt=0, hint="(the notes: search it in log space, 1e-5 to 1e-1)")
# The ranges dlrun adds to torch's optimizer arguments, by the argument's name: every optimizer that
# takes one gets its rule. The arguments themselves, their types and defaults, are torch's own
# (signature_schema), so every argument torch accepts (fused, foreach, maximize, ...) is accepted.
OPTIM_RULES: dict[str, dict[str, Any]] = {
    "lr": LR,
    "weight_decay": dict(ge=0),
    "momentum": dict(**FRACTION, hint="(0.9 is the notes' usual value)"),
    "dampening": FRACTION,
    "betas": dict(**FRACTION, length=2, hint="(e.g. [0.9,0.999])"),
    "eps": dict(gt=0),
    "alpha": dict(**FRACTION, hint="(RMSProp's decay rate; the notes' 0.99)"),
    "lr_decay": dict(ge=0),
    "initial_accumulator_value": dict(ge=0),
    "max_iter": dict(ge=1),
    "max_eval": dict(ge=1),
    "tolerance_grad": dict(ge=0),
    "tolerance_change": dict(ge=0),
    "history_size": dict(ge=1),
    "line_search_fn": dict(choices=("strong_wolfe",)),
}


def _field_kind(annotation: Any) -> tuple[Any, bool]:
    """An OmegaConf field type for a torch argument's annotation, and whether it takes None:
    float | Tensor -> float, tuple[float | Tensor, ...] -> list[float], bool | None -> bool (optional)."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if typing.get_origin(annotation) in (tuple, list):
        inner = {_field_kind(a)[0] for a in args if a is not Ellipsis}
        return (list[inner.pop()] if len(inner) == 1 and Any not in inner else list), optional
    for kind in (bool, int, float, str):
        if annotation is kind or kind in args:
            return kind, optional
    return Any, optional


def signature_schema(cls: type, rules: dict[str, dict[str, Any]], skip: tuple[str, ...] = ("params",)) -> type:
    """A schema for a class dlrun does not own, from its constructor's signature: each argument with
    torch's type and default, and dlrun's rule where `rules` has one for its name."""
    import inspect

    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=MISSING)), ("_partial_", bool, field(default=True))]
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind, optional = _field_kind(hints.get(name, Any))
        default = MISSING if parameter.default is parameter.empty else parameter.default
        default = list(default) if isinstance(default, tuple) else default
        if kind is float and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        fields.append((name, Optional[kind] if optional or default is None else kind, setting(default, **rules.get(name, {}))))
    return dataclasses.make_dataclass(cls.__name__, fields)


@functools.cache
def optimizer_schema(target: str) -> type | None:
    """torch.optim.NAME's schema from its signature (any optimizer torch.optim has), or None."""
    import torch

    module, _, name = target.rpartition(".")
    cls = getattr(torch.optim, name, None) if module == "torch.optim" else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
        return None
    return signature_schema(cls, OPTIM_RULES)


# ------------------------------------------------------------------------------------ schedules

@dataclass
class Schedule:
    _target_: str = MISSING
    _partial_: bool = True
    interval: str = setting("epoch", choices=("epoch", "step"))
    warmup_steps: int = setting(0, ge=0, hint="(optimizer steps)")


RUN_LENGTH = dict(ge=1, hint="(null: the whole run)")


@dataclass
class ConstantLR(Schedule):
    factor: float = setting(1.0, ge=0, le=1)
    total_iters: int = setting(0, ge=0)


@dataclass
class CosineAnnealingLR(Schedule):
    T_max: Optional[int] = setting(None, **RUN_LENGTH)
    eta_min: float = setting(0.0, ge=0)


@dataclass
class ExponentialLR(Schedule):
    gamma: float = setting(0.9, gt=0, hint="(the factor per decay)")


@dataclass
class InverseLR(Schedule):
    k: float = setting(1.0, ge=0)


@dataclass
class LinearLR(Schedule):
    start_factor: float = setting(1.0, gt=0, le=1)
    end_factor: float = setting(0.0, ge=0, le=1)
    total_iters: Optional[int] = setting(None, **RUN_LENGTH)


@dataclass
class MultiStepLR(Schedule):
    milestones: list[int] = setting([15, 22], ge=1, nonempty=True, hint="(increasing, e.g. [15,22])")
    gamma: float = setting(0.1, gt=0)


@dataclass
class StepLR(Schedule):
    step_size: int = setting(10, ge=1, hint="(epochs, or steps with sched.interval=step)")
    gamma: float = setting(0.5, gt=0)


@dataclass
class OneCycleLR(Schedule):
    interval: str = setting("step", choices=("epoch", "step"))
    max_lr: Optional[float] = setting(None, gt=0, hint="(null: optim.lr)")
    total_steps: Optional[int] = setting(None, **RUN_LENGTH)
    pct_start: float = setting(0.3, gt=0, lt=1)
    anneal_strategy: str = setting("cos", choices=("cos", "linear"))
    cycle_momentum: Any = setting("auto", choices=("auto", True, False))
    base_momentum: float = setting(0.85, ge=0, lt=1)
    max_momentum: float = setting(0.95, ge=0, lt=1)
    div_factor: float = setting(25.0, gt=0)
    final_div_factor: float = setting(1e4, gt=0)
    three_phase: bool = False


@dataclass
class ReduceLROnPlateau(Schedule):
    factor: float = setting(0.5, gt=0, lt=1, hint="(0.5 halves the lr)")
    patience: int = setting(5, ge=0, hint="(epochs)")
    threshold: float = setting(1e-4, ge=0)
    threshold_mode: str = setting("rel", choices=("rel", "abs"))
    cooldown: int = setting(0, ge=0, hint="(epochs)")
    min_lr: float = setting(0.0, ge=0)


# ------------------------------------------------------------------------------------ trainer, logger, check

# torch.compile's modes ("default" is its mode=None)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Trainer:
    device: str = "auto"
    devices: int = setting(1, ge=1)
    sync_bn: bool = False
    precision: Any = setting("auto", choices=("auto", "32", "fp32", "16", "fp16", "bf16"))
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = setting("default", choices=COMPILE_MODES)
    deterministic: bool = False
    epochs: int = setting(30, ge=1)
    max_steps: Optional[int] = setting(None, ge=1)
    micro_batch_size: Optional[int] = setting(None, ge=1)
    seed: int = setting(0, **SEED)
    threads: Optional[int] = setting(None, ge=1)
    monitor: str = "auto"
    grad_clip: Optional[float] = setting(None, gt=0)
    grad_clip_mode: str = setting("norm", choices=("norm", "value"))
    ema_decay: Optional[float] = setting(None, gt=0, lt=1, hint="(e.g. 0.999)")
    checkpoint: bool = True
    checkpoint_every_steps: Optional[int] = setting(None, ge=1)
    resume: Optional[str] = setting(None, also=("auto",), path=True, hint="a run directory or a checkpoint file")
    stop_at_epoch: Optional[int] = setting(None, ge=1)


@dataclass
class Diagnostics:
    every: int = setting(100, ge=0, hint="(0: off)")
    histograms: bool = True
    filters: bool = True


@dataclass
class Logger:
    every: int = setting(50, ge=1)
    ratio_every: int = setting(100, ge=0)
    hparams: bool = True
    diagnostics: Optional[Diagnostics] = None


@dataclass
class CheckOptions:
    seed: int = setting(0, **SEED)
    samples: int = setting(1024, ge=1)
    tolerance: float = setting(0.1, gt=0)
    batches: int = setting(5, ge=1)
    budget: int = setting(1000, ge=1)
    lrs: list[float] = setting([1e-1, 1e-2, 1e-3, 1e-4], gt=0, nonempty=True)
    iterations: int = setting(100, ge=1)
    drop: float = setting(0.1, gt=0, lt=1)
    range: bool = False
    range_min: float = setting(1e-7, gt=0)
    range_max: float = setting(10.0, gt=0)
    examples: int = setting(4, ge=1)
    k: int = setting(10, ge=1)
    h: float = setting(1e-5, gt=0)
    out: str = "outputs/check"


@dataclass
class Sweep:
    n_trials: int = setting(20, ge=1)
    n_jobs: int = setting(1, ge=1)
    seed: int = setting(0, **SEED)
    space: Any = None  # {key: "loguniform(a, b)", ...}, nested; dlrun.sweep.space reads it


# ------------------------------------------------------------------------------------ validate

# Targeted groups: one schema per class. A target not listed here is a user's own class.
TARGETS: dict[str, type] = {
    "dlrun.data.digits.DigitsData": DigitsData, "dlrun.data.arrays.ArrayData": ArrayData,
    **{f"dlrun.data.vision.{name}": VisionData for name in ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN")},
    "dlrun.data.folder.ImageFolderData": ImageFolder, "dlrun.data.sequences.DigitsRowsData": DigitsData,
    "dlrun.data.sequences.AddingData": AddingData, "dlrun.data.sequences.CopyData": CopyData,
    "dlrun.models.mlp.MLP": MLP, "dlrun.models.cnn.CNN": CNN, "dlrun.models.lenet.LeNet": LeNet,
    "dlrun.models.alexnet.alexnet": AlexNet, "dlrun.models.vgg.vgg": VGG, "dlrun.models.resnet.resnet": ResNet,
    "dlrun.models.resnet9.resnet9": ResNet9,
    "dlrun.models.googlenet.googlenet": GoogLeNet, "dlrun.models.rnn.Recurrent": Recurrent,
    "torch.optim.lr_scheduler.ConstantLR": ConstantLR, "torch.optim.lr_scheduler.CosineAnnealingLR": CosineAnnealingLR,
    "torch.optim.lr_scheduler.ExponentialLR": ExponentialLR, "dlrun.optim.InverseSqrtLR": InverseLR,
    "dlrun.optim.InverseTimeLR": InverseLR, "torch.optim.lr_scheduler.LinearLR": LinearLR,
    "torch.optim.lr_scheduler.MultiStepLR": MultiStepLR, "torch.optim.lr_scheduler.StepLR": StepLR,
    "torch.optim.lr_scheduler.OneCycleLR": OneCycleLR, "torch.optim.lr_scheduler.ReduceLROnPlateau": ReduceLROnPlateau,
}
EXAMPLES = {"data": "dlrun.data.digits.DigitsData", "model": "dlrun.models.mlp.MLP", "optim": "torch.optim.Adam",
            "sched": "torch.optim.lr_scheduler.CosineAnnealingLR"}
# Groups without a target: one schema each.
GROUPS: dict[str, type | None] = {"data": None, "model": None, "init": Init, "reg": Reg, "loss": Loss,
                                  "optim": None, "sched": None, "trainer": Trainer, "logger": Logger,
                                  "check": CheckOptions, "sweep": Sweep, "augment": Augment, "eval": Eval,
                                  "callbacks": None}
# Groups a config may lack: check and sweep (set by `dlrun check` and sweep=random), augment and eval
# (a checkpoint's config from before they existed: both off).
OPTIONAL = ("check", "sweep", "augment", "eval", "callbacks")


def validate(cfg: DictConfig) -> None:
    """Check every group of the composed config against its schema; UserError (one line) on the first problem."""
    for key in cfg:
        if key not in GROUPS:
            raise UserError(f"{key}: unknown key at the top of the config; its groups: {', '.join(GROUPS)}")
    for group, schema in GROUPS.items():
        if group in OPTIONAL and cfg.get(group) is None:
            continue
        if cfg.get(group) is None:
            raise UserError(f"{group} is missing from the config; choose one with {group}=NAME "
                            f"(dlrun train --help lists them)")
        node = cfg[group]
        if group == "callbacks":  # {name: {_target_: ...}}: each a user's class (dlrun.train.callbacks)
            for name, entry in node.items():
                if entry is not None and not (isinstance(entry, DictConfig) and isinstance(entry.get("_target_"), str)):
                    raise UserError(f"callbacks.{name} must name a class: callbacks.{name}._target_=mypkg.MyCallback")
            continue
        if schema is not None:
            check_node(node, schema, f"{group}.", f"{group}")
            continue
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not isinstance(target, str) or not target:
            raise UserError(f"{group}._target_={_shown(target)!r} must name a class by its dotted path, "
                            f"e.g. {EXAMPLES[group]}")
        schema = TARGETS.get(target) or (optimizer_schema(target) if group == "optim" else None)
        if schema is not None:
            check_node(node, schema, f"{group}.", target)
        elif not isinstance(node.get("_partial_", False), bool):
            raise UserError(f"{group}._partial_={_shown(node.get('_partial_'))!r} must be true or false")

