"""Datasets: each loader returns a `Data` (train/val/test splits, input shape, outputs, preprocessing)."""

from dlrun.data.base import Data, Split, StreamedSplit

__all__ = ["Data", "Split", "StreamedSplit"]
