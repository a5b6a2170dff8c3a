"""A user's own callback (dlrun.train.callbacks): chosen as a config group entry, it sees every
event in order with the right step numbers, and its state crosses a resume."""

from __future__ import annotations

import json
import sys

import pytest

from dlrun.train.callbacks import Callback, Callbacks
from tests.conftest import dlrun_here

MODULE = '''
import json
from dlrun.train.callbacks import Callback


class Recorder(Callback):
    def __init__(self, path):
        self.path, self.steps_seen = path, 0

    def write(self, *event):
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\\n")

    def on_fit_start(self, trainer):
        self.write("fit_start", trainer.step, self.steps_seen)

    def on_step_end(self, trainer, step, loss):
        self.steps_seen += 1
        self.write("step", step, float(loss))

    def on_epoch_end(self, trainer, epoch, metrics):
        self.write("epoch", epoch, trainer.step, sorted(metrics))

    def on_checkpoint(self, trainer, path, epoch, step):
        self.write("checkpoint", path.name, epoch, step)

    def on_fit_end(self, trainer, status):
        self.write("fit_end", status, trainer.step, self.steps_seen)

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "cbpkg").mkdir()
    (tmp_path / "cbpkg" / "__init__.py").write_text(MODULE)
    (tmp_path / "conf" / "callbacks").mkdir(parents=True)
    (tmp_path / "conf" / "callbacks" / "record.yaml").write_text(
        f"record:\n  _target_: cbpkg.Recorder\n  path: {tmp_path / 'events.jsonl'}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "cbpkg"]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def test_a_config_group_callback_sees_every_event_in_order_across_a_resume(user):
    tmp_path = user
    run = tmp_path / "run"
    common = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "callbacks=record", "trainer.epochs=3",
              f"hydra.run.dir={run}"]
    first = dlrun_here("train", *common, "trainer.stop_at_epoch=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = dlrun_here("train", *common, "trainer.resume=auto", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]

    steps = 21  # 1294 digits at batch 64 a step
    metrics = ["train/acc", "train/data_loss", "train/loss", "train/reg_loss", "val/acc", "val/loss"]

    def epoch(n):
        return ([["step", s] for s in range((n - 1) * steps + 1, n * steps + 1)]
                + [["epoch", n, n * steps, metrics], ["checkpoint", "last.pt", n, n * steps]])

    expected = ([["fit_start", 0, 0], *epoch(1), ["fit_end", "stopped", steps, steps],
                 ["fit_start", steps, steps], *epoch(2), *epoch(3), ["fit_end", "finished", 3 * steps, 3 * steps]])
    assert [e[:2] if e[0] == "step" else e for e in events] == expected
    assert all(isinstance(e[2], float) for e in events if e[0] == "step")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 3 * steps


def test_a_hook_not_defined_is_not_called_and_no_step_hook_means_none_on_a_step():
    class OnlyEpochs(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            pass

    callbacks = Callbacks({"a": OnlyEpochs(), "b": Callback()})
    assert callbacks.on_step_end == [] and len(callbacks.on_epoch_end) == 1 and callbacks.on_fit_start == []
    assert not Callbacks() and Callbacks().on_step_end == []


@pytest.mark.parametrize("override,message", [
    ("+callbacks.x=3", "callbacks.x must name a class: callbacks.x._target_=mypkg.MyCallback"),
    ("+callbacks.x._target_=nopkg.Nope", "callbacks.x: nopkg.Nope could not be built"),
])
def test_a_callback_mistake_is_one_line(tmp_path, override, message):
    result = dlrun_here("train", override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
