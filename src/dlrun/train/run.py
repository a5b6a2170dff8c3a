"""One training run, from a composed config to summary.json: what `dlrun train` does per job."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlrun import __version__
from dlrun.train.assembly import build_parts, build_trainer, check_world, hyperparameters, write_json
from dlrun.errors import UserError
from dlrun import runlock
from dlrun.rundir import claim, deleted_mid_run
from dlrun.schema import validate
from dlrun import checkpoint
from dlrun.train import distributed, resume
from dlrun.train.interrupt import catch_signals, preemption_signal
from dlrun.train.loop import Trainer
from dlrun.train.step import piece_sizes

log = logging.getLogger("dlrun")


def error_line(exc: BaseException) -> str:
    """An exception's first line, for summary.json (a UserError's message is one line already)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    if isinstance(exc, UserError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def train(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train as `cfg` says, writing everything into `run_dir`; return the summary (see _train).

    Rank 0 holds run_dir's lock throughout (dlrun.runlock; re-entrant: under `dlrun train` Hydra's
    callback took it first): a run already there is continued (trainer.resume), never overwritten,
    and no other process writes there meanwhile."""
    if not distributed.from_env().main:
        return _train(cfg, run_dir, choices)
    claim(Path(run_dir), OmegaConf.select(cfg, "trainer.resume", default=None))
    try:
        with deleted_mid_run(run_dir):
            return _train(cfg, run_dir, choices)
    finally:
        runlock.release(run_dir)


def _train(cfg: DictConfig, run_dir: Path, choices: dict[str, str] | None = None) -> dict[str, Any]:
    """Train as `cfg` says, writing everything into `run_dir`; return the summary.

    summary.json says "running" once the settings are checked and training starts, then how it
    ended: "finished", "early_stopped", "stopped", "interrupted" (a signal; "signal" names it),
    or "failed" with the error's first line (the exception still propagates).
    """
    wall_start = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    choices = {k: v for k, v in (choices or {}).items() if not k.startswith("hydra") and v is not None}
    # Under DDP rank 0 alone writes the run directory's files: summary.json, checkpoints, events.
    world = distributed.from_env()
    main = world.main
    write = write_json if main else lambda obj, path: None
    try:
        validate(cfg)
        t = cfg.trainer
        check_world(cfg, world)
        # Before any work: the checkpoint must read and fit this run's recipe.
        resumed = resume.pick(cfg, run_dir, t.resume)
        parts = build_parts(cfg, world)
        trainer = build_trainer(parts, run_dir / "tb", checkpoint.folder(run_dir) if t.checkpoint else None,
                                metrics_file=run_dir / "metrics.csv")
    except UserError as exc:  # a setting refused: the run directory says so too, for a sweep's report
        if not (run_dir / "summary.json").exists():
            write({"status": "failed", "error": error_line(exc), "choices": choices}, run_dir / "summary.json")
        raise
    data, model, device, precision = parts.data, parts.model, parts.device, parts.precision
    # A .NAME.PID.tmp is a killed process's unfinished write only while no process holds the lock:
    # this one does (train), so no other is writing there.
    for stale in checkpoint.remove_partial_writes(checkpoint.folder(run_dir)) if main and runlock.holds(run_dir) else ():
        log.info(f"removed {stale}, a checkpoint write a killed process left unfinished")
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # model.freeze leaves the rest out
    writer = trainer.writer
    summary: dict[str, Any] = {}
    resumed_facts: dict[str, Any] = {}

    def facts() -> dict[str, Any]:
        return {"task": data.task, "epochs": trainer.epoch, "steps": trainer.step, "params": n_params,
                "trainable_params": n_trainable, "device": str(device), "processes": parts.world.size,
                "precision": precision,
                "choices": choices, "hparams": hyperparameters(cfg, choices), **resumed_facts,
                "dlrun_version": __version__}

    try:
        counted = f"{n_params:,} parameters" + (f", {n_trainable:,} trainable" if n_trainable != n_params else "")
        ddp = f" x {parts.world.size} processes (DDP, {data.batch_size // parts.world.size} samples each a step)" \
            if parts.world.distributed else ""
        pieces = piece_sizes(data.batch_size, parts.world.size, trainer.engine.micro_batch_size)
        each = " per process" if parts.world.distributed else ""
        micro = (f", {len(pieces) // parts.world.size} micro-batches of <= {max(pieces)} a step{each}"
                 if len(pieces) > parts.world.size else "")
        log.info(f"model {type(model).__name__} ({counted}) on {device}{ddp}, precision {precision}, "
                 f"{trainer.epochs} epochs x {trainer.steps_per_epoch} steps{micro}")
        if resumed is not None:
            resume_path, state, changed = resumed
            trainer.load_state_dict(state, resume_path)
            writer.resumed_at(trainer.step)
            log.info(f"resumed from {resume_path} at epoch {trainer.epoch}, step {trainer.step}"
                     + (f"; changed: {', '.join(f'{k}={v[1]}' for k, v in changed.items())}" if changed else ""))
            # What this run continued, and the settings it changed ({key: [checkpoint's, this run's]}).
            resumed_facts = {"resumed": {"checkpoint": str(resume_path), "epoch": state["epoch"],
                                         "step": state["step"], "changed": changed}}
        write({"status": "running", **facts()}, run_dir / "summary.json")
        try:
            with catch_signals(trainer.stop_request):  # through the test evaluation, not only fit
                status = trainer.fit()
                done = status in ("finished", "early_stopped")
                test = trainer.test() if done else {}
                test_ema = trainer.test_ema() if done else {}
            if done and trainer.stop_request:
                log.warning(f"{trainer.stop_request.signal} arrived during the final test evaluation, which "
                            "completed: the run has finished and nothing is lost")
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            write({"status": "interrupted" if interrupted else "failed", "error": error_line(exc),
                   **facts(), "wall_s": time.perf_counter() - wall_start}, run_dir / "summary.json")
            raise
        wall = time.perf_counter() - wall_start
        summary = {
            "status": status,
            **({"signal": trainer.stop_request.signal} if status == "interrupted" else {}),
            "task": data.task,
            "test": test,
            **({"test_ema": test_ema} if test_ema else {}),
            "best": {"epoch": trainer.best.epoch, "monitor": trainer.monitor, "value": trainer.best.value,
                     "val": trainer.best.val},
            "epochs": trainer.epoch,
            "steps": trainer.step,
            "params": n_params,
            "trainable_params": n_trainable,
            "samples_per_s": trainer.window.train_samples / max(trainer.train_seconds, 1e-9),
            "wall_s": wall,
            "device": str(device),
            "processes": parts.world.size,  # DDP ranks (torchrun's world size)
            "precision": precision,
            "choices": choices,
            "hparams": hyperparameters(cfg, choices),
            **resumed_facts,
            "dlrun_version": __version__,
        }
        if test and cfg.logger.hparams:
            metrics = {f"test/{k}": v for k, v in test.items()}
            metrics.update({f"best/val_{k}": v for k, v in trainer.best.val.items()})
            writer.hparams(summary["hparams"], metrics, trainer.step)
    finally:
        writer.close()
    if not main:
        return summary
    write_json(summary, run_dir / "summary.json")
    if status == "interrupted":
        log_interrupted(trainer, run_dir)
    print_results(summary, run_dir)
    return summary


def submitit_requeues(signal_name: str | None) -> bool:
    """Whether this is a submitit job stopped by its pre-emption signal: submitit's handler, which
    the signal is handed to after the run, requeues the job (see dlrun.train.interrupt)."""
    preempt = preemption_signal()
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and preempt is not None and signal_name == preempt.name


def log_interrupted(trainer: Trainer, run_dir: Path) -> None:
    """The one line a signal gets: what happened, what was saved, how to go on."""
    last = checkpoint.folder(run_dir) / checkpoint.LAST
    what = f"{trainer.stop_request.signal}: stopped after step {trainer.step} ({trainer.epoch} epochs done)"
    if trainer.checkpoint_dir is None:
        log.warning(f"{what}; no checkpoint written (trainer.checkpoint=false), nothing to continue from")
    elif not last.is_file():
        log.warning(f"{what}, before any checkpoint; nothing to continue from")
    elif submitit_requeues(trainer.stop_request.signal):
        log.warning(f"{what}; saved {last}; submitit requeues this job, which continues from it")
    else:
        log.warning(f"{what}; saved {last}; continue with: dlrun train <same overrides> trainer.resume={run_dir}")


def print_results(summary: dict[str, Any], run_dir: Path) -> None:
    from rich import get_console
    from rich.table import Table

    table = Table(title="dlrun train: results", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    test, best = summary["test"], summary["best"]
    if summary["status"] == "early_stopped":
        table.add_row("status", f"early stopped after epoch {summary['epochs']} (reg=early_stopping)")
    elif summary["status"] == "interrupted" and submitit_requeues(summary.get("signal")):
        table.add_row("status", f"interrupted after epoch {summary['epochs']}; submitit requeues this job")
    elif summary["status"] != "finished":
        table.add_row("status", f"{summary['status']} after epoch {summary['epochs']}; "
                                f"continue with trainer.resume={run_dir}")
    if "acc" in test:
        table.add_row("test accuracy", f"{test['acc']:.4f}")
    if "acc" in summary.get("test_ema", {}):
        table.add_row("test accuracy (EMA)", f"{summary['test_ema']['acc']:.4f}")
    if "loss" in test:
        table.add_row("test loss", f"{test['loss']:.4f}")
    if best["value"] is not None:
        table.add_row("best epoch", f"{best['epoch']} ({best['monitor']} {best['value']:.4f})")
    table.add_row("epochs / steps", f"{summary['epochs']} / {summary['steps']}")
    trainable = summary.get("trainable_params", summary["params"])
    table.add_row("parameters", f"{summary['params']:,}"
                  + (f" ({trainable:,} trainable)" if trainable != summary["params"] else ""))
    table.add_row("wall time", f"{summary['wall_s']:.1f} s ({summary['samples_per_s']:,.0f} samples/s)")
    table.add_row("run directory", str(run_dir))
    table.add_row("tensorboard", f"tensorboard --logdir {run_dir / 'tb'}")
    get_console().print(table)
    metrics = "  ".join(f"test {k} {v:.4f}" for k, v in test.items())
    log.info(f"{summary['status']}: {metrics}  best epoch {best['epoch']}  -> {run_dir / 'summary.json'}")
