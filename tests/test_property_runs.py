"""Real runs over random override sets: `dlrun train ... trainer.max_steps=1` ends well or in one line.

test_config_schema's property test stops before training; this one drives the CLI itself
(in-process, through dlrun.cli.main, for speed) on the same random override sets, through
Hydra's job, the data, the model, one optimizer step, the test evaluation and summary.json.
Each case either exits 0 with a run that ended, or exits 2 with exactly one stderr line
"dlrun train: error: ...": never a traceback, never a second line.

CI (CI set) runs a fixed set of examples; HYPOTHESIS_PROFILE=deep runs 2,000.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings

import pytest
import torch
from hypothesis import example, given, settings

from dlrun.cli import main
from tests.test_config_schema import override_sets

# trainer.devices=N starts N processes whose stderr this process cannot capture: test_ddp covers
# that path. The fixed overrides come last, so they win over a drawn value of the same key.
LEAVE_OUT = ("trainer.devices", "trainer.max_steps", "trainer.device")
FIXED = ("trainer.max_steps=1", "trainer.device=cpu")


def run_cli(*args: str) -> tuple[int, str]:
    """`dlrun train ARGS` in this process: (exit status, stderr), the process's state put back after.

    stderr is all a user would see there: what Python code writes to sys.stderr, Python's warnings
    (pytest would record them instead), shown under the interpreter's default filters, and what C
    code writes to file descriptor 2."""
    err = io.StringIO()
    threads, deterministic, argv = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), sys.argv
    handlers = logging.getLogger().handlers[:]
    sys.stderr.flush()
    fd2, saved = tempfile.TemporaryFile(), os.dup(2)
    os.dup2(fd2.fileno(), 2)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.resetwarnings()  # python's defaults, as `dlrun` on a terminal has them
            for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            main(["train", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        sys.argv = argv
        root = logging.getLogger()
        for handler in root.handlers[:]:  # Hydra's job logging: its train.log handler holds a file open
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
    with fd2:
        fd2.seek(0)
        return code, err.getvalue() + fd2.read().decode(errors="replace")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return tmp_path_factory.mktemp("cases")


# A real run costs ~10x a composition: the ci and dev profiles' 60 become 30 here (~30 s on 2 cores);
# the deep profile keeps its 2,000.
@settings(max_examples=30 if settings.default.max_examples < 1000 else settings.default.max_examples)
@given(override_sets(leave_out=LEAVE_OUT))
# What random sets found, kept: an interpolation of nothing, resolved inside the job (Hydra's
# "Error executing job with overrides" line came first), there from the schema's check or from app.py.
@example(((), ["optim.eps='${oops}'"]))
@example(((), ["trainer.resume='${oops}'"]))
# Values too long: a group's name no file can have and a path no file can have (OSError: file name
# too long, from Hydra's config search and from the schema's check), 5,000 digits (a ValueError
# from Hydra's parser).
@example(((), ["model=" + "a" * 5000]))
@example(((), ["trainer.resume=" + "a" * 5000]))
@example(((), ["optim.lr=" + "1" * 5000]))
def test_random_overrides_on_real_runs_end_well_or_in_one_line(cases, drawn):
    choices, overrides = drawn
    run_dir = cases / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    code, err = run_cli(*choices, *overrides, *FIXED, f"hydra.run.dir={run_dir}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, (overrides, err)
    assert code in (0, 2), (code, choices, overrides, err)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("dlrun train: error: "), (choices, overrides, err)
    else:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] in ("finished", "early_stopped", "stopped"), (choices, overrides, summary)
