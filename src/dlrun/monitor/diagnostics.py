"""The notes' "babysitting the learning process": what to look at while a net trains.

Every `logger.diagnostics.every` optimizer steps, on that step's own batch:

- per trainable parameter tensor: the weight and gradient histograms (`weights/<name>`,
  `grads/<name>`) and the gradient's norm (`grad_norm/<name>`); gradients as backward left them
  (unscaled under fp16), before clipping and before the optimizer step;
- per hidden layer (each activation module, and each RNN/LSTM/GRU's output): the activations'
  mean, std and histogram (`activations/<name>/mean`, `/std`, `activations/<name>`), for ReLUs the
  share of dead units (`/dead`: never > 0 over the batch) and for tanh, sigmoid and the recurrent
  cells the share of saturated values (`/saturated`, the margin `dlrun check init` uses).

Forward hooks exist only for that step's forward. Everything is computed on the device, into
tensors that are concatenated and read back with one sync per diagnostics step; histograms are
counted on the device in fixed bins between the tensor's min and max (torch.histc on values
rescaled to [0, bins], so no bound is read back first) and written as raw histograms. Other
steps do no work at all.

Also here: the first conv layer's filters as an image (`filters/<name>`, once per epoch) and
RatioWatch, which turns the update/weight ratios the loop measures into one warning line an
epoch when they say the learning rate is off by orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from dlrun.models.bounds import BOUNDS, SATURATION_MARGIN
from dlrun.models.layers import Maxout

BINS = 30  # histogram bins between a tensor's min and max
MAX_TILES = 64  # filters shown in the filters/ image
TILE_PIXELS = 32  # small kernels are scaled up (nearest) to at least this many pixels a side

# The activation modules whose outputs are a "hidden layer" (ReLU6 is a Hardtanh: listed first).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.Softplus, nn.SiLU,
               nn.Tanh, nn.Sigmoid, nn.Hardtanh, Maxout)
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)

# The notes: the update/weight ratio "should be somewhere around 1e-3". Two orders of magnitude
# away, at every measurement of an epoch, the learning rate is the likely cause.
RATIO_HIGH, RATIO_LOW = 1e-2, 1e-5
SETTLE_STEPS = 100  # ratios measured before this many optimizer steps are not judged (see RatioWatch.add)


@dataclass(frozen=True)
class DiagnosticsSettings:
    """logger.diagnostics: every (optimizer steps between diagnostics; 0: none), histograms, filters."""

    every: int = 100
    histograms: bool = True
    filters: bool = True


def kind_of(module: nn.Module) -> str | None:
    """relu (dead units counted), tanh or sigmoid (saturation counted), other, or None: not a hidden layer."""
    if isinstance(module, (nn.ReLU, nn.ReLU6)):
        return "relu"
    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, nn.RNN) and module.nonlinearity == "relu":
        return "relu"
    if isinstance(module, RECURRENT):  # LSTM and GRU outputs, and a tanh RNN's, lie in (-1, 1)
        return "tanh"
    if isinstance(module, ACTIVATIONS):
        return "other"
    return None


class Diagnostics:
    """One diagnostics step: start() before the forward, stop() after it, gradients() after backward
    (before the optimizer step), then write(): the one sync. Nothing happens between write() and the
    next start()."""

    def __init__(self, model: nn.Module, settings: DiagnosticsSettings, bins: int = BINS):
        self.settings, self.bins = settings, bins
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.layers = [(name or type(m).__name__, m, kind) for name, m in model.named_modules()
                       if (kind := kind_of(m)) is not None]
        self.first_conv = next(((name, m) for name, m in model.named_modules()
                                if isinstance(m, (nn.Conv2d, nn.Conv1d))), None)
        self.hooks: list[Any] = []
        self.calls: dict[str, int] = {}
        # What this step computed, in order: (scalar tag, None) or (histogram tag, element count),
        # and the device tensors holding the numbers (one scalar, or lo, hi, sum, sum of squares, counts).
        self.entries: list[tuple[str, int | None]] = []
        self.tensors: list[torch.Tensor] = []

    # ------------------------------------------------------------------------ one step
    def start(self) -> None:
        """Hook every hidden layer for the next forward."""
        self.stop()
        self.calls = {}
        for name, module, kind in self.layers:
            self.hooks.append(module.register_forward_hook(partial(self._hook, name, kind)))

    def stop(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def _hook(self, name: str, kind: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, (tuple, list)):  # RNN/LSTM/GRU: (output, hidden state)
            output = output[0]
        if not isinstance(output, torch.Tensor):  # a PackedSequence: not a batch of units
            return
        count = self.calls[name] = self.calls.get(name, 0) + 1
        self.activations(name if count == 1 else f"{name}#{count}", output, kind)

    @torch.no_grad()
    def activations(self, tag: str, a: torch.Tensor, kind: str) -> None:
        """Queue one layer's statistics (computed now: a later in-place op cannot change them)."""
        a = a.detach().float()
        std, mean = torch.std_mean(a, correction=0)
        self._scalar(f"activations/{tag}/mean", mean)
        self._scalar(f"activations/{tag}/std", std)
        if kind == "relu":
            # A unit is one output element of a sample; dead: not > 0 for any sample of the batch.
            units = a.flatten(1) if a.dim() > 1 else a.unsqueeze(1)
            self._scalar(f"activations/{tag}/dead", 1.0 - (units > 0).any(0).float().mean())
        elif kind in BOUNDS:
            low, high = BOUNDS[kind]
            saturated = (a < low + SATURATION_MARGIN) | (a > high - SATURATION_MARGIN)
            self._scalar(f"activations/{tag}/saturated", saturated.float().mean())
        if self.settings.histograms:
            self._histogram(f"activations/{tag}", a)

    @torch.no_grad()
    def gradients(self) -> None:
        """Queue the weight and gradient histograms and the gradient norms (after backward, before the step)."""
        named = [(name, p) for name, p in self.params if p.grad is not None]
        norms = torch._foreach_norm([p.grad for _, p in named]) if named else []
        for (name, p), norm in zip(named, norms):
            self._scalar(f"grad_norm/{name}", norm)
        if self.settings.histograms:
            for name, p in self.params:
                self._histogram(f"weights/{name}", p.detach())
            for name, p in named:
                self._histogram(f"grads/{name}", p.grad)

    def _scalar(self, tag: str, value: torch.Tensor) -> None:
        self.entries.append((tag, None))
        self.tensors.append(value.reshape(1))

    def _histogram(self, tag: str, x: torch.Tensor) -> None:
        x = x.reshape(-1).float()
        lo, hi = torch.aminmax(x)
        # Rescaled to [0, bins] on the device: histc's bounds are then constants (no read-back).
        span = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        counts = torch.histc((x - lo) * (self.bins / span), bins=self.bins, min=0, max=self.bins)
        self.entries.append((tag, x.numel()))
        self.tensors.append(torch.stack([lo, hi, x.sum(), x.square().sum()]))
        self.tensors.append(counts)

    def read(self) -> tuple[dict[str, float], dict[str, tuple]]:
        """The one sync: (scalars, histograms as (min, max, num, sum, sum_squares, limits, counts))."""
        if not self.tensors:
            return {}, {}
        values = torch.cat([t.float() for t in self.tensors]).tolist()
        entries, self.entries, self.tensors = self.entries, [], []
        scalars: dict[str, float] = {}
        histograms: dict[str, tuple] = {}
        i = 0
        for tag, num in entries:
            if num is None:
                scalars[tag] = values[i]
                i += 1
                continue
            lo, hi, total, squares = values[i:i + 4]
            counts = values[i + 4:i + 4 + self.bins]
            i += 4 + self.bins
            if not all(map(math.isfinite, (lo, hi, total, squares))):
                continue  # a non-finite tensor (an fp16 overflow step) has no histogram
            if hi <= lo:  # a constant tensor (a zero bias): one bucket
                limits, counts = [hi], [float(num)]
            else:
                limits = [lo + (hi - lo) * (k + 1) / self.bins for k in range(self.bins)]
            histograms[tag] = (lo, hi, num, total, squares, limits, counts)
        return scalars, histograms

    def write(self, writer: Any, step: int) -> None:
        """Read this step's numbers back (one sync) and write them as one event."""
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

        scalars, histograms = self.read()
        if writer.writer is None:
            return
        values = [Summary.Value(tag=tag, simple_value=v) for tag, v in scalars.items()]
        for tag, (lo, hi, num, total, squares, limits, counts) in histograms.items():
            proto = HistogramProto(min=lo, max=hi, num=num, sum=total, sum_squares=squares,
                                   bucket_limit=limits, bucket=counts)
            values.append(Summary.Value(tag=tag, histo=proto))
        if values:
            writer.writer.file_writer.add_summary(Summary(value=values), step)

    # ------------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def filters_image(self) -> tuple[str, torch.Tensor] | None:
        """The first Conv2d's (or Conv1d's) filters as one CHW image in [0, 1], or None without a conv."""
        if self.first_conv is None:
            return None
        from torchvision.utils import make_grid

        name, conv = self.first_conv
        w = conv.weight.detach().float()
        if w.dim() == 3:  # Conv1d: (out, in, k) -> a 1 x k strip a filter
            w = w.unsqueeze(2)
        if w.shape[1] == 3:  # RGB: one colour tile a filter
            tiles = w[:MAX_TILES]
        else:  # one grayscale tile a (filter, input channel)
            tiles = w[:MAX_TILES].flatten(0, 1)[:MAX_TILES].unsqueeze(1)
        scale = max(1, math.ceil(TILE_PIXELS / max(tiles.shape[-2:])))  # every filter at least TILE_PIXELS a side
        if scale > 1:
            tiles = nn.functional.interpolate(tiles, scale_factor=scale, mode="nearest")
        # A near-square grid (LeNet's 6 filters: 3 x 2, not a 1 x 6 strip a person must zoom into).
        grid = make_grid(tiles, nrow=math.ceil(math.sqrt(len(tiles))), padding=1, normalize=True, scale_each=True)
        return f"filters/{name}", grid.cpu()

    def write_filters(self, writer: Any, step: int) -> None:
        image = self.filters_image() if self.settings.filters and writer.writer is not None else None
        if image is not None:
            writer.writer.add_image(image[0], image[1], step)


def lr_reference(group: dict[str, Any]) -> float:
    """A param group's full learning rate: OneCycle's max_lr, else what the schedule started from."""
    return float(group.get("max_lr", group.get("initial_lr", group["lr"])))


class RatioWatch:
    """The update/weight ratios of one epoch's weight matrices (ndim > 1), turned into one warning line."""

    def __init__(self, named_params: list[tuple[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 configured_lr: float | None = None):
        self.weights = {name for name, p in named_params if p.ndim > 1}
        self.optimizer = optimizer
        self.reference = lr_reference(optimizer.param_groups[0])
        self.configured_lr = configured_lr if configured_lr is not None else self.reference
        self.largest: dict[str, float] = {}  # each tensor's largest ratio of the whole run, settling included
        self.reset()

    def reset(self) -> None:
        self.low: dict[str, float] = {}   # each tensor's smallest ratio this epoch
        self.high: dict[str, float] = {}  # and its largest
        self.lowered = False              # a measurement ran at a learning rate the schedule had cut

    def add(self, ratios: dict[str, float], step: int) -> None:
        """The ratios measured by optimizer step `step` (0 for the run's first)."""
        for name, r in ratios.items():
            self.largest[name] = max(r, self.largest.get(name, 0.0))
        if step < SETTLE_STEPS:
            # The first updates say little of the lr: Adam's (RMSprop's, Adagrad's) bias-corrected
            # steps move every weight by about +-lr while the gradients of a fresh net agree, whatever
            # their scale (a default run: 1.5e-2 to 2.7e-2 over its first 25 steps, ~1e-3 by step 70).
            return
        # The schedule has cut the lr below 10% of its full value (a cosine run's last epochs, a
        # warmup's first steps): tiny updates are then meant, so no "too low" this epoch.
        if self.optimizer.param_groups[0]["lr"] < 0.1 * self.reference:
            self.lowered = True
        for name, r in ratios.items():
            if name in self.weights:
                self.low[name] = min(r, self.low.get(name, math.inf))
                self.high[name] = max(r, self.high.get(name, -math.inf))

    def end_epoch(self, epoch: int) -> str | None:
        """The epoch's warning line, or None; starts the next epoch's record."""
        high = {n: v for n, v in self.low.items() if v > RATIO_HIGH}  # every ratio above: the smallest is
        # Too low only for a tensor that never took a healthy step (every ratio of the run < 10x the
        # bound): updates that were healthy and then shrank mean vanishing gradients (a converged fit,
        # or units a too-high lr killed: see activations/*/dead), not a small learning rate.
        low = {n: v for n, v in self.high.items() if v < RATIO_LOW and self.largest[n] < 10 * RATIO_LOW} \
            if not self.lowered and self.reference > 0 else {}  # optim.lr=0 freezes the weights on purpose
        self.reset()
        parts = []
        lr = f"optim.lr={self.configured_lr:g}"
        if high:
            parts.append(f"the update/weight ratio of {_names(high)} was above {RATIO_HIGH:g} at every measurement "
                         f"(the notes: want ~1e-3); the learning rate is likely too high ({lr})")
        if low:
            parts.append(f"the update/weight ratio of {_names(low)} was below {RATIO_LOW:g} at every measurement "
                         f"(the notes: want ~1e-3); the learning rate is likely too low ({lr})")
        return f"epoch {epoch}: " + "; ".join(parts) if parts else None


def _names(values: dict[str, float], shown: int = 3) -> str:
    items = sorted(values.items(), key=lambda kv: -abs(math.log10(max(kv[1], 1e-30) / 1e-3)))  # farthest first
    text = ", ".join(f"{n} {v:.1e}" for n, v in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")
