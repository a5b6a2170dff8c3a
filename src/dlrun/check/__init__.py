"""`dlrun check <name> [overrides]`: the notes' sanity checks, run before (or instead of) training.

A registry: each check is a module with a USAGE string (read without importing torch, for
`dlrun check <name> --help`) and main(args), which raises UserError or Hydra's exceptions for
the CLI to print as one line. A new check is one module and one entry in CHECKS.
"""

from __future__ import annotations

import importlib

from dlrun.errors import UserError

# name -> (module, one line for `dlrun check --help`)
CHECKS: dict[str, tuple[str, str]] = {
    "init": ("dlrun.check.init_stats",
             "activation mean/std/histograms through a deep FC stack for each activation + init"),
}

USAGE = """usage: dlrun check <check> [check.KEY=VALUE ...]

checks:
{checks}

Each check composes configs/check_<check>.yaml; change its options with check.KEY=VALUE.
`dlrun check <check> --help` describes one.

examples:
  dlrun check init                              # the notes' five activation + init pairs
  dlrun check init check.layers=10 check.pairs=[tanh:xavier_normal,relu:he_normal]"""


def usage() -> str:
    width = max(map(len, CHECKS))
    return USAGE.format(checks="\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in CHECKS.items()))


def main(args: list[str]) -> None:
    """Dispatch `dlrun check <name> ...` to its module; `--help` anywhere prints a usage without torch."""
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in CHECKS:
        raise UserError(f"unknown check {name!r}; choose one of: {', '.join(CHECKS)} (dlrun check --help lists them)")
    module = importlib.import_module(CHECKS[name][0])
    if "-h" in rest or "--help" in rest:
        print(module.USAGE)
        return
    module.main(rest)
