"""`dlrun ensemble DIR [DIR ...] [--top K] [--json]`: average the predicted distributions of
several models on the test split (the notes: "2% extra" for an ensemble of independently trained
models) and report the ensemble's accuracy beside each member's.

DIR is a sweep directory (its best K trials by the monitored metric) or, given several, run
directories. Each member is its run's best.pt, rebuilt from the config saved in it (as
`dlrun eval` does); every member must have been tested on the same test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlrun import checkpoint, strict_json
from dlrun.errors import UserError

def members(folders: list[Path], top: int) -> list[Path]:
    """The run directories to ensemble: a sweep's best `top` trials that have a best.pt, or the folders."""
    if len(folders) > 1 or checkpoint.folder(folders[0]).is_dir():
        return folders
    from dlrun.sweep.report import ranked, read_trials

    scored = [Path(t["dir"]) for t in ranked(read_trials(folders[0])) if t["value"] is not None]
    chosen = [d for d in scored if (checkpoint.folder(d) / checkpoint.BEST).is_file()][:top]
    if len(chosen) < 2:
        raise UserError(f"{folders[0]}: {len(chosen)} trial(s) with a best.pt; an ensemble needs 2 or more")
    return chosen


@torch.no_grad()
def probabilities(model: torch.nn.Module, data, split: str) -> torch.Tensor:
    """softmax(model(x)) over a split of `data`, in eval mode, batch by batch, in float32."""
    model.eval()
    return torch.cat([torch.softmax(model(data.prepare(x)).float(), dim=1)
                      for x, _ in data.splits[split].batches(data.eval_batch_size)])


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return (probs.argmax(1) == y).sum().item() / len(y)  # counted, as the Trainer counts it


def ensemble(folders: list[Path], top: int = 3) -> dict[str, Any]:
    from dlrun.evaluate import rebuild

    rows, probs, targets = [], [], None
    for run_dir in members(folders, top):
        parts, _, path = rebuild(str(run_dir))
        if parts.data.task != "classification":
            raise UserError(f"{run_dir}: an ensemble averages class probabilities; this run is a regression")
        test = parts.data.splits["test"]
        y = test.y.cpu()
        if targets is not None and not torch.equal(y, targets):
            raise UserError(f"{run_dir}: its test split differs from {rows[0]['dir']}'s; ensemble runs trained on "
                            "the same data (data= and data.split_seed)")
        targets = y
        p = probabilities(parts.model, parts.data, "test").cpu()
        if not bool(p.isfinite().all()):  # nan weights would still "predict" a class: refuse, as eval does
            raise UserError(f"{run_dir}: {path} gives non-finite probabilities on the test split (weights saved "
                            "from a diverged run, or nan/inf in the data); leave it out of the ensemble")
        probs.append(p)
        rows.append({"dir": str(run_dir), "checkpoint": str(path), "acc": accuracy(p, y)})
    mean = torch.stack(probs).mean(0)  # the members' predicted distributions, averaged
    return {"members": rows, "ensemble": {"acc": accuracy(mean, targets),
                                          "size": len(rows)}, "samples": len(targets), "probabilities": mean}


def main(argv: list[str]) -> None:
    from dlrun.options import parse

    args = parse("ensemble", argv)
    result = ensemble(args.folders, args.top)
    result.pop("probabilities")
    if args.json:
        print(strict_json.dumps(result, indent=2))
        return
    from rich import get_console
    from rich.table import Table

    table = Table(title=f"dlrun ensemble: {result['ensemble']['size']} members, {result['samples']} test samples",
                  title_justify="left")
    table.add_column("model")
    table.add_column("test accuracy", justify="right")
    for row in result["members"]:
        table.add_row(row["dir"], f"{row['acc']:.4f}")
    table.add_row("ensemble (mean of softmax)", f"{result['ensemble']['acc']:.4f}", style="bold")
    get_console().print(table)
