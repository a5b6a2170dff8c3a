"""data.preprocess: the notes' preprocessing, with statistics of the training split alone.

    none                 x as it is (pixels scaled to [0, 1])
    mean_image           x - the mean image (one mean per pixel and channel; AlexNet's choice)
    channel_mean         x - one mean per channel (VGG's choice)
    channel_standardize  (x - channel mean) / channel std (the usual default)
    pca_whiten           flat x centred, rotated onto the covariance's eigenvectors and each
                         coordinate divided by sqrt(eigenvalue + 1e-5): decorrelated, unit variance

The statistics are computed once, in float64, from the training split and applied to every
split (val and test never contribute: that would leak them into training). Where a dataset has
a folder, they are cached there, keyed by the method and a hash of the training data, so PCA's
covariance is not recomputed at every start.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import torch

from dlrun.errors import UserError

log = logging.getLogger("dlrun")

METHODS = ("none", "mean_image", "channel_mean", "channel_standardize", "pca_whiten")
# Axes that share one statistic, per layout, of the full (N, ...) array: every "channel" gets its own.
CHANNEL_AXES = {"features": (0,), "signal": (0, 2), "image": (0, 2, 3), "sequence": (0, 1)}
WHITEN_EPS = 1e-5  # cs231n's Xrot / sqrt(S + 1e-5): keeps near-zero directions from blowing up
CHUNK = 4096       # samples converted to float64 at a time: big uint8 sets never get a float64 copy


class Preprocess:
    def __init__(self, method: str, stats: dict[str, torch.Tensor]):
        self.method = method
        self.stats = {k: v.float() for k, v in stats.items()}  # float64 to compute, float32 to apply
        self.flattens = method == "pca_whiten"

    @classmethod
    def fit(cls, method: str, x: torch.Tensor, layout: str, scale: float | None,
            cache_dir: Path | None = None, name: str = "") -> "Preprocess":
        """Statistics of the training split `x` (as stored) for `method`, from the cache when there."""
        if method not in METHODS:
            raise UserError(f"data.preprocess={method!r} is not a preprocessing; use {', '.join(METHODS)}")
        if method == "none":
            return cls(method, {})
        cache = cache_path(cache_dir, method, x) if cache_dir is not None else None
        if cache is not None and cache.is_file():
            try:
                stats = torch.load(cache, weights_only=True)
                problem = unfit(stats, expected_shapes(method, tuple(x.shape), layout))
            except Exception as exc:  # a damaged cache is recomputed, never trusted
                problem = str(exc)
            if not problem:
                return cls(method, stats)
            log.warning(f"ignoring the preprocessing cache {cache} ({problem}); computing it again")
        stats = statistics(method, x, layout, scale)
        if cache is not None:
            write_cache(stats, cache)
        return cls(method, stats)

    def to(self, device: torch.device) -> "Preprocess":
        self.stats = {k: v.to(device) for k, v in self.stats.items()}
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stats
        if self.method == "none":
            return x
        if self.method in ("mean_image", "channel_mean"):
            return x - s["mean"]
        if self.method == "channel_standardize":
            return (x - s["mean"]) / s["std"]
        return (x.flatten(1) - s["mean"]) @ s["whiten"]  # pca_whiten


def statistics(method: str, x: torch.Tensor, layout: str, scale: float | None) -> dict[str, torch.Tensor]:
    """The float64 statistics `method` needs, from x as stored (times `scale` for pixels)."""
    unit = scale if scale is not None else 1.0
    if method == "mean_image":
        return {"mean": _mean(x, (0,), unit)}
    if method in ("channel_mean", "channel_standardize"):
        axes = CHANNEL_AXES[layout]
        mean = _mean(x, axes, unit)
        if method == "channel_mean":
            return {"mean": mean}
        var = _sum(x, axes, unit, lambda c: (c - mean) ** 2) / _count(x, axes)  # two passes: no cancellation
        std = var.sqrt()
        return {"mean": mean, "std": torch.where(std < 1e-8, torch.ones_like(std), std)}  # constant channels stay
    # pca_whiten: covariance of the flat, centred training data; eigh gives it exactly (symmetric).
    mean = _mean(x, (0,), unit).flatten(1)

    def scatter(chunk: torch.Tensor) -> torch.Tensor:
        centred = chunk.flatten(1) - mean
        return centred.T @ centred

    cov = _sum(x, None, unit, scatter) / len(x)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    order = eigenvalues.argsort(descending=True)  # first coordinate: the direction of most variance
    eigenvalues, eigenvectors = eigenvalues[order].clamp_min(0), eigenvectors[:, order]
    return {"mean": mean, "whiten": eigenvectors / (eigenvalues + WHITEN_EPS).sqrt()}


def _count(x: torch.Tensor, axes: tuple[int, ...]) -> int:
    count = 1
    for axis in axes:
        count *= x.shape[axis]
    return count


def _sum(x: torch.Tensor, axes, unit: float, f) -> torch.Tensor:
    """sum over `axes` (None: f's own reduction) of f(chunk in float64), chunk by chunk of samples."""
    total = None
    for chunk in x.split(CHUNK):
        value = f(chunk.to(torch.float64) * unit)
        value = value.sum(dim=axes, keepdim=True) if axes is not None else value
        total = value if total is None else total + value
    return total


def _mean(x: torch.Tensor, axes: tuple[int, ...], unit: float) -> torch.Tensor:
    return _sum(x, axes, unit, lambda c: c) / _count(x, axes)


def cache_path(folder: Path, method: str, x: torch.Tensor) -> Path:
    """The cache file for `method` on this exact training split (its bytes and shape, hashed)."""
    digest = hashlib.sha1(str((method, tuple(x.shape), str(x.dtype))).encode())
    if hasattr(x, "fingerprint"):  # a StreamedSplit: its files, not its decoded bytes
        digest.update(x.fingerprint().encode())
    else:
        digest.update(x.contiguous().view(torch.uint8).numpy().data)
    return Path(folder) / f".dlrun-stats-{method}-{digest.hexdigest()[:16]}.pt"


def expected_shapes(method: str, shape: tuple[int, ...], layout: str) -> dict[str, tuple[int, ...]]:
    """The statistics `method` computes from a training split of `shape` (N, ...), and their shapes."""
    if method == "mean_image":
        return {"mean": (1, *shape[1:])}
    if method in ("channel_mean", "channel_standardize"):
        kept = tuple(1 if axis in CHANNEL_AXES[layout] else size for axis, size in enumerate(shape))
        return {"mean": kept} if method == "channel_mean" else {"mean": kept, "std": kept}
    features = math.prod(shape[1:])
    return {"mean": (1, features), "whiten": (features, features)}


def unfit(stats, expected: dict[str, tuple[int, ...]]) -> str:
    """Why a loaded cache cannot be used ('' when it can): the data folder may be shared, so a cache
    with other keys, shapes or a nan in it is recomputed rather than trusted."""
    if not isinstance(stats, dict) or set(stats) != set(expected):
        return f"it holds {sorted(stats) if isinstance(stats, dict) else type(stats).__name__}, not {sorted(expected)}"
    for key, value in stats.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) == expected[key]):
            return f"its {key} is not a float tensor of shape {expected[key]}"
        if not bool(torch.isfinite(value).all()):
            return f"its {key} holds inf or nan"
    return ""


def write_cache(stats: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically, and only where the folder is writable: a read-only dataset folder is fine."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        # A shared folder may hold a link at the temp name: unlink removes the link (never its
        # target), and O_EXCL | O_NOFOLLOW makes a file of our own or fails.
        tmp.unlink(missing_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as file:
            torch.save(stats, file)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug(f"no preprocessing cache in {path.parent} ({exc})")
        tmp.unlink(missing_ok=True)
