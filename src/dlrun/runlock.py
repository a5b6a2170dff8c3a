"""One writer per run directory: an exclusive advisory lock on DIR/.dlrun.lock.

`fcntl.flock` on a file inside the directory, taken before anything else is written there (before
Hydra writes .hydra/ and train.log) and held until the run ends. The kernel drops it when the
process dies, however it dies, so a killed run never leaves a stale lock behind; the file itself
stays, holding the last holder's PID. A second process is refused in one line naming the holder.

Re-entrant within a process: Hydra's callback (dlrun.train.app.RunDirGuard), a sweep worker and
train() itself each claim the directory they write, and only the first claim locks.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from dlrun.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; the checks still run, without the lock
    fcntl = None

LOCK_NAME = ".dlrun.lock"

_held: dict[str, list[int]] = {}  # realpath of a directory -> [fd of its lock file, claims]


def shown(path: str | os.PathLike) -> str:
    """A path for an error line: a 5,000-character name would make that line a page."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:60]}...{text[-40:]} ({len(text)} characters)"


def location_problem(exc: OSError) -> str:
    """Why a directory cannot be used, in words, from the OSError that stat/mkdir/open raised."""
    if exc.errno == errno.ELOOP:
        return "it is a symlink loop (a link that points back at itself)"
    if exc.errno == errno.ENAMETOOLONG:
        return "its name is too long for the file system (at most 255 characters a name)"
    if exc.errno == errno.ENOENT:
        return "a part of its path does not exist (a symlink to nothing?)"
    if exc.errno == errno.ENOTDIR:
        return "a part of its path is a file, not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"it cannot be written to ({exc.strerror})"
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    return exc.strerror or str(exc)


def holds(run_dir: str | os.PathLike) -> bool:
    """Whether this process holds run_dir's lock (then no other process writes there)."""
    return os.path.realpath(run_dir) in _held


def holder(run_dir: str | os.PathLike) -> int | None:
    """The PID of the process that holds run_dir's lock, if another one does (a probe, no write)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(fd) or -1
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None


def busy(run_dir: str | os.PathLike, pid: int | None, what: str = "run directory",
         fix: str = "pass a new hydra.run.dir") -> UserError:
    """The refusal of a directory another process holds, naming it."""
    who = f"process {pid}" if pid and pid > 0 else "another process"
    stop = f" (kill {pid})" if pid and pid > 0 else ""
    return UserError(f"{what} {shown(run_dir)} is being written by {who} (it holds {LOCK_NAME} there); "
                     f"wait for it to end or stop it{stop}, or {fix} (nothing was written)")


def acquire(run_dir: str | os.PathLike, what: str = "run directory", fix: str = "pass a new hydra.run.dir") -> None:
    """Lock run_dir for this process (making it if needed), or UserError naming the PID that holds it.

    `what` and `fix` word the refusal: "run directory D is being written by process 123 ...; <fix>"."""
    key = os.path.realpath(run_dir)
    if key in _held:
        _held[key][1] += 1
        return
    path = Path(run_dir) / LOCK_NAME
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted under the lock's name is refused, not written through.
        # (Python's os.open makes it non-inheritable: a program the run starts never holds the lock.)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise UserError(f"{what} {shown(run_dir)} cannot be used: {location_problem(exc)}; {fix}") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _pid_in(fd)
        os.close(fd)
        raise busy(run_dir, pid, what, fix) from None
    # In place, then cut: a reader never sees the file empty, only the old PID or the new one.
    mine = f"{os.getpid()}\n".encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, mine)
    os.ftruncate(fd, len(mine))
    _held[key] = [fd, 1]


def release(run_dir: str | os.PathLike) -> None:
    """Undo one acquire; the last one unlocks (closing the file drops the lock)."""
    key = os.path.realpath(run_dir)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        os.close(entry[0])


def _pid_in(fd: int) -> int | None:
    """The holder's PID as the file says it. Between its flock and its write the file still names
    the holder before it: a PID that is no longer running is read again, briefly."""
    pid = None
    for _ in range(50):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode(errors="replace").split("\n", 1)[0].strip()
        pid = int(text) if text.isdigit() else None
        if pid is not None and _running(pid):
            return pid
        time.sleep(0.02)
    return pid


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
