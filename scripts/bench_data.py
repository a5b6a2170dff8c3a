"""Batches per second: dlrun's device-resident data path against a torchvision DataLoader.

The same in-memory CIFAR-shaped data (uint8, N x 3 x 32 x 32) and the same work per batch:
a 4-pixel padded random crop, a horizontal flip, scaling to [0, 1] and per-channel
standardisation, delivered as float32 batches on the device.

  dlrun       the tensors live on the device; a batch is one index into them, augmented and
              normalised there as a whole batch (dlrun.data: Split.batches + Augment + Preprocess)
  DataLoader  torchvision.transforms.v2 per sample in 2 worker processes (RandomCrop, RandomHorizontalFlip,
              ToDtype, Normalize), collated, pinned on CUDA, then copied to the device

No model runs: this is the data path alone, the ceiling it puts on training speed.

    python scripts/bench_data.py                     # CPU, or CUDA when there is one
    python scripts/bench_data.py --device cpu --samples 20000 --epochs 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from dlrun.data.augment import Augment
from dlrun.data.base import Data


class Images(torch.utils.data.Dataset):
    """Per-sample access to the same uint8 tensors, transformed as a torchvision pipeline does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def dlrun_path(data: Data, device: torch.device, epochs: int, batch_size: int) -> tuple[float, float]:
    augment = Augment(crop_padding=4, flip=True, seed=0, device=device)
    generator = torch.Generator().manual_seed(0)
    checksum, batches = torch.zeros((), device=device), 0
    for epoch in range(epochs + 1):  # epoch 0 warms up (allocator, kernels) and is not timed
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        order = torch.randperm(len(data.train), generator=generator)
        for x, y in data.train.batches(batch_size, order):
            x = data.normalize(augment.pixels(data.to_unit(x)))
            checksum += x[0, 0, 0, 0]  # consume the batch without a host sync
            batches += epoch > 0
    sync(device)
    return batches / (time.perf_counter() - start), float(checksum)


def loader_path(x: torch.Tensor, y: torch.Tensor, mean: list[float], std: list[float], device: torch.device,
                epochs: int, batch_size: int, workers: int) -> float:
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(Images(x, y, transform), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0, drop_last=False)
    checksum, batches = torch.zeros((), device=device), 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            sync(device)
            start = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            checksum += xb[0, 0, 0, 0]
            batches += epoch > 0
    sync(device)
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=50_000, help="CIFAR-10's training set size")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.samples, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.samples,), generator=g)
    few = torch.zeros(1, dtype=torch.long)
    data = Data((x, y), (x[:1], few), (x[:1], few), layout="image", batch_size=args.batch_size,
                eval_batch_size=1024, name="cifar-shaped", preprocess="channel_standardize").to(device)
    mean = data.preprocess.stats["mean"].flatten().tolist()
    std = data.preprocess.stats["std"].flatten().tolist()

    ours, _ = dlrun_path(data, device, args.epochs, args.batch_size)
    theirs = loader_path(x, y, mean, std, device, args.epochs, args.batch_size, args.workers)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {device} ({name}); {args.samples:,} uint8 3x32x32 images, batch {args.batch_size}, "
          f"crop(pad 4) + flip + standardise, {args.epochs} timed epoch(s)")
    print(f"dlrun device-resident path:           {ours:10.1f} batches/s")
    print(f"torchvision DataLoader ({args.workers} workers):   {theirs:10.1f} batches/s")
    print(f"ratio dlrun / DataLoader:             {ours / theirs:10.1f}x")


if __name__ == "__main__":
    main()
