"""What the training checks share: the composed config, verdict lines, the report and check.json.

`dlrun check initial-loss|overfit|lr|gradcheck|all [overrides]` composes the config `dlrun train`
composes from the same overrides, plus the `check` group (configs/check/options.yaml) whose keys
the user changes with check.KEY=VALUE. Each check is a function (Context) -> list[Line]; a line
carries a verdict (ok, warn, fail, or skip when there is nothing to check) and the notes' advice.
The run prints one table, writes check.json (and TensorBoard events) into check.out, and exits 1
when a line failed. A user's mistake is a UserError: one line, exit 2, as everywhere in dlrun.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dlrun import strict_json
from dlrun.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from dlrun.monitor.tensorboard import RunWriter

VERDICTS = ("skip", "ok", "warn", "fail")  # from best to worst; a fail exits 1
STYLE = {"ok": "green", "skip": "dim", "warn": "yellow", "fail": "bold red"}


@dataclass
class Line:
    """One finding: which check, what was measured, the value, the verdict and what to do."""

    check: str
    what: str
    value: str
    verdict: str
    advice: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind `value`, for check.json

    def __post_init__(self) -> None:
        assert self.verdict in VERDICTS, self.verdict


@dataclass
class Context:
    """What a check runs on: the composed config (train's, with `check`), its options and outputs."""

    cfg: DictConfig
    options: dict[str, Any]
    out: Path
    writer: RunWriter
    extras: dict[str, Any] = field(default_factory=dict)  # a check's files and suggestions for check.json

    def config(self) -> DictConfig:
        """A private copy of the composed config (without `check`) for a check to change."""
        from omegaconf import OmegaConf, open_dict

        cfg = self.cfg.copy()
        with open_dict(cfg):
            cfg.pop("check", None)
        OmegaConf.set_struct(cfg, True)
        return cfg


def worst(lines: list[Line]) -> str:
    return max((line.verdict for line in lines), key=VERDICTS.index, default="ok")


def compose(args: list[str], config: str = "train", extra: tuple[str, ...] = ("+check=options",)) -> DictConfig:
    """`config` composed from the user's overrides (and `extra`): by default train's config with
    the check options added as `check`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dlrun.paths import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config, overrides=[*args, *extra])


def output_dir(out: Path) -> Path:
    """check.out made and locked for this process (dlrun.runlock), or one line: a check never writes
    over another's check.json, nor beside a check (or a run) that is writing there."""
    from dlrun import runlock

    if (out / "check.json").exists():
        raise UserError(f"check.out={out} already holds a check.json; choose another directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"check.out={out}: cannot make the directory ({exc.strerror}); choose another") from None
    runlock.acquire(out, "check.out directory", "choose another check.out")  # held until the check's process ends
    return out


def read_options(cfg: DictConfig) -> dict[str, Any]:
    """cfg.check as plain values; each value's own range is the schema's (dlrun.schema.runs.CheckOptions,
    checked by validate before this), what is left here is between two keys."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.check, resolve=True)
    lrs = options["lrs"]
    options["lrs"] = [lrs] if isinstance(lrs, (int, float)) else list(lrs)
    if options["range_min"] >= options["range_max"]:
        raise UserError(f"check.range_min={options['range_min']:g} must be below check.range_max={options['range_max']:g}")
    return options


def table(title: str, lines: list[Line]):
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, title_justify="left")
    out.add_column("what", ratio=2)
    out.add_column("measured", ratio=3)
    out.add_column("verdict", no_wrap=True)
    out.add_column("advice", ratio=3)
    for line in lines:
        out.add_row(line.what, line.value, Text(line.verdict, style=STYLE[line.verdict]), line.advice)
    return out


def run(name: str, checks: list[tuple[str, Callable[[Context], list[Line]]]], args: list[str]) -> None:
    """Compose, run each check in order, print the table, write check.json; exit 1 on a fail."""
    import sys

    from dlrun.schema import validate

    cfg = compose(args)
    validate(cfg)  # every value, before the output folder is made: a refused check leaves nothing behind
    options = read_options(cfg)
    out = output_dir(Path(options["out"]))
    from rich import get_console

    from dlrun.monitor.tensorboard import RunWriter

    console = get_console()
    writer = RunWriter(out / "tb")
    context = Context(cfg, options, out, writer)
    lines: list[Line] = []
    start = time.perf_counter()
    try:
        for check, function in checks:
            found = function(context)
            console.print(table(f"dlrun check {check}", found))
            lines += found
    finally:
        writer.close()
    verdict = worst(lines)
    from omegaconf import OmegaConf

    report = {
        "check": name, "verdict": verdict, "wall_s": round(time.perf_counter() - start, 3),
        "counts": {v: sum(line.verdict == v for line in lines) for v in VERDICTS},
        **context.extras,
        "lines": [asdict(line) for line in lines],
        "overrides": list(args),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    (out / "check.json").write_text(strict_json.dumps(report, indent=2, default=str) + "\n")
    counts = ", ".join(f"{n} {v}" for v, n in report["counts"].items() if n)
    console.print(f"dlrun check {name}: {verdict} ({counts}) in {report['wall_s']:.1f} s; "
                  f"details in {out / 'check.json'}", highlight=False, soft_wrap=True)
    if context.extras.get("plot"):
        console.print(f"plot: {context.extras['plot']}; tensorboard --logdir {out / 'tb'}", highlight=False,
                      soft_wrap=True)
    if verdict == "fail":
        sys.exit(1)


def without_regularization(cfg: DictConfig) -> DictConfig:
    """cfg with every regulariser off: no penalty, decay, max-norm, dropout, label smoothing or EMA.

    (dlrun has no data augmentation yet; when it does, it goes off here too.)
    """
    from omegaconf import OmegaConf, open_dict

    from dlrun.paths import CONFIG_DIR

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.reg = OmegaConf.load(Path(CONFIG_DIR) / "reg" / "none.yaml")
        if "dropout" in cfg.model:
            cfg.model.dropout = 0.0
        if "label_smoothing" in cfg.loss:
            cfg.loss.label_smoothing = 0.0
        cfg.trainer.ema_decay = None
    return cfg


def with_constant_lr(cfg: DictConfig, lr: float | None = None) -> DictConfig:
    """cfg with sched=constant (and optim.lr = lr if given): a check's steps all run at one lr."""
    from omegaconf import OmegaConf, open_dict

    from dlrun.paths import CONFIG_DIR

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.sched = OmegaConf.load(Path(CONFIG_DIR) / "sched" / "constant.yaml")
        if lr is not None:
            cfg.optim.lr = float(lr)
    return cfg


def dropout_off(model) -> None:
    """Every dropout layer to p = 0 (the models' own, reg=dropout's and any a torchvision net has)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0


def batches(n: int, batch_size: int, steps: int, seed: int):
    """`steps` minibatch index tensors over range(n), reshuffled every pass, from a seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order: list = []
    for _ in range(steps):
        if not order:
            order = list(torch.randperm(n, generator=generator).split(batch_size))
        yield order.pop(0)

