"""Issue 19, part A: a saved config is data, checkpoints are verified, resume checks the recipe.

A hostile checkpoint runs nothing, a corrupt one is refused on every load path, a resume under
another recipe is refused naming the keys, and every such refusal is one line (exit 2 through
the CLI) that changes nothing already written. The CLI runs in this process (its `main`, which
prints the one line and exits 2 as `dlrun` does), so these tests cost no interpreter start-ups.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dlrun import strict_json
from dlrun.cli import main as cli_main
from dlrun.errors import UserError
from dlrun.targets import ALLOW_ENV, refuse_foreign
from dlrun import checkpoint
from tests.conftest import train

# Adam at lr=1e-4 with the cosine schedule, stopped after epoch 1 of 2: a checkpoint to resume.
RECIPE = ("trainer.device=cpu", "model.hidden=[32]", "optim.lr=1e-4", "trainer.epochs=2")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hostile") / "run"
    train(run_dir, *RECIPE, "trainer.stop_at_epoch=1")
    return run_dir


def files(folder: Path) -> dict:
    """Every file under folder with its bytes: to see that nothing was written or changed."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """`dlrun ARGS` in this process: (exit code, stderr's lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli_main(list(args))
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def rewrite(path: Path, change) -> None:
    """Load a checkpoint, change(state), save it back: a crafted file made only of dicts, strings and tensors."""
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


# ------------------------------------------------------------------ item 1: a saved config is data
class Touch:
    """Unpickling this opens (so creates) `marker`: the code a hostile pickle would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_runner(marker: Path) -> dict:
    """The issue's payload: a config node that, instantiated, unpickles Touch with torch.load(weights_only=False)."""
    text = pickle.dumps(Touch(marker), protocol=2).decode("latin-1")
    return {"_target_": "torch.load", "weights_only": False,
            "f": {"_target_": "io.BytesIO", "_args_": [{"_target_": "codecs.encode", "_args_": [text, "latin-1"]}]}}


def hostile_run(run: Path, to: Path, marker: Path) -> Path:
    """A copy of `run` whose checkpoints' saved data config is the pickle runner."""
    copy_run(run, to)
    for name in ("best.pt", "last.pt"):
        rewrite(to / "checkpoints" / name, lambda state: state["config"].update(data=pickle_runner(marker)))
    return to


def refused_target(lines: list[str], command: str, key: str, target: str) -> bool:
    return (len(lines) == 1 and lines[0].startswith(f"dlrun {command}: error: ")
            and f"{key}={target} is not a class dlrun's configs build" in lines[0]
            and "nothing was run" in lines[0] and f"{ALLOW_ENV}={target}" in lines[0])


def test_eval_and_ensemble_of_a_checkpoint_whose_config_unpickles_code_run_nothing(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = hostile_run(run, tmp_path / "evil", marker)
    before = files(evil)
    for args in ([f"ckpt={evil / 'checkpoints' / 'best.pt'}"], [f"ckpt={evil}"], [f"ckpt={evil}", "--json"]):
        code, lines = cli(capsys, "eval", *args)
        assert code == 2 and refused_target(lines, "eval", "data._target_", "torch.load"), lines
    code, lines = cli(capsys, "ensemble", str(run), str(evil))
    assert code == 2 and refused_target(lines, "ensemble", "data._target_", "torch.load"), lines
    assert not marker.exists()  # the pickle never ran
    assert files(evil) == before


def test_resume_and_transfer_read_a_hostile_config_as_data(run, tmp_path):
    marker = tmp_path / "pwned"
    evil = hostile_run(run, tmp_path / "evil", marker)
    # trainer.resume compares the saved config with the run's, as data: another data recipe
    with pytest.raises(UserError, match=r"another recipe \(data._target_: torch.load there, "
                                        r"dlrun.data.digits.DigitsData now") as caught:
        train(tmp_path / "resumed", *RECIPE, f"trainer.resume={evil}")
    assert "\n" not in str(caught.value)
    # model.weights reads the weights; the saved config only words a mismatch, it is never built
    summary = train(tmp_path / "transfer", *RECIPE, "trainer.max_steps=1", f"model.weights={evil}")
    assert summary["status"] == "finished"
    assert not marker.exists()


@pytest.mark.parametrize("config,where,target", [
    # nested in a dlrun class's arguments, and in a list
    ({"model": {"_target_": "dlrun.models.mlp.MLP", "hidden": {"_target_": "os.system", "_args_": ["x"]}}},
     "model.hidden._target_", "os.system"),
    ({"data": {"_target_": "dlrun.data.digits.DigitsData", "x": [1, {"_target_": "numpy.load", "file": "f"}]}},
     "data.x[1]._target_", "numpy.load"),
    # made by an interpolation when the config is resolved, as instantiate resolves it
    ({"data": {"_target_": "dlrun.data.digits.DigitsData", "x": "${oc.decode:'{_target_: joblib.load}'}"}},
     "data.x._target_", "joblib.load"),
])
def test_a_foreign_target_anywhere_in_a_saved_config_is_refused(config, where, target):
    with pytest.raises(UserError) as caught:
        refuse_foreign(config, "checkpoint 'x.pt'")
    assert f"{where}={target} is not a class dlrun's configs build" in str(caught.value)


def test_an_escaped_interpolation_that_hydra_would_revive_is_refused():
    config = {"data": {"_target_": "dlrun.data.digits.DigitsData", "x": r"\${oc.decode:'{_target_: joblib.load}'}"}}
    with pytest.raises(UserError, match=r"data.x holds an interpolation"):
        refuse_foreign(config, "checkpoint 'x.pt'")


def test_the_shipped_targets_and_torch_optimizers_and_schedules_pass():
    refuse_foreign({"optim": {"_target_": "torch.optim.NAdam"}, "sched": {"_target_": "torch.optim.lr_scheduler.SequentialLR",
                    "schedulers": [{"_target_": "torch.optim.lr_scheduler.PolynomialLR"}]},
                    "model": {"_target_": "dlrun.models.resnet9.resnet9"},
                    "data": {"_target_": "dlrun.data.vision.CIFAR10"}}, "x")


class Tiny(nn.Module):
    """A user's own model class, named on dlrun train's command line."""

    def __init__(self, input_shape, num_outputs, **_):
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_outputs)

    def forward(self, x):
        return self.head(x.flatten(1))


def test_a_users_own_class_trains_as_before_and_evaluates_once_allowed(tmp_path, capsys, monkeypatch):
    own = "tests.test_hostile_checkpoints.Tiny"
    summary = train(tmp_path / "own", "trainer.device=cpu", "trainer.max_steps=1", f"model._target_={own}")
    assert summary["status"] == "finished"  # the command line is the user's own code
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    code, lines = cli(capsys, "eval", f"ckpt={tmp_path / 'own'}")
    assert code == 2 and refused_target(lines, "eval", "model._target_", own), lines
    for allowed in (own, "mypkg.Other, tests.*"):
        monkeypatch.setenv(ALLOW_ENV, allowed)
        cli_main(["eval", f"ckpt={tmp_path / 'own'}", "--json"])
        assert json.loads(capsys.readouterr().out)["model"] == "Tiny"


# --------------------------------------------------------------- item 7: checkpoints are verified
def tensor_data(path: Path) -> tuple[int, int]:
    """(offset, size) in the file of the first weight tensor of 4 KiB or more (in torch's zip, stored)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 4096)
    raw = path.read_bytes()
    name, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name + extra, info.file_size


def flip_a_bit(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    start, _ = tensor_data(path)
    raw[start + 1001] ^= 0x01  # the lowest mantissa bit of one weight
    path.write_bytes(bytes(raw))


def overwrite_with_ff(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    start, _ = tensor_data(path)
    raw[start:start + 4000] = b"\xff" * 4000
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("corrupt", [flip_a_bit, overwrite_with_ff])
def test_a_corrupt_checkpoint_is_refused_on_every_load_path(run, tmp_path, capsys, corrupt):
    bad = copy_run(run, tmp_path / "bad")
    for name in ("best.pt", "last.pt"):
        corrupt(bad / "checkpoints" / name)
    assert zipfile.is_zipfile(bad / "checkpoints" / "best.pt")  # still an archive: only its CRCs tell
    before = files(bad)
    best = bad / "checkpoints" / "best.pt"
    message = f"'{best}' is corrupt (archive/data/"
    code, lines = cli(capsys, "eval", f"ckpt={bad}")
    assert code == 2 and len(lines) == 1 and message in lines[0] and "fails its CRC check" in lines[0], lines
    code, lines = cli(capsys, "ensemble", str(run), str(bad))
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    with pytest.raises(UserError) as caught:  # trainer.resume reads last.pt
        train(tmp_path / "resumed", *RECIPE, f"trainer.resume={bad}")
    assert f"'{bad / 'checkpoints' / 'last.pt'}' is corrupt" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError) as caught:  # model.weights reads best.pt
        train(tmp_path / "transfer", *RECIPE, f"model.weights={bad}")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert files(bad) == before


def test_resume_auto_skips_a_last_pt_with_a_flipped_bit_for_previous_pt(tmp_path, caplog):
    run = tmp_path / "run"
    train(run, *RECIPE, "trainer.epochs=3", "trainer.stop_at_epoch=2")  # previous.pt: epoch 1, last.pt: epoch 2
    flip_a_bit(run / "checkpoints" / "last.pt")
    with caplog.at_level("INFO", logger="dlrun"):
        summary = train(run, *RECIPE, "trainer.epochs=3", "trainer.resume=auto")
    assert f"trainer.resume=auto: skipping {run / 'checkpoints' / 'last.pt'}: " in caplog.text
    assert f"resumed from {run / 'checkpoints' / 'previous.pt'} at epoch 1" in caplog.text  # not the corrupt epoch 2
    assert summary["status"] == "finished" and summary["resumed"]["epoch"] == 1


def test_eval_and_ensemble_never_report_a_nan_metric_as_a_result(run, tmp_path, capsys):
    nan = copy_run(run, tmp_path / "nan")
    rewrite(nan / "checkpoints" / "best.pt", lambda state: state["model"]["1.weight"].fill_(float("nan")))
    code, lines = cli(capsys, "eval", f"ckpt={nan}", "--json")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"dlrun eval: error: checkpoint '{nan / 'checkpoints' / 'best.pt'}' gives test loss nan")
    assert "2048 of its weight values are not finite" in lines[0]
    code, lines = cli(capsys, "ensemble", str(run), str(nan))
    assert code == 2 and len(lines) == 1 and "gives non-finite probabilities" in lines[0], lines


# ----------------------------------------------------------- item 9: malformed entries, full disks
@pytest.mark.parametrize("key,value,shown", [
    ("config", "data: {_target_: torch.load}", "its 'config' is str 'data: {_target_: torch.load}', not a mapping"),
    ("config", {"optim": {"lr": torch.ones(2)}}, "its 'config' is a mapping, not a mapping of plain values"),
    ("epoch", "three", "its 'epoch' is str 'three', not an integer"),
    ("model", {"1.weight": "not a tensor"}, "its 'model' is a mapping, not names -> tensors"),
])
def test_a_checkpoint_with_a_malformed_entry_is_one_line(run, tmp_path, capsys, key, value, shown):
    odd = copy_run(run, tmp_path / "odd")
    for name in ("best.pt", "last.pt"):
        rewrite(odd / "checkpoints" / name, lambda state: state.update({key: value}))
    code, lines = cli(capsys, "eval", f"ckpt={odd}")
    assert code == 2 and len(lines) == 1 and shown in lines[0], lines
    with pytest.raises(UserError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        train(tmp_path / "resumed", *RECIPE, f"trainer.resume={odd}")


def test_resuming_a_best_pt_says_it_cannot_be_resumed(run, tmp_path):
    with pytest.raises(UserError, match=r"cannot be resumed: it has no 'optimizer' entry \(trainer.resume continues "
                                        r"a dlrun last.pt\)"):
        train(tmp_path / "resumed", *RECIPE, f"trainer.resume={run / 'checkpoints' / 'best.pt'}")


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous_last_pt(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full_after_epoch_1(obj, f, *args, **kwargs):
        calls.append(obj.get("epoch"))
        if len(calls) <= 2:  # epoch 1's best.pt and last.pt
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        # what torch's own stream writer raises when the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", disk_full_after_epoch_1)
    run = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        train(run, *RECIPE, "trainer.epochs=3")
    message = str(caught.value)
    assert "\n" not in message and "could not write checkpoint" in message and "(file write failed)" in message
    assert "the previous one is intact" in message
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp file
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


# ------------------------------------------------------------- item 6: resume checks the recipe
@pytest.mark.parametrize("change,named", [
    (("optim=sgd",), "optim._target_: torch.optim.Adam there, torch.optim.SGD now"),
    (("sched=step",), "sched._target_: torch.optim.lr_scheduler.CosineAnnealingLR there, "
                      "torch.optim.lr_scheduler.StepLR now"),
    (("optim.lr=0.05",), "optim.lr: 0.0001 there, 0.05 now"),
    (("model.hidden=[16]",), "model.hidden: [32] there, [16] now"),
    (("data.batch_size=32", "trainer.seed=3"), "data.batch_size: 64 there, 32 now; trainer.seed: 0 there, 3 now"),
    # the cosine schedule's length is the run's (T_max=null): more epochs would restart it
    (("trainer.epochs=3",), "trainer.epochs: 2 there, 3 now (sched.T_max=null"),
])
def test_a_resume_with_another_recipe_is_refused_naming_the_keys(run, tmp_path, change, named):
    before = files(run)
    with pytest.raises(UserError) as caught:
        train(tmp_path / "resumed", *RECIPE, *change, f"trainer.resume={run}")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"trainer.resume: checkpoint '{run / 'checkpoints' / 'last.pt'}' "
                                                      "was trained with another recipe (")
    assert named in message
    assert files(run) == before
    assert not list((tmp_path / "resumed").rglob("*.pt"))


def test_resume_auto_with_another_recipe_changes_nothing_in_its_run_directory(run, tmp_path):
    again = copy_run(run, tmp_path / "again")
    before = files(again)
    with pytest.raises(UserError, match=r"another recipe \(optim.lr: 0.0001 there, 0.05 now\)"):
        train(again, *RECIPE, "optim.lr=0.05", "trainer.resume=auto")
    assert files(again) == before


def test_a_resume_refused_for_its_recipe_through_the_cli_leaves_hydras_files_as_they_were(tmp_path, capsys):
    """The recipe is checked in the run directory's guard, before Hydra rewrites .hydra/ (config.yaml,
    overrides.yaml, hydra.yaml: what dlrun report and dlrun eval read)."""
    run_dir = tmp_path / "run"
    cli_main(["train", f"hydra.run.dir={run_dir}", *RECIPE, "trainer.stop_at_epoch=1"])
    before = files(run_dir)
    assert (run_dir / ".hydra" / "overrides.yaml") in before
    code, lines = cli(capsys, "train", f"hydra.run.dir={run_dir}", *RECIPE, "optim.lr=0.05", "trainer.resume=auto")
    assert code == 2 and len(lines) == 1 and "another recipe (optim.lr: 0.0001 there, 0.05 now)" in lines[0], lines
    assert files(run_dir) == before


def test_a_resume_may_change_how_and_how_long_it_runs_and_summary_records_it(tmp_path):
    recipe = ("trainer.device=cpu", "model.hidden=[32]", "optim.lr=1e-3", "sched=step", "sched.step_size=1")
    train(tmp_path / "first", *recipe, "trainer.epochs=2", "trainer.stop_at_epoch=1")
    summary = train(tmp_path / "more", *recipe, "trainer.epochs=3", "trainer.threads=1", "logger.every=5",
                    "data.eval_batch_size=100", f"trainer.resume={tmp_path / 'first'}")
    assert summary["status"] == "finished" and summary["epochs"] == 3
    assert summary["resumed"] == {
        "checkpoint": str(tmp_path / "first" / "checkpoints" / "last.pt"), "epoch": 1, "step": 21,
        "changed": {"trainer.epochs": [2, 3], "trainer.threads": [None, 1], "trainer.stop_at_epoch": [1, None],
                    "logger.every": [50, 5], "data.eval_batch_size": [1024, 100]}}
    assert summary["hparams"]["optim.lr"] == 1e-3 and summary["hparams"]["trainer.epochs"] == 3
    last = checkpoint.load(tmp_path / "more" / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 ** 3)  # step_size 1: 3 halvings


# ------------------------------------------------------------------- item 8: strict JSON
def test_strict_json_writes_null_for_every_non_finite_number():
    obj = {"loss": float("nan"), "vals": [1.5, float("inf"), np.float32("-inf")], "n": 3, "ok": np.float32(0.5)}
    text = strict_json.dumps(obj)
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON")) == {
        "loss": None, "vals": [1.5, None, None], "n": 3, "ok": 0.5}
    assert strict_json.finite(obj)[1] == ["loss", "vals[1]", "vals[2]"]


def test_summary_json_holds_null_and_says_which_metric_was_not_finite(tmp_path, monkeypatch):
    from dlrun.train.loop import Trainer

    monkeypatch.setattr(Trainer, "test", lambda self: {"loss": float("inf"), "acc": 0.5})
    train(tmp_path / "run", "trainer.device=cpu", "model.hidden=[8]", "trainer.max_steps=1")
    text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in summary.json"))
    assert summary["test"] == {"loss": None, "acc": 0.5} and summary["non_finite"] == ["test.loss"]


def test_checkpoints_describe_the_inputs_their_weights_take(tmp_path):
    """best.pt and last.pt carry the input's shape and layout, the outputs, the preprocessing with
    the training split's statistics and the versions (issue 21's self-describing checkpoints): the
    stored test images, preprocessed from those numbers alone, are what the run's data gives."""
    import torch

    from dlrun import __version__
    from dlrun.build import build
    from tests.conftest import make_config, train

    train(tmp_path, "trainer.epochs=1", "model.hidden=[16]", "logger.hparams=false")
    data = build(make_config("model.hidden=[16]")[0].data)
    for name in ("best.pt", "last.pt"):
        inputs = checkpoint.load(tmp_path / "checkpoints" / name)["inputs"]
        assert (inputs["input_shape"], inputs["layout"], inputs["task"], inputs["num_outputs"]) == \
            ([1, 8, 8], "image", "classification", 10)
        assert (inputs["preprocess"], inputs["dlrun"], inputs["torch"]) == \
            ("channel_standardize", __version__, torch.__version__)
        stats = inputs["statistics"]
        x = data.test.x.float() * (inputs["stored_scale"] or 1.0)
        assert torch.equal(((x - stats["mean"]) / stats["std"]).float(), data.prepare(data.test.x))
