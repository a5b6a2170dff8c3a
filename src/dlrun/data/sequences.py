"""Sequence datasets, no download: the digits read row by row, and two synthetic memory tasks.

    digits_rows  the embedded 8x8 digits as 8 steps of 8 pixels (N, 8, 8), 10 classes
    adding       the adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015;
                 Arjovsky et al. 2016): seq_len steps of (value, marker), target the sum of the
                 two marked values (N, 1)
    copy         the copy-memory task as a regression: `length` values, `delay` blank steps and a
                 recall step; target the `length` values (N, length), read from the final state

The synthetic tasks are generated from `seed` alone: split i (0 train, 1 val, 2 test) comes from
numpy's `default_rng([seed, i])`, so the splits are independent, the test set depends only on the
seed and the task's shape (seq_len; length and delay), and sample j of a split is the same however
many samples the split has (each sample is drawn from its own row of uniforms).
"""

from __future__ import annotations

import numpy as np

from dlrun.data.base import Data
from dlrun.data.digits import DigitsData
from dlrun.errors import UserError

SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------- generators
def adding_problem(n: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n adding-problem samples: x (n, seq_len, 2) float32 (value ~ U(0, 1), marker 0/1), y (n, 1) float32.

    One marker is at a uniform step of the first half [0, seq_len // 2), the other at a uniform
    step of the second half [seq_len // 2, seq_len); y is the sum of the two marked values.
    """
    half = seq_len // 2
    u = rng.random((n, seq_len + 2))  # one row a sample: seq_len values, then the two positions
    values = u[:, :seq_len].astype(np.float32)
    first = np.minimum((u[:, seq_len] * half).astype(np.int64), half - 1)
    second = half + np.minimum((u[:, seq_len + 1] * (seq_len - half)).astype(np.int64), seq_len - half - 1)
    rows = np.arange(n)
    markers = np.zeros((n, seq_len), np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return np.stack([values, markers], axis=-1), y


def copy_task(n: int, length: int, delay: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n copy-memory samples: x (n, length + delay + 1, 2) float32, y (n, length) float32.

    Features per step: (value, recall marker). Steps 0..length-1 show the values ~ U(-1, 1);
    then `delay` blank steps (0, 0); then one recall step (0, 1). y is the shown values.
    """
    u = rng.random((n, length))
    shown = (2.0 * u - 1.0).astype(np.float32)
    x = np.zeros((n, length + delay + 1, 2), np.float32)
    x[:, :length, 0] = shown
    x[:, -1, 1] = 1.0
    return x, shown.copy()


# ------------------------------------------------------------------------------- validation
def _at_least(name: str, value: int, minimum: int) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"data.{name}={value} must be an integer >= {minimum}")
    return int(value)


def _sizes(train_samples: int, val_samples: int, test_samples: int, seed: int) -> tuple[dict[str, int], int]:
    sizes = {s: _at_least(f"{s}_samples", n, 1) for s, n in zip(SPLITS, (train_samples, val_samples, test_samples))}
    seed = _at_least("seed", seed, 0)
    if seed > 2**32 - 1:
        raise UserError(f"data.seed={seed} must be <= {2**32 - 1}")
    return sizes, seed


# ---------------------------------------------------------------------------------- datasets
class DigitsRowsData(DigitsData):
    """The embedded digits as sequences: each 8x8 image is 8 steps (rows) of 8 pixels.

    Same seeded test/validation holdout as data=digits (test first, then val from the rest), so
    the two configs train, validate and test on the same images.
    """

    NAME, LAYOUT, SHAPE = "digits_rows", "sequence", (8, 8)  # (N, T=8 rows, F=8 pixels), values 0..16


class AddingData(Data):
    """The adding problem: predict the sum of the two marked values of a (value, marker) sequence.

    The constant prediction 1.0 (the mean) scores MSE 1/6 ~ 0.167, the variance of a sum of two
    U(0, 1); a model has learned the task when it gets well below that (0.05 is the usual bar).
    """

    def __init__(self, seq_len: int = 30, train_samples: int = 5000, val_samples: int = 1000,
                 test_samples: int = 2000, seed: int = 0, batch_size: int = 16, eval_batch_size: int = 1000,
                 preprocess: str = "none", on_device: str = "auto"):
        seq_len = _at_least("seq_len", seq_len, 2)
        sizes, seed = _sizes(train_samples, val_samples, test_samples, seed)
        splits = [adding_problem(sizes[s], seq_len, np.random.default_rng([seed, i]))
                  for i, s in enumerate(SPLITS)]
        super().__init__(*splits, layout="sequence", batch_size=batch_size, eval_batch_size=eval_batch_size,
                         preprocess=preprocess, on_device=on_device, name=f"adding(T={seq_len})")


class CopyData(Data):
    """The copy-memory task as a regression of the whole shown sequence from the final state.

    x: `length` values ~ U(-1, 1) one a step, `delay` blank steps, a recall step; (value, recall
    marker) each step. y: the `length` values. Predicting 0 scores MSE 1/3, the variance of U(-1, 1).
    """

    def __init__(self, length: int = 5, delay: int = 10, train_samples: int = 5000, val_samples: int = 1000,
                 test_samples: int = 2000, seed: int = 0, batch_size: int = 16, eval_batch_size: int = 1000,
                 preprocess: str = "none", on_device: str = "auto"):
        length = _at_least("length", length, 1)
        delay = _at_least("delay", delay, 0)
        sizes, seed = _sizes(train_samples, val_samples, test_samples, seed)
        splits = [copy_task(sizes[s], length, delay, np.random.default_rng([seed, i]))
                  for i, s in enumerate(SPLITS)]
        super().__init__(*splits, layout="sequence", batch_size=batch_size, eval_batch_size=eval_batch_size,
                         preprocess=preprocess, on_device=on_device, name=f"copy(length={length},delay={delay})")
