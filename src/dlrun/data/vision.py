"""data=mnist|fashion_mnist|cifar10|cifar100|svhn: torchvision's datasets, read from their real formats.

torchvision reads the files (MNIST's IDX ubyte files, CIFAR's pickled batches, SVHN's .mat) and,
with data.download=true, fetches them. dlrun keeps the pixels as uint8 tensors (a quarter of
float32's memory, on the device when they fit) and holds data.val_fraction of the training set out
for validation with a fixed seed; the test set is the dataset's own.

Where: data.root, by default $DLRUN_DATA or ~/.cache/dlrun/data. Files are checked for presence,
not checksums (torchvision checks those when it downloads), so a copy from elsewhere loads too.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision

from dlrun.data.base import Data, holdout
from dlrun.errors import UserError

log = logging.getLogger("dlrun")


class _CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's reader, with the md5 check (which only a pristine download passes) made a presence check."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        self.classes = []
        if path.is_file():
            with open(path, "rb") as file:
                self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]


class _CIFAR100(_CIFAR10):
    base_folder, train_list, test_list, meta = (torchvision.datasets.CIFAR100.base_folder,
                                                torchvision.datasets.CIFAR100.train_list,
                                                torchvision.datasets.CIFAR100.test_list,
                                                torchvision.datasets.CIFAR100.meta)
    url, filename, tgz_md5 = (torchvision.datasets.CIFAR100.url, torchvision.datasets.CIFAR100.filename,
                              torchvision.datasets.CIFAR100.tgz_md5)


class _SVHN(torchvision.datasets.SVHN):
    def _check_integrity(self) -> bool:
        return (Path(self.root) / self.filename).is_file()


class TorchvisionData(Data):
    """One of torchvision's in-memory image datasets as uint8 (N, C, H, W) tensors."""

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
        if download:
            root.mkdir(parents=True, exist_ok=True)
            try:
                self.open(root, train, True)
            except Exception as exc:  # offline: URLError, OSError, or torchvision's RuntimeError
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                reason = lines[-1] if lines else type(exc).__name__  # MNIST's message ends with the cause
                raise UserError(f"data.download=true: could not download {self.title} into {root} ({reason}); "
                                f"copy {self.expected} there by hand, or set data.root= (or DLRUN_DATA) "
                                "to where they are") from None
        try:
            dataset = self.open(root, train, False)
        except RuntimeError:
            raise UserError(self.missing(root)) from None
        return self.arrays(dataset)

    def missing(self, root: Path) -> str:
        return (f"data={self.option}: no {self.title} in {root} (expected {self.expected}); fetch it with "
                f"`dlrun train data={self.option} data.download=true` on a machine that is online, or set "
                "data.root= (or DLRUN_DATA) to the folder that holds it")

    def open(self, root: Path, train: bool, download: bool):
        raise NotImplementedError

    def arrays(self, dataset) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        raise NotImplementedError


class _MNISTLike(TorchvisionData):
    source: type = torchvision.datasets.MNIST

    def open(self, root: Path, train: bool, download: bool):
        return self.source(str(root), train=train, download=download)

    def arrays(self, dataset):
        return dataset.data[:, None].contiguous(), dataset.targets.long(), list(dataset.classes)


class MNIST(_MNISTLike):
    option, title, folder = "mnist", "MNIST", "MNIST"
    expected = ("MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                "(the four IDX files, uncompressed)")


class FashionMNIST(_MNISTLike):
    source = torchvision.datasets.FashionMNIST
    option, title, folder = "fashion_mnist", "Fashion-MNIST", "FashionMNIST"
    expected = ("FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                "(the four IDX files, uncompressed)")


class CIFAR10(TorchvisionData):
    source: type = _CIFAR10
    option, title, folder = "cifar10", "CIFAR-10", "cifar-10-batches-py"
    expected = "cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta"

    def open(self, root: Path, train: bool, download: bool):
        return self.source(str(root), train=train, download=download)

    def arrays(self, dataset):
        x = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
        return x, torch.as_tensor(dataset.targets, dtype=torch.long), list(dataset.classes)


class CIFAR100(CIFAR10):
    source = _CIFAR100
    option, title, folder = "cifar100", "CIFAR-100", "cifar-100-python"
    expected = "cifar-100-python/train, test, meta"


class SVHN(TorchvisionData):
    option, title, folder = "svhn", "SVHN", "svhn"
    expected = "svhn/train_32x32.mat and svhn/test_32x32.mat (the cropped-digits format)"

    def open(self, root: Path, train: bool, download: bool):
        try:
            import scipy.io  # noqa: F401  (torchvision reads .mat files with it)
        except ImportError:
            raise UserError("data=svhn reads .mat files with scipy, which is not installed; "
                            "pip install scipy") from None
        return _SVHN(str(root / self.folder), split="train" if train else "test", download=download)

    def arrays(self, dataset):
        # torchvision has already turned SVHN's label 10 (the digit 0) into 0.
        return (torch.from_numpy(np.ascontiguousarray(dataset.data)), torch.as_tensor(dataset.labels).long(),
                [str(d) for d in range(10)])
