"""`dlrun report DIR [--json] [--top K]`: a sweep's trials, best first, and where to search next.

DIR is a sweep directory: sweep=random's (its trials' values are what sweep.space drew) or any
`dlrun train -m` multirun (the values are the overrides that differ between trials). For each
trial: its number, the values, status, the monitored metric, epochs and wall time. Then the best
trial as a ready `dlrun train` command, and for each log-uniform dimension a narrower range
around the top K trials (coarse-to-fine, as the notes say). Plots of the metric against each
numeric dimension (log axes where sampled in log space) go to DIR/report/. Reads only; writes
only the plots (and nothing with --json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from dlrun.errors import UserError

USAGE = """usage: dlrun report DIR [--json] [--top K]

A sweep directory's trials sorted by the monitored metric (best first), the best trial's
overrides as a dlrun train command, a narrower range for each loguniform dimension from the top K
trials (default 3), and scatter plots of the metric against each dimension in DIR/report/.

examples:
  dlrun report outputs/multirun/2026-11-23/16-24-01-797123
  dlrun report runs/coarse --top 5
  dlrun report runs/coarse --json"""

# Overrides that say how a trial ran, not what it tried: left out of its values and of the command.
_PLUMBING = ("sweep", "hydra.", "trainer.resume", "trainer.threads")


def parse_options(args: list[str], command: str, what: str) -> tuple[list[Path], bool, int]:
    """(directories, --json, --top K) for dlrun report and dlrun ensemble; each must exist."""
    folders, as_json, top = [], False, 3
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            as_json = True
        elif arg == "--top":
            try:
                top = int(rest.pop(0))
            except (IndexError, ValueError):
                raise UserError(f"--top takes a number of {what}, e.g. --top 5") from None
            if top < 1:
                raise UserError(f"--top {top}: give at least 1")
        elif arg.startswith("-"):
            raise UserError(f"unknown option {arg!r}; dlrun {command} takes directories, --json and --top K")
        else:
            folders.append(Path(arg))
    if not folders:
        raise UserError(f"no directory given; pass a sweep directory, e.g. dlrun {command} outputs/multirun/DATE/TIME")
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such directory; pass a sweep directory (dlrun train -m writes them)")
    return folders, as_json, top


def parse_args(args: list[str]) -> tuple[Path, bool, int]:
    folders, as_json, top = parse_options(args, "report", "trials")
    if len(folders) > 1:
        raise UserError(f"one sweep directory at a time; got {len(folders)}")
    return folders[0], as_json, top


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def read_trials(folder: Path) -> list[dict[str, Any]]:
    """Every trial folder (DIR/N) with its overrides and summary.json (status "pending" without one)."""
    trials = []
    for trial_dir in sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = trial_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        try:
            summary = json.loads((trial_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        best = summary.get("best") or {}
        trials.append({"trial": int(trial_dir.name), "dir": str(trial_dir), "overrides": overrides,
                       "status": summary.get("status", "pending"), "monitor": best.get("monitor"),
                       "value": best.get("value"), "epochs": summary.get("epochs"), "wall_s": summary.get("wall_s"),
                       "error": summary.get("error"), "test": summary.get("test")})
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
    path = folder / "multirun.yaml"
    if not path.is_file():
        return set()
    from dlrun.sweep.space import dimensions

    space = (yaml.safe_load(path.read_text()) or {}).get("sweep", {}) or {}
    try:
        return {d.key for d in dimensions(space.get("space") or {}) if d.log} if space.get("space") else set()
    except UserError:
        return set()


def ranked(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials with a metric, best first (higher is better unless the metric is a loss), then the rest."""
    scored = [t for t in trials if isinstance(t["value"], (int, float)) and math.isfinite(t["value"])]
    lower = any("loss" in str(t["monitor"]) for t in scored)
    scored.sort(key=lambda t: t["value"], reverse=not lower)
    return scored + [t for t in trials if t not in scored]


def narrower(trials: list[dict[str, Any]], key: str, top: int) -> tuple[float, float] | None:
    """A loguniform range around the top trials' values: from half the smallest to twice the largest."""
    values = [t["values"].get(key) for t in trials[:top]]
    values = [float(v) for v in values if isinstance(v, (int, float)) and v > 0]
    if not values:
        return None
    return float(f"{min(values) / 2:.1g}"), float(f"{max(values) * 2:.1g}")


def command(trial: dict[str, Any]) -> str:
    kept = [o.lstrip("+") for o in trial["overrides"] if not _key(o).startswith(_PLUMBING)]
    return "dlrun train " + " ".join(kept)


def plot(folder: Path, trials: list[dict[str, Any]], logs: set[str]) -> list[Path]:
    """DIR/report/<key>.png: the metric against each numeric dimension, one point per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in trials if isinstance(t["value"], (int, float)) and math.isfinite(t["value"])]
    if not scored:
        return []
    out = folder / "report"
    out.mkdir(exist_ok=True)
    written = []
    for key in scored[0]["values"]:
        points = [(t["values"][key], t["value"]) for t in scored if isinstance(t["values"][key], (int, float))
                  and not isinstance(t["values"][key], bool)]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.scatter(*zip(*points))
        if key in logs:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(scored[0]["monitor"] or "metric")
        fig.tight_layout()
        path = out / f"{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(args: list[str]) -> None:
    folder, as_json, top = parse_args(args)
    trials = ranked(read_trials(folder))
    logs = log_dimensions(folder)
    # in the table's column order, then by name (a set's order changes from one process to the next)
    keys = [key for key in trials[0]["values"] if key in logs] + sorted(logs - set(trials[0]["values"]))
    suggestions = {key: narrower(trials, key, top) for key in keys}
    best = trials[0] if trials[0]["value"] is not None else None
    if as_json:
        print(json.dumps({"trials": trials, "best_command": command(best) if best else None,
                          "suggested": {k: list(v) for k, v in suggestions.items() if v}}, indent=2))
        return
    from rich import get_console
    from rich.table import Table

    keys = list(trials[0]["values"])
    table = Table(title=f"dlrun report: {folder} ({len(trials)} trials)", title_justify="left")
    for name in ("trial", *keys, "status", trials[0]["monitor"] or "metric", "epochs", "wall s"):
        table.add_column(name, justify="right" if name not in ("status",) else "left")
    for t in trials:
        shown = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (t["values"][k] for k in keys)]
        table.add_row(str(t["trial"]), *shown, t["status"], "" if t["value"] is None else f"{t['value']:.4f}",
                      "" if t["epochs"] is None else str(t["epochs"]),
                      "" if t["wall_s"] is None else f"{t['wall_s']:.1f}")
    console = get_console()
    console.print(table)
    failed = [t for t in trials if t["status"] == "failed"]
    for t in failed:
        console.print(f"trial {t['trial']} failed: {t['error']}", highlight=False, soft_wrap=True)
    if best:
        console.print(f"best: trial {best['trial']}, {best['monitor']} {best['value']:.4f}; run it again with:",
                      highlight=False)
        console.print(f"  {command(best)}", highlight=False, soft_wrap=True)
    for key, span in suggestions.items():
        if span:
            console.print(f"narrower range from the top {top}: 'sweep.space.{key}=loguniform({span[0]:g},{span[1]:g})'",
                          highlight=False, soft_wrap=True)
    for path in plot(folder, trials, logs):
        console.print(f"plot: {path}", highlight=False, soft_wrap=True)
