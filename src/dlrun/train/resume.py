"""trainer.resume: the checkpoint a run continues from, and whether it may continue it.

A checkpoint holds weights, optimizer moments and a schedule's position made under one recipe:
its data, model, init, regularisation, loss, augmentation, optimizer and schedule, and the
trainer's seed, clipping, EMA and monitored metric. torch's load_state_dict quietly puts the
checkpoint's lr back over a new optim.lr, fails at the first step on another optimizer's
missing state, and takes another schedule's class as it is; so a resume under other values of
the recipe is refused, in one line naming the keys. What may change is how the run is carried
out (device, processes, precision, threads, compile, micro-batches), how it logs, how long it
goes on (epochs, max_steps; not when the schedule's length is the run's), and where the data
is read from; the new values are the ones used, and summary.json records them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlrun.errors import UserError
from dlrun.optim import RUN_LENGTH
from dlrun import checkpoint

log = logging.getLogger("dlrun")

# Keys (and groups) a resumed run may set to other values than its checkpoint's.
# trainer.precision: like the device it may change (a GPU run continued on a CPU: auto resolves
# to bf16 there and 32 here); the numbers are the same recipe's, rounded differently.
MAY_CHANGE = (
    "trainer.device", "trainer.devices", "trainer.sync_bn", "trainer.precision", "trainer.channels_last",
    "trainer.compile", "trainer.compile_mode", "trainer.deterministic", "trainer.threads", "trainer.micro_batch_size",
    "trainer.epochs", "trainer.max_steps", "trainer.stop_at_epoch", "trainer.checkpoint",
    "trainer.checkpoint_every_steps", "trainer.resume",
    "logger", "eval", "sweep", "check", "callbacks",
    # where the data is read from (another machine's mount), not which data: the data's class,
    # split and preprocessing are compared
    "data.root", "data.path", "data.download", "data.eval_batch_size", "data.on_device", "data.workers",
    "model.weights",  # the checkpoint's weights replace them
    "optim.foreach", "optim.fused",  # how torch runs the same update (its multi-tensor or fused kernels)
)
# Settings that are off when absent: a checkpoint from a dlrun before they existed had them off.
OFF = (None, False, 0, "none")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists are values."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _may_change(key: str, fixed_length: bool) -> bool:
    if fixed_length and key in ("trainer.epochs", "trainer.max_steps"):
        return False
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def run_length(now: dict[str, Any]) -> str | None:
    """The schedule's length key when it is null, so the schedule's length is the run's: its state
    saved that length (T_max, total_steps), so another epochs or max_steps would run past it
    (OneCycleLR fails, cosine climbs back up) rather than stretch it."""
    sched = now.get("sched") if isinstance(now.get("sched"), dict) else {}
    return next((key for key in RUN_LENGTH if key in sched and sched[key] is None), None)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)  # 1 and 1.0 alike; true and 1 not


def differences(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[tuple[str, Any, Any]], dict[str, Any]]:
    """(the recipe's keys whose values differ, {key: [checkpoint's, now]} of those that may differ)."""
    old, new = flatten(saved), flatten(now)
    fixed_length = run_length(now) is not None
    refused, changed = [], {}
    for key in dict.fromkeys([*new, *old]):
        if key not in old and any(_same(new[key], off) for off in OFF):
            continue
        before, after = old.get(key, "(absent)"), new.get(key, "(absent)")
        if _same(before, after):
            continue
        if _may_change(key, fixed_length):
            if key != "trainer.resume":  # what makes it a resume, not a change
                changed[key] = [before, after]
        else:
            refused.append((key, before, after))
    return refused, changed


def _shown(value: Any) -> str:
    text = "null" if value is None else str(value).replace("'", "")
    return text if len(text) <= 60 else text[:57] + "..."


def check_recipe(state: dict[str, Any], cfg: DictConfig, path: Path) -> dict[str, Any]:
    """Refuse a resume whose recipe differs from the checkpoint's in one line naming the keys;
    return the keys that may differ and do ({key: [checkpoint's, now]}), for summary.json."""
    now = OmegaConf.to_container(cfg, resolve=True)
    refused, changed = differences(state["config"], now)
    if refused:
        # Another class in a group (optim=sgd on Adam's checkpoint): the class says it, not its every key.
        other_class = {k.rsplit(".", 1)[0] for k, _, _ in refused if k.endswith("._target_")}
        refused = [r for r in refused if r[0].endswith("._target_") or r[0].rsplit(".", 1)[0] not in other_class]
        first = 3
        shown = "; ".join(f"{k}: {_shown(a)} there, {_shown(b)} now" for k, a, b in refused[:first])
        more = f" (+{len(refused) - first} more: {', '.join(k for k, _, _ in refused[first:])})" \
            if len(refused) > first else ""
        length = run_length(now)
        if length and {"trainer.epochs", "trainer.max_steps"} & {k for k, _, _ in refused}:
            more += f" (sched.{length}=null: the schedule's length is the run's and cannot change on resume)"
        raise UserError(f"trainer.resume: checkpoint '{path}' was trained with another recipe ({shown}{more}); resume "
                        "with the overrides it was trained with, or start a new run without trainer.resume")
    return changed


def load(path: Path, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at `path`, checked to be resumable under `cfg`: (state, the keys changed)."""
    state = checkpoint.load(path)
    checkpoint.check_resumable(state, path)
    return state, check_recipe(state, cfg, path)


def pick(cfg: DictConfig, run_dir: Path, resume: str | None) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """The checkpoint to continue from, loaded and checked: (path, state, keys changed), or None.

    trainer.resume=auto takes the newest checkpoint of run_dir that reads (a truncated or corrupt
    one is logged and the one before it tried); one that reads but was trained with another recipe
    stops the run: starting fresh would overwrite it.
    """
    if not resume:
        return None
    if str(resume) != "auto":
        path = checkpoint.resolve(resume)
        return (path, *load(path, cfg))
    for path in checkpoint.resume_candidates(run_dir):
        try:
            state = checkpoint.load(path)
        except UserError as exc:
            log.warning(f"trainer.resume=auto: skipping {path}: {exc}")
            continue
        checkpoint.check_resumable(state, path)
        return path, state, check_recipe(state, cfg, path)
    log.info(f"trainer.resume=auto: no checkpoint to continue from in {run_dir / 'checkpoints'}; starting fresh")
    return None
