"""`dlrun check overfit`: the notes' step 2, "overfit a small sample".

"Try to train to 100% training accuracy on a small sample of training data (~5-10 minibatches);
fiddle with architecture, learning rate, weight initialization. Loss not going down? LR too low,
bad initialization. Loss explodes to Inf or NaN? LR too high, bad initialization." And: "for this
experiment it's also best to set regularization to zero."

The model, optimizer and lr are the ones `dlrun train` would use, with every regulariser off and
a constant lr (a schedule planned over a whole run means nothing here). Steps go through the
Trainer's own train_step (mixed precision, gradient clipping and L-BFGS's closure included) on
minibatches of the sample, reshuffled every pass; after each pass the whole sample is evaluated.
Regression has no accuracy: it passes when the loss falls below 1% of the loss at init.
"""

from __future__ import annotations

import math

from dlrun.check.common import Context, Line, batches, dropout_off, run, with_constant_lr, without_regularization
from dlrun.errors import UserError

NAME = "overfit"
USAGE = """usage: dlrun check overfit [train overrides] [check.KEY=VALUE ...]

The notes' step 2: with regularisation off and a constant lr, train the model `dlrun train` would
build on a small sample (check.batches minibatches) until it classifies every sample right;
report the steps it took. Fails when check.budget steps are not enough (exit 1).

options (configs/check/options.yaml):
  check.batches=5        the sample: this many minibatches of data.batch_size
  check.budget=1000      optimizer steps allowed
  check.seed=0           which samples, and the order of the batches
  check.out=DIR          where check.json goes (default outputs/check/DATE/TIME)

examples:
  dlrun check overfit
  dlrun check overfit model=lenet optim=sgd optim.lr=0.05
  dlrun check overfit optim.lr=1e-9              # fails: the loss does not go down"""

# Regression passes when the sample's loss falls below this share of its loss at init.
REGRESSION_TARGET = 0.01


def overfit(context: Context) -> list[Line]:
    import torch

    from dlrun.data import Split
    from dlrun.train.assembly import build_parts, build_trainer

    options = context.options
    parts = build_parts(with_constant_lr(without_regularization(context.config())))
    dropout_off(parts.model)
    data, budget = parts.data, options["budget"]
    n = min(options["batches"] * data.batch_size, len(data.train))
    generator = torch.Generator().manual_seed(options["seed"])
    chosen = torch.randperm(len(data.train), generator=generator)[:n].to(parts.device)
    sample = Split(*data.train.take(chosen))  # as stored: evaluate and data.batch preprocess it
    per_pass = math.ceil(n / data.batch_size)
    # The Trainer's window is flushed (and checked for a non-finite loss) once a pass.
    trainer = build_trainer(parts, None, log_every=per_pass, ratio_every=0, ema_decay=None)
    classification = trainer.classification
    start = trainer.evaluate(sample)
    target = "100% train accuracy" if classification else f"loss below {REGRESSION_TARGET:.0%} of its start"
    what = f"{target} on {n} samples ({per_pass} minibatches of {data.batch_size})"

    steps, metrics, diverged = 0, start, False
    trainer.model.train()
    try:
        for index in batches(n, data.batch_size, budget, options["seed"]):
            trainer.train_step(*data.batch(sample, index))
            steps += 1
            if steps % per_pass == 0 or steps == budget:
                metrics = trainer.evaluate(sample)
                if not math.isfinite(metrics["loss"]):
                    diverged = True
                    break
                if (metrics["acc"] == 1.0) if classification else metrics["loss"] <= REGRESSION_TARGET * start["loss"]:
                    break
    except UserError:  # the Trainer's guard: a non-finite training loss
        diverged = True
    data_line = {"samples": n, "steps": steps, "budget": budget, "loss_start": start["loss"],
                 "loss_end": None if diverged else metrics["loss"], "acc_end": None if diverged else metrics.get("acc")}
    reached = not diverged and (metrics.get("acc") == 1.0 if classification else
                                metrics["loss"] <= REGRESSION_TARGET * start["loss"])
    end = "nan/inf" if diverged else f"{metrics['loss']:.4g}"
    acc = "" if diverged or not classification else f", accuracy {metrics['acc']:.1%}"
    if reached:
        return [Line(NAME, what, f"reached in {steps} steps; loss {start['loss']:.4g} -> {end}", "ok", "", data_line)]
    if diverged or metrics["loss"] > 1.5 * start["loss"]:
        advice = "loss explodes: lr too high or bad init"
    elif metrics["loss"] > 0.9 * start["loss"]:
        advice = "loss not going down: lr too low or bad init"
    else:
        advice = "the loss falls, too slowly: a higher lr, a bigger model or a larger check.budget"
    value = (f"diverged by step {steps}; loss {start['loss']:.4g} -> {end}" if diverged else
             f"not reached in {budget} steps; loss {start['loss']:.4g} -> {end}{acc}")
    return [Line(NAME, what, value, "fail", advice, data_line)]


def main(args: list[str]) -> None:
    run(NAME, [(NAME, overfit)], args)
