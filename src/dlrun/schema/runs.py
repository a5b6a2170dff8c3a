"""The schemas of the trainer, logger, check and sweep groups."""

from dataclasses import dataclass
from typing import Any, Optional


from dlrun.schema.rules import SEED, setting


# ------------------------------------------------------------------------------------ trainer, logger, check

# torch.compile's modes ("default" is its mode=None)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class Trainer:
    device: str = "auto"
    devices: int = setting(1, ge=1)
    sync_bn: bool = False
    precision: Any = setting("auto", choices=("auto", "32", "fp32", "16", "fp16", "bf16"))
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = setting("default", choices=COMPILE_MODES)
    deterministic: bool = False
    epochs: int = setting(30, ge=1)
    max_steps: Optional[int] = setting(None, ge=1)
    micro_batch_size: Optional[int] = setting(None, ge=1)
    seed: int = setting(0, **SEED)
    threads: Optional[int] = setting(None, ge=1)
    monitor: str = "auto"
    grad_clip: Optional[float] = setting(None, gt=0)
    grad_clip_mode: str = setting("norm", choices=("norm", "value"))
    ema_decay: Optional[float] = setting(None, gt=0, lt=1, hint="(e.g. 0.999)")
    checkpoint: bool = True
    checkpoint_every_steps: Optional[int] = setting(None, ge=1)
    resume: Optional[str] = setting(None, also=("auto",), path=True, hint="a run directory or a checkpoint file")
    stop_at_epoch: Optional[int] = setting(None, ge=1)


@dataclass
class Diagnostics:
    every: int = setting(100, ge=0, hint="(0: off)")
    histograms: bool = True
    filters: bool = True


@dataclass
class Logger:
    every: int = setting(50, ge=1)
    ratio_every: int = setting(100, ge=0)
    hparams: bool = True
    diagnostics: Optional[Diagnostics] = None


@dataclass
class CheckOptions:
    seed: int = setting(0, **SEED)
    samples: int = setting(1024, ge=1)
    tolerance: float = setting(0.1, gt=0)
    batches: int = setting(5, ge=1)
    budget: int = setting(1000, ge=1)
    lrs: list[float] = setting([1e-1, 1e-2, 1e-3, 1e-4], gt=0, nonempty=True)
    iterations: int = setting(100, ge=1)
    drop: float = setting(0.1, gt=0, lt=1)
    range: bool = False
    range_min: float = setting(1e-7, gt=0)
    range_max: float = setting(10.0, gt=0)
    examples: int = setting(4, ge=1)
    k: int = setting(10, ge=1)
    h: float = setting(1e-5, gt=0)
    out: str = "outputs/check"


@dataclass
class Sweep:
    n_trials: int = setting(20, ge=1)
    n_jobs: int = setting(1, ge=1)
    seed: int = setting(0, **SEED)
    space: Any = None  # {key: "loguniform(a, b)", ...}, nested; dlrun.sweep.space reads it


