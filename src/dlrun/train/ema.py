"""trainer.ema_decay: an exponential moving average of the weights that never waits for the GPU.

torch's AveragedModel keeps its update count `n_averaged` as a buffer on the model's device and
tests it twice in every update_parameters (`bool(n_averaged == 0)`, `if n_averaged > 0`): two
host syncs per optimizer step on a GPU. This subclass keeps the same buffer (so checkpoints and
torch's own tools read it as usual) but decides from a host-side copy of the count, read from the
buffer once after a load. The update itself is torch's: get_ema_multi_avg_fn's
foreach lerp, e <- d e + (1 - d) w, per dtype; the first update copies the weights.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float):
        # Parameters and buffers both: BatchNorm's running statistics follow the average too.
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.updates: int | None = 0  # the host's copy of n_averaged; None after a load: read it once

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self.updates is None:
            self.updates = int(self.n_averaged)  # the one read back, at the first update after a load
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.updates == 0:  # as AveragedModel: the first update copies
            for a, c in zip(averaged, current, strict=True):
                a.detach().copy_(c)
        else:
            groups = defaultdict(lambda: ([], []))  # foreach kernels want one dtype per list
            for a, c in zip(averaged, current, strict=True):
                groups[a.dtype][0].append(a.detach())
                groups[a.dtype][1].append(c)
            for ema_list, model_list in groups.values():
                self.multi_avg_fn(ema_list, model_list, self.n_averaged)
        self.n_averaged += 1  # on the device, without a read
        self.updates += 1

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.updates = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
