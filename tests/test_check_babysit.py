"""dlrun check initial-loss | overfit | lr | gradcheck | all: the notes' babysitting steps, asserted on numbers."""

import json
import math
import re

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from dlrun.check import CHECKS
from dlrun.check.common import compose, read_options
from dlrun.check.gradcheck import ALLOWED_KINKS, ALLOWED_SMOOTH, check_gradients, kinks
from dlrun.errors import UserError
from tests.conftest import make_config, dlrun_here


def check(tmp_path, name, *overrides):
    """Run `dlrun check <name>` in this process; (check.json, exit code)."""
    import importlib

    out = tmp_path / name
    module = importlib.import_module(CHECKS[name][0])
    code = 0
    try:
        module.main([*overrides, f"check.out={out}", "trainer.device=cpu"])
    except SystemExit as exc:
        code = exc.code
    return json.loads((out / "check.json").read_text()), code


def lines_of(report, what_prefix=""):
    return [line for line in report["lines"] if line["what"].startswith(what_prefix)]


# ------------------------------------------------------------------------------ initial-loss
@pytest.mark.parametrize("init", ["small_normal", "default"])
def test_initial_loss_of_10_classes_is_ln_10_with_a_small_init(tmp_path, init):
    report, code = check(tmp_path, "initial-loss", f"init={init}")
    first = report["lines"][0]
    assert first["data"]["expected"] == pytest.approx(math.log(10), abs=1e-6)  # all-zero logits: ln C exactly
    assert abs(first["data"]["loss"] - math.log(10)) < 0.1 and first["verdict"] == "ok"
    assert report["lines"][1]["verdict"] == "skip"  # reg=none: nothing to compare
    assert code == 0 and report["verdict"] == "ok"


def test_initial_loss_flags_a_large_init_and_exits_1(tmp_path):
    report, code = check(tmp_path, "initial-loss", "init=large_normal")
    first = report["lines"][0]
    assert first["verdict"] == "fail" and first["data"]["loss"] > math.log(10) + 1.0
    assert "init is too large" in first["advice"]
    assert code == 1 and report["verdict"] == "fail"


def test_regularisation_raises_the_initial_loss_by_the_papers_penalty(tmp_path):
    report, code = check(tmp_path, "initial-loss", "reg=l2", "reg.l2=0.01")
    off, on = report["lines"]
    assert on["verdict"] == "ok" and on["data"]["loss"] > off["data"]["loss"]
    # The penalty is the notes' 0.5 * l2 * sum(W^2) over the weight matrices of the same initial model.
    from dlrun.train.assembly import build_parts

    cfg, _ = make_config("reg=l2", "reg.l2=0.01", "trainer.device=cpu")
    model = build_parts(cfg).model
    expected = 0.5 * 0.01 * sum(float(p.detach().square().sum()) for p in model.parameters() if p.ndim > 1)
    assert on["data"]["penalty"] == pytest.approx(expected, rel=1e-5)
    assert on["data"]["loss"] - off["data"]["loss"] == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------------- overfit
def test_overfit_reaches_100_percent_on_digits_within_the_budget(tmp_path):
    report, code = check(tmp_path, "overfit")
    line = report["lines"][0]
    assert line["verdict"] == "ok" and line["data"]["acc_end"] == 1.0
    assert line["data"]["samples"] == 5 * 64 and 0 < line["data"]["steps"] <= line["data"]["budget"] == 1000
    assert line["data"]["loss_end"] < 0.1 * line["data"]["loss_start"]
    assert code == 0


def test_overfit_fails_a_broken_setting_with_the_notes_advice(tmp_path):
    # lr=0 is refused before anything runs (config validation); an lr of 1e-9 is as good as 0.
    with pytest.raises(UserError, match="optim.lr=0 must be a number > 0"):
        check(tmp_path, "overfit", "optim.lr=0")
    report, code = check(tmp_path, "overfit", "optim.lr=1e-9", "check.budget=50")
    line = report["lines"][0]
    assert line["verdict"] == "fail" and line["data"]["steps"] == 50 and line["data"]["acc_end"] < 1.0
    assert line["data"]["loss_end"] == pytest.approx(line["data"]["loss_start"], rel=1e-4)  # nothing moved
    assert line["advice"] == "loss not going down: lr too low or bad init"
    assert code == 1


def test_overfit_names_an_exploding_loss(tmp_path):
    report, code = check(tmp_path, "overfit", "optim=sgd", "optim.lr=1e4")
    line = report["lines"][0]
    assert line["verdict"] == "fail" and line["advice"] == "loss explodes: lr too high or bad init" and code == 1


# ---------------------------------------------------------------------------------------- lr
def test_lr_finds_1e_4_hardly_moves_sgd_while_1e_1_does_and_plots_it(tmp_path):
    report, code = check(tmp_path, "lr", "optim=sgd", "check.range=true")
    by_lr = {line["data"]["lr"]: line for line in report["lines"] if line["what"].startswith("lr ")}
    assert set(by_lr) == {0.1, 0.01, 0.001, 0.0001}
    starts = {line["data"]["start"] for line in by_lr.values()}
    assert len(starts) == 1  # the same init and the same first batch for every lr
    slow, fast = by_lr[1e-4], by_lr[1e-1]
    assert abs(slow["data"]["end"] - slow["data"]["start"]) < 0.02 * slow["data"]["start"]
    assert slow["verdict"] == "warn" and "lr too low" in slow["advice"]
    assert fast["verdict"] == "ok" and fast["data"]["end"] < 0.5 * fast["data"]["start"]
    assert all(len(line["data"]["losses"]) == 100 for line in by_lr.values())
    suggested = lines_of(report, "suggested")[0]
    assert suggested["data"]["lr"] == report["suggested_lr"] == 0.1  # the lowest loss after 100 steps
    ranged = lines_of(report, "range test")[0]
    assert ranged["verdict"] == "ok" and 1e-7 < ranged["data"]["lowest_at"] < 10
    png = tmp_path / "lr" / "lr.png"
    assert report["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(tmp_path / "lr" / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert events.Tags()["images"] == ["check/lr"]
    assert len(events.Scalars("check/lr/0.1/loss")) == 100
    assert all(tag.startswith("check/") for tag in events.Tags()["scalars"])  # none beside training's lr
    assert code == 0


def test_lr_fails_when_no_lr_moves_the_loss(tmp_path):
    report, code = check(tmp_path, "lr", "optim=sgd", "check.lrs=[1e-6,1e-7]", "check.iterations=20")
    assert all(line["verdict"] == "warn" for line in lines_of(report, "lr "))
    assert lines_of(report, "suggested")[0]["verdict"] == "fail" and code == 1


# --------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("model,smooth", [("mlp", False), ("cnn", False), ("lenet", True), ("lstm", True),
                                          ("gru", True)])
def test_gradcheck_passes_the_zoos_small_models(tmp_path, model, smooth):
    report, code = check(tmp_path, "gradcheck", f"model={model}")
    tensors = [line for line in report["lines"] if "[" in line["what"]]
    assert len(tensors) >= 4 and all(line["verdict"] == "ok" for line in tensors)
    assert report["gradcheck"]["allowed"] == (ALLOWED_SMOOTH if smooth else ALLOWED_KINKS)
    errors = [line["data"]["error"] for line in tensors]
    assert max(errors) < 1e-4 and min(errors) < 1e-7  # most coordinates agree to float64 precision
    assert all(line["data"]["coordinates"] == 10 for line in tensors if math.prod(line["data"]["shape"]) >= 10)
    assert code == 0


class DoubledGradient(torch.autograd.Function):
    """The identity forward; backward returns twice the true gradient: a planted backprop bug."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class BrokenNet(nn.Module):
    """A Linear whose output passes through DoubledGradient, then a smooth head: its gradient is 2x."""

    def __init__(self, input_shape, num_outputs, **_):
        super().__init__()
        self.first = nn.Linear(math.prod(input_shape), 16)
        self.head = nn.Linear(16, num_outputs)

    def forward(self, x):
        return self.head(torch.tanh(DoubledGradient.apply(self.first(x.flatten(1)))))


def test_a_doubled_gradient_fails_with_relative_error_one_half(tmp_path):
    report, code = check(tmp_path, "gradcheck", "model._target_=tests.test_check_babysit.BrokenNet")
    by_name = {line["what"].split()[0]: line for line in report["lines"]}
    for name in ("first.weight", "first.bias"):
        assert by_name[name]["verdict"] == "fail"
        assert by_name[name]["data"]["error"] == pytest.approx(0.5, abs=1e-4)  # |2g - g| / |2g|
        assert by_name[name]["data"]["band"] == "wrong"
    assert by_name["head.weight"]["verdict"] == "ok" and by_name["head.weight"]["data"]["error"] < 1e-6
    assert report["gradcheck"]["model"] == "smooth" and code == 1


def test_check_gradients_seeds_dropout_so_it_can_be_checked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).double().train()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    results = check_gradients(model, lambda: nn.functional.cross_entropy(model(x), y), k=10)
    assert max(r.error for r in results) < 1e-7 and not any(r.beyond for r in results)


def test_kinks_are_found_where_the_notes_put_them():
    assert kinks(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "cross_entropy", 0.0) == []
    assert kinks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "cross_entropy", 0.0) == ["ReLU"]
    assert kinks(nn.Sequential(nn.MaxPool2d(2)), "cross_entropy", 0.0) == ["MaxPool2d"]
    assert kinks(nn.Sequential(nn.Tanh()), "multi_margin", 1e-3) == ["the L1 penalty", "the SVM loss"]


# ---------------------------------------------------------------------- options and the CLI
@pytest.mark.parametrize("override,message", [
    ("check.k=0", "check.k=0 must be an integer >= 1"),
    ("check.h=-1", "check.h=-1 must be a number > 0"),
    ("check.lrs=[]", "check.lrs=[] must be a non-empty list of numbers > 0"),
    ("check.drop=1.5", "check.drop=1.5 must be a number in (0, 1)"),
    ("check.range_min=20", "check.range_min=20 must be below check.range_max=10"),
])
def test_bad_check_options_are_one_line_errors(override, message):
    """Each value's range is the schema's (validate); a range between two keys is read_options'."""
    from dlrun.schema import validate

    cfg = compose([override])
    with pytest.raises(UserError, match=re.escape(message)):
        validate(cfg)
        read_options(cfg)


def test_a_refused_check_leaves_no_output_folder(tmp_path):
    result = dlrun_here("check", "lr", "check.k=0", f"check.out={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2 and "check.k=0 must be an integer >= 1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_cli_runs_all_four_steps_and_reports_a_fail_with_exit_1(tmp_path):
    result = dlrun_here("check", "all", "check.iterations=30", f"check.out={tmp_path / 'all'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for title in ("dlrun check initial-loss", "dlrun check overfit", "dlrun check lr", "dlrun check gradcheck"):
        assert title in result.stdout
    report = json.loads((tmp_path / "all" / "check.json").read_text())
    assert {line["check"] for line in report["lines"]} == {"initial-loss", "overfit", "lr", "gradcheck"}
    assert report["verdict"] in ("ok", "warn") and report["counts"]["fail"] == 0  # 30 steps: 1e-4 may warn
    assert (tmp_path / "all" / "lr.png").is_file()
    assert f"dlrun check all: {report['verdict']}" in result.stdout

    failed = dlrun_here("check", "initial-loss", "init=large_normal", f"check.out={tmp_path / 'bad'}", cwd=tmp_path)
    assert failed.returncode == 1 and "fail" in failed.stdout and "init is too large" in failed.stdout

    typo = dlrun_here("check", "overfit", "check.budgett=5", cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.startswith("dlrun check: error:") and typo.stderr.count("\n") == 1
    assert "budgett" in typo.stderr and not (tmp_path / "outputs").exists()
