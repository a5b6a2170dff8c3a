"""Dataset files are data: read them so that no file can run code, and check the published ones.

A data root is often shared (a cluster's scratch, a copy from a colleague), so a file in it is
untrusted. CIFAR's python batches are pickles, and `pickle.load` runs whatever callable a pickle
names; `load_pickle` admits only what those batches are made of (dicts, lists, strings, numbers,
numpy arrays), refuses any other global before calling anything, and reads the bytes once, so
the md5 checked is that of the bytes parsed.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class ForeignGlobal(pickle.UnpicklingError):
    """A pickle named a callable that a dataset file never holds; nothing was called."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.name = f"{module}.{name}"


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes, and for nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _frombuffer(buffer, dtype, shape, order):
    """numpy's protocol-5 array reduction, without handing the unpickler numpy's own function."""
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


# numpy's reducers, taken from numpy itself: their module moved (numpy.core -> numpy._core in 2.0),
# and files written by either name must load. Object arrays only hold what this unpickler made.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_SCALAR = np.int64(0).__reduce__()[0]
ALLOWED = {
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class DataUnpickler(pickle.Unpickler):
    """Containers, strings, numbers and numpy arrays; any other global is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise ForeignGlobal(module, name) from None


def load_pickle(raw: bytes) -> Any:
    """The object pickled in `raw`, as Python 2's pickles (CIFAR's) need it: str read as latin-1.

    Raises ForeignGlobal for a callable outside ALLOWED, pickle.UnpicklingError (or whatever a
    malformed stream makes the unpickler raise) for anything else that is not a whole pickle.
    """
    return DataUnpickler(io.BytesIO(raw), encoding="latin1").load()


def md5(raw: bytes) -> str:
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
