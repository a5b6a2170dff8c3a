"""What a checkpoint holds of a run, and how a resumed run takes it back: the one place that knows
last.pt's contents (dlrun.checkpoint's CheckpointSaver knows its files and their write order).

Mid-epoch (inside train_epoch), "epoch" counts the epochs completed and "partial" says where in
the current one the run is: the shuffle state its permutation was drawn from, the steps done, and
the epoch's train-metric sums so far. A resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrun import checkpoint
from dlrun.errors import UserError

if TYPE_CHECKING:
    from dlrun.train.loop import Trainer

log = logging.getLogger("dlrun")


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly where `trainer` is."""
    rng = _rng_state(trainer)
    ranks = trainer.world.gather(rng) if trainer.world.distributed else None
    partial = None
    if trainer.position is not None:
        partial = {"step": trainer.position, "shuffle": trainer.epoch_shuffle_state, **trainer.window.partial()}
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.engine.scaler.state_dict() if trainer.engine.scaler is not None else None,
        "epoch": trainer.epoch - 1 if partial is not None else trainer.epoch,
        "partial": partial,
        "step": trainer.step,
        "best": {"epoch": trainer.best.epoch, "value": trainer.best.value, "val": trainer.best.val},
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
        # rank 0's generators, and under DDP every rank's ("ranks": dropout and augmentation
        # draw per rank; the shuffle is one permutation for all)
        "rng": {**rng, "shuffle": trainer.shuffle.get_state(), **({"ranks": ranks} if ranks else {})},
        "train_samples": trainer.window.train_samples,
        "train_seconds": trainer.train_seconds,
        "config": trainer.config,
        "inputs": trainer.inputs,
        "callbacks": trainer.callbacks.state_dict(),  # early stopping's count among them
    }


def _rng_state(trainer: Trainer) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else [],
            "augment": trainer.augment.state_dict() if trainer.augment is not None else None}


def best_payload(trainer: Trainer) -> dict[str, Any]:
    """best.pt: the best epoch's weights and what they scored."""
    best = trainer.best
    return {"model": best.state, "epoch": best.epoch, "monitor": trainer.monitor, "value": best.value,
            "val": best.val, "config": trainer.config, "inputs": trainer.inputs}


def inputs(data: Any) -> dict[str, Any]:
    """What using the weights outside a run needs to know of its data: the input's shape and
    layout, the task and outputs (the class names where the dataset has them), the preprocessing
    with the training split's statistics, and the versions that wrote it. Plain values and CPU
    tensors: a weights_only load reads it."""
    from dlrun import __version__

    preprocess = data.preprocess
    return {"input_shape": list(data.input_shape), "layout": data.layout, "task": data.task,
            "num_outputs": data.num_outputs, "classes": list(data.classes) if data.classes else None,
            "stored_scale": data.scale, "preprocess": preprocess.method,
            "statistics": {k: v.detach().to("cpu", copy=True) for k, v in preprocess.stats.items()},
            "dlrun": __version__, "torch": str(torch.__version__)}  # a str: TorchVersion is no plain value


def load_state_dict(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Continue `trainer` from a checkpoint's state (read from `path`)."""
    from dlrun.train.loop import Best

    checkpoint.load_model_state(trainer.model, state["model"], path)
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError) as exc:
        raise UserError(f"checkpoint '{path}' was written with another optimizer or schedule ({exc}); "
                        "resume with the optim and sched overrides it was trained with") from None
    if trainer.engine.scaler is not None and state.get("scaler"):
        trainer.engine.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    best = state["best"]
    trainer.best = Best(epoch=best["epoch"], value=best["value"], val=best["val"])
    if trainer.ema is not None and state.get("ema") is not None:
        trainer.ema.load_state_dict(state["ema"])
    best_file = path.parent / checkpoint.BEST
    if best["value"] is not None and best_file.is_file():
        trainer.best.state = checkpoint.load(best_file)["model"]
        trainer.checkpoints.save_best_now(best_payload(trainer))  # the new run directory gets its own copy
    _load_rng(trainer, state["rng"], path)
    trainer.resume_position = state.get("partial")  # a mid-epoch checkpoint: train_epoch continues that epoch
    trainer.window.train_samples = int(state.get("train_samples", 0))
    trainer.train_seconds = float(state.get("train_seconds", 0.0))
    callbacks = dict(state.get("callbacks") or {})
    if state.get("early_stopping"):  # a checkpoint from before early stopping was a callback
        callbacks.setdefault("dlrun.early_stopping", state["early_stopping"])
    trainer.callbacks.load_state_dict(callbacks)


def _load_rng(trainer: Trainer, rng: dict[str, Any], path: Path) -> None:
    ranks = rng.get("ranks") or [rng]
    world = trainer.world
    if len(ranks) != world.size and world.distributed:
        log.warning(f"{path} was written by {len(ranks)} process(es), this run has {world.size}: the data "
                    "order continues exactly; dropout and augmentation draw anew on the ranks it lacks")
    mine = ranks[world.rank] if world.rank < len(ranks) else None
    if mine is not None:
        torch.set_rng_state(mine["torch"])
        if trainer.device.type == "cuda" and mine["cuda"]:
            torch.cuda.set_rng_state_all(mine["cuda"])
        if trainer.augment is not None and mine.get("augment") is not None:
            trainer.augment.load_state_dict(mine["augment"])
    trainer.shuffle.set_state(rng["shuffle"])
