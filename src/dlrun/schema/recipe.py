"""The optimizers' schemas (from torch's signatures, with dlrun's ranges) and the schedules'."""

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from dlrun.schema.rules import FRACTION, setting


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
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=MISSING)),
                                          ("_partial_", bool, field(default=True))]
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind, optional = _field_kind(hints.get(name, Any))
        default = MISSING if parameter.default is parameter.empty else parameter.default
        default = list(default) if isinstance(default, tuple) else default
        if kind is float and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        kind = Optional[kind] if optional or default is None else kind
        fields.append((name, kind, setting(default, **rules.get(name, {}))))
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


