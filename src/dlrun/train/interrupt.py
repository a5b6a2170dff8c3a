"""SIGINT, SIGTERM and SIGUSR1 during `fit`: finish the step, write last.pt, end "interrupted".

`dlrun train` also keeps them noted through the final test evaluation (seconds), which then
completes: the run has finished and nothing is lost, so it ends "finished", exit status 0.

The handlers only note the signal; the loop checks the note between optimizer steps. They are
installed for the duration of `fit` only, in the main thread only (Python runs signal handlers
there and refuses to install them elsewhere), and the previous handlers come back afterwards.
After a first SIGINT, a second one kills the process at once (the OS default): the checkpoints
on disk stay whole, as every write is a rename of a complete file.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

# The exit status of a run each signal interrupted: the shell's 128 + N for SIGINT (130) and
# SIGTERM (143); SIGUSR1 (SLURM's pre-emption warning, `sbatch --signal=USR1@90`) also ends
# with 143, "terminated", whatever its number on the platform.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 143}


def _signals() -> list[signal.Signals]:
    return [getattr(signal, name) for name in EXIT_CODES if hasattr(signal, name)]  # no SIGUSR1 on Windows


class StopRequest:
    """The first signal received (its name), or None."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.catching = False  # handlers installed for this request (catch_signals nests)

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def catch_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Note SIGINT/SIGTERM/SIGUSR1 in `request` while inside; outside the main thread, or inside an
    outer catch_signals of the same request, do nothing more."""
    if threading.current_thread() is not threading.main_thread() or request.catching:
        yield request
        return

    def note(signum: int, frame: object) -> None:
        if request.signal is None:
            request.signal = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C: out at once
            signal.signal(signal.SIGINT, signal.SIG_DFL)

    previous = {}
    request.catching = True
    try:
        for sig in _signals():
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, note)
        yield request
    finally:
        request.catching = False
        for sig, handler in previous.items():
            # None: a handler installed from outside Python, which cannot be put back; the default is.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
