"""The optimizers' and the schedules' schemas: from torch's signatures, with dlrun's ranges."""

import collections.abc
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


def _field_kind(annotation: Any) -> tuple[Any, bool, tuple]:
    """An OmegaConf field type for a torch argument's annotation, whether it takes None, and the
    values a Literal allows: float | Tensor -> float, tuple[float | Tensor, ...] or Iterable[int]
    -> a list, bool | None -> bool (optional), Literal['cos', 'linear'] -> str, one of those."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = type(None) in args
    if origin is typing.Literal:
        return type(args[0]), False, args
    if origin in (tuple, list, collections.abc.Iterable, collections.abc.Sequence):
        inner = {_field_kind(a)[0] for a in args if a is not Ellipsis}
        return (list[inner.pop()] if len(inner) == 1 and Any not in inner else list), optional, ()
    for kind in (bool, int, float, str):
        if annotation is kind or kind in args:
            return kind, optional, ()
    literal = [a for a in args if typing.get_origin(a) is typing.Literal]
    return (_field_kind(literal[0])[0], optional, typing.get_args(literal[0])) if literal else (Any, optional, ())


def signature_schema(cls: type, rules: dict[str, dict[str, Any]], skip: tuple[str, ...] = ("params",),
                     own: type | None = None) -> type:
    """A schema for a class dlrun does not own, from its constructor's signature: each argument with
    torch's type and default, and dlrun's rule where `rules` has one for CLASS.name or name. A rule's
    nullable=True also takes null (dlrun fills it in); its `also` words, beside a type that is no
    name (OneCycleLR's cycle_momentum=auto). `skip`: arguments (name or CLASS.name) not offered;
    `own`: a dataclass of keys dlrun reads itself, added after the class's."""
    import inspect

    try:  # torch names some annotations' types only for type checkers (MultiStepLR's Iterable)
        hints = typing.get_type_hints(cls.__init__, localns=vars(collections.abc))
    except NameError:
        hints = {}
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=MISSING)),
                                          ("_partial_", bool, field(default=True))]
    for name, parameter in inspect.signature(cls).parameters.items():
        if {name, f"{cls.__name__}.{name}"} & set(skip) or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                               parameter.VAR_KEYWORD):
            continue
        kind, optional, choices = _field_kind(hints.get(name, Any))
        rule = {"choices": choices, **rules.get(f"{cls.__name__}.{name}", rules.get(name, {}))}
        optional = rule.pop("nullable", False) or optional
        default = MISSING if parameter.default is parameter.empty else parameter.default
        default = None if optional and default is MISSING else default
        default = list(default) if isinstance(default, tuple) else default
        if kind is float and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        if rule.get("also") and kind is not str:  # OmegaConf would refuse the word: the rule checks the type
            kind, rule["kind"] = Any, kind
        kind = Optional[kind] if optional or default is None else kind
        fields.append((name, kind, setting(default, **rule)))
    if own is not None:
        kinds = typing.get_type_hints(own)
        fields += [(f.name, kinds[f.name], setting(f.default, **dataclasses.asdict(f.metadata["rule"])))
                   for f in dataclasses.fields(own)]
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
    """The keys dlrun reads from every schedule's config itself (torch's class never sees them)."""

    interval: str = setting("epoch", choices=("epoch", "step"))
    warmup_steps: int = setting(0, ge=0, hint="(optimizer steps)")


# A schedule's length left null is filled in with the run's (dlrun.optim.RUN_LENGTH names those keys).
RUN_LENGTH = dict(ge=1, nullable=True, hint="(null: the whole run)")
# The ranges dlrun adds to the schedules' arguments, as OPTIM_RULES to the optimizers': by name, or
# by CLASS.name where one class's argument differs (ConstantLR's factor may be 1, the plateau's not).
SCHED_RULES: dict[str, dict[str, Any]] = {
    "ConstantLR.total_iters": dict(RUN_LENGTH, ge=0),
    "factor": dict(ge=0, le=1),
    "ReduceLROnPlateau.factor": dict(gt=0, lt=1, hint="(0.5 halves the lr)"),
    "eta_min": dict(ge=0),
    "gamma": dict(gt=0, hint="(the factor per decay)"),
    "k": dict(ge=0),
    "start_factor": dict(gt=0, le=1),
    "end_factor": dict(ge=0, le=1),
    "milestones": dict(ge=1, nonempty=True, hint="(increasing, e.g. [15,22])"),
    "step_size": dict(ge=1, hint="(epochs, or steps with sched.interval=step)"),
    "OneCycleLR.max_lr": dict(gt=0, nullable=True, hint="(null: optim.lr)"),
    "OneCycleLR.cycle_momentum": dict(also=("auto",)),
    "pct_start": dict(gt=0, lt=1),
    "base_momentum": dict(ge=0, lt=1),
    "max_momentum": dict(ge=0, lt=1),
    "div_factor": dict(gt=0),
    "final_div_factor": dict(gt=0),
    "patience": dict(ge=0, hint="(epochs)"),
    "threshold": dict(ge=0),
    "cooldown": dict(ge=0, hint="(epochs)"),
    "min_lr": dict(ge=0),
    "eps": dict(gt=0),
}
# Not the user's to set: dlrun's checkpoints restore a schedule's place (last_epoch), and the
# plateau's mode follows trainer.monitor.
SCHED_SET_BY_DLRUN = ("optimizer", "last_epoch", "ReduceLROnPlateau.mode")


@functools.cache
def schedule_schema(target: str) -> type | None:
    """A schedule's schema from its signature (any class torch.optim.lr_scheduler has, and dlrun's
    own in dlrun.optim), with dlrun's keys (Schedule) after torch's; None for a user's class."""
    from torch.optim import lr_scheduler

    from dlrun import optim

    module, _, name = target.rpartition(".")
    cls = getattr({"torch.optim.lr_scheduler": lr_scheduler, "dlrun.optim": optim}.get(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, lr_scheduler.LRScheduler)) or name.startswith("_") \
            or cls is lr_scheduler.LRScheduler:
        return None
    return signature_schema(cls, {**dict.fromkeys(optim.RUN_LENGTH, RUN_LENGTH), **SCHED_RULES},
                            skip=SCHED_SET_BY_DLRUN, own=Schedule)
