"""A run's TensorBoard event files: scalars while training, HParams at the end.

HParams are written into the run's own writer (SummaryWriter.add_hparams would start a new
timestamped subfolder), so every run of a sweep shows as one row with its own curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


class RunWriter:
    def __init__(self, log_dir: Path, enabled: bool = True):
        self.writer = SummaryWriter(log_dir=str(log_dir)) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; values HParams can show (lists become strings)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif value is None or isinstance(value, (list, tuple)):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat
