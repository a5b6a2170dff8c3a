"""data=image_folder: your own images, one subfolder per class, read by torchvision's ImageFolder.

    data.root/train/CLASS/*.png|jpg|...   (required)
    data.root/test/CLASS/...              (required)
    data.root/val/CLASS/...               (optional; else data.val_fraction of train, seeded)

Every image is decoded and resized to data.image_size (RGB, or grey with data.grayscale=true) as
uint8. When the whole set fits (data.on_device=auto), it is decoded once, by a DataLoader with
data.workers processes, into tensors on the device, and trains as fast as CIFAR does. When it
does not (or with data.on_device=false), each epoch streams it from the files through that
DataLoader (pinned memory, persistent workers); augmentation still runs on the device.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from dlrun.data.base import Data, StreamedSplit, holdout
from dlrun.errors import UserError

log = logging.getLogger("dlrun")

# data.on_device=auto decodes a folder into memory when it is at most this big as uint8.
HOST_BUDGET = 4 * 2**30


class ImageFolderData(Data):
    def __init__(self, root: str, image_size: int = 32, grayscale: bool = False, workers: int = 2,
                 batch_size: int = 64, eval_batch_size: int = 512, val_fraction: float = 0.1, split_seed: int = 0,
                 preprocess: str = "channel_standardize", on_device: str = "auto"):
        root = Path(str(root)).expanduser()
        steps = [v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)]
        if grayscale:
            steps.append(v2.Grayscale())
        transform = v2.Compose(steps)
        folders = {split: root / split for split in ("train", "val", "test")}
        for split in ("train", "test"):
            if not folders[split].is_dir():
                raise UserError(f"data.root={root} has no {split}/ folder; image_folder expects {root}/train/CLASS/"
                                f"IMAGE and {root}/test/CLASS/IMAGE (val/ optional), one subfolder per class")
        sets = {}
        for split, folder in folders.items():
            if split == "val" and not folder.is_dir():
                continue
            try:
                sets[split] = torchvision.datasets.ImageFolder(str(folder), transform=transform)
            except (FileNotFoundError, RuntimeError) as exc:  # no class folders, or no images in them
                raise UserError(f"data.root: {folder} holds no images in class subfolders ({exc}); "
                                f"put them at {folder}/CLASS/IMAGE") from None
        classes = sets["train"].classes
        for split, dataset in sets.items():
            if dataset.classes != classes:
                raise UserError(f"{folders[split]} has classes {dataset.classes}, but train/ has {classes}; "
                                "every split needs the same class folders")
        targets = {split: torch.as_tensor(dataset.targets, dtype=torch.long) for split, dataset in sets.items()}
        channels = 1 if grayscale else 3
        splits = {split: Images(dataset, targets[split], workers, (channels, image_size, image_size))
                  for split, dataset in sets.items()}
        if "val" not in splits:
            kept, held = holdout(torch.arange(len(targets["train"])), targets["train"], val_fraction, split_seed)
            whole = splits.pop("train")
            splits["train"], splits["val"] = whole.subset(kept[0]), whole.subset(held[0])
        total = sum(len(s) for s in splits.values()) * channels * image_size ** 2
        decode = str(on_device).lower() == "true" or (str(on_device).lower() == "auto" and total <= HOST_BUDGET)
        if decode:  # once, in parallel: from here on it is an in-memory dataset like any other
            log.info(f"image_folder: decoding {sum(len(s) for s in splits.values()):,} images "
                     f"({total / 2**20:.1f} MiB as uint8) into memory")
            splits = {split: s.decode() for split, s in splits.items()}
        super().__init__(splits["train"], splits["val"], splits["test"], layout="image", batch_size=batch_size,
                         eval_batch_size=eval_batch_size, preprocess=preprocess,
                         on_device="auto" if decode else "false", name=f"image_folder {root.name}",
                         stats_dir=root, classes=classes)


class Images(StreamedSplit):
    """A split of an ImageFolder: uint8 (C, S, S) tensors and labels, read by a DataLoader."""

    def __init__(self, dataset, y: torch.Tensor, workers: int, shape: tuple[int, int, int]):
        super().__init__(_AsUint8(dataset), y, workers, shape)

    def subset(self, index: torch.Tensor) -> "Images":
        part = Images.__new__(Images)
        StreamedSplit.__init__(part, torch.utils.data.Subset(self.dataset, index.tolist()), self.y[index],
                               self.workers, self.sample_shape)
        return part

    def decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the split as one uint8 tensor, in order (workers decode in parallel)."""
        xs = [x for x, _ in self.batches(256)]
        return torch.cat(xs).cpu(), self.y.cpu()

    def fingerprint(self) -> str:
        """What the preprocessing cache is keyed on: the files, their sizes and times, and the image shape."""
        digest = hashlib.sha1(str(self.shape).encode())  # (N, C, S, S)
        for path in _paths(self.dataset):
            stat = os.stat(path)
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()


class _AsUint8(torch.utils.data.Dataset):
    """An ImageFolder whose images come out as plain uint8 tensors (picklable: workers need it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return image.as_subclass(torch.Tensor), label


def _paths(dataset) -> list[str]:
    if isinstance(dataset, torch.utils.data.Subset):
        paths = _paths(dataset.dataset)
        return [paths[i] for i in dataset.indices]
    if isinstance(dataset, _AsUint8):
        return [path for path, _ in dataset.dataset.samples]
    return []
