"""Any array dataset in the Keras npz convention: x_train, y_train, x_test, y_test[, x_val, y_val]."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dlrun.data.base import Data, holdout
from dlrun.data.checks import check_finite
from dlrun.errors import UserError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an npz file; refuse pickled objects (loading them could run code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data.path: no file '{path}'; pass data.path=/path/to/file.npz")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle anything that is not a zip
        raise UserError(f"data.path: '{path}' is not a readable .npz file (not a zip archive); "
                        "write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"data.path: '{path}' is not a readable .npz file ({exc}); write it with numpy.savez") from None
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise UserError(f"data.path: '{path}' holds arrays numpy cannot read without pickle ({exc}); "
                        "save plain numeric arrays") from None


class ArrayData(Data):
    def __init__(self, path: str, layout: str = "auto", batch_size: int = 64, eval_batch_size: int = 1024,
                 val_fraction: float = 0.1, split_seed: int = 0,
                 preprocess: str = "channel_standardize", on_device: str = "auto"):
        arrays = read_npz(path)
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise UserError(f"data.path: '{path}' has no {', '.join(missing)} (it has: {', '.join(arrays) or 'nothing'}); "
                            f"an npz needs {', '.join(REQUIRED)} and may add x_val, y_val")
        check_arrays(arrays)
        train = arrays["x_train"], arrays["y_train"]
        if "x_val" in arrays and "y_val" in arrays:
            val = arrays["x_val"], arrays["y_val"]
        else:
            if len(train[0]) != len(train[1]):
                raise UserError(f"x_train has {len(train[0])} samples but y_train has {len(train[1])}; they must match")
            train, val = holdout(*train, val_fraction, split_seed)
        test = arrays["x_test"], arrays["y_test"]
        super().__init__(train, val, test, layout=layout, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         preprocess=preprocess, on_device=on_device, name=Path(path).name,
                         stats_dir=Path(path).expanduser().parent)


def check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """What must hold before y_train is split: arrays of samples, and no label y_train has no class for.

    The rest (dtypes, finite values, shapes) is Data's to check, split by split.
    """
    for key, array in arrays.items():
        if key in (*REQUIRED, "x_val", "y_val") and array.ndim == 0:
            raise UserError(f"{key} is a single number, not an array with one row per sample; give {key} "
                            "a first dimension of samples, e.g. shape (N, ...)")
        if key in (*REQUIRED, "x_val", "y_val") and np.issubdtype(array.dtype, np.floating):
            check_finite(array, key)  # here, by the file's names: a held-out val is still x_train's
    train = arrays["y_train"]
    if not _labels(train) or train.size == 0 or train.min() < 0:  # Data names negative labels
        return
    top = int(train.max())
    for key in ("y_val", "y_test"):
        y = arrays.get(key)
        if y is not None and _labels(y) and y.size and int(y.max()) > top:
            raise UserError(f"{key} holds label {int(y.max())} but y_train's classes are 0..{top}; relabel {key} "
                            f"to y_train's classes, or add training samples of class {int(y.max())} to y_train")


def _labels(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.integer) or y.dtype == bool
