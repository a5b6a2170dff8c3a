"""JSON every parser reads: a non-finite number (nan, inf) is written as null, never as a bare NaN.

Python's json writes NaN and Infinity, which are not JSON (jq, JavaScript and strict parsers
refuse the whole file). Every JSON file and --json output of dlrun goes through `dumps`.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def finite(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """`obj` with every non-finite float replaced by None, and the dotted keys where that was done."""
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral):
        return (float(obj), []) if math.isfinite(obj) else (None, [where or "."])
    if isinstance(obj, dict):
        out, bad = {}, []
        for key, value in obj.items():
            out[key], found = finite(value, f"{where}.{key}" if where else str(key))
            bad += found
        return out, bad
    if isinstance(obj, (list, tuple)):
        pairs = [finite(value, f"{where}[{i}]") for i, value in enumerate(obj)]
        return [value for value, _ in pairs], [key for _, found in pairs for key in found]
    return obj, []


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps with non-finite floats as null; allow_nan=False makes any other way in an error."""
    return json.dumps(finite(obj)[0], allow_nan=False, **kwargs)
