"""SIGINT, SIGTERM and SIGUSR1 during `fit`: finish the step, write last.pt, end "interrupted".

`dlrun train` also keeps them noted through the final test evaluation (seconds), which then
completes: the run has finished and nothing is lost, so it ends "finished", exit status 0.

The handlers only note the signal; the loop checks the note between optimizer steps. They are
installed for the duration of `fit` only, in the main thread only (Python runs signal handlers
there and refuses to install them elsewhere), and the previous handlers come back afterwards.
After a first SIGINT, a second one kills the process at once (the OS default): the checkpoints
on disk stay whole, as every write is a rename of a complete file.

A cluster's pre-emption signal (SIGUSR2, or the one SUBMITIT_PREEMPT_SIGNAL names, as submitit
reads it) is noted the same way, but only while a Python handler is installed for it: submitit's,
in a trial of hydra/launcher=slurm, which requeues the job and exits at once. Run first, it would
exit mid-step and lose the steps since the last checkpoint; noted, the run saves last.pt and ends,
and `hand_over` then gives the signal to that handler. With no Python handler it keeps its
default action (the process ends), as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

# The exit status of a run each signal interrupted: the shell's 128 + N for SIGINT (130) and
# SIGTERM (143); SIGUSR1 (SLURM's pre-emption warning, `sbatch --signal=USR1@90`) and SIGUSR2
# (submitit's) also end with 143, "terminated", whatever their numbers on the platform.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGUSR1": 143, "SIGUSR2": 143}
ALWAYS = ("SIGINT", "SIGTERM", "SIGUSR1")  # noted whatever handler they had


def preemption_signal() -> signal.Signals | None:
    """The signal submitit requeues a job on: "SIG" + $SUBMITIT_PREEMPT_SIGNAL, USR2 by default."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, "SIG" + name.removeprefix("SIG"), None)


def _signals() -> list[signal.Signals]:
    sigs = [getattr(signal, name) for name in ALWAYS if hasattr(signal, name)]  # no SIGUSR1 on Windows
    preempt = preemption_signal()
    # Only when something in this process wants it (a Python handler): else its default stays.
    if preempt is not None and preempt not in sigs and callable(signal.getsignal(preempt)):
        sigs.append(preempt)
    return sigs


_noted: list[str] = []  # the first signal any catch_signals noted in this process (see noted())


def noted() -> str | None:
    """The first signal a catch_signals noted in this process since forget(): a run that is saving
    and ending because of it. A worker uses this to let a repeat of that signal pass (the kernel
    sends a parent-death signal once for each thread of the parent that ends)."""
    return _noted[0] if _noted else None


def forget() -> None:
    _noted.clear()


class StopRequest:
    """The first signal received (its name), or None."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.catching = False  # handlers installed for this request (catch_signals nests)

    def __bool__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def catch_signals(request: StopRequest) -> Iterator[StopRequest]:
    """Note SIGINT/SIGTERM/SIGUSR1 (and the pre-emption signal, see above) in `request` while inside;
    outside the main thread, or inside an outer catch_signals of the same request, do nothing more."""
    if threading.current_thread() is not threading.main_thread() or request.catching:
        yield request
        return

    def note(signum: int, frame: object) -> None:
        if request.signal is None:
            request.signal = signal.Signals(signum).name
            if not _noted:
                _noted.append(request.signal)
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


def interrupt_once(signum: int, frame: object) -> None:
    """The CLI's SIGINT handler outside `catch_signals`: KeyboardInterrupt, as Python's own, once.

    Later ones are ignored while the process says it was interrupted and ends: a Ctrl-C reaches the
    ranks of trainer.devices=N both from the terminal and from their launcher, and a second
    KeyboardInterrupt raised in the middle of saying the first would end in a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def hand_over(name: str | None) -> None:
    """After a run the signal `name` interrupted (last.pt on disk, catch_signals' handlers gone):
    call the Python handler that was installed for it before, as the signal would have. submitit's
    requeues the job and exits; without one, nothing happens. Python's own SIGINT handler (and the
    CLI's, interrupt_once) is left out: it would only raise KeyboardInterrupt where the caller exits 130."""
    sig = getattr(signal, name, None) if name else None
    handler = signal.getsignal(sig) if sig is not None else None  # the one catch_signals put back
    if callable(handler) and handler not in (signal.default_int_handler, interrupt_once):
        handler(sig, None)
