"""The one interface every dataset gives the trainer: train/val/test splits, batched by index.

Data small enough for memory lives as tensors on the training device, stored as they came
(uint8 pixels stay uint8: a quarter of float32's memory); a batch is one index into them, and
preprocessing runs on the batch, on the device (no DataLoader, no per-sample Python work in the
hot loop). A dataset too big for that (data=image_folder) gives a `StreamedSplit` instead: a
DataLoader with workers that yields the same uint8 batches.

What the trainer does with a batch:  x = data.prepare(x_raw)  or, when training,
    unit = data.to_unit(x_raw) -> augment.pixels -> data.normalize -> augment.erase -> augment.mix
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from dlrun.data.checks import INTEGERS, check_finite, check_labels, task
from dlrun.data.preprocess import Preprocess
from dlrun.errors import UserError

log = logging.getLogger("dlrun")

LAYOUTS = ("features", "signal", "image", "sequence")
ON_DEVICE = ("auto", "true", "false")
# data.on_device=auto keeps a dataset on a CUDA device when it takes at most this share of the free memory.
DEVICE_SHARE = 0.5
# A training split whose float32 copy is at most this big is shuffled an epoch at a time (Split.batches).
EPOCH_GATHER = 256 << 20


class Split:
    """One split held as tensors: x as stored (uint8 pixels or float32), y (labels or targets)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y
        self.device = x.device  # where batches are delivered (the training device)

    def __len__(self) -> int:
        return len(self.x)

    def place(self, device: torch.device, on_device: bool) -> None:
        """Keep the tensors on the training device, or in (pinned) host memory, copying each batch over."""
        self.device = device
        if on_device or device.type == "cpu":
            self.x, self.y = self.x.to(device), self.y.to(device)
        elif device.type == "cuda":  # pinned pages: the per-batch copy is asynchronous
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()

    def take(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """x[index], y[index] on the training device, x still as stored."""
        if isinstance(index, torch.Tensor):  # index_select: a gather without advanced indexing's overhead
            index = index.to(self.x.device)
            x, y = self.x.index_select(0, index), self.y.index_select(0, index)
        else:
            x, y = self.x[index], self.y[index]
        if self.device.type == "cuda" and not x.is_cuda and not x.is_pinned():
            # A gather from pinned memory is a new, pageable tensor, whose copy would make the host
            # wait: pin it (torch's caching host allocator, as DataLoader's pin_memory does).
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, start: int = 0,
                shard: tuple[int, int] = (0, 1), prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                elementwise: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (a permutation) or in storage order, from batch number `start` on.

        shard=(rank, ranks): rank's contiguous part of each batch (data-parallel training).
        prepare: applied to each batch's x (stored -> model input). A shuffled epoch of a split held
        on its training device is gathered in one go and sliced (airbench's way: a step then costs
        no gather), and an `elementwise` prepare runs once on all of it: the same numbers, in a
        handful of kernels an epoch instead of several a step.
        """
        rank, ranks = shard
        if order is None and ranks > 1:
            order = torch.arange(len(self))
        if order is not None:
            order = order.to(self.x.device, non_blocking=True)
        first = start * batch_size
        if order is not None and self.x.device == self.device and 4 * self.x.numel() <= EPOCH_GATHER:
            rest = order[first:]
            x_all, y_all = self.x.index_select(0, rest), self.y.index_select(0, rest)
            if prepare is not None and elementwise:
                x_all, prepare = prepare(x_all), None
            for begin in range(0, len(rest), batch_size):
                x, y = x_all[begin:begin + batch_size], y_all[begin:begin + batch_size]
                if ranks > 1:
                    x, y = x.tensor_split(ranks)[rank], y.tensor_split(ranks)[rank]
                yield (prepare(x) if prepare is not None else x), y
            return
        for begin in range(first, len(self), batch_size):
            index = slice(begin, begin + batch_size) if order is None else order[begin:begin + batch_size]
            x, y = self.take(index.tensor_split(ranks)[rank] if ranks > 1 else index)
            yield (prepare(x) if prepare is not None else x), y


class Data:
    """Train/val/test splits plus what a model needs to know about them.

    Subclasses load arrays or tensors and call `__init__`; it checks them, decides the task from
    y's dtype (integers: classification, floats: regression), and sets up the preprocessing with
    statistics of the training split alone (cached in `stats_dir` when a dataset has a folder).
    uint8 x are pixels: `to_unit` scales them to [0, 1] before anything else sees them.
    """

    def __init__(
        self,
        train: tuple,
        val: tuple,
        test: tuple,
        *,
        layout: str,
        batch_size: int,
        eval_batch_size: int,
        name: str,
        preprocess: str = "channel_standardize",
        on_device: str | bool = "auto",
        stats_dir: Path | None = None,
        classes: list[str] | None = None,
    ):
        if batch_size < 1 or eval_batch_size < 1:
            raise UserError(f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must be >= 1")
        self.name = name
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.on_device = str(on_device).lower()
        if self.on_device not in ON_DEVICE:
            raise UserError(f"data.on_device={on_device!r} must be auto, true or false")
        xs, ys, streamed = {}, {}, {}
        for split, given in {"train": train, "val": val, "test": test}.items():
            if isinstance(given, StreamedSplit):  # read from files batch by batch: uint8 images
                streamed[split], xs[split], ys[split] = given, given, given.y
                layout_of_split = "image"
                continue
            x, y = as_tensor(given[0]), as_tensor(given[1])
            for array, what in ((x, "x"), (y, "y")):
                if array.ndim == 0:
                    raise UserError(f"{what}_{split} is a single number, not an array with one row per sample; "
                                    f"give {what}_{split} a first dimension of samples, e.g. shape (N, ...)")
            if len(x) != len(y):
                raise UserError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}; they must match")
            if len(x) == 0:
                raise UserError(f"the {split} split of {name} is empty; give it at least one sample")
            if x.dtype == torch.bool:
                x = x.to(torch.uint8)
            if x.is_complex() or not (x.is_floating_point() or x.dtype in INTEGERS):
                raise UserError(f"x_{split} has dtype {x.dtype}; it must be numeric")
            if x.is_floating_point():
                check_finite(x, f"x_{split}")
            xs[split], layout_of_split = standard_shape(x, layout, f"x_{split}")
            ys[split] = y
        self.layout = layout_of_split
        shapes = {tuple(x.shape[1:]) for x in xs.values()}  # a StreamedSplit's shape is (N, C, H, W) too
        if len(shapes) != 1:
            raise UserError(f"the splits of {name} have different sample shapes {sorted(shapes)}; they must agree")
        self.input_shape: tuple[int, ...] = shapes.pop()
        # uint8 is pixels (0..255 -> [0, 1]); any other integer or float type is taken as it is, in float32.
        self.scale = 1 / 255 if xs["train"].dtype == torch.uint8 else None
        xs = {s: x if s in streamed or x.dtype == torch.uint8 else x.float() for s, x in xs.items()}

        self.task = task(ys)
        if self.task == "classification":
            self.num_outputs = check_labels(ys, classes, name)
            ys = {s: y.long() for s, y in ys.items()}
        else:
            for split, y in ys.items():
                check_finite(y, f"y_{split}")
            ys = {s: y.reshape(len(y), -1).float() for s, y in ys.items()}
            widths = {y.shape[1] for y in ys.values()}
            if len(widths) != 1:
                raise UserError(f"the regression targets of {name} have different widths {sorted(widths)}")
            self.num_outputs = widths.pop()
        self.classes = classes

        self.preprocess = Preprocess.fit(preprocess, xs["train"], self.layout, self.scale, stats_dir, name)
        if self.preprocess.flattens:  # pca_whiten: the model sees the whitened coefficients as features
            self.layout, self.input_shape = "features", (int(np.prod(self.input_shape)),)
        self.splits: dict[str, Split | StreamedSplit] = {s: streamed.get(s) or Split(xs[s], ys[s]) for s in xs}
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------------------ splits
    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def val(self) -> Split:
        return self.splits["val"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    def nbytes(self) -> int:
        return sum(s.x.numel() * s.x.element_size() + s.y.numel() * s.y.element_size()
                   for s in self.splits.values() if isinstance(s, Split))

    def to(self, device: torch.device) -> "Data":
        """Deliver batches on `device`; data.on_device says whether the tensors move there too."""
        self.device = device
        on_device = self.on_device == "true" or (self.on_device == "auto" and fits(self.nbytes(), device))
        try:
            for split in self.splits.values():
                split.place(device, on_device)
        except torch.OutOfMemoryError:
            raise UserError(f"data.on_device=true: {self.name} ({self.nbytes() / 2**30:.1f} GiB) does not fit in "
                            f"{device}'s memory; use data.on_device=false (batches are copied over as needed)") from None
        self.preprocess.to(device)
        return self

    # ---------------------------------------------------------------------------- batches
    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Stored x -> float32: pixels scaled to [0, 1], anything else as it is."""
        return x.float() * self.scale if self.scale is not None else x.float()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-scaled x -> what the model reads: data.preprocess with the training split's statistics."""
        return self.preprocess(x)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Stored x -> model input, without augmentation (evaluation, checks)."""
        return self.normalize(self.to_unit(x))

    @property
    def elementwise(self) -> bool:
        """Whether prepare maps each number alone (every method but pca_whiten's matrix product), so
        that preparing many batches at once gives each the numbers it gets alone."""
        return not self.preprocess.flattens

    def batch(self, split: Split | str, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """A model-ready (x, y) of `split` at `index`, on the training device."""
        split = self.splits[split] if isinstance(split, str) else split
        x, y = split.take(index)
        return self.prepare(x), y

    def describe(self) -> str:
        sizes = "/".join(str(len(self.splits[s])) for s in ("train", "val", "test"))
        outputs = f"{self.num_outputs} classes" if self.task == "classification" else f"{self.num_outputs} targets"
        stored = " uint8" if self.scale is not None else ""
        return (f"{self.name}: {sizes} train/val/test, {self.layout} {self.input_shape}{stored}, {outputs}, "
                f"preprocess {self.preprocess.method}")


class StreamedSplit:
    """A split read from files by a torch DataLoader each time it is iterated (data=image_folder).

    `dataset[i]` must give (uint8 CHW tensor, label). Batches come out as a `Split`'s do: stored
    (uint8) x and y on the training device, in `order` from batch `start` on, so a resumed run
    continues the permutation it was in.
    """

    dtype = torch.uint8

    def __init__(self, dataset: torch.utils.data.Dataset, y: torch.Tensor, workers: int, sample_shape: tuple):
        self.dataset, self.y, self.workers = dataset, y, workers
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device("cpu")
        self.sampler = _OrderedBatches()
        self.loader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """x in chunks of `size` samples, in order (as Tensor.split gives them): for statistics."""
        for x, _ in self.batches(size):
            yield x

    def place(self, device: torch.device, on_device: bool) -> None:
        self.device = device
        self.y = self.y.to(device)

    def take(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        x = torch.stack([self.dataset[i][0] for i in rows])
        return x.to(self.device), self.y[torch.as_tensor(list(rows), device=self.y.device)]

    def batches(self, batch_size: int, order: torch.Tensor | None = None, start: int = 0,
                shard: tuple[int, int] = (0, 1), prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                elementwise: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, ranks = shard  # as Split.batches: rank's part of each batch (not a DistributedSampler,
        # whose padded strided shards would make N ranks train on other batches than one process)
        order = torch.arange(len(self)) if order is None else order.cpu()
        chunks = [c.tensor_split(ranks)[rank].tolist() for c in order[start * batch_size:].split(batch_size)]
        # A last batch smaller than the ranks leaves some an empty part, which a DataLoader cannot
        # collate: those get an empty batch here (a DDP rank must still take the step).
        self.sampler.chunks = [c for c in chunks if c]
        if self.loader is None:  # one loader, so persistent workers survive from epoch to epoch
            self.loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None)
        loaded = iter(self.loader)
        for chunk in chunks:
            if not chunk:
                yield torch.empty((0, *self.sample_shape), dtype=self.dtype, device=self.device), self.y[:0]
                continue
            x, y = next(loaded)
            x = x.to(self.device, non_blocking=True)
            yield (prepare(x) if prepare is not None else x), y.to(self.device, non_blocking=True)


class _OrderedBatches:
    """A batch sampler whose batches the split sets before each pass (a DataLoader reads it lazily)."""

    def __init__(self):
        self.chunks: list[list[int]] = []

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


# ------------------------------------------------------------------------------------ helpers


def as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    a = np.asarray(a)
    if a.dtype == np.uint16 or a.dtype == np.uint32 or a.dtype == np.uint64:
        a = a.astype(np.int64)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise UserError(f"an array has dtype {a.dtype}; data must be numeric")
    try:
        return torch.from_numpy(np.ascontiguousarray(a))
    except TypeError:  # float128, complex256: numeric, but no torch dtype holds them
        raise UserError(f"an array has dtype {a.dtype}, which torch cannot hold; save it as float32 or float64") from None


def fits(nbytes: int, device: torch.device) -> bool:
    """Whether data.on_device=auto keeps `nbytes` of data on `device` (always, for the CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def standard_shape(x: torch.Tensor, layout: str, name: str = "x") -> tuple[torch.Tensor, str]:
    """Bring x to the canonical shape of its layout: (N, F), (N, C, L), (N, C, H, W) or (N, T, F).

    `layout="auto"` decides from the rank where that is unambiguous: (N, F) is features and
    (N, C, H, W) an image; a rank-3 array could be a signal, an image or a sequence, so it needs
    the user to say which.
    """
    rank = x.ndim
    if layout not in ("auto", *LAYOUTS):
        raise UserError(f"data.layout={layout!r} is not a layout; use auto, {', '.join(LAYOUTS)}")
    if layout == "auto":
        if rank == 2:
            layout = "features"
        elif rank == 4:
            layout = "image"
        elif rank == 3:
            raise UserError(
                f"{name} is 3-D {tuple(x.shape)}: say what it holds with data.layout=image (N, H, W), "
                "data.layout=signal (N, C, L) or data.layout=sequence (N, T, F)"
            )
    expected = {"features": (2,), "signal": (2, 3), "image": (3, 4), "sequence": (3,)}
    if layout == "auto" or rank not in expected[layout]:
        raise UserError(
            f"{name} has shape {tuple(x.shape)}, which is not a {layout if layout != 'auto' else 'supported'} "
            "array; accepted: (N, F) features, (N, C, L) or (N, L) signals, (N, C, H, W) or (N, H, W) "
            "images, (N, T, F) sequences"
        )
    if layout in ("signal", "image") and rank == expected[layout][0]:
        x = x[:, None]  # (N, L) -> (N, 1, L) and (N, H, W) -> (N, 1, H, W): one channel
    return x, layout


def holdout(x, y, fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Split a seeded `fraction` of (x, y) off as a held-out set: ((x_kept, y_kept), (x_held, y_held))."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"data.val_fraction={fraction} must be in (0, 1) when the data has no validation split")
    order = np.random.default_rng(seed).permutation(len(x))
    n_held = max(1, int(round(fraction * len(x))))
    if n_held >= len(x):
        raise UserError(f"data.val_fraction={fraction} leaves no training samples out of {len(x)}")
    held, kept = order[:n_held], order[n_held:]
    if isinstance(x, torch.Tensor):
        held, kept = torch.from_numpy(held), torch.from_numpy(kept)
    return (x[kept], y[kept]), (x[held], y[held])
