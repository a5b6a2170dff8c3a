"""The rules a schema field carries, and check_node, which merges a config node into a schema and checks it."""

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

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
        inner = _strip_optional(kinds[name])[0]
        if dataclasses.is_dataclass(inner) and isinstance(given.get(name), dict):
            check_node(given[name], inner, f"{prefix}{name}.", owner)  # names the key inside the group
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


BATCH = dict(ge=1)
FRACTION = dict(ge=0, lt=1)  # a share of something, or a probability of dropping
SEED = dict(ge=0, le=2**32 - 1)  # what numpy's and torch's generators all take
