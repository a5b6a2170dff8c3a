"""Datasets: each loader returns an `InMemoryData` (train/val/test tensors, input shape, outputs)."""

from dlrun.data.base import InMemoryData, Split

__all__ = ["InMemoryData", "Split"]
