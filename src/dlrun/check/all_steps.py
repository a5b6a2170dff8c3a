"""`dlrun check all`: the notes' steps 1-3 and the gradient check, in order, in one report."""

from __future__ import annotations

from dlrun.check.common import run
from dlrun.check.gradcheck import gradcheck
from dlrun.check.initial_loss import initial_loss
from dlrun.check.lr_search import lr_search
from dlrun.check.overfit import overfit

NAME = "all"
USAGE = """usage: dlrun check all [train overrides] [check.KEY=VALUE ...]

initial-loss, overfit, lr and gradcheck in order on the config `dlrun train` composes from the
same overrides (the notes' steps 1-3 and their gradient check): one table each, one check.json
with every line, lr.png. Every check runs even after one fails; exits 1 if any line failed.
`dlrun check <name> --help` describes each and its check.KEY options.

examples:
  dlrun check all
  dlrun check all model=lenet optim=sgd optim.lr=0.05"""

STEPS = [("initial-loss", initial_loss), ("overfit", overfit), ("lr", lr_search), ("gradcheck", gradcheck)]


def main(args: list[str]) -> None:
    run(NAME, STEPS, args)
