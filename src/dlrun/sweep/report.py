"""`dlrun report DIR [--json] [--top K]`: a sweep's trials, best first, and where to search next.

DIR is a sweep directory: sweep=random's (its trials' values are what sweep.space drew) or any
`dlrun train -m` multirun (the values are the overrides that differ between trials). For each
trial: its number, the values, status, the monitored metric, epochs and wall time. Then the best
trial as a ready `dlrun train` command, and for each log-uniform dimension a narrower range
around the top K trials (coarse-to-fine, as the notes say). Plots of the metric against each
numeric dimension (log axes where sampled in log space) go to DIR/report/. Reads only; writes
only the plots (and nothing with --json).

A sweep directory may come from elsewhere, so what it holds is text, never a path or a command:
a plot's file name is made from its key (no key reaches outside DIR/report/), every command
printed is shell-quoted (pasting it runs dlrun and nothing else), rich markup in a value is
printed as it is, and no write goes through a symlink (DIR/report/ must be a real folder; a
plot replaces whatever link stands at its name).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import UserError

# Overrides that say how a trial ran, not what it tried: left out of its values and of the command.
_PLUMBING = ("sweep", "hydra.", "trainer.resume", "trainer.threads")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read(path: Path, parse) -> Any:
    """parse(path's text), or None for a file that is missing or unreadable (a trial killed mid-write)."""
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def _number(value: Any) -> float | int | None:
    """value if it is a finite number (a metric, a numeric dimension), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int past float's range
        return None


def read_trials(folder: Path) -> list[dict[str, Any]]:
    """Every trial folder (DIR/N) with its overrides and summary.json (status "pending" without one)."""
    trials = []
    for trial_dir in sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = _read(trial_dir / ".hydra" / "overrides.yaml", yaml.safe_load)
        overrides = [o for o in overrides if isinstance(o, str)] if isinstance(overrides, list) else []
        summary = _read(trial_dir / "summary.json", json.loads)
        summary = summary if isinstance(summary, dict) else {}
        best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
        trials.append({"trial": int(trial_dir.name), "dir": str(trial_dir), "overrides": overrides,
                       "status": str(summary.get("status", "pending")), "monitor": best.get("monitor"),
                       "value": _number(best.get("value")), "epochs": _number(summary.get("epochs")),
                       "wall_s": _number(summary.get("wall_s")), "error": summary.get("error"),
                       "test": summary.get("test")})
    if not trials:
        raise UserError(f"{folder}: no trial folders (0/, 1/, ...); pass a sweep directory written by dlrun train -m")
    varying = _varying_keys(trials)
    for trial in trials:
        given = {_key(o): _value(o.split("=", 1)[1]) for o in trial["overrides"] if "=" in o}
        trial["values"] = {key: given.get(key) for key in varying}
    return trials


def _varying_keys(trials: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, set[str]] = {}
    for trial in trials:
        for override in trial["overrides"]:
            if "=" in override and not _key(override).startswith(_PLUMBING):
                seen.setdefault(_key(override), set()).add(override.split("=", 1)[1])
    counts = {key: sum(any(_key(o) == key for o in t["overrides"]) for t in trials) for key in seen}
    return [key for key, values in seen.items() if len(values) > 1 or counts[key] < len(trials)]


def log_dimensions(folder: Path) -> set[str]:
    """The keys sweep=random sampled in log space (from DIR/multirun.yaml's sweep.space)."""
    from dlrun.sweep.space import dimensions

    multirun = _read(folder / "multirun.yaml", yaml.safe_load)
    sweep = multirun.get("sweep") if isinstance(multirun, dict) else None
    space = sweep.get("space") if isinstance(sweep, dict) else None
    try:
        return {d.key for d in dimensions(space) if d.log} if isinstance(space, dict) and space else set()
    except (UserError, AttributeError, TypeError, ValueError):  # a space dlrun did not write
        return set()


def ranked(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials with a metric, best first (higher is better unless the metric is a loss), then the rest."""
    scored = [t for t in trials if t["value"] is not None]
    lower = any("loss" in str(t["monitor"]) for t in scored)
    scored.sort(key=lambda t: t["value"], reverse=not lower)
    return scored + [t for t in trials if t not in scored]


def narrower(trials: list[dict[str, Any]], key: str, top: int) -> tuple[float, float] | None:
    """A loguniform range around the top trials' values: from half the smallest to twice the largest."""
    values = [_number(t["values"].get(key)) for t in trials[:top]]
    values = [float(v) for v in values if v is not None and v > 0]
    if not values:
        return None
    return float(f"{min(values) / 2:.1g}"), float(f"{max(values) * 2:.1g}")


def command(trial: dict[str, Any]) -> str:
    """The trial's `dlrun train` line, each override shell-quoted: shlex.split gives them back."""
    kept = [o.lstrip("+") for o in trial["overrides"] if not _key(o).startswith(_PLUMBING)]
    return shlex.join(["dlrun", "train", *kept])


def plot_name(key: str, taken: set[str]) -> str:
    """A file name for key's plot that stays in DIR/report/: no separators, no leading dot, not too long."""
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key).strip("._") or "dimension"
    if len(stem) > 100:  # a file name has 255 bytes at most; keep the start, tell keys apart by a digest
        stem = f"{stem[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    name, n = f"{stem}.png", 2
    while name in taken:  # two keys that read alike: neither overwrites the other
        name, n = f"{stem}-{n}.png", n + 1
    taken.add(name)
    return name


def open_report_folder(folder: Path) -> int:
    """A descriptor of DIR/report/, made if need be, that is a real folder inside DIR, never a symlink's target."""
    parent = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # DIR itself is the user's to name
    try:
        try:
            os.mkdir("report", dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:  # a read-only sweep directory, say
            raise UserError(f"could not make {folder / 'report'} ({exc.strerror or exc}); run dlrun report where "
                            "it can write, or use --json, which writes nothing") from None
        try:
            return os.open("report", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        except OSError:  # ELOOP: a symlink; ENOTDIR: a file
            what = "a symlink" if (folder / "report").is_symlink() else "not a folder"
            raise UserError(f"{folder / 'report'} is {what}; dlrun report writes its plots only into a real "
                            "folder there: move it away and run again (or use --json, which writes nothing)") from None
    finally:
        os.close(parent)


def write_file(folder_fd: int, name: str, data: bytes, shown: Path) -> None:
    """name in the folder, written to a new file and renamed over it: a symlink there is replaced, not followed."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=folder_fd)  # left by a killed report; unlink removes a link, never its target
    except FileNotFoundError:
        pass
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder_fd)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError as exc:
        try:
            os.unlink(tmp, dir_fd=folder_fd)
        except OSError:
            pass
        raise UserError(f"could not write the plot {shown} ({exc.strerror or exc}); make room for it there, "
                        "or use --json, which writes nothing") from None


def plotted(trials: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(dimension value, metric) of each scored trial, for each numeric dimension: what plot() draws."""
    scored = [t for t in trials if t["value"] is not None]
    figures = {}
    for key in scored[0]["values"] if scored else []:
        points = [(x, t["value"]) for t in scored if (x := _number(t["values"][key])) is not None]
        if points:
            figures[key] = points
    return figures


def plot(folder: Path, folder_fd: int, figures: dict[str, list], monitor: str, logs: set[str]) -> list[Path]:
    """DIR/report/<key>.png (folder_fd: DIR/report/): the metric against each numeric dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, taken = [], set()
    for key, points in figures.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(*zip(*points))
        if key in logs and all(x > 0 for x, _ in points):
            ax.set_xscale("log")
        ax.set_xlabel(key, parse_math=False)  # a key's "$" is text, not a TeX formula that may not parse
        ax.set_ylabel(monitor, parse_math=False)
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format="png", dpi=100)
        plt.close(fig)
        path = folder / "report" / plot_name(key, taken)
        write_file(folder_fd, path.name, image.getvalue(), path)
        written.append(path)
    return written


def _plain(value: Any) -> Any:
    """value as strict JSON can hold it: nan and inf as null, YAML's dates and the like as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, bool)) else str(value)


def main(argv: list[str]) -> None:
    from dlrun.options import parse

    args = parse("report", argv)
    folder, top = args.folder, args.top
    trials = ranked(read_trials(folder))
    logs = log_dimensions(folder)
    # in the table's column order, then by name (a set's order changes from one process to the next)
    keys = [key for key in trials[0]["values"] if key in logs] + sorted(logs - set(trials[0]["values"]))
    suggestions = {key: narrower(trials, key, top) for key in keys}
    best = trials[0] if trials[0]["value"] is not None else None
    if args.json:
        print(json.dumps(_plain({"trials": trials, "best_command": command(best) if best else None,
                                 "suggested": {k: list(v) for k, v in suggestions.items() if v}}), indent=2))
        return
    figures = plotted(trials)
    # Opened first, so that a report folder that is a symlink stops the report before it prints anything.
    folder_fd = open_report_folder(folder) if figures else None
    try:
        show(folder, trials, best, top, suggestions)
        if folder_fd is not None:
            for path in plot(folder, folder_fd, figures, str(trials[0]["monitor"] or "metric"), logs):
                print(f"plot: {path}")
    finally:
        if folder_fd is not None:
            os.close(folder_fd)


def show(folder: Path, trials: list[dict[str, Any]], best: dict | None, top: int,
         suggestions: dict[str, tuple[float, float] | None]) -> None:
    """The table, the failures, the best trial's command and the narrower ranges, on the console."""
    from rich import get_console
    from rich.table import Table
    from rich.text import Text

    keys = list(trials[0]["values"])
    table = Table(title=Text(f"dlrun report: {folder} ({len(trials)} trials)"), title_justify="left")
    for name in ("trial", *keys, "status", str(trials[0]["monitor"] or "metric"), "epochs", "wall s"):
        table.add_column(Text(name), justify="right" if name not in ("status",) else "left")
    for t in trials:  # Text: a value is shown as it is, never read as rich markup
        shown = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (t["values"][k] for k in keys)]
        table.add_row(*map(Text, (str(t["trial"]), *shown, t["status"], "" if t["value"] is None else f"{t['value']:.4f}",
                                  "" if t["epochs"] is None else str(t["epochs"]),
                                  "" if t["wall_s"] is None else f"{t['wall_s']:.1f}")))
    console = get_console()
    console.print(table)

    def say(line: str) -> None:
        console.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)

    for t in trials:
        if t["status"] == "failed":
            say(f"trial {t['trial']} failed: {' '.join(str(t['error']).split())}")  # one line each
    if best:
        say(f"best: trial {best['trial']}, {best['monitor']} {best['value']:.4f}; run it again with:")
        say(f"  {command(best)}")
    for key, span in suggestions.items():
        if span:
            say(f"narrower range from the top {top}: {shlex.quote(f'sweep.space.{key}=loguniform({span[0]:g},{span[1]:g})')}")
