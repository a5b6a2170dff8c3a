"""The notes' update/weight ratio: ||W_after - W_before|| / ||W_before||, "want ~1e-3".

Measured on the actual update the optimizer made (momentum, Adam's scaling and weight decay
included), not on lr * grad. All norms are computed on the device in a few foreach kernels
and read back with one sync.
"""

from __future__ import annotations

import torch


class UpdateRatio:
    def __init__(self, named_params: list[tuple[str, torch.Tensor]]):
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.before: list[torch.Tensor] | None = None

    def snapshot(self) -> None:
        """Call before optimizer.step()."""
        self.before = [p.detach().clone() for p in self.params]

    def measure(self) -> dict[str, float]:
        """Call after optimizer.step(): {param name: ratio}, for tensors whose norm is not zero."""
        assert self.before is not None, "snapshot() first"
        after = [p.detach() for p in self.params]
        update_norms = torch._foreach_norm(torch._foreach_sub(after, self.before))
        weight_norms = torch._foreach_norm(self.before)
        self.before = None
        updates = torch.stack(update_norms).float()
        weights = torch.stack(weight_norms).float()
        ratios, weights = torch.stack([updates / weights, weights]).tolist()  # the one sync
        # A tensor at exactly zero (a bias initialised to 0) has no ratio yet: skip it.
        return {n: r for n, r, w in zip(self.names, ratios, weights) if w > 0}
