"""Checkpoints: written atomically, read with weights_only=True, refused in one line when wrong."""

from __future__ import annotations

import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrun.errors import UserError
from dlrun.paths import BEST, CHECKPOINTS, LAST, PREVIOUS


def save_atomic(obj: dict[str, Any], path: Path, previous: Path | None = None) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash or a full disk mid-write leaves the previous checkpoint whole: rename is atomic
    within one directory. `previous`: first make the file `path` holds (if any) also `previous`,
    by a hard link renamed into place, so each name always holds a whole checkpoint.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            link = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
            try:
                link.unlink(missing_ok=True)
                os.link(path, link)
                os.replace(link, previous)
            except OSError:  # no hard links on this file system: keep the newest only
                link.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files a process killed mid-write left in `folder` (never a whole checkpoint).

    save_atomic names them .NAME.PID.tmp; only one run writes into a run directory at a time."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def snapshot(obj: Any) -> Any:
    """A copy of every tensor in a nested state (on the CPU), so training can go on changing them."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def write_failure(exc: BaseException) -> str:
    """Why a write failed, in a few words: the OS's reason, or the end of torch's
    "[enforce fail at inline_container.cc:N] . PytorchStreamWriter failed writing file data/0: file write failed"."""
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text.rsplit(": ", 1)[-1] if text.startswith("[enforce fail") else text


def _write(before: Callable[[], None] | None, state: Any, path: Path, previous: Path | None) -> None:
    if before is not None:
        before()
    save_atomic(state, path, previous)


class BackgroundWriter:
    """Writes checkpoints on one worker thread: training waits for a tensor copy, not for the disk.

    Writes happen in the order they were asked for. `wait()` returns once every write asked for
    so far is on disk, and raises the first failure as one line.
    """

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlrun-checkpoint")
        self.pending: list[tuple[Path, Future]] = []

    def save(self, state: dict[str, Any], path: Path, copy: bool = True, previous: Path | None = None,
             before: Callable[[], None] | None = None) -> None:
        """Queue a write of `state`; copy=False only for a state nothing will change in place;
        `before` runs on the worker first (the checkpoint is on disk only once it has)."""
        self.pending.append((path, self.pool.submit(_write, before, snapshot(state) if copy else state, path,
                                                    previous)))

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for path, future in pending:
            try:
                future.result()
            except (OSError, RuntimeError) as exc:  # torch.save's own writer raises RuntimeError on a full disk
                raise UserError(f"could not write checkpoint '{path}' ({write_failure(exc)}); the previous one is "
                                "intact: free some disk space, or set trainer.checkpoint=false") from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.pool.shutdown()


def folder(run_dir: Path) -> Path:
    """A run directory's checkpoint folder."""
    return Path(run_dir) / CHECKPOINTS


class CheckpointSaver:
    """A run's checkpoint policy, in one place: where (RUN/checkpoints), the names, the order
    (best.pt before last.pt: a run killed between the two resumes from the older last.pt, redoes
    the epoch, improves again and rewrites the same best.pt), the rotation of last.pt into
    previous.pt (what trainer.resume=auto falls back to), and at most one round of writes in
    flight (training waits for a tensor copy, not for the disk). `folder` None: no checkpoints."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.writer = BackgroundWriter()

    def save(self, state: dict[str, Any], best: dict[str, Any] | None = None,
             before: Callable[[], None] | None = None) -> None:
        """Queue last.pt (and best.pt first, when given: a payload nothing changes in place); `before`
        runs on the writer's thread ahead of them (the TensorBoard flush: a run killed outright keeps
        its curves up to the checkpoint it resumes from, and training does not wait for it)."""
        assert self.folder is not None
        self.writer.wait()  # the writes before: at most one round in flight
        if best is not None:
            self.writer.save(best, self.folder / BEST, copy=False, before=before)
            before = None
        self.writer.save(state, self.folder / LAST, previous=self.folder / PREVIOUS, before=before)

    def save_best_now(self, best: dict[str, Any]) -> None:
        """best.pt written at once (a resumed run's copy of the best weights it continues from)."""
        if self.folder is not None:
            save_atomic(best, self.folder / BEST)

    def close(self) -> None:
        self.writer.close()


# What to do about a bad checkpoint, by the option that named it.
RESUME_FIX = "use another checkpoint, e.g. best.pt or an earlier run"
# torch.save's legacy (pre-1.6, non-zip) format starts with this pickle; old torchvision .pth files use it.
LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def resolve(path: str | os.PathLike, option: str = "trainer.resume", names: tuple[str, ...] = (LAST,),
            accepts: str = "a run directory or a .pt file") -> Path:
    """A checkpoint file, or a run directory (meaning the first of `names` in its checkpoints/ folder)."""
    path = Path(path).expanduser()
    # os.path's tests, not Path's: they answer False for a name too long for the file system (an OSError in Path's)
    if os.path.isdir(path):
        saved = folder(path)
        path = next((saved / name for name in names if os.path.isfile(saved / name)), saved / names[0])
        if not os.path.isfile(path):
            where = " or ".join(f"'{saved / name}'" for name in names)
            raise UserError(f"{option}: no checkpoint at {where}; pass {accepts}")
    if not os.path.isfile(path):
        raise UserError(f"{option}: no checkpoint at '{path}'; pass {accepts}")
    return path


# What trainer.resume=auto looks for in the run's checkpoints/ folder, newest first: last.pt, and
# the last.pt before it (kept as previous.pt) in case the newest cannot be read.
RESUMABLE = (LAST, PREVIOUS)


def resume_candidates(run_dir: Path) -> list[Path]:
    """The resumable checkpoints in run_dir/checkpoints, newest first."""
    return [p for p in (folder(run_dir) / name for name in RESUMABLE) if p.is_file()]


def _legacy_header_complete(path: Path) -> bool:
    """Whether a legacy file's pickles (magic, protocol, system info, the object, its storage keys) are whole.

    pickletools only parses the opcodes, running nothing; without this, a file cut inside the
    object's pickle would be reported as holding a foreign global (a name cut in half).
    """
    try:
        with open(path, "rb") as f:
            for _ in range(5):
                for _ in pickletools.genops(f):
                    pass
    except Exception:
        return False
    return True


def verify_archive(path: Path, what: str, fix: str) -> None:
    """Check every member of the zip archive against the CRC-32 written with it: torch.load does not,
    and reads a flipped bit in the weights, or bytes overwritten, as plain numbers."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error) as exc:
        raise UserError(f"{what} '{path}' is truncated or corrupt ({exc}); {fix}") from None
    if bad is not None:
        raise UserError(f"{what} '{path}' is corrupt ({bad} fails its CRC check: the file changed after it was "
                        f"written); {fix}")


def _plain(value: Any) -> bool:
    """Whether a saved config is what dlrun writes: mappings, lists, text, numbers, booleans, null."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


# What the entries dlrun reads must be, where a checkpoint has them: (test, what it should be).
ENTRIES = {
    "config": (lambda v: v is None or (isinstance(v, dict) and _plain(v)),
               "a mapping of plain values (text, numbers, lists)"),
    "epoch": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer"),
    "step": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer"),
    "model": (lambda v: all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
              "names -> tensors"),
    "ema": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())),
            "names -> tensors"),
    "best": (lambda v: v is None or isinstance(v, dict), "a mapping"),
}


def check_entries(state: dict[str, Any], path: Path, what: str, fix: str) -> None:
    """Refuse a checkpoint whose entries have the wrong types (a text epoch, a string config) in one line."""
    for key, (ok, expected) in ENTRIES.items():
        if key in state and not ok(state[key]):
            value = state[key]
            shown = f"{type(value).__name__} {value!r}"[:60] if not isinstance(value, dict) else "a mapping"
            raise UserError(f"{what} '{path}' is not a dlrun checkpoint: its '{key}' is {shown}, not {expected}; "
                            f"{fix}")


# What trainer.resume reads from a checkpoint besides the model: (entry, what it must be).
RESUME_ENTRIES = {"optimizer": dict, "scheduler": dict, "epoch": int, "step": int, "best": dict, "rng": dict,
                  "config": dict}


def check_resumable(state: dict[str, Any], path: Path) -> None:
    """A checkpoint trainer.resume can continue: a dlrun last.pt, not a best.pt or a state dict."""
    for key, kind in RESUME_ENTRIES.items():
        if not isinstance(state.get(key), kind):
            found = "no" if key not in state else f"a {type(state[key]).__name__}"
            raise UserError(f"checkpoint '{path}' cannot be resumed: it has {found} '{key}' entry (trainer.resume "
                            f"continues a dlrun last.pt); {RESUME_FIX}")


def load(path: Path, *, state_dict_ok: bool = False, fix: str = RESUME_FIX) -> dict[str, Any]:
    """Load with weights_only=True: tensors and plain containers only, so no pickled code runs.

    state_dict_ok: also accept a torch.save'd plain state dict (name -> tensor), as torchvision
    publishes weights, in torch's zip or legacy format; it comes back as {"model": state_dict}.
    Every refusal is one line naming the file and `fix`.
    """
    what = "weights file" if state_dict_ok else "checkpoint"
    legacy = False
    if state_dict_ok:
        try:
            with open(path, "rb") as f:
                legacy = f.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC
        except OSError:
            pass  # torch.load below names the problem
    if not (zipfile.is_zipfile(path) or legacy):  # torch.save writes a zip; anything else is cut short or foreign
        raise UserError(f"{what} '{path}' is truncated or corrupt (not a torch zip archive); {fix}")
    if legacy and not _legacy_header_complete(path):
        raise UserError(f"{what} '{path}' is truncated or corrupt (its pickle ends early); {fix}")
    if not legacy:
        verify_archive(path, what, fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        reason = reason.split(" Please use")[0]
        if "Unsupported global" not in reason and legacy:  # a legacy file cut short fails in the unpickler
            raise UserError(f"{what} '{path}' is truncated or corrupt ({reason}); {fix}") from None
        written_by = "dlrun or plain state dicts" if state_dict_ok else "dlrun"
        raise UserError(f"{what} '{path}' holds objects that are not plain weights and was refused, "
                        f"nothing in it was run ({reason}); load only checkpoints written by {written_by}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        raise UserError(f"{what} '{path}' is truncated or corrupt ({type(exc).__name__}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        check_entries(state, path, what, fix)
        return state
    if state_dict_ok and isinstance(state, dict) and state and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        return {"model": dict(state)}
    if not state_dict_ok:
        raise UserError(f"checkpoint '{path}' is not a dlrun checkpoint (no 'model' entry)")
    keys = ", ".join(map(str, list(state)[:5])) if isinstance(state, dict) else type(state).__name__
    raise UserError(f"weights file '{path}' is neither a dlrun checkpoint (a 'model' entry) nor a state dict "
                    f"(names -> tensors); it holds: {keys or 'nothing'}; {fix}")


def compare(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """The keys whose shapes differ, the model's keys `state` lacks, and the keys of `state` the model lacks."""
    wrong = [k for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    return wrong, missing, unexpected


def describe_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], wrong: list[str],
                      missing: list[str], unexpected: list[str], source: str = "checkpoint", first: int = 3) -> str:
    """'shape (checkpoint vs model): 1.weight (8, 64) vs (16, 64); missing: ...; unexpected: ...'."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:first]) + (f" (+{len(keys) - first} more)" if len(keys) > first else "")

    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:first]]
    return "; ".join(filter(None, [
        wrong and f"shape ({source} vs model): " + ", ".join(shapes)
        + (f" (+{len(wrong) - first} more)" if len(wrong) > first else ""),
        missing and "missing: " + names(missing),
        unexpected and "unexpected: " + names(unexpected),
    ]))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights, or refuse with the first mismatching keys and shapes named."""
    own = model.state_dict()
    wrong, missing, unexpected = compare(own, state)
    if missing or unexpected or wrong:
        details = describe_mismatch(own, state, wrong, missing, unexpected)
        raise UserError(f"checkpoint '{path}' is for another model ({details}); "
                        "use the model and data overrides the checkpoint was trained with")
    model.load_state_dict(state)
