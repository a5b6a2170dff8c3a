"""`dlrun check initial-loss`: the notes' step 1, "check initial loss".

"Make sure you're getting the loss you expect when you initialize with small parameters. It's best
to first check the data loss alone (so set regularization strength to zero)" and "increasing the
regularization strength should increase the training loss." For softmax on C classes the expected
loss is -log(1/C) = ln C (2.303 for 10); in general it is the loss of all-zero outputs, which is
what a net whose last layer starts small produces: (C - 1) for the multiclass SVM, ln 2 per output
for bce, mean(y^2) for mse.

The loss is measured as training computes it (the Trainer's forward: train mode, batch statistics
in BatchNorm, the penalty added) on check.samples training samples in data.batch_size batches:
once with every regulariser off, once as configured.
"""

from __future__ import annotations

import math

from dlrun.check.common import Context, Line, run, without_regularization

NAME = "initial-loss"
USAGE = """usage: dlrun check initial-loss [train overrides] [check.KEY=VALUE ...]

The notes' step 1: with regularisation off, the loss at init against the loss of all-zero outputs
(ln C for softmax on C classes: 2.303 for 10); then, with the configured regularisation on, the
loss must be higher. Builds the model `dlrun train` would build from the same overrides; trains
nothing. Exits 1 if a line fails.

options (configs/check/options.yaml):
  check.samples=1024     training samples the loss is averaged over
  check.tolerance=0.1    ok within this of the expected loss (regression: this share of it);
                         warn within 10x; fail beyond
  check.out=DIR          where check.json goes (default outputs/check/DATE/TIME)

examples:
  dlrun check initial-loss
  dlrun check initial-loss init=large_normal          # fails: the init is too large
  dlrun check initial-loss model=lenet reg=l2 reg.l2=1e-2"""


def measure(trainer, split, indices, batch_size: int) -> tuple[float, float, float]:
    """Mean (loss, penalty, loss of all-zero outputs) over `indices`, as the Trainer's forward computes them."""
    import torch

    total = penalty = zero = 0.0
    with torch.no_grad():
        for chunk in indices.split(batch_size):
            x, y = trainer.data.batch(split, chunk)
            out, loss, reg_loss = trainer.forward_loss(x, y)
            weight = len(chunk) / len(indices)
            total += float(loss) * weight
            penalty += float(reg_loss) * weight if reg_loss is not None else 0.0
            zero += float(trainer.engine.loss_fn(torch.zeros_like(out, dtype=torch.float32), y)) * weight
    return total, penalty, zero


def regularisers(parts) -> list[str]:
    """The regularisers cfg turns on, by name."""
    from omegaconf import OmegaConf

    from dlrun.train.assembly import loss_setting

    reg, cfg = parts.reg, parts.cfg
    named = {"l2": reg.l2, "l1": reg.l1, "weight_decay": reg.weight_decay, "maxnorm": reg.maxnorm,
             "dropout": OmegaConf.select(cfg, "reg.dropout") or OmegaConf.select(cfg, "model.dropout"),
             "label_smoothing": loss_setting(cfg, "label_smoothing", 0.0), "early_stopping": reg.patience,
             "ema": OmegaConf.select(cfg, "trainer.ema_decay")}
    return [name for name, value in named.items() if value]


def initial_loss(context: Context) -> list[Line]:
    import torch

    from dlrun.train.assembly import build_parts, build_trainer

    options = context.options
    tolerance = options["tolerance"]
    plain = build_parts(without_regularization(context.config()))
    data = plain.data
    n = min(options["samples"], len(data.train))
    generator = torch.Generator().manual_seed(options["seed"])
    indices = torch.randperm(len(data.train), generator=generator)[:n].to(plain.device)
    trainer = build_trainer(plain, None)
    trainer.model.train()
    loss, _, expected = measure(trainer, data.train, indices, data.batch_size)

    softmax = plain.loss.name == "cross_entropy"
    what = "loss at init, no regularisation"
    reference = f"ln {data.num_outputs} = {expected:.4f}" if softmax else f"all-zero outputs' {expected:.4f}"
    allowed = tolerance if plain.loss.classification else tolerance * expected
    gap = loss - expected
    data_line = {"loss": loss, "expected": expected, "difference": gap, "tolerance": allowed, "samples": n}
    value = f"{loss:.4f} (expected {reference}; {gap:+.4f})"
    if not math.isfinite(loss):
        lines = [Line(NAME, what, value, "fail", "the loss is not finite at init: the init is far too large, "
                      "or the inputs hold nan/inf", data_line)]
    elif abs(gap) <= allowed:
        lines = [Line(NAME, what, value, "ok", "", data_line)]
    else:
        verdict = "warn" if abs(gap) <= 10 * allowed else "fail"
        if gap > 0:
            advice = ("the outputs at init are far from uniform: the init is too large; try init=xavier or "
                      "init=he, or a smaller init.gain" if verdict == "fail" else
                      "a little above the expected loss: a smaller init= would start nearer it")
        else:
            advice = ("below chance before any training: do the labels leak into the inputs, "
                      "or is the loss averaged over the wrong axis?")
        lines = [Line(NAME, what, value, verdict, advice, data_line)]

    configured = build_parts(context.config())  # the same seed: the same initial weights
    on = regularisers(configured)
    what = "loss at init, regularisation as configured"
    if not configured.reg.penalized:
        none = "none configured (reg=none)" if not on else f"{', '.join(on)}: no penalty in the loss"
        lines.append(Line(NAME, what, none, "skip", "nothing to compare" if not on else
                          "these act on the weights, units or targets, not as a term of the loss", {"on": on}))
        return lines
    trainer = build_trainer(configured, None)
    trainer.model.train()
    loss_on, penalty, _ = measure(trainer, configured.data.train, indices, configured.data.batch_size)
    value = f"{loss_on:.4f} (penalty {penalty:.4g}; off: {loss:.4f})"
    numbers = {"loss": loss_on, "penalty": penalty, "loss_off": loss, "on": on}
    if loss_on > loss and penalty > 0:
        lines.append(Line(NAME, what, value, "ok", "", numbers))
    else:
        lines.append(Line(NAME, what, value, "fail", "regularisation does not raise the loss: its penalty is "
                          "not reaching the loss, or its strength is 0", numbers))
    return lines


def main(args: list[str]) -> None:
    run(NAME, [(NAME, initial_loss)], args)
