"""A search space in YAML, and the trials a seed draws from it.

    sweep:
      space:
        optim:
          lr: loguniform(1e-5, 1e-1)     # the notes: learning rates and regularisation strengths in log space
        reg:
          l2: loguniform(1e-6, 1e-2)
        model:
          hidden: choice([64], [128], [256,256])
          dropout: uniform(0, 0.5)
        data:
          batch_size: randint(32, 256)   # both ends included

Trial i's values come from its own generator, seeded with (sweep.seed, i): the same seed gives
the same trials, whatever ran before, so a resumed sweep draws exactly the trials it would have.
numpy's generator does the sampling: a log-uniform draw is 10 ** uniform(log10 a, log10 b).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

from dlrun.errors import UserError

KINDS = ("loguniform", "uniform", "randint", "choice")
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Dimension:
    key: str          # the config key, e.g. optim.lr
    kind: str         # one of KINDS
    args: tuple       # (low, high) or the choices

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "loguniform":
            low, high = self.args
            return float(10 ** rng.uniform(math.log10(low), math.log10(high)))
        if self.kind == "uniform":
            return float(rng.uniform(*self.args))
        if self.kind == "randint":
            return int(rng.integers(self.args[0], self.args[1], endpoint=True))
        return self.args[int(rng.integers(len(self.args)))]


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string; a user means the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse(key: str, text: Any) -> Dimension:
    """`loguniform(1e-5, 1e-1)` (etc.) at config key `key`, checked; UserError in one line when wrong."""
    where = f"sweep.space.{key}={text!r}"
    match = _CALL.match(str(text))
    if not match or match.group(1) not in KINDS:
        raise UserError(f"{where}: write a dimension as loguniform(a, b), uniform(a, b), randint(a, b) or "
                        "choice(x, y, ...)")
    kind = match.group(1)
    try:
        args = yaml.safe_load(f"[{match.group(2)}]")
    except yaml.YAMLError:
        raise UserError(f"{where}: cannot read its arguments") from None
    if kind == "choice":
        if not args:
            raise UserError(f"{where}: choice needs at least one value")
        return Dimension(key, kind, tuple(_yaml_number(a) for a in args))
    try:
        low, high = (float(a) for a in args) if len(args) == 2 else (None, None)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise UserError(f"{where}: {kind} takes two numbers a < b")
    if kind == "loguniform" and low <= 0:
        raise UserError(f"{where}: loguniform needs a > 0 (it samples log10 uniformly)")
    if kind == "randint":
        if low != int(low) or high != int(high):
            raise UserError(f"{where}: randint takes two integers")
        return Dimension(key, kind, (int(low), int(high)))
    return Dimension(key, kind, (low, high))


def dimensions(space: dict[str, Any], prefix: str = "") -> list[Dimension]:
    """Every dimension of a nested space ({"optim": {"lr": "loguniform(...)"}}), in key order."""
    found: list[Dimension] = []
    for key, value in (space or {}).items():
        if isinstance(value, dict):
            found += dimensions(value, f"{prefix}{key}.")
        else:
            found.append(parse(f"{prefix}{key}", value))
    if not prefix and not found:
        raise UserError("sweep.space is empty; give it dimensions, e.g. 'sweep.space.optim.lr=loguniform(1e-5,1e-1)'")
    return found


def sample(dims: list[Dimension], seed: int, trial: int) -> dict[str, Any]:
    """Trial `trial`'s values: {key: value}, the same for the same (seed, trial)."""
    rng = np.random.default_rng([seed, trial])
    return {dim.key: dim.sample(rng) for dim in dims}


def as_override(key: str, value: Any) -> str:
    """++key=value in Hydra's override grammar (set, or add when the chosen option lacks the key;
    floats to 6 significant digits, lists compact)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, dict, bool)) or value is None:
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return f"++{key}={text}"
