"""dlrun.options: one parser for `dlrun` and each command but train (a Hydra app): their --help
without torch or Hydra, their options, and a mistake on the line as one line with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlrun import __version__
from dlrun.check import CHECKS
from dlrun.errors import UserError
from dlrun.options import SPECS, parse
from tests.conftest import dlrun_here

USAGES = {
    (): "usage: dlrun <command> [hydra overrides]\n",
    ("-h",): "usage: dlrun <command> [hydra overrides]\n",
    ("--help",): "usage: dlrun <command> [hydra overrides]\n",
    ("help",): "usage: dlrun <command> [hydra overrides]\n",
    ("summary", "--help"): "usage: dlrun summary [--depth N] [hydra overrides]\n",
    ("summary", "--depth", "x", "-h"): "usage: dlrun summary [--depth N] [hydra overrides]\n",  # help wins
    ("eval", "-h"): "usage: dlrun eval ckpt=PATH [--json] [hydra overrides]\n",
    ("report",): "usage: dlrun report DIR [--json] [--top K]\n",
    ("report", "nope", "--help"): "usage: dlrun report DIR [--json] [--top K]\n",
    ("ensemble",): "usage: dlrun ensemble DIR [DIR ...] [--top K] [--json]\n",
    ("ensemble", "--top", "2", "-h"): "usage: dlrun ensemble DIR [DIR ...] [--top K] [--json]\n",
    ("check",): "usage: dlrun check <check> [train overrides] [check.KEY=VALUE ...]\n",
    ("check", "help"): "usage: dlrun check <check> [train overrides] [check.KEY=VALUE ...]\n",
    ("check", "--help"): "usage: dlrun check <check> [train overrides] [check.KEY=VALUE ...]\n",
    **{("check", name, "--help"): f"usage: dlrun check {name} [" for name in CHECKS},
    ("--version",): f"dlrun {__version__}\n",
    ("-V",): f"dlrun {__version__}\n",
}


@pytest.fixture(scope="module")
def answers() -> dict[tuple[str, ...], str]:
    """What `dlrun ARGS` prints for each line of USAGES, from one process that imports no torch or Hydra."""
    code = ("import contextlib, io, json, sys; from dlrun.cli import main\n"
            "out = {}\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as printed:\n"
            "        main(args)\n"
            "    out[' '.join(args)] = printed.getvalue()\n"
            "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'tensorboard') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "print(json.dumps(out))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(list(USAGES))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr  # main returned: no SystemExit, nothing heavy imported
    printed = json.loads(result.stdout)
    return {args: printed[" ".join(args)] for args in USAGES}


@pytest.mark.parametrize("args", list(USAGES), ids=lambda args: " ".join(args) or "(nothing)")
def test_help_and_version_are_answered_without_torch_or_hydra(answers, args):
    assert answers[args].startswith(USAGES[args]), answers[args]


@pytest.mark.parametrize("command", [c for c in SPECS if c])
def test_each_commands_help_lists_its_options_and_examples(answers, command):
    text = answers[next(args for args in USAGES if args[:1] == (command,))]
    assert "-h, --help" in text and "\nexamples:\n  dlrun " in text
    for option in SPECS[command].options:
        assert f"  {option.shown().replace('/', ', ')}  " in text, option
    assert "(default 3)" in text or command in ("eval", "check")  # argparse fills in %(default)s


def test_python_m_dlrun_help_exits_0():
    result = subprocess.run([sys.executable, "-m", "dlrun", "report", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: dlrun report DIR") and result.stderr == ""


@pytest.mark.parametrize("args,line", [
    (["-x"], "dlrun: error: unknown option '-x'; dlrun takes -V/--version and a command (dlrun --help)"),
    (["--cfg", "job"], "dlrun: error: unknown option '--cfg'; dlrun takes -V/--version and a command (dlrun --help)"),
    (["summary", "model=lenet", "-m"], "dlrun summary: error: unknown option '-m'; dlrun summary takes --depth N and "
                                       "Hydra overrides (dlrun summary --help)"),
    (["summary", "--dep", "2"], "dlrun summary: error: unknown option '--dep'; dlrun summary takes --depth N and "
                                "Hydra overrides (dlrun summary --help)"),  # no abbreviations
    (["summary", "--depth", "x"], "dlrun summary: error: --depth needs a whole number >= 0, got 'x'; e.g. --depth 2"),
    (["summary", "model=lenet", "--depth"], "dlrun summary: error: --depth needs a whole number >= 0, got nothing; "
                                            "e.g. --depth 2"),
    (["eval", "ckpt=x", "--cfg", "job"], "dlrun eval: error: unknown option '--cfg'; dlrun eval takes --json, "
                                         "ckpt=PATH and Hydra overrides (dlrun eval --help)"),
    (["eval", "ckpt=x", "--json=1"], "dlrun eval: error: --json: ignored explicit argument '1'; it takes no value "
                                     "(dlrun eval --help)"),
    (["report", "DIR", "--plots"], "dlrun report: error: unknown option '--plots'; dlrun report takes --json, --top K "
                                   "and a sweep directory (dlrun report --help)"),
    (["report", "DIR", "--top", "--json"], "dlrun report: error: --top needs a whole number >= 1, got nothing; "
                                           "e.g. --top 5"),
    (["ensemble", "DIR", "-k", "3"], "dlrun ensemble: error: unknown option '-k'; dlrun ensemble takes --top K, --json "
                                     "and sweep or run directories (dlrun ensemble --help)"),
    (["ensemble", "DIR", "--top", "0"], "dlrun ensemble: error: --top needs a whole number >= 1, got '0'; e.g. --top 5"),
    (["check", "lr", "--out", "x"], "dlrun check: error: unknown option '--out'; dlrun check takes a check's name and "
                                    "its overrides (dlrun check --help)"),
    (["check", "nope", "--help"], "dlrun check: error: unknown check 'nope'; choose one of: "
                                  f"{', '.join(CHECKS)} (dlrun check --help lists them)"),
])
def test_a_mistake_on_the_line_is_one_line_and_exit_2(tmp_path, args, line):
    result = dlrun_here(*[str(tmp_path) if arg == "DIR" else arg for arg in args], cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines(), result.stdout) == (2, [line], "")
    assert list(tmp_path.iterdir()) == []


def test_options_parse_to_their_values_and_the_rest_passes_through_in_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    overrides = ["+optim.fused=true", "~model.hidden", "++a.b=1", "model=mlp,lenet", "hydra.run.dir=x y", "k=-1"]
    summary = parse("summary", [*overrides[:3], "--depth", "1", *overrides[3:]])
    assert (summary.depth, summary.overrides) == (1, overrides)
    assert parse("summary", ["--depth=0"]).depth == 0 and parse("summary", []).depth == 3
    report = parse("report", ["--json", str(tmp_path / "a"), "--top=7"])
    assert (report.folder, report.json, report.top) == (tmp_path / "a", True, 7)
    report = parse("report", [str(tmp_path / "a")])
    assert (report.json, report.top) == (False, 3)
    ensemble = parse("ensemble", [str(tmp_path / "a"), "--top", "2", str(tmp_path / "b")])
    assert (ensemble.folders, ensemble.top, ensemble.json) == ([tmp_path / "a", tmp_path / "b"], 2, False)
    assert parse("check", ["lr", "optim=sgd", "check.range=true"]).args == ["lr", "optim=sgd", "check.range=true"]


@pytest.mark.parametrize("command,args,message", [
    ("summary", ["--depth", "²"], "got '²'"),  # a digit to str.isdigit, not to int()
    ("summary", ["--depth", "-1"], "got '-1'"),
    ("summary", ["--depth", "+2"], "got '+2'"),
    ("report", [], "no directory given; pass a sweep directory, e.g. dlrun report outputs/multirun/DATE/TIME"),
    ("report", ["nope"], "nope: no such directory"),
    ("report", [".", "."], "one sweep directory at a time; got 2"),
    ("ensemble", ["--top", "1.5", "."], "--top needs a whole number >= 1, got '1.5'"),
    ("eval", ["--json"], "no checkpoint given"),
])
def test_values_are_checked(command, args, message):
    with pytest.raises(UserError, match=message.replace("+", r"\+")):
        parse(command, args)


def test_the_readmes_help_is_what_dlrun_help_prints(answers):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"$ dlrun --help\n{answers[('--help',)]}```" in readme
