"""The options of `dlrun` and of its commands but train: one argparse parser per command, built
from the table below, reads a command's line and writes its --help.

Imports nothing heavy: `dlrun --help` and each command's --help are answered from here without
torch or Hydra (train is a Hydra app: its --help is Hydra's). A mistake on the line is a
UserError, which the CLI prints as one line (exit 2) where argparse would print its usage too.

Only options are declared. Every other argument (a Hydra override, a directory) comes back in
order as it was typed, so `+optim.fused=true` and `~key` reach Hydra as they are, while anything
else that starts with "-" is refused by name.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dlrun.check import module as check_module, usage as check_usage
from dlrun.errors import UserError

HELP = ("-h", "--help")

# name -> one line for `dlrun --help`; train is the Hydra app, the others are parsed here
COMMANDS = {
    "train": "train a model from the composed config (a Hydra app: -m, --cfg job, --help, ...)",
    "summary": "print the model's layers, output shapes and parameter counts; trains nothing",
    "eval": "a checkpoint's loss and accuracy on the test and val splits (ckpt=RUN_DIR or FILE.pt)",
    "check": "the notes' sanity checks: initial-loss, overfit, lr, gradcheck, all, init",
    "report": "a sweep's trials best first, the best one's command, narrower ranges, plots (DIR)",
    "ensemble": "average the softmax of a sweep's best K trials (or of run directories) on the test split",
}


@dataclass(frozen=True)
class Option:
    """A flag, or (with a metavar) an option that takes a whole number >= least."""

    flags: tuple[str, ...]
    help: str  # %(default)s is the default
    metavar: str | None = None
    default: int | bool = False
    least: int = 0
    example: int = 0

    def shown(self) -> str:
        return "/".join(self.flags) + (f" {self.metavar}" if self.metavar else "")

    def value(self, given: str | None) -> int:
        """The number given on the line (None: the option came without one), or a UserError, which
        argparse lets through (it catches only its own errors, TypeError and ValueError)."""
        # ASCII digits only: int() also reads "+2", " 2" and "1_0", and isdigit() also passes "²"
        if given is None or not (given.isascii() and given.isdigit()) or int(given) < self.least:
            got = "nothing" if given is None else repr(given)
            raise UserError(f"{self.flags[-1]} needs a whole number >= {self.least}, got {got}; "
                            f"e.g. {self.flags[-1]} {self.example}")
        return int(given)


@dataclass(frozen=True)
class Command:
    """A command's --help text (its usage line, what it does and takes, then "examples:"; argparse
    puts the options between), its options, and where the other arguments go."""

    text: str
    options: tuple[Option, ...] = ()
    takes: tuple[str, ...] = ()  # the other arguments, as the unknown-option line names them
    rest: str = "args"  # the attribute that holds the other arguments
    finish: Callable[[argparse.Namespace, str], None] | None = None  # checks and shapes the other arguments
    bare_is_help: bool = False  # nothing after the command: its help, not a run


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print its usage and exit
        raise UserError(f"{message} ({self.prog} --help)")


def build(prog: str, text: str, options: tuple[Option, ...] = ()) -> Parser:
    """A parser whose --help is `text` (a usage line, a description, "examples:") with the options
    listed before the examples."""
    usage, _, body = text.partition("\n\n")
    description, _, examples = body.partition("\n\nexamples:")
    parser = Parser(prog=prog, usage=usage.removeprefix("usage: "), description=description,
                    epilog=f"examples:{examples}" if examples else None, add_help=False, allow_abbrev=False,
                    exit_on_error=False,  # the width the texts below are written to, on any terminal
                    formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    parser.add_argument(*HELP, action="store_true", help="show this help and exit")
    for option in options:
        if option.metavar:
            parser.add_argument(*option.flags, metavar=option.metavar, type=option.value, default=option.default,
                                help=option.help)
        else:
            parser.add_argument(*option.flags, action="store_true", help=option.help)
    return parser


def _parser(command: str) -> Parser:
    return build(f"dlrun {command}".strip(), SPECS[command].text, SPECS[command].options)


def parse(command: str, args: list[str]) -> argparse.Namespace:
    """The command's options by name, and its other arguments in order as `spec.rest`; or a UserError."""
    spec, parser = SPECS[command], _parser(command)
    try:
        parsed, rest = parser.parse_known_args(args)
    except argparse.ArgumentError as exc:
        option = next((o for o in spec.options if "/".join(o.flags) == exc.argument_name), None)
        if option is not None and option.metavar:  # its value missing: `--top` last, or before `--json`
            option.value(None)
        # a flag given a value (`--json=1`): argparse's words, in one line
        raise UserError(f"{exc.argument_name}: {exc.message}; it takes no value ({parser.prog} --help)") from None
    unknown = next((arg for arg in rest if arg.startswith("-")), None)
    if unknown is not None:
        takes = [option.shown() for option in spec.options] + list(spec.takes)
        listed = " and ".join(filter(None, [", ".join(takes[:-1]), takes[-1]]))
        raise UserError(f"unknown option {unknown!r}; {parser.prog} takes {listed} ({parser.prog} --help)")
    setattr(parsed, spec.rest, rest)
    if spec.finish:
        spec.finish(parsed, parser.prog)
    return parsed


def answer(argv: list[str]) -> bool:
    """Print the help or the version that `dlrun ARGV` asks for, and say whether it did; False: a
    command to run. A command's -h or --help anywhere on its line wins over all else on it."""
    command, args = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("", argv)
    if command == "train":  # a Hydra app: its --help is Hydra's
        return False
    if command == "help":
        command, args = "", ["--help"]
    if command == "check" and args[:1] == ["help"]:
        args = ["--help"]
    if command not in SPECS:
        raise UserError(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)} (dlrun --help lists them)")
    if set(HELP) & set(args) or (not args and SPECS[command].bare_is_help):
        if command == "check" and args and args[0] not in HELP:  # dlrun check NAME --help: that check's own text
            build(f"dlrun check {args[0]}", check_module(args[0]).USAGE).print_help()
        else:
            _parser(command).print_help()
        return True
    if command:
        return False
    parse("", args)  # dlrun -V, or a UserError for any other option
    from dlrun import __version__

    print(f"dlrun {__version__}")
    return True


def _checkpoint(parsed: argparse.Namespace, prog: str) -> None:
    """ckpt=PATH, wherever it is on the line, out of the overrides (the last one given wins)."""
    given = [arg.partition("=")[2] for arg in parsed.overrides if arg.startswith("ckpt=")]
    if not all(given):
        raise UserError("ckpt= is empty; pass ckpt=RUN_DIR or ckpt=FILE.pt")
    if not given:
        raise UserError("no checkpoint given; pass ckpt=RUN_DIR (its checkpoints/best.pt) or ckpt=FILE.pt")
    parsed.ckpt = given[-1]
    parsed.overrides = [arg for arg in parsed.overrides if not arg.startswith("ckpt=")]


def _folders(parsed: argparse.Namespace, prog: str) -> None:
    parsed.folders = [Path(folder) for folder in parsed.folders]
    if not parsed.folders:
        raise UserError(f"no directory given; pass a sweep directory, e.g. {prog} outputs/multirun/DATE/TIME")
    for folder in parsed.folders:
        if not folder.is_dir():
            raise UserError(f"{folder}: no such directory; pass a sweep directory (dlrun train -m writes them)")


def _folder(parsed: argparse.Namespace, prog: str) -> None:
    _folders(parsed, prog)
    if len(parsed.folders) > 1:
        raise UserError(f"one sweep directory at a time; got {len(parsed.folders)}")
    parsed.folder = parsed.folders[0]


_WIDTH = max(map(len, COMMANDS))

TOP = f"""usage: dlrun <command> [hydra overrides]

commands:
{chr(10).join(f"  {name:<{_WIDTH}}  {line}" for name, line in COMMANDS.items())}

examples:
  dlrun train                                   # MLP on the embedded 8x8 digits, on the CPU
  dlrun train model=lenet optim=sgd optim.lr=0.05
  dlrun train -m optim=sgd,adam model=mlp,lenet trainer.epochs=1
  dlrun train --cfg job                         # print the composed config
  dlrun train --help                            # config groups and their options
  dlrun summary model=lenet                     # the layers, shapes and parameters; trains nothing
  dlrun eval ckpt=outputs/DATE/TIME             # a run's best.pt on the test and val splits
  dlrun check all                               # initial loss, overfit, lr search, gradient check
  dlrun train -m sweep=random trainer.epochs=5  # random search: optim.lr, optim.weight_decay in log space
  dlrun report outputs/multirun/DATE/TIME       # its trials best first, and where to search next

Run directories go to outputs/; watch them with: tensorboard --logdir outputs"""

SUMMARY = """usage: dlrun summary [--depth N] [hydra overrides]

Compose the config as `dlrun train` does, build the data and the model on the CPU, run 2
training samples through it and print its layers (name, type, output shape, parameters) and the
totals: parameters, trainable, non-trainable, multiply-adds per sample. Runs nothing else and
writes nothing.

arguments:
  overrides   the same as `dlrun train` takes: model=cnn, model.hidden=[512], data=arrays ...

examples:
  dlrun summary model=lenet
  dlrun summary --depth 1 model=cnn model.channels=[16,32]
  dlrun summary model=lstm data=arrays data.path=x.npz data.layout=sequence"""

EVAL = """usage: dlrun eval ckpt=PATH [--json] [hydra overrides]

Rebuild the data and the model from the checkpoint's own config, load its weights and print its
loss and accuracy on the test split and the validation split. On the CPU the test numbers are
those of the run's summary.json. Trains nothing and writes nothing.

arguments:
  ckpt=PATH   a run directory (its checkpoints/best.pt, the weights train tested, else last.pt)
              or a checkpoint file (.pt)
  overrides   change values of the checkpoint's config: trainer.device=cpu, data.eval_batch_size=256;
              for a plain state dict (no config in it) the overrides `dlrun train` would take

examples:
  dlrun eval ckpt=outputs/2026-11-23/09-52-10-801763
  dlrun eval ckpt=outputs/2026-11-23/09-52-10-801763/checkpoints/last.pt trainer.device=cpu
  dlrun eval ckpt=runs/first --json data.eval_batch_size=256"""

REPORT = """usage: dlrun report DIR [--json] [--top K]

A sweep directory's trials sorted by the monitored metric (best first), the best trial's
overrides as a dlrun train command, a narrower range for each loguniform dimension from the top K
trials, and scatter plots of the metric against each dimension in DIR/report/.

examples:
  dlrun report outputs/multirun/2026-11-23/16-24-01-797123
  dlrun report runs/coarse --top 5
  dlrun report runs/coarse --json"""

ENSEMBLE = """usage: dlrun ensemble DIR [DIR ...] [--top K] [--json]

Average the softmax outputs of several trained models on the test split and print the ensemble's
test accuracy beside each member's. One DIR: a sweep directory, whose best K trials by the
monitored metric are the members. Several DIRs: those run directories. Writes nothing.

examples:
  dlrun ensemble outputs/multirun/2026-11-23/16-24-01-797123 --top 5
  dlrun ensemble runs/a runs/b runs/c --json"""


def _top_k(what: str) -> Option:
    return Option(("--top",), f"{what} (default %(default)s)", "K", default=3, least=1, example=5)


SPECS: dict[str, Command] = {
    "": Command(TOP, (Option(("-V", "--version"), "print dlrun's version and exit"),), ("a command",),
                bare_is_help=True),
    "summary": Command(SUMMARY, (Option(("--depth",), "how deep nested modules are listed (default %(default)s), "
                                        "anywhere on the line", "N", default=3, example=2),),
                       ("Hydra overrides",), rest="overrides"),
    "eval": Command(EVAL, (Option(("--json",), "print the metrics as JSON instead of the table"),),
                    ("ckpt=PATH", "Hydra overrides"), rest="overrides", finish=_checkpoint),
    "check": Command(check_usage(), (), ("a check's name", "its overrides"), bare_is_help=True),
    "report": Command(REPORT, (Option(("--json",), "print the trials, the best command and the ranges as JSON; "
                                      "writes no plots"), _top_k("the trials the narrower ranges are drawn from")),
                      ("a sweep directory",), rest="folders", finish=_folder, bare_is_help=True),
    "ensemble": Command(ENSEMBLE, (_top_k("with a sweep directory: its best K trials are the members"),
                                   Option(("--json",), "print the accuracies as JSON instead of the table")),
                        ("sweep or run directories",), rest="folders", finish=_folders, bare_is_help=True),
}
