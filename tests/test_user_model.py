"""A user's own model class: the written contract (README "Extending dlrun"). Its constructor takes
only what it asks for (input_shape, num_outputs, layout, its own settings); a model=NAME YAML in
the user's config folder (hydra.searchpath) or a bare model._target_ trains it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import dlrun_here

MODULE = '''
import math
from torch import nn


class Tiny(nn.Module):
    """Asks for the input shape, the class count and one setting of its own; not for the layout."""

    def __init__(self, input_shape, num_outputs, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.width, self.dropout = width, dropout
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(width, num_outputs))
        SEEN.append({"input_shape": tuple(input_shape), "num_outputs": num_outputs, "width": width, "dropout": dropout})

    def forward(self, x):
        return self.net(x)


SEEN = []
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """mypkg.Tiny on a temporary PYTHONPATH, and a config folder holding model/tiny.yaml."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text(MODULE)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text("_target_: mypkg.Tiny\nwidth: 24\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import importlib
    import sys

    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:  # another test's mypkg
        monkeypatch.delitem(sys.modules, name)
    return tmp_path, importlib.import_module("mypkg")


def trained(tmp_path, *overrides):
    result = dlrun_here("train", *overrides, "trainer.max_steps=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_a_user_model_yaml_in_their_config_folder_trains(user):
    tmp_path, mypkg = user
    summary = trained(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny", "reg=dropout")
    assert summary["status"] == "finished" and summary["steps"] == 5 and summary["choices"]["model"] == "tiny"
    assert mypkg.SEEN == [{"input_shape": (1, 8, 8), "num_outputs": 10, "width": 24, "dropout": 0.5}]
    assert summary["params"] == 64 * 24 + 24 + 24 * 10 + 10


def test_a_target_override_trains_a_user_class_without_the_zoo_models_keys(user):
    tmp_path, mypkg = user
    summary = trained(tmp_path, "model._target_=mypkg.Tiny")  # over model=mlp: hidden, activation, ... left out
    assert summary["status"] == "finished" and mypkg.SEEN[-1]["width"] == 16
    assert summary["params"] == 64 * 16 + 16 + 16 * 10 + 10


@pytest.mark.parametrize("overrides,message", [
    (("model._target_=mypkg.Tiny", "+model.wdith=3"), "model.wdith: mypkg.Tiny takes no argument 'wdith'"),
    (("model._target_=mypkg.Nope",), "model._target_=mypkg.Nope: cannot be imported"),
])
def test_a_user_model_mistake_is_one_line(user, overrides, message):
    tmp_path, _ = user
    result = dlrun_here("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not list(tmp_path.rglob("*.pt"))


def readme_example(title: str, end: str) -> tuple[dict[str, str], list[str]]:
    """A README "Extending dlrun" subsection: the files it shows (<!-- file: PATH --> before a
    block) and the commands of its console block."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index(title):text.index(end)]
    files = dict(re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", section, re.S))
    commands = [line[2:] for line in section.splitlines() if line.startswith("$ ")]
    return files, commands


@pytest.mark.parametrize("title,end,paths", [
    ("### Your own model", "### Your own callback", {"mypkg/tiny.py", "conf/model/tiny.yaml"}),
    ("### Your own callback", "### Your own optimizer settings", {"mypkg/callbacks.py", "conf/callbacks/print_best.yaml"}),
    ("### Your own data", "### Tab completion", {"mypkg/spirals.py", "conf/data/spirals.yaml"}),
])
def test_the_readmes_extending_examples_run_as_written(title, end, paths, tmp_path, monkeypatch):
    import shlex
    import sys

    files, commands = readme_example(title, end)
    assert set(files) == paths and len(commands) == 2
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:  # another test's mypkg
        monkeypatch.delitem(sys.modules, name)
    for number, command in enumerate(commands):
        env, dlrun, *args = shlex.split(command.replace("$PWD", str(tmp_path)))
        assert env == "PYTHONPATH=." and dlrun == "dlrun"
        run = tmp_path / f"run{number}"
        result = dlrun_here(*args, "trainer.epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        if "callbacks" in title:
            assert "epoch 1: new best val/acc" in result.stdout
        if "data" in title:  # the spirals are learnt: far above the 0.5 of chance
            assert json.loads((run / "summary.json").read_text())["test"]["acc"] > 0.8


def test_the_contract_is_in_the_models_package_docstring():
    import dlrun.models

    for word in ("input_shape", "num_outputs", "layout", "dropout", "head"):
        assert word in dlrun.models.__doc__
