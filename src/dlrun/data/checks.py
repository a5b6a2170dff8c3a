"""Checks of the arrays every loader hands to Data, made before training: the kind of y (labels or
targets, the same in every split), labels that are class indices, and finite values. Each failure
is one UserError naming the array and the fix, instead of a nan loss or a silently other task."""

from __future__ import annotations

import numpy as np
import torch

from dlrun.errors import UserError

INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# Labels are class indices; past this many classes they are IDs (the output layer alone would not fit).
MAX_CLASSES = 2**24


def _is_integer(y: torch.Tensor) -> bool:
    return y.dtype in INTEGERS or y.dtype == torch.bool


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def task(ys: dict[str, torch.Tensor]) -> str:
    """Integer y in every split: classification; float y in every split: regression; a mix is refused
    (a float y_test beside integer y_train would otherwise turn a classifier into a regression)."""
    kinds = {split: _is_integer(y) for split, y in ys.items()}
    first = next(iter(ys))  # train
    other = next((split for split in ys if kinds[split] != kinds[first]), None)
    if other is None:
        return "classification" if kinds[first] else "regression"
    raise UserError(f"y_{other} is {_dtype(ys[other])} but y_{first} is {_dtype(ys[first])}: integer labels mean "
                    "classification and float targets regression, so every split's y needs the same kind; cast "
                    f"y_{other} to y_{first}'s dtype (e.g. y_{other}.astype(y_{first}.dtype))")


def check_labels(ys: dict[str, torch.Tensor], classes: list[str] | None, name: str) -> int:
    """The number of classes, after checking every split's labels are class indices 0..C-1.

    C is len(classes) when the dataset names its classes, else the largest label + 1 (ArrayData has
    already refused val or test labels beyond y_train's: here train may be a part of y_train).
    """
    for split, y in ys.items():
        if y.ndim != 1:
            raise UserError(f"y_{split} has shape {tuple(y.shape)}; class labels must be a vector (N,)")
        if y.min() < 0:
            raise UserError(f"y_{split} has negative labels ({int(y.min())}); classes must be 0..C-1")
    top = {split: int(y.max()) for split, y in ys.items()}
    for split, label in top.items():
        if label >= MAX_CLASSES:
            raise UserError(f"y_{split} holds label {label}, which would make {label + 1:,} classes (at most "
                            f"{MAX_CLASSES:,}); labels are class indices 0..C-1: relabel them, e.g. with "
                            "numpy.unique(y, return_inverse=True)")
    if not classes:
        return max(top.values()) + 1
    for split, label in top.items():
        if label >= len(classes):
            raise UserError(f"y_{split} holds label {label} but {name} has {len(classes)} classes "
                            f"(0..{len(classes) - 1}); the file is not {name}'s, or its labels are damaged")
    return len(classes)


def check_finite(t: torch.Tensor | np.ndarray, what: str) -> None:
    """Refuse inf and nan: they would show up later as a nan loss, blamed on the learning rate."""
    if isinstance(t, np.ndarray):
        bad = t.size - int(np.count_nonzero(np.isfinite(t))) if np.issubdtype(t.dtype, np.floating) else 0
    else:
        bad = t.numel() - int(torch.isfinite(t).sum()) if t.is_floating_point() else 0
    if bad:
        raise UserError(f"{what} holds {bad:,} non-finite value{'s' if bad > 1 else ''} (inf or nan); replace "
                        f"them (e.g. numpy.nan_to_num) or drop those samples before training")
