"""`dlrun check <name> [overrides]`: the notes' sanity checks, run before (or instead of) training.

A registry: each check is a module with a USAGE string (read without importing torch: dlrun.options
prints it for `dlrun check <name> --help`) and main(args), which raises UserError or Hydra's
exceptions for the CLI to print as one line. A new check is one module and one entry in CHECKS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dlrun.errors import UserError

# name -> (module, one line for `dlrun check --help`)
CHECKS: dict[str, tuple[str, str]] = {
    "init": ("dlrun.check.init_stats",
             "activation mean/std/histograms through a deep FC stack for each activation + init"),
    "initial-loss": ("dlrun.check.initial_loss", "step 1: the loss at init against ln(C), then with regularisation"),
    "overfit": ("dlrun.check.overfit", "step 2: 100% train accuracy on a few minibatches, regularisation off"),
    "lr": ("dlrun.check.lr_search", "step 3: which of 1e-1..1e-4 makes the loss drop in 100 steps; a plot"),
    "gradcheck": ("dlrun.check.gradcheck", "autograd against centred differences in float64, per tensor"),
    "all": ("dlrun.check.all_steps", "initial-loss, overfit, lr and gradcheck in order"),
}

USAGE = """usage: dlrun check <check> [train overrides] [check.KEY=VALUE ...]

checks:
{checks}

initial-loss, overfit, lr, gradcheck and all run on the config `dlrun train` composes from the same
overrides (model=, optim=, init=, ...), with their options (configs/check/options.yaml) as
check.KEY=VALUE; init composes configs/check_init.yaml. Each prints a table with a verdict per
line (ok, warn, fail, skip) and writes check.json; a fail exits 1. `dlrun check <check> --help`
describes one.

examples:
  dlrun check all                               # the notes' steps 1-3 and the gradient check
  dlrun check overfit model=lenet optim=sgd optim.lr=0.05
  dlrun check lr optim=sgd check.range=true     # lr.png: the loss against the lr
  dlrun check init                              # the notes' five activation + init pairs"""


def usage() -> str:
    width = max(map(len, CHECKS))
    return USAGE.format(checks="\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in CHECKS.items()))


def module(name: str) -> ModuleType:
    """The check's module: its USAGE and main(args)."""
    if name not in CHECKS:
        raise UserError(f"unknown check {name!r}; choose one of: {', '.join(CHECKS)} (dlrun check --help lists them)")
    return importlib.import_module(CHECKS[name][0])


def main(args: list[str]) -> None:
    """Dispatch `dlrun check <name> ...`, as dlrun.options parsed it, to its module."""
    name, *overrides = args or [""]
    module(name).main(overrides)
