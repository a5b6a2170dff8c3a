"""data=mnist|fashion_mnist|cifar10|cifar100|svhn: the real datasets, read from their real formats.

torchvision fetches them (data.download=true; it checks the archives' md5s) and reads MNIST's IDX
ubyte files and SVHN's .mat files, which are parsed, never executed. CIFAR's python batches are
pickles, so dlrun reads them itself, with an unpickler that admits only arrays, lists, dicts,
strings and numbers (data/files.py): a file in a shared data root cannot run code. A file holding
as many samples as the published one is taken for it and must match torchvision's md5 for it; a
smaller file (a subset, a test's) has no published checksum and is read as data.

dlrun keeps the pixels as uint8 tensors (a quarter of float32's memory, on the device when they
fit) and holds data.val_fraction of the training set out for validation with a fixed seed; the
test set is the dataset's own. Where: data.root, by default $DLRUN_DATA or ~/.cache/dlrun/data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torchvision

from dlrun.data.base import Data, holdout
from dlrun.data.files import ForeignGlobal, file_md5, load_pickle, md5
from dlrun.errors import UserError

log = logging.getLogger("dlrun")


class TorchvisionData(Data):
    """One of the in-memory image datasets as uint8 (N, C, H, W) tensors."""

    option = ""         # the data= name
    title = ""          # as people write it
    folder = ""         # under data.root
    expected = ""       # the files, for the missing-data message

    def __init__(self, root: str = "~/.cache/dlrun/data", download: bool = False, batch_size: int = 128,
                 eval_batch_size: int = 1024, val_fraction: float = 0.1, split_seed: int = 0,
                 preprocess: str = "channel_standardize", on_device: str = "auto"):
        root = Path(str(root)).expanduser()
        train_x, train_y, classes = self.read(root, True, download)
        test_x, test_y, _ = self.read(root, False, download)  # SVHN downloads each split's file apart
        train, val = holdout(train_x, train_y, val_fraction, split_seed)
        super().__init__(train, val, (test_x, test_y), layout="image", batch_size=batch_size,
                         eval_batch_size=eval_batch_size, preprocess=preprocess, on_device=on_device,
                         name=self.option, stats_dir=root / self.folder, classes=classes)

    def read(self, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(x uint8 (N, C, H, W), y int64 (N,), class names) of the train or test split."""
        if download and not all(path.is_file() for path in self.files(root, train)):
            root.mkdir(parents=True, exist_ok=True)
            try:
                self.fetch(root, train)
            except Exception as exc:  # offline: URLError, OSError, or torchvision's RuntimeError
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                reason = lines[-1] if lines else type(exc).__name__  # MNIST's message ends with the cause
                raise UserError(f"data.download=true: could not download {self.title} into {root} ({reason}); "
                                f"copy {self.expected} there by hand, or set data.root= (or DLRUN_DATA) "
                                "to where they are") from None
        if not all(path.is_file() for path in self.files(root, train)):
            raise UserError(self.missing(root))
        return self.load(root, train)

    def missing(self, root: Path) -> str:
        return (f"data={self.option}: no {self.title} in {root} (expected {self.expected}); fetch it with "
                f"`dlrun train data={self.option} data.download=true` on a machine that is online, or set "
                "data.root= (or DLRUN_DATA) to the folder that holds it")

    def unreadable(self, path: Path | str, why: str) -> UserError:
        return UserError(f"data={self.option}: {path} is not {self.title}'s format ({why}); delete it and fetch the "
                         f"published files with `dlrun train data={self.option} data.download=true`, or set "
                         "data.root= (or DLRUN_DATA) to a folder that holds them")

    def check_published(self, path: Path, samples: int, published: int, expected_md5: str, digest) -> None:
        """A file as big as the published one claims to be it: its md5 (digest()) must be torchvision's."""
        if samples == published and (got_md5 := digest()) != expected_md5:
            raise UserError(f"data={self.option}: {path} holds {samples:,} samples, as the published {self.title} "
                            f"file does, but its md5 is {got_md5}, not {expected_md5} (damaged or altered); delete "
                            f"it and fetch it again with `dlrun train data={self.option} data.download=true`")

    def files(self, root: Path, train: bool) -> list[Path]:
        """The files a split needs; all present, or the split is missing."""
        raise NotImplementedError

    def fetch(self, root: Path, train: bool) -> None:
        raise NotImplementedError

    def load(self, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        raise NotImplementedError


class MNIST(TorchvisionData):
    source: type = torchvision.datasets.MNIST
    option, title, folder = "mnist", "MNIST", "MNIST"
    expected = ("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                "(the four IDX files, uncompressed)")

    def files(self, root: Path, train: bool) -> list[Path]:
        prefix = "train" if train else "t10k"
        return [root / self.folder / "raw" / f"{prefix}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]

    def fetch(self, root: Path, train: bool) -> None:
        self.source(str(root), train=train, download=True)

    def load(self, root: Path, train: bool):
        try:
            dataset = self.source(str(root), train=train, download=False)
        except Exception as exc:  # whatever torchvision's IDX parser raises on bytes that are not IDX
            raise self.unreadable(" and ".join(map(str, self.files(root, train))),
                                  f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        return dataset.data[:, None].contiguous(), dataset.targets.long(), list(dataset.classes)


class FashionMNIST(MNIST):
    source = torchvision.datasets.FashionMNIST
    option, title, folder = "fashion_mnist", "Fashion-MNIST", "FashionMNIST"
    expected = ("FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                "(the four IDX files, uncompressed)")


class CIFAR10(TorchvisionData):
    source: type = torchvision.datasets.CIFAR10  # the file names, their md5s, the archive and its md5
    option, title, folder = "cifar10", "CIFAR-10", "cifar-10-batches-py"
    expected = "cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta"
    published = {name: 10_000 for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                           "data_batch_5", "test_batch")}

    def files(self, root: Path, train: bool) -> list[Path]:
        # One archive holds both splits, as torchvision's presence check says.
        return [root / self.folder / name for name, _ in self.source.train_list + self.source.test_list]

    def fetch(self, root: Path, train: bool) -> None:
        # torchvision's download alone: its constructor would pickle.load every batch afterwards.
        dataset = self.source.__new__(self.source)
        dataset.root = str(root)
        dataset.download()

    def load(self, root: Path, train: bool):
        xs, ys = [], []
        for name, expected_md5 in self.source.train_list if train else self.source.test_list:
            x, y = self.batch(root / self.folder / name, expected_md5)
            xs.append(x), ys.append(y)
        x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32))  # R, G, B planes: NCHW as stored
        return x, torch.from_numpy(np.concatenate(ys)), self.class_names(root / self.folder / self.source.meta["filename"])

    def unpickle(self, path: Path) -> tuple[object, bytes]:
        raw = path.read_bytes()  # once: the bytes checked are the bytes parsed
        try:
            return load_pickle(raw), raw
        except ForeignGlobal as exc:
            raise self.unreadable(path, f"its pickle would call {exc.name}, which a {self.title} file never "
                                        "holds; nothing was run") from None
        except Exception as exc:  # whatever the unpickler raises on a stream that is not a whole pickle
            raise self.unreadable(path, f"not a readable pickle: {type(exc).__name__}: {exc}") from None

    def batch(self, path: Path, expected_md5: str) -> tuple[np.ndarray, np.ndarray]:
        """A batch's (N, 3072) uint8 pixels and (N,) int64 labels, checked."""
        entry, raw = self.unpickle(path)
        if not isinstance(entry, dict):
            raise self.unreadable(path, f"it holds a {type(entry).__name__}, not a dict")
        key = "labels" if "labels" in entry else "fine_labels"  # CIFAR-10's name, CIFAR-100's
        x, labels = entry.get("data"), entry.get(key)
        if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072):
            raise self.unreadable(path, "its 'data' is not an (N, 3072) uint8 array")
        try:
            y = np.asarray(labels)
        except (TypeError, ValueError, OverflowError):
            y = np.empty(0, dtype=object)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise self.unreadable(path, f"its '{key}' is not a list of {len(x)} integer labels")
        self.check_published(path, len(x), self.published.get(path.name, -1), expected_md5, lambda: md5(raw))
        return x, y.astype(np.int64)

    def class_names(self, path: Path) -> list[str]:
        """The class names from the meta file (names only, so no checksum; none if it is absent)."""
        if not path.is_file():
            return []
        meta, _ = self.unpickle(path)
        names = meta.get(self.source.meta["key"]) if isinstance(meta, dict) else None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise self.unreadable(path, f"it has no list of class names under '{self.source.meta['key']}'")
        return names


class CIFAR100(CIFAR10):
    source = torchvision.datasets.CIFAR100
    option, title, folder = "cifar100", "CIFAR-100", "cifar-100-python"
    expected = "cifar-100-python/train, test, meta"
    published = {"train": 50_000, "test": 10_000}


class _SVHN(torchvision.datasets.SVHN):
    def _check_integrity(self) -> bool:  # the md5 is dlrun's to check, after reading (SVHN.check_published)
        return (Path(self.root) / self.filename).is_file()


class SVHN(TorchvisionData):
    option, title, folder = "svhn", "SVHN", "svhn"
    expected = "svhn/train_32x32.mat and svhn/test_32x32.mat (the cropped-digits format)"
    published = {"train": 73_257, "test": 26_032}

    def files(self, root: Path, train: bool) -> list[Path]:
        split = "train" if train else "test"
        return [root / self.folder / torchvision.datasets.SVHN.split_list[split][1]]

    def fetch(self, root: Path, train: bool) -> None:
        self.open(root, train, True)

    def open(self, root: Path, train: bool, download: bool):
        try:
            import scipy.io  # noqa: F401  (torchvision reads .mat files with it)
        except ImportError:
            raise UserError("data=svhn reads .mat files with scipy, which is not installed; "
                            "pip install scipy") from None
        return _SVHN(str(root / self.folder), split="train" if train else "test", download=download)

    def load(self, root: Path, train: bool):
        split, (path,) = "train" if train else "test", self.files(root, train)
        try:
            dataset = self.open(root, train, False)
        except UserError:
            raise
        except Exception as exc:  # whatever scipy's .mat reader raises on bytes that are not one
            raise self.unreadable(path, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if dataset.data.dtype != np.uint8 or dataset.data.ndim != 4 or dataset.labels.ndim != 1:
            raise self.unreadable(path, "its X is not a (32, 32, 3, N) uint8 array with a label per image")
        self.check_published(path, len(dataset.labels), self.published[split],
                             torchvision.datasets.SVHN.split_list[split][2], lambda: file_md5(path))
        # torchvision has already turned SVHN's label 10 (the digit 0) into 0.
        return (torch.from_numpy(np.ascontiguousarray(dataset.data)), torch.as_tensor(dataset.labels).long(),
                [str(d) for d in range(10)])
