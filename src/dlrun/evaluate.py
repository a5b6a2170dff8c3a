"""`dlrun eval ckpt=PATH [--json] [overrides]`: a checkpoint's loss and accuracy on the test and val splits.

The config is the checkpoint's own (dlrun checkpoints carry the resolved composed config), so
the same data split and the same model are rebuilt; overrides on the command line change values
of it, with Hydra's override grammar and its errors. The model is evaluated by the Trainer's own
`evaluate`, as `dlrun train` tests it, so on the CPU the numbers are summary.json's to the last
digit. Nothing is written. Its options and --help are dlrun.options'; torch and Hydra are imported
inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlrun.errors import UserError
from dlrun.paths import BEST, LAST

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig

SPLITS = ("test", "val")
# A run directory means its best.pt (the weights train's test metrics come from), else last.pt.
NAMES = (BEST, LAST)
ACCEPTS = "a run directory, or a .pt file: its checkpoints/best.pt or last.pt"
FIX = "pass ckpt= another checkpoint, e.g. the run's checkpoints/last.pt"

def saved_config(config: dict[str, Any], overrides: list[str], path: Path) -> DictConfig:
    """The checkpoint's config with `overrides` applied as Hydra applies them to a composed config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.create(upgrade(config))
    OmegaConf.set_struct(cfg, True)  # as Hydra composes it: an unknown key is an error, not a new key
    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        if override.is_sweep_override():
            raise UserError(f"{override.input_line}: dlrun eval evaluates one config; give one value")
        node = OmegaConf.select(cfg, override.key_or_group, throw_on_missing=False)
        if isinstance(node, DictConfig) and isinstance(override.value(), str):
            raise UserError(f"{override.input_line}: the checkpoint's config is rebuilt from '{path}', not "
                            f"composed from groups; change its values instead (e.g. {override.key_or_group}.KEY=VALUE)")
    for override in parsed:
        apply_override(override, cfg)
    return cfg


def apply_override(override: Any, cfg: DictConfig) -> None:
    """KEY=VALUE, +KEY=VALUE, ++KEY=VALUE or ~KEY on a config, worded as Hydra words them when it
    composes (Hydra's own function for this is private)."""
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    key, value = override.key_or_group, override.value()
    present = OmegaConf.select(cfg, key, throw_on_missing=False) is not None
    try:
        if override.is_delete():
            if not present:
                raise ConfigCompositionException(f"Could not delete from config. '{key}' does not exist.")
            parent, _, leaf = key.rpartition(".")
            with open_dict(cfg):
                del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        elif override.is_add() and present and not isinstance(value, (dict, list)):
            raise ConfigCompositionException(
                f"Could not append to config. An item is already at '{key}'.\nEither remove + prefix: "
                f"'{override.input_line[1:]}'\nOr add a second + to add or override '{key}': '+{override.input_line}'")
        elif override.is_add() or override.is_force_add():
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        else:
            try:
                OmegaConf.update(cfg, key, value, merge=True)
            except (ConfigAttributeError, ConfigKeyError) as exc:
                raise ConfigCompositionException(f"Could not override '{key}'.\nTo append to your config use "
                                                 f"+{override.input_line}") from exc
    except OmegaConfBaseException as exc:
        raise ConfigCompositionException(f"Error merging override {override.input_line}") from exc


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config from an older dlrun in today's keys: data.normalize became data.preprocess,
    and eval.tta is new (none, as it was then)."""
    config = dict(config)
    data = dict(config.get("data") or {})
    if "normalize" in data:
        data["preprocess"] = "channel_standardize" if data.pop("normalize") else "none"
        config["data"] = data
    config.setdefault("eval", {"tta": "none"})
    config.pop("callbacks", None)  # a training run's observers: evaluation builds none, so reads none
    return config


def composed_config(overrides: list[str]) -> DictConfig:
    """The config `dlrun train` composes from `overrides`: for a checkpoint that carries none."""
    from hydra import compose, initialize_config_dir

    from dlrun.paths import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def rebuild(ckpt: str, overrides: list[str] = ()) -> tuple[Any, dict[str, Any], Path]:
    """The checkpoint at `ckpt` (a run directory: its best.pt, else last.pt) with its data and model
    rebuilt from its saved config and its weights loaded: (Parts, the checkpoint's state, its path)."""
    from omegaconf import open_dict

    from dlrun.targets import refuse_foreign
    from dlrun import checkpoint

    overrides = list(overrides)
    path = checkpoint.resolve(ckpt, option="ckpt", names=NAMES, accepts=ACCEPTS)
    state = checkpoint.load(path, state_dict_ok=True, fix=FIX)
    config = state.get("config")
    if config:
        cfg = saved_config(config, overrides, path)
        # The file may come from anyone: its config names only what dlrun builds (or the user allows).
        refuse_foreign(cfg, f"checkpoint '{path}'")
    elif overrides:
        cfg = composed_config(overrides)
    else:
        raise UserError(f"checkpoint '{path}' holds no config (a plain state dict); pass the overrides it was "
                        "trained with, e.g. dlrun eval ckpt=... model=lenet")
    with open_dict(cfg):
        # The checkpoint replaces every weight: model.weights' file is not needed (nor read) again.
        if "weights" in cfg.model:
            cfg.model.weights = None

    from dlrun.train.assembly import build_parts

    parts = build_parts(cfg)
    checkpoint.load_model_state(parts.model, state["model"], path)
    return parts, state, path


def evaluate(ckpt: str, overrides: list[str] = ()) -> dict[str, Any]:
    """Load the checkpoint at `ckpt`, rebuild its data and model, and return its metrics per split.

    {"checkpoint": path, "epoch": N or None, "model": class name, "data": description,
     "test": {"loss", "acc"}, "val": {...}, "samples": {"test": n, "val": n}}
    """
    from dlrun import checkpoint
    from dlrun.train.assembly import build_trainer

    parts, state, path = rebuild(ckpt, overrides)
    trainer = build_trainer(parts, None)  # no TensorBoard, no checkpoints: the Trainer's evaluate only
    try:
        metrics = {split: trainer.evaluate(parts.data.splits[split], tta=trainer.tta) for split in SPLITS}
        if state.get("ema") is not None:  # last.pt of a run with trainer.ema_decay: its averaged weights too
            from torch.optim.swa_utils import AveragedModel

            ema = AveragedModel(parts.model, use_buffers=True)
            checkpoint.load_model_state(ema, state["ema"], path)
            metrics.update({f"{split}_ema": trainer.evaluate(parts.data.splits[split], ema.module,
                                                             tta=trainer.tta) for split in SPLITS})
    finally:
        trainer.writer.close()
        trainer.checkpoints.close()
    refuse_non_finite(metrics, state, path)
    epoch = state.get("epoch")
    return {
        "checkpoint": str(path),
        "epoch": int(epoch) if epoch is not None else None,
        "model": type(parts.model).__name__,
        "data": parts.data.describe(),
        "device": str(parts.device),
        "tta": trainer.tta,
        **metrics,
        "samples": {split: len(parts.data.splits[split]) for split in SPLITS},
    }


def refuse_non_finite(metrics: dict[str, dict[str, float]], state: dict[str, Any], path: Path) -> None:
    """A nan or inf metric is no result to print: one line saying why, exit 2."""
    import math

    bad = [f"{split} {name} {value}" for split, values in metrics.items() for name, value in values.items()
           if not math.isfinite(value)]
    if not bad:
        return
    tensors = [*state["model"].values(), *(state.get("ema") or {}).values()]
    weights = sum(int((~t.isfinite()).sum()) for t in tensors if t.is_floating_point())
    why = (f"{weights} of its weight values are not finite: it was saved from a diverged run; use an earlier checkpoint"
           if weights else "its weights are finite: the data give the model inputs it overflows on; check the "
           "data for nan or inf values")
    raise UserError(f"checkpoint '{path}' gives {', '.join(bad)}; {why}")


def main(argv: list[str]) -> None:
    """Parse, evaluate, print the table (or JSON). Errors propagate to the CLI's `fail`."""
    from dlrun.options import parse

    args = parse("eval", argv)
    result = evaluate(args.ckpt, args.overrides)
    if args.json:
        from dlrun import strict_json

        print(strict_json.dumps(result, indent=2))
        return
    from rich import get_console
    from rich.table import Table

    console = get_console()
    console.print(f"data {result['data']}", highlight=False, soft_wrap=True)
    epoch = f", epoch {result['epoch']}" if result["epoch"] is not None else ""
    # A line, not the table's title: rich would wrap a long path to the narrow table's width.
    tta = ", test-time augmentation: flip" if result["tta"] == "flip" else ""
    console.print(f"dlrun eval: {result['model']} from {result['checkpoint']}{epoch}, on {result['device']}{tta}",
                  highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("loss", justify="right")
    classification = "acc" in result["test"]
    if classification:
        table.add_column("accuracy", justify="right")
    for split in SPLITS:
        for key, name in ((split, split), (f"{split}_ema", f"{split} (EMA weights)")):
            if key in result:
                m = result[key]
                table.add_row(name, f"{result['samples'][split]:,}", f"{m['loss']:.4f}",
                              *([f"{m['acc']:.4f}"] if classification else []))
    console.print(table, highlight=False)
