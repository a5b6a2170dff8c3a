"""The one interface every dataset gives the trainer: tensors held in memory, batched by index.

Data small enough for memory lives as tensors on the training device; a batch is one index
into them (no DataLoader, no per-sample Python work in the hot loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlrun.errors import UserError

LAYOUTS = ("features", "signal", "image", "sequence")
# Axes that share one normalisation statistic, per layout, for the full (N, ...) array:
# every "channel" gets its own mean and std.
_STAT_AXES = {"features": (0,), "signal": (0, 2), "image": (0, 2, 3), "sequence": (0, 1)}


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


def standard_shape(x: np.ndarray, layout: str, name: str = "x") -> tuple[np.ndarray, str]:
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


class InMemoryData:
    """Train/val/test tensors plus what a model needs to know about them.

    Subclasses load arrays and call `__init__`; it checks them, decides the task from y's dtype
    (integers: classification, floats: regression), and normalises x per channel with statistics
    computed on the training split alone.
    """

    def __init__(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        *,
        layout: str,
        batch_size: int,
        eval_batch_size: int,
        normalize: bool,
        name: str,
    ):
        if batch_size < 1 or eval_batch_size < 1:
            raise UserError(f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must be >= 1")
        self.name = name
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        splits = {"train": train, "val": val, "test": test}
        xs, ys = {}, {}
        for split, (x, y) in splits.items():
            x, y = np.asarray(x), np.asarray(y)
            if len(x) != len(y):
                raise UserError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}; they must match")
            if len(x) == 0:
                raise UserError(f"the {split} split of {name} is empty; give it at least one sample")
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
                raise UserError(f"x_{split} has dtype {x.dtype}; it must be numeric")
            xs[split], layout_of_split = standard_shape(x, layout, f"x_{split}")
            ys[split] = y
        self.layout = layout_of_split
        shapes = {tuple(x.shape[1:]) for x in xs.values()}
        if len(shapes) != 1:
            raise UserError(f"the splits of {name} have different sample shapes {sorted(shapes)}; they must agree")
        self.input_shape: tuple[int, ...] = shapes.pop()

        self.task = "classification" if all(_is_integer(y) for y in ys.values()) else "regression"
        if self.task == "classification":
            for split, y in ys.items():
                if y.ndim != 1:
                    raise UserError(f"y_{split} has shape {y.shape}; class labels must be a vector (N,)")
                if y.min() < 0:
                    raise UserError(f"y_{split} has negative labels ({y.min()}); classes must be 0..C-1")
            self.num_outputs = int(max(y.max() for y in ys.values())) + 1
        else:
            ys = {s: y.reshape(len(y), -1) for s, y in ys.items()}
            widths = {y.shape[1] for y in ys.values()}
            if len(widths) != 1:
                raise UserError(f"the regression targets of {name} have different widths {sorted(widths)}")
            self.num_outputs = widths.pop()

        self.mean = self.std = None
        if normalize:
            axes = _STAT_AXES[self.layout]
            train_x = xs["train"].astype(np.float64)
            self.mean = train_x.mean(axis=axes, keepdims=True)
            std = train_x.std(axis=axes, keepdims=True)
            self.std = np.where(std < 1e-8, 1.0, std)  # constant channels (blank pixels) stay put
            xs = {s: (x - self.mean) / self.std for s, x in xs.items()}

        y_dtype = torch.long if self.task == "classification" else torch.float32
        self.splits = {
            s: Split(torch.as_tensor(np.ascontiguousarray(xs[s]), dtype=torch.float32),
                     torch.as_tensor(ys[s], dtype=y_dtype))
            for s in splits
        }

    @property
    def train(self) -> Split:
        return self.splits["train"]

    @property
    def val(self) -> Split:
        return self.splits["val"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    def to(self, device: torch.device) -> "InMemoryData":
        self.splits = {s: split.to(device) for s, split in self.splits.items()}
        return self

    def describe(self) -> str:
        sizes = "/".join(str(len(self.splits[s])) for s in ("train", "val", "test"))
        outputs = f"{self.num_outputs} classes" if self.task == "classification" else f"{self.num_outputs} targets"
        return f"{self.name}: {sizes} train/val/test, {self.layout} {self.input_shape}, {outputs}"


def _is_integer(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.integer) or y.dtype == bool


def holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Split a seeded `fraction` of (x, y) off as a held-out set: ((x_kept, y_kept), (x_held, y_held))."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"data.val_fraction={fraction} must be in (0, 1) when the data has no validation split")
    order = np.random.default_rng(seed).permutation(len(x))
    n_held = max(1, int(round(fraction * len(x))))
    if n_held >= len(x):
        raise UserError(f"data.val_fraction={fraction} leaves no training samples out of {len(x)}")
    held, kept = order[:n_held], order[n_held:]
    return (x[kept], y[kept]), (x[held], y[held])
