"""Reading numbers out of the composed config, with one clear line when a value is wrong."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlrun.errors import UserError


def number(cfg: DictConfig, key: str, kind: type = int, minimum: float | None = None, *,
           above: bool = False, optional: bool = False, name: str | None = None) -> Any:
    """cfg's value at `key` as `kind`, checked against `minimum` (strictly when `above`).

    `name` is the key as the user writes it on the command line, when cfg is a sub-tree.
    """
    value = OmegaConf.select(cfg, key)
    key = name or key
    if value is None and optional:
        return None
    bound = "" if minimum is None else f" {'>' if above else '>='} {minimum:g}"
    noun = "an integer" if kind is int else "a number"
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
            raise ValueError
        result = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r} must be {noun}{bound}{' or null' if optional else ''}") from None
    if minimum is not None and (result <= minimum if above else result < minimum):
        raise UserError(f"{key}={value!r} must be {noun}{bound}")
    return result
