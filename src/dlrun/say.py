"""The one line a user reads: an exception folded into one line, said once from however many ranks.

Below every command and the training code (which ends a rank's mistake here): it imports torch
only to meet the other ranks, when there are some.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from typing import NoReturn

# Lines of Hydra's and OmegaConf's reports that say nothing to a user of the CLI.
_NOISE = ("full_key:", "object_type=", "reference_type=", "Set the environment variable HYDRA_FULL_ERROR")


def one_line(exc: BaseException) -> str:
    """Fold an exception (and the OmegaConf error it wraps, if any) into one line.

    Hydra's "Available options in 'model':" list becomes "lenet, mlp"; the config search path
    and OmegaConf's key dumps are dropped.
    """
    text = str(exc)
    key = getattr(exc, "full_key", None)
    if key and type(exc).__name__.startswith(("Interpolation", "UnsupportedInterpolation")):
        # OmegaConf names the key only on a line of its own, which is dropped below
        first, _, rest = text.partition("\n")
        text = (f"{key}: {first}; a ${{...}} value names another key of the config (e.g. ${{trainer.epochs}}) "
                f"or a resolver (${{oc.env:NAME}})\n{rest}")
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += "\n" + str(cause)
    text = text.split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(_NOISE)]
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith(":") and out[-1].startswith("Available options"):
            out[-1] += " " + line
        elif out and out[-1].startswith("Available options") and not line.endswith(":"):
            out[-1] += ", " + line
        else:
            out.append(line)
    return "; ".join(out).replace(".;", ";")


# Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1) before dlrun set the variable itself.
full_error = False


def say(line: str) -> None:
    """A line for the user on stderr, flushed (a rank ends with os._exit), and once from N ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch.distributed" in sys.modules:
        try:
            import torch.distributed  # noqa: F401 (only whether it imports)
        except Exception:  # a torch half imported when a Ctrl-C came: rank 0 says it
            pass
        else:
            say_once(line)
            return
    if os.environ.get("RANK", "0") == "0":  # alone, or no torch to meet the other ranks in: rank 0 says it
        print(line, file=sys.stderr, flush=True)


def fail(command: str, exc: BaseException) -> NoReturn:
    """A user's mistake: one line on stderr and exit 2, or the traceback if they asked for it.
    command "": a mistake in `dlrun`'s own part of the line (an unknown command or option)."""
    if full_error:
        raise exc
    who = f"dlrun {command}" if command else "dlrun"
    say(f"{who}: error: {one_line(exc)}")
    sys.exit(2)


def say_once(line: str) -> None:
    """Print a mistake's one line on stderr from one of the ranks, before any of them ends.

    Every rank finds the mistake on its own (or only one does) and exits, and torch's launcher ends
    the other ranks as soon as one has exited: "rank 0 prints it" lost the line whenever another
    rank got there first (1 run in 4). So the first rank to claim the line in the launcher's store
    (MASTER_ADDR:MASTER_PORT, where the ranks met) prints it, and the others end only once it is out.
    """
    import torch.distributed as dist

    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    key = f"dlrun/said/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{restart}"
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=30))
        first = store.add(key + "/claims", 1) == 1
    except (KeyError, ValueError, RuntimeError):  # no store to meet in: rank 0 says it
        store, first = None, os.environ.get("RANK", "0") == "0"
    if first:
        print(line, file=sys.stderr, flush=True)
        if store is not None:
            with contextlib.suppress(RuntimeError):
                store.set(key, "printed")
    elif store is not None:
        with contextlib.suppress(RuntimeError):  # the rank that claimed it died first: no more to wait for
            store.wait([key])
