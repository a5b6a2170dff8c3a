"""The README's error examples are what dlrun prints: each `$ dlrun ...` line the README follows
with a `dlrun ...: error:` line is run here, and its one line must be the README's, word for word.

Examples whose line depends on the reader's machine or on runs made earlier in the README (a home
folder, a dated run directory) are left out; the tests of those commands check their messages.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import ROOT
from dlrun.cli import main

NEEDS_STATE = ("/home/you", "outputs/2026-", "runs/digits", "digits6-9.npz", "holds a finished run")


def examples() -> list[tuple[int, str, str]]:
    lines = (ROOT / "README.md").read_text().splitlines()
    found = []
    for number, (line, after) in enumerate(zip(lines, lines[1:]), start=1):
        if line.startswith("$ dlrun ") and re.match(r"dlrun [a-z]+: error: ", after):
            command = line[2:].split("  #")[0].strip()
            if not any(marker in line + after for marker in NEEDS_STATE):
                found.append((number, command, after))
    return found


EXAMPLES = examples()


def test_the_readme_has_error_examples_to_check():
    assert len(EXAMPLES) >= 20


@pytest.mark.parametrize("number, command, expected", EXAMPLES, ids=[f"README:{n}" for n, _, _ in EXAMPLES])
def test_a_readme_error_example_prints_its_line(number, command, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = shlex.split(command)[1:]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "trainer.device=cpu"] if args[0] == "train" else args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1:] == [expected]
