"""`dlrun <command> [overrides]`: dispatch only.

Imports nothing heavy: `dlrun --help` must answer in well under a second, so torch, hydra and
the commands' modules are imported only once a command is chosen.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from dlrun.errors import UserError
from dlrun.options import COMMANDS, answer
from dlrun.say import fail, one_line, say  # noqa: F401 (one_line: also dlrun.cli's)
from dlrun import say as _say


def interrupted(command: str | None) -> int:
    """Ctrl-C outside the training loop (which saves and stops on its own): one line; the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a launcher passes it on again: this line is the last word
    who = f"dlrun {command}" if command else "dlrun"
    say(f"{who}: error: interrupted by SIGINT (Ctrl-C) before it finished; what was on disk before is as it was: "
        "run the command again")
    return 130


def main(argv: list[str] | None = None) -> None:
    from dlrun.train.interrupt import interrupt_once

    argv = sys.argv[1:] if argv is None else argv
    # Python's own handler only: a SIGINT the process was started with ignored (a background job
    # of a script) stays ignored, as Python leaves it.
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, interrupt_once) if ours else None
    try:
        _main(argv)
        sys.stdout.flush()  # here, so that a reader that has gone is caught below
    except BrokenPipeError:
        # `dlrun report DIR --json | head`: the reader closed the pipe. Python's documented remedy:
        # point stdout at /dev/null so the interpreter's exit flush cannot fail again, and exit 1
        # without a traceback, as rich's console does when its tables meet a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:  # while importing torch, composing, building data and model, ...
        sys.exit(interrupted(argv[0] if argv and argv[0] in COMMANDS else None))
    finally:
        # As the caller had it (a test that runs main in its process), unless a Ctrl-C is ending the
        # process: then a second one stays ignored through the interpreter's exit.
        if ours and signal.getsignal(signal.SIGINT) is interrupt_once:
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str]) -> None:
    if argv[:1] in (["-sc"], ["--shell-completion"]):  # the script `dlrun train -sc install=bash` installed asks
        complete(argv)
        return
    try:
        if answer(argv):  # a --help (train's is Hydra's) or --version, printed without torch or Hydra
            return
    except UserError as exc:  # an unknown command or option
        fail(argv[0] if argv[0] in COMMANDS else "", exc)
    command, rest = argv[0], argv[1:]
    if command == "report":  # no Hydra, no torch: it reads a sweep directory
        from dlrun.sweep.report import main as report_main

        try:
            report_main(rest)
        except UserError as exc:
            fail(command, exc)
        return

    # Let exceptions reach us instead of Hydra's multi-line report, so a user's mistake prints
    # as one line. A user who sets HYDRA_FULL_ERROR=1 still gets the full traceback.
    asked = os.environ.get("HYDRA_FULL_ERROR")
    _say.full_error = asked == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    rest = [quote_dimension(arg) for arg in rest]
    # Hydra names the app after argv[0]: "dlrun train" in its help; the completion script it
    # installs must complete the program, dlrun, and call it back as `dlrun -sc query=...`.
    installs = any(arg in ("-sc", "--shell-completion") for arg in rest)
    sys.argv = ["dlrun" if installs else f"dlrun {command}", *rest]
    try:
        _run(command, rest)
    finally:  # as the user had it, for a caller that runs main again in this process
        if asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


def complete(argv: list[str]) -> None:
    """A shell's completion query (COMP_LINE holds the line typed): the commands after `dlrun`, and
    Hydra's own completion of groups, options and keys after `dlrun train`."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    typing_word = bool(line) and not line.endswith(" ")
    fish = any(arg.endswith("=fish") for arg in argv)
    if len(words) <= 1 or (len(words) == 2 and typing_word):  # the command itself
        prefix = words[1] if len(words) == 2 else ""
        names = [name for name in COMMANDS if name.startswith(prefix)]
        print("\n".join(names) if fish else " ".join(names))
        return
    if words[1] != "train":  # the other commands take paths and their own options: the shell's default
        return
    start = line.index("train")
    os.environ["COMP_LINE"] = line[:start] + line[start + len("train"):].lstrip(" ")
    sys.argv = ["dlrun", *argv]
    from dlrun.train.app import train_app

    train_app()


def quote_dimension(arg: str) -> str:
    """'sweep.space.optim.lr=loguniform(1e-4,1e-2)' -> ++sweep.space.optim.lr='loguniform(1e-4,1e-2)':
    a search dimension is text for dlrun's sweeper, not a call in Hydra's override grammar, and
    ++ sets it or adds it (a new dimension needs no + of its own)."""
    key, sep, value = arg.partition("=")
    if not (sep and key.lstrip("+").startswith("sweep.space.")):
        return arg
    quoted = value if not value or value[0] in "'\"" else f"'{value}'"
    return f"++{key.lstrip('+')}={quoted}"


def check_group_choices(args: list[str]) -> None:
    """A group override must name the group's options: `model=1.5` fails here in one line (Hydra
    would raise a ValueError from deep inside its defaults list, a traceback), and so does a name
    no file can have (longer than the 255 characters of a file name: an OSError from Hydra's
    search for it) and a value Hydra's parser cannot read (an integer of more digits than Python
    converts: a ValueError from inside the parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    from dlrun.paths import CONFIG_DIR

    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    parser = OverridesParser.create()
    for arg in [a for a in args if "=" in a and not a.startswith("-")]:
        try:
            (override,) = parser.parse_overrides([arg])
        except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
            raise UserError(f"{_short(arg)}: {str(exc).split(';')[0]}; write it with fewer digits") from None
        if override.key_or_group not in groups or override.is_delete():
            continue
        value = override.value()
        names = value.list if isinstance(value, ChoiceSweep) else value if isinstance(value, list) else [value]
        # A name is a file's: one too long for the file system fails in Hydra's os.stat (a traceback).
        if not all(isinstance(name, str) and len(f"{name}.yaml".encode()) <= 255 for name in names):
            from dlrun.runlock import shown

            group = override.key_or_group
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
            raise UserError(f"{shown(override.input_line)}: {group} takes the name of one of its "
                            f"configs: {', '.join(options)}")


def _short(text: str, limit: int = 80) -> str:
    """A value as long as a page, cut for the one line that names it."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _run(command: str, rest: list[str]) -> None:
    """Run a command whose user mistakes end in `fail`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if command not in ("eval", "ensemble"):  # eval's overrides apply to a checkpoint's saved config
            check_group_choices(rest)
        if command == "train":
            train(rest)
        elif command == "summary":
            from dlrun.summary import main as summary_main

            summary_main(rest)
        elif command == "eval":
            from dlrun.evaluate import main as eval_main

            eval_main(rest)
        elif command == "check":
            from dlrun.check import main as check_main
            from dlrun.options import parse

            check_main(parse("check", rest).args)
        elif command == "ensemble":
            from dlrun.sweep.ensemble import main as ensemble_main

            ensemble_main(rest)
    except (UserError, HydraException, OmegaConfBaseException) as exc:
        fail(command, with_the_keys(exc, rest) if command in ("train", "summary") else exc)


def with_the_keys(exc: BaseException, args: list[str]) -> BaseException:
    """Hydra's "Could not override 'optim.lrr'" names neither the keys optim has nor the one meant:
    the config composed without that override does (composed again, on this error's path only)."""
    import difflib
    import re

    found = re.match(r"Could not override '([\w.]+)'", str(exc))
    if not found:
        return exc
    key = found.group(1)
    parent, _, leaf = key.rpartition(".")
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import DictConfig, OmegaConf

        from dlrun.paths import CONFIG_DIR

        others = [a for a in args if "=" in a and not a.startswith("-") and a.split("=", 1)[0] != key]
        GlobalHydra.instance().clear()
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            node = OmegaConf.select(compose("train", overrides=others), parent) if parent else None
    except Exception:  # the other overrides do not compose either: Hydra's words, then
        return exc
    if not isinstance(node, DictConfig):
        return exc
    keys = [k for k in node if not str(k).startswith("_")]
    owner = node.get("_target_") or parent
    close = difflib.get_close_matches(leaf, keys, n=1)
    meant = f" (did you mean {parent}.{close[0]}?)" if close else ""
    return UserError(f"{key}: unknown key for {owner}{meant}; its keys: {', '.join(map(str, keys))}; "
                     f"another argument its class takes is added with +{parent}.NAME=VALUE")


def devices_asked(args: list[str]) -> int:
    """trainer.devices=N on the command line (the last one wins); 1 when absent."""
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("trainer.devices=")]
    if not values:
        return 1
    try:
        devices = int(values[-1])
    except ValueError:
        devices = 0
    if devices < 1:
        raise UserError(f"trainer.devices={values[-1]} must be a whole number >= 1 (the processes to train on)")
    return devices


def into_the_run_it_resumes(args: list[str]) -> list[str]:
    """trainer.resume=RUN_DIR continues in RUN_DIR itself, as trainer.resume=auto does in its own:
    one run's curves, metrics.csv and summary.json, not two half runs. Not when hydra.run.dir says
    where to go, for a sweep (-m), or for a checkpoint file (a new run starts from it)."""
    if any(a in ("-m", "--multirun") or a.lstrip("+").startswith("hydra.run.dir=") for a in args):
        return args
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("trainer.resume=")]
    value = values[-1] if values else ""
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":  # Hydra's quoted string
        value = value[1:-1]
    run = Path(value).expanduser().resolve() if value else None
    if run is None or not (run / "checkpoints").is_dir() or any(c in str(run) for c in "'\\$"):
        return args
    return [*args, f"hydra.run.dir='{run}'"]  # quoted: a path's spaces and commas stay one value


def train(rest: list[str]) -> None:
    """`dlrun train`: one process, a rank of torchrun's (WORLD_SIZE set), or the launcher of N ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from dlrun.train import distributed

        world = distributed.from_env()
        distributed.init_process_group(world)
        code = 0
        try:
            sys.argv = [sys.argv[0], *distributed.rank_overrides(rest, world)]
            from dlrun.train.app import train_app

            train_app()
        except SystemExit as exc:  # a mistake's 2, a signal's 130 or 143
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except KeyboardInterrupt:  # said here: the rank ends with os._exit below
            code = interrupted("train")
        finally:
            distributed.destroy_process_group()
        # The rank ends without the interpreter's finalization, where gloo's threads can still abort
        # a process whose run has ended well ("terminate called without an active exception", seen
        # once in ~40 runs; pytorch#179291), which torchrun would report as a failed run. The run
        # directory is complete by now: flush what is buffered and go.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    rest = into_the_run_it_resumes(rest)
    sys.argv = [sys.argv[0], *rest]
    devices = devices_asked(rest)
    if devices > 1:
        from dlrun.train.distributed import launch, refuse_sweep

        refuse_sweep(rest)
        if not _say.full_error:  # the ranks decide for themselves, as the user asked
            os.environ.pop("HYDRA_FULL_ERROR", None)
        sys.exit(launch(devices, rest))
    # The run (or sweep) directory is checked and locked once Hydra has resolved its name, before
    # Hydra writes there: dlrun.train.app.RunDirGuard, a callback configs/train.yaml installs.
    from dlrun.train.app import train_app

    train_app()
