"""Checkpoints: written atomically, read with weights_only=True, refused in one line when wrong."""

from __future__ import annotations

import os
import pickle
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrun.errors import UserError


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash or a full disk mid-write leaves the previous checkpoint whole: rename is atomic
    within one directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def snapshot(obj: Any) -> Any:
    """A copy of every tensor in a nested state (on the CPU), so training can go on changing them."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes checkpoints on one worker thread: training waits for a tensor copy, not for the disk.

    Writes happen in the order they were asked for. `wait()` returns once every write asked for
    so far is on disk, and raises the first failure as one line.
    """

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlrun-checkpoint")
        self.pending: list[tuple[Path, Future]] = []

    def save(self, state: dict[str, Any], path: Path, copy: bool = True) -> None:
        """Queue a write of `state`; copy=False only for a state nothing will change in place."""
        self.pending.append((path, self.pool.submit(save_atomic, snapshot(state) if copy else state, path)))

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for path, future in pending:
            try:
                future.result()
            except OSError as exc:
                raise UserError(f"could not write checkpoint '{path}' ({exc.strerror or exc}); the previous one is "
                                "intact: free some disk space, or set trainer.checkpoint=false") from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory (meaning its checkpoints/last.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(f"trainer.resume: no checkpoint at '{path}'; pass a run directory or a .pt file")
    return path


def load(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain containers only, so no pickled code runs."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else is cut short or foreign
        raise UserError(f"checkpoint '{path}' is truncated or corrupt (not a torch zip archive); "
                        "use another checkpoint, e.g. best.pt or an earlier run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        reason = reason.split(" Please use")[0]
        raise UserError(f"checkpoint '{path}' holds objects that are not plain weights and was refused, "
                        f"nothing in it was run ({reason}); load only checkpoints written by dlrun") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}); "
                        "use another checkpoint, e.g. best.pt or an earlier run") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint '{path}' is not a dlrun checkpoint (no 'model' entry)")
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights, or refuse with the first mismatching keys and shapes named."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        details = "; ".join(filter(None, [
            wrong and "shape (checkpoint vs model): " + ", ".join(wrong[:3]),
            missing and "missing: " + ", ".join(missing[:3]),
            unexpected and "unexpected: " + ", ".join(unexpected[:3]),
        ]))
        raise UserError(f"checkpoint '{path}' is for another model ({details}); "
                        "use the model and data overrides the checkpoint was trained with")
    model.load_state_dict(state)
