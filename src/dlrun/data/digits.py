"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 real images)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from dlrun.data.base import Data, holdout
from dlrun.errors import UserError


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(x (1797, 64) float64 in 0..16, y (1797,) int), as sklearn.datasets.load_digits gives them.

    Reads the CSV that scikit-learn ships without importing scikit-learn (1.7 s of start-up
    here); falls back to load_digits if a release moves the file.
    """
    spec = importlib.util.find_spec("sklearn")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


class DigitsData(Data):
    NAME, LAYOUT, SHAPE = "digits", "image", (1, 8, 8)  # one grey channel, values 0..16

    def __init__(self, batch_size: int = 64, eval_batch_size: int = 1024, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0,
                 preprocess: str = "channel_standardize", on_device: str = "auto"):
        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"data.test_fraction={test_fraction} must be in (0, 1)")
        x, y = load_digits_arrays()
        x = x.reshape(-1, *self.SHAPE).astype("float32")
        # Test first, then validation from the rest, both seeded: the test set never moves.
        rest, test = holdout(x, y, test_fraction, split_seed)
        train, val = holdout(*rest, val_fraction, split_seed + 1)
        super().__init__(train, val, test, layout=self.LAYOUT, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, preprocess=preprocess, on_device=on_device,
                         name=self.NAME)
