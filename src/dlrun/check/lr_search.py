"""`dlrun check lr`: the notes' step 3, "find LR that makes loss go down", and an LR range test.

"Use the architecture from the previous step, use all training data, turn on small weight decay,
find a learning rate that makes the loss drop significantly within ~100 iterations. Good learning
rates to try: 1e-1, 1e-2, 1e-3, 1e-4."

Each lr trains the model `dlrun train` builds (its optimizer and configured regularisation, at a
constant lr) from the same initial weights on the same minibatches of the whole training split,
through the Trainer's own train_step. The loss "goes down" when the mean of the last tenth of the
steps is below the first step's loss (the loss at init, the same for every lr) by check.drop or
more; it "explodes" when it turns non-finite, and rises when it ends that share above its start. The suggestion is the
lr that ends lowest.

check.range=true adds Smith's LR range test (Cyclical Learning Rates, 2017): one run from the
same init whose lr grows exponentially from check.range_min to check.range_max over the steps,
stopped once the smoothed loss exceeds 4x its lowest; it suggests a tenth of the lr at the lowest
smoothed loss. lr.png plots both against the lr (log axis); TensorBoard gets the plot as the image
check/lr and each lr's loss curve as lr/<lr>/loss.
"""

from __future__ import annotations

import math
from dataclasses import replace

from dlrun.check.common import Context, Line, batches, run, with_constant_lr
from dlrun.errors import UserError
from dlrun.train.callbacks import Callback, Callbacks

NAME = "lr"
USAGE = """usage: dlrun check lr [train overrides] [check.KEY=VALUE ...]

The notes' step 3: train the model `dlrun train` would build, from the same init and on the same
batches, for check.iterations steps at each lr of check.lrs (constant; the configured optimizer and
regularisation); report which lrs make the loss drop, suggest one, and plot the loss against the
lr (lr.png and TensorBoard). check.range=true adds an LR range test: one run whose lr grows
exponentially. Fails (exit 1) when no lr makes the loss go down.

options (configs/check/options.yaml):
  check.lrs=[0.1,0.01,0.001,0.0001]   the lrs to try
  check.iterations=100   steps at each lr
  check.drop=0.1         the share the loss must fall by to count as going down
  check.range=false      also the range test, from check.range_min=1e-7 to check.range_max=10
  check.out=DIR          where check.json, lr.png and tb/ go (default outputs/check/DATE/TIME)

examples:
  dlrun check lr
  dlrun check lr optim=sgd check.range=true
  dlrun check lr model=lenet check.lrs=[0.3,0.1,0.03] check.iterations=200"""

SMOOTHING = 0.9  # the range test's exponential moving average of the loss (bias-corrected)
EXPLODED = 4.0   # the range test stops once the smoothed loss is this many times its lowest


class StepLosses(Callback):
    """Each step's loss, left on the device (its callback hook: no read per step)."""

    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, step, loss) -> None:
        self.losses.append(loss)


def train_steps(trainer, split, indices, lr_at=None) -> list[float]:
    """Each step's loss (the Trainer computes it before its update); lr_at(i) sets step i's lr.
    `trainer` carries a StepLosses callback named "losses"."""
    recorded = trainer.callbacks.named["losses"].losses
    trainer.model.train()
    lowest = math.inf
    losses: list[float] = []
    for i, index in enumerate(indices):
        if lr_at is not None:
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr_at(i)
        try:
            trainer.train_step(*trainer.data.batch(split, index))
        except UserError:  # the Trainer's guard on a non-finite loss
            losses.append(math.nan)
            break
        if lr_at is not None:  # the range test reads every loss, to stop once it explodes
            losses.append(float(recorded[-1]))
            smooth = smoothed(losses)[-1]
            if not math.isfinite(smooth) or smooth > EXPLODED * lowest:
                break
            lowest = min(lowest, smooth)
    if lr_at is None:
        import torch

        losses = torch.stack(recorded).float().tolist()  # one read for the whole run
    return losses


def smoothed(losses: list[float]) -> list[float]:
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING ** (i + 1)))
    return out


def judge(lr: float, losses: list[float], drop: float) -> Line:
    start = losses[0]
    tail = losses[-max(1, len(losses) // 10):]
    end = sum(tail) / len(tail)
    data = {"lr": lr, "start": start, "end": end, "losses": losses}
    what = f"lr {lr:g}"
    if not all(math.isfinite(v) for v in losses):
        return Line(NAME, what, f"loss {start:.4g} -> nan/inf by step {len(losses)}", "warn",
                    "loss explodes: lr too high", data)
    change = (end - start) / start if start else 0.0
    value = f"loss {start:.4g} -> {end:.4g} ({change:+.0%})"
    if change >= drop:
        return Line(NAME, what, value, "warn", "loss rises: lr too high", data)
    if -change >= drop:
        return Line(NAME, what, value, "ok", "loss goes down", data)
    return Line(NAME, what, value, "warn", "loss not going down: lr too low or bad init", data)


def plot(path, grid: list[Line], range_points: list[tuple[float, float]], suggestion: float | None,
         iterations: int, writer) -> None:
    """lr.png: each tried lr's end loss, the loss at init, the range test's curve; and TensorBoard's copy."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    start = grid[0].data["start"]
    finite = [line for line in grid if math.isfinite(line.data["end"])]
    ax.axhline(start, color="gray", linestyle="--", linewidth=1, label=f"loss at init ({start:.3g})")
    if finite:
        ax.plot([line.data["lr"] for line in finite], [line.data["end"] for line in finite], "o-",
                label=f"mean loss of the last tenth of {iterations} steps")
    if range_points:
        lrs, losses = zip(*range_points)
        ax.plot(lrs, losses, "-", alpha=0.8, label="range test (smoothed loss)")
    if suggestion is not None:
        ax.axvline(suggestion, color="green", linestyle=":", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_ylim(0, 2 * start if start > 0 else None)  # an exploding lr would flatten the rest
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("dlrun check lr")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    if writer.writer is not None:
        writer.writer.add_figure("check/lr", fig, 0)  # closes the figure
    else:
        plt.close(fig)


def lr_search(context: Context) -> list[Line]:
    import torch

    from dlrun.train.assembly import build_parts, build_trainer

    options = context.options
    iterations, seed = options["iterations"], options["seed"]
    cfg = with_constant_lr(context.config())
    parts = build_parts(cfg)
    initial = {k: v.detach().clone() for k, v in parts.model.state_dict().items()}
    data = parts.data
    steps = list(batches(len(data.train), data.batch_size, iterations, seed))  # the same batches for every lr

    def trainer_at(lr: float):
        parts.model.load_state_dict(initial)
        # The window is never flushed: every step's loss stays on the device, read once at the end.
        return build_trainer(replace(parts, cfg=with_constant_lr(cfg, lr)), None, log_every=iterations + 1,
                             ratio_every=0, ema_decay=None, max_steps=None,
                             callbacks=Callbacks({"losses": StepLosses()}))

    grid = []
    for lr in sorted(options["lrs"], reverse=True):
        losses = train_steps(trainer_at(lr), data.train, steps)
        line = judge(lr, losses, options["drop"])
        grid.append(line)
        for step, loss in enumerate(losses, 1):
            if math.isfinite(loss):
                context.writer.scalars({f"check/lr/{lr:g}/loss": loss}, step)

    lines = list(grid)
    good = [line for line in grid if line.verdict == "ok"]
    suggestion = min(good, key=lambda line: line.data["end"]).data["lr"] if good else None
    if suggestion is not None:
        lines.append(Line(NAME, "suggested lr", f"{suggestion:g}", "ok", f"the lowest loss after {iterations} steps; "
                          f"train with optim.lr={suggestion:g}", {"lr": suggestion}))
    else:
        lines.append(Line(NAME, "suggested lr", "none", "fail", "no lr makes the loss go down: if every lr explodes, "
                          "try smaller ones (check.lrs); if none moves it, look for a bad init or a bug",
                          {"lr": None}))

    range_points: list[tuple[float, float]] = []
    if options["range"]:
        low, high = options["range_min"], options["range_max"]
        factor = (high / low) ** (1 / max(1, iterations - 1))
        trainer = trainer_at(low)
        losses = train_steps(trainer, data.train, steps, lr_at=lambda i: low * factor ** i)
        curve = smoothed([v for v in losses if math.isfinite(v)])
        range_points = [(low * factor ** i, v) for i, v in enumerate(curve)]
        what = f"range test: lr {low:g} -> {high:g} over {iterations} steps"
        if len(curve) < 2:
            lines.append(Line(NAME, what, "exploded at once", "warn", "lower check.range_min", {}))
        else:
            at = min(range(len(curve)), key=curve.__getitem__)
            lowest_lr = range_points[at][0]
            data_line = {"lrs": [p[0] for p in range_points], "smoothed": curve, "lowest_at": lowest_lr,
                         "suggested": lowest_lr / 10}
            if at == 0:
                lines.append(Line(NAME, what, f"lowest smoothed loss at the first lr ({lowest_lr:.2g})", "warn",
                                  "the loss never went down: lower check.range_min, or look for a bad init",
                                  data_line))
            else:
                lines.append(Line(NAME, what, f"lowest smoothed loss {curve[at]:.4g} at lr {lowest_lr:.2g}; "
                                  f"a tenth of it: {lowest_lr / 10:.2g}", "ok",
                                  "the range test's usual pick is a tenth of the lr of the lowest loss", data_line))
            for i, (lr, value) in enumerate(range_points):
                context.writer.scalars({"check/range/smoothed_loss": value, "check/range/lr": lr}, i + 1)

    path = context.out / "lr.png"
    if any(math.isfinite(line.data["start"]) for line in grid):
        plot(path, grid, range_points, suggestion, iterations, context.writer)
        context.extras["plot"] = str(path)
    context.extras["suggested_lr"] = suggestion
    return lines


def main(args: list[str]) -> None:
    run(NAME, [(NAME, lr_search)], args)
