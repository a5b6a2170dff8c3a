"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 real images)."""

from __future__ import annotations

from dlrun.data.base import InMemoryData, holdout
from dlrun.errors import UserError


class DigitsData(InMemoryData):
    def __init__(self, batch_size: int = 64, eval_batch_size: int = 1024, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, split_seed: int = 0, normalize: bool = True):
        from sklearn.datasets import load_digits

        if not 0.0 < test_fraction < 1.0:
            raise UserError(f"data.test_fraction={test_fraction} must be in (0, 1)")
        x, y = load_digits(return_X_y=True)
        x = x.reshape(-1, 1, 8, 8).astype("float32")  # one grey channel, values 0..16
        # Test first, then validation from the rest, both seeded: the test set never moves.
        rest, test = holdout(x, y, test_fraction, split_seed)
        train, val = holdout(*rest, val_fraction, split_seed + 1)
        super().__init__(train, val, test, layout="image", batch_size=batch_size,
                         eval_batch_size=eval_batch_size, normalize=normalize, name="digits")
