"""Data augmentation on batched tensors on the training device: no PIL, no DataLoader, no per-sample loops.

The data already lives on the device as tensors (dlrun.data.base), so augmenting there, a whole batch
per call, keeps the GPU fed without worker processes. Per batch, in the trainer's order:

1. `Augment.pixels`: random crop (zero padding, then a random HxW window), horizontal flip, colour
   jitter (brightness, contrast, saturation) -- on images scaled to [0, 1], before normalisation,
   because jitter's factors and its clamp to [0, 1] are defined on that scale;
2. normalisation (the trainer's);
3. `Augment.erase`: cutout (DeVries & Taylor 2017) -- after normalisation, so the erased square is 0,
   the data mean, and carries no signal either way;
4. `Augment.mix`: mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) -- last, on the finished
   inputs; the trainer's loss is lam * loss(y) + (1 - lam) * loss(y2).

Why not torchvision.transforms.v2 on the batch: its transforms draw one set of parameters per call,
so a whole batch would get the same crop, flip and jitter; these draw them per sample.

Per-sample randomness comes from a torch.Generator on the device (no host round trip); the few
per-batch draws (mixup's lam, cutmix's box) come from a numpy Generator on the host, so nothing in
the per-batch path waits for the device (no .item(), no branching on tensor values). Both states are
in `Augment.state_dict`, so a resumed run draws exactly what an uninterrupted one would have.
The trainer turns augmentation off at evaluation; nothing here knows about train or eval.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dlrun.errors import UserError

# ITU-R 601 luma weights (torchvision's rgb_to_grayscale rounds red to 0.2989; these sum to 1).
_GREY = (0.299, 0.587, 0.114)

log = logging.getLogger("dlrun")


def _per_sample(mask: Tensor, x: Tensor) -> Tensor:
    """An (N,) tensor shaped to broadcast against x (N, ...)."""
    return mask.view(-1, *[1] * (x.ndim - 1))


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Each sample padded by `padding` zeros, then an HxW window at a uniform offset in {0..2*padding}^2."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H): the window's rows in the padded image
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    # One advanced index; the four index tensors broadcast to (N, C, H, W).
    samples = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Each sample mirrored along its last axis with probability p."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < p
    return torch.where(_per_sample(flip, x), x.flip(-1), x)


def cutout_at(x: Tensor, size: int, cy: Tensor, cx: Tensor) -> Tensor:
    """x with a size x size square centred at (cy[i], cx[i]) set to 0 in every channel of sample i.

    The square covers rows cy - size//2 .. cy - size//2 + size - 1 (and the same for columns),
    clipped at the borders; comparing coordinates with those bounds clips for free.
    """
    h, w = x.shape[-2:]
    top, left = (cy - size // 2)[:, None], (cx - size // 2)[:, None]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size)  # (N, H)
    in_cols = (cols >= left) & (cols < left + size)  # (N, W)
    square = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
    return x.masked_fill(square[:, None], 0)


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Cutout: per sample, a size x size square with its centre uniform over the image set to 0.

    The centre may lie near a border, so the square is clipped there, as in DeVries & Taylor:
    some samples lose less than size^2 pixels, which the paper found to matter.
    """
    if size == 0:
        return x
    h, w = x.shape[-2:]
    cy = torch.randint(0, h, (len(x),), generator=generator, device=x.device)
    cx = torch.randint(0, w, (len(x),), generator=generator, device=x.device)
    return cutout_at(x, size, cy, cx)


def _grey(x: Tensor) -> Tensor:
    """The (N, 1, H, W) luma of RGB images."""
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def color_jitter(x: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Per-sample brightness, contrast and saturation factors, each uniform in [max(0, 1 - s), 1 + s].

    x is RGB in [0, 1]. Each step is torchvision's: brightness scales, contrast blends with the
    sample's mean grey level, saturation blends with its grey image; each clamps to [0, 1].
    """
    if x.shape[1] != 3:
        raise UserError(f"augment.jitter needs RGB images (3 channels); this data has {x.shape[1]}")
    if strength == 0:
        return x
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    u = torch.rand(3, len(x), generator=generator, device=x.device, dtype=x.dtype)
    brightness, contrast, saturation = (_per_sample(f, x) for f in low + (high - low) * u)
    x = (x * brightness).clamp(0, 1)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (contrast * x + (1 - contrast) * mean).clamp(0, 1)
    return (saturation * x + (1 - saturation) * _grey(x)).clamp(0, 1)


def mixup(x: Tensor, y: Tensor, alpha: float, rng: np.random.Generator,
          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mixup: every sample blended with another of the batch, one lam ~ Beta(alpha, alpha) per batch.

    lam comes from the host rng, so it is a Python float the loss can use without a device sync.
    Returns (mixed x, y, y[perm], lam); the loss is lam * loss(y) + (1 - lam) * loss(y[perm]).
    """
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator, device=x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def cutmix(x: Tensor, y: Tensor, alpha: float, rng: np.random.Generator,
           generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, float]:
    """CutMix: one box per batch, of area (1 - lam) * H * W, filled from another sample of the batch.

    The box's centre is uniform over the image and the box is clipped at the borders, so the pixels
    taken can be fewer than asked for: lam is recomputed from the clipped box, making the label
    weights equal the pixel fractions exactly. Box and lam are host numbers: the paste is a slice.
    """
    h, w = x.shape[-2:]
    lam = float(rng.beta(alpha, alpha))
    side = math.sqrt(1 - lam)  # the box keeps the image's aspect ratio
    box_h, box_w = round(h * side), round(w * side)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, left = cy - box_h // 2, cx - box_w // 2  # the same convention as cutout_at
    y0, y1 = max(top, 0), min(top + box_h, h)
    x0, x1 = max(left, 0), min(left + box_w, w)
    perm = torch.randperm(len(x), generator=generator, device=x.device)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]  # gathers only the box
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, y, y[perm], lam


class Augment:
    """The configured augmentations and their random state (saved in checkpoints for exact resume)."""

    def __init__(self, *, crop_padding: int = 0, flip: bool = False, cutout: int = 0, jitter: float = 0.0,
                 mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0, device: torch.device | str = "cpu"):
        for key, value in (("crop_padding", crop_padding), ("cutout", cutout), ("jitter", jitter),
                           ("mixup", mixup), ("cutmix", cutmix)):
            if value < 0:
                raise UserError(f"augment.{key}={value} is negative; use 0 (off) or a positive value")
        self.crop_padding, self.flip, self.cutout, self.jitter = int(crop_padding), bool(flip), int(cutout), jitter
        self.mixup, self.cutmix = mixup, cutmix
        self.device = torch.device(device)
        # Per-sample draws on the device; per-batch draws (lam, box, mixup-or-cutmix) on the host.
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.pixel_ops = bool(self.crop_padding or self.flip or self.jitter)
        self.mixes = bool(self.mixup or self.cutmix)
        self.enabled = self.pixel_ops or self.mixes or bool(self.cutout)

    def pixels(self, x: Tensor) -> Tensor:
        """Crop, flip, jitter: on images scaled to [0, 1], before normalisation."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.generator)
        if self.flip:
            x = random_flip(x, self.generator)
        if self.jitter:
            x = color_jitter(x, self.jitter, self.generator)
        return x

    def erase(self, x: Tensor) -> Tensor:
        """Cutout: after normalisation, so the erased square holds the data mean."""
        return cutout(x, self.cutout, self.generator) if self.cutout else x

    def mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None, float]:
        """Mixup or cutmix; with both on, one of them per batch with probability 0.5 each (timm's switch).

        Returns (x, y, y2, lam); with neither on, (x, y, None, 1.0).
        """
        if self.mixup and self.cutmix:
            use_cutmix = self.rng.random() < 0.5
        else:
            use_cutmix = bool(self.cutmix)
        if use_cutmix:
            return cutmix(x, y, self.cutmix, self.rng, self.generator)
        if self.mixup:
            return mixup(x, y, self.mixup, self.rng, self.generator)
        return x, y, None, 1.0

    def check(self, layout: str, channels: int, classification: bool) -> None:
        """A one-line UserError naming the config key when a switch cannot apply to this data or task."""
        for key, on in (("crop_padding", self.crop_padding), ("flip", self.flip), ("cutout", self.cutout),
                        ("jitter", self.jitter), ("mixup", self.mixup), ("cutmix", self.cutmix)):
            if on and layout != "image":
                off = "false" if key == "flip" else "0"
                raise UserError(f"augment.{key} needs images (data.layout=image); this data is {layout}: "
                                f"set augment.{key}={off}")
        if self.jitter and channels != 3:
            raise UserError(f"augment.jitter needs RGB images (3 channels); this data has {channels}: "
                            "set augment.jitter=0")
        for key, on in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            if on and not classification:
                raise UserError(f"augment.{key} mixes class labels, so it needs a classification task; "
                                f"set augment.{key}=0")

    def state_dict(self) -> dict:
        """Both random states: a torch ByteTensor and numpy's state dict (ints and strs only)."""
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        # A checkpoint loaded with map_location may bring the state to the GPU; set_state wants it on the CPU.
        generator = state["generator"].cpu()
        if generator.numel() != self.generator.get_state().numel():
            # A CPU and a CUDA generator keep states of different sizes: a run resumed on another kind
            # of device goes on from its seed's per-sample draws, as the trainer does with its CUDA state.
            log.warning("augment: the checkpoint's per-sample random state is from another device type; "
                        "augmentation goes on, but not exactly as the interrupted run would have")
            return
        self.generator.set_state(generator)
