"""`dlrun eval ckpt=PATH`: a checkpoint's test and val metrics, exactly those train recorded; nothing written."""

import json
import subprocess
import sys

import pytest
import torch
from hydra.errors import HydraException

from dlrun.cli import one_line
from dlrun.errors import UserError
from dlrun.evaluate import evaluate, main
from dlrun import options
from tests.conftest import train, dlrun_here

# A small MLP (one hidden layer of 32) for 2 epochs on the CPU: a real run in about 2 s.
OVERRIDES = ("trainer.epochs=2", "trainer.device=cpu", "model.hidden=[32]")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run directory, its summary.json), trained once for the module."""
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    return run_dir, train(run_dir, *OVERRIDES)


def files(folder):
    """Every file under folder with its size and mtime: to see that nothing was written."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_run_directory_reproduces_summary_test_metrics_exactly(run, capsys):
    run_dir, summary = run
    before = files(run_dir)
    main([f"ckpt={run_dir}", "--json"])
    result = json.loads(capsys.readouterr().out)  # --json: stdout is the JSON and nothing else
    assert result["checkpoint"] == str(run_dir / "checkpoints" / "best.pt")  # a run directory means best.pt
    assert result["test"] == summary["test"]  # to the last digit: the same split, weights and batches
    assert result["val"] == summary["best"]["val"]  # best.pt's epoch's validation metrics
    assert result["epoch"] == summary["best"]["epoch"]
    assert result["samples"] == {"test": 359, "val": 144}
    assert files(run_dir) == before


def test_last_pt_of_an_ema_run_also_scores_the_averaged_weights(tmp_path, capsys):
    summary = train(tmp_path / "ema", *OVERRIDES, "trainer.ema_decay=0.9")
    result = evaluate(str(tmp_path / "ema" / "checkpoints" / "last.pt"))
    assert result["test_ema"] == summary["test_ema"]  # the run's final averaged weights, to the last digit
    assert result["test_ema"] != result["test"]  # not the raw weights again
    main([f"ckpt={tmp_path / 'ema' / 'checkpoints' / 'last.pt'}"])
    row = f"│ test (EMA weights) │     359 │ {summary['test_ema']['loss']:.4f} │   {summary['test_ema']['acc']:.4f} │"
    assert row in capsys.readouterr().out


def test_cli_prints_the_table_and_writes_nothing(run, tmp_path):
    run_dir, summary = run
    before = files(run_dir)
    result = dlrun_here("eval", f"ckpt={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data digits: 1294/144/359")
    best = run_dir / "checkpoints" / "best.pt"
    assert lines[1] == f"dlrun eval: MLP from {best}, epoch {summary['best']['epoch']}, on cpu"
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in lines if line.startswith("│")}
    test, val = summary["test"], summary["best"]["val"]
    assert rows["test"] == ["359", f"{test['loss']:.4f}", f"{test['acc']:.4f}"]
    assert rows["val"] == ["144", f"{val['loss']:.4f}", f"{val['acc']:.4f}"]
    assert list(tmp_path.iterdir()) == [] and files(run_dir) == before


def test_last_pt_and_an_eval_batch_size_override_give_the_same_numbers(run):
    run_dir, summary = run
    # best.pt is epoch 2 here, the last one, so last.pt holds the same weights.
    assert summary["best"]["epoch"] == summary["epochs"] == 2
    last = evaluate(str(run_dir / "checkpoints" / "last.pt"))
    assert last["test"] == summary["test"] and last["epoch"] == 2
    # Another batching sums the same per-sample losses in another order: equal to float rounding.
    small = evaluate(str(run_dir), ["data.eval_batch_size=7"])
    assert small["test"]["acc"] == summary["test"]["acc"]
    assert small["test"]["loss"] == pytest.approx(summary["test"]["loss"], abs=1e-6)
    assert small["val"]["loss"] == pytest.approx(summary["best"]["val"]["loss"], abs=1e-6)


def test_a_plain_state_dict_needs_the_training_overrides(run, tmp_path):
    run_dir, summary = run
    plain = tmp_path / "plain.pt"
    torch.save(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"], plain)
    with pytest.raises(UserError, match=r"holds no config \(a plain state dict\); pass the overrides"):
        evaluate(str(plain))
    # With them the config `dlrun train` composes is rebuilt: the same split, the same numbers.
    result = evaluate(str(plain), list(OVERRIDES))
    assert result["test"] == summary["test"] and result["epoch"] is None


def test_missing_path_is_one_line_and_exit_2(tmp_path):
    result = dlrun_here("eval", "ckpt=outputs/nope", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "dlrun eval: error: ckpt: no checkpoint at 'outputs/nope'; pass a run directory, or a .pt file: "
        "its checkpoints/best.pt or last.pt"]
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"ckpt: no checkpoint at '.*best\.pt' or '.*last\.pt'"):
        evaluate(str(tmp_path))


def test_truncated_checkpoint_is_refused(run, tmp_path):
    run_dir, _ = run
    whole = (run_dir / "checkpoints" / "best.pt").read_bytes()
    cut = tmp_path / "best.pt"
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UserError, match=r"'.*best\.pt' is truncated or corrupt"):
        evaluate(str(cut))


def test_checkpoint_of_another_model_is_refused_with_the_keys(run):
    run_dir, _ = run
    with pytest.raises(UserError) as caught:
        evaluate(str(run_dir), ["model.hidden=[64]"])
    message = one_line(caught.value)
    assert "is for another model" in message and "1.weight (32, 64) vs (64, 64)" in message
    assert "use the model and data overrides the checkpoint was trained with" in message


def test_override_mistakes_are_refused(run):
    run_dir, _ = run
    with pytest.raises(HydraException) as caught:  # an unknown key, as `dlrun train` words it
        evaluate(str(run_dir), ["optim.nonexistent=1"])
    assert one_line(caught.value) == ("Could not override 'optim.nonexistent'; To append to your config use "
                                      "+optim.nonexistent=1; Key 'nonexistent' is not in struct")
    with pytest.raises(UserError, match="not composed from groups; change its values instead"):
        evaluate(str(run_dir), ["model=lenet"])  # the saved config has no groups to choose from
    with pytest.raises(UserError, match="evaluates one config; give one value"):
        evaluate(str(run_dir), ["data.eval_batch_size=7,8"])


def test_arguments_are_parsed_wherever_they_are():
    def parsed(*args):
        given = options.parse("eval", list(args))
        return given.ckpt, given.json, given.overrides

    assert parsed("trainer.device=cpu", "ckpt=a/b", "--json") == ("a/b", True, ["trainer.device=cpu"])
    assert parsed("ckpt=x.pt") == ("x.pt", False, [])
    assert parsed("ckpt=a", "~optim.lr", "ckpt=b", "+x=1") == ("b", False, ["~optim.lr", "+x=1"])  # the last one
    with pytest.raises(UserError, match="no checkpoint given; pass ckpt="):
        options.parse("eval", ["trainer.device=cpu"])
    with pytest.raises(UserError, match="ckpt= is empty"):
        options.parse("eval", ["ckpt=", "ckpt=x"])
    with pytest.raises(UserError, match="unknown option '-m'; dlrun eval takes --json, ckpt=PATH and Hydra overrides"):
        options.parse("eval", ["ckpt=x", "-m"])


def test_help_does_not_import_torch():
    code = ("import sys; from dlrun.cli import main; main(['eval', '--help']); "
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dlrun eval ckpt=PATH [--json] [hydra overrides]")
    assert "dlrun eval ckpt=outputs/" in result.stdout


@pytest.mark.parametrize("override", ["optim.lr=0.5", "+optim.fresh=1", "++optim.lr=0.25", "++trainer.new=x", "~optim.lr",
                                      "+model.extra={a: 1}", "optim.nonexistent=1", "+optim.lr=3", "~optim.missing"])
def test_overrides_on_a_saved_config_land_as_hydras_own_function_puts_them(override):
    """dlrun eval applies overrides to a checkpoint's config itself (Hydra's function is private):
    the same config, or the same error, as Hydra's."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dlrun.evaluate import apply_override

    def applied(apply) -> tuple[str, object]:
        cfg = OmegaConf.create({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "model": {"hidden": [8]}, "trainer": {}})
        OmegaConf.set_struct(cfg, True)
        try:
            apply(OverridesParser.create().parse_overrides([override]), cfg)
        except Exception as exc:
            return type(exc).__name__, one_line(exc)
        return "ok", OmegaConf.to_container(cfg)

    ours = applied(lambda parsed, cfg: [apply_override(o, cfg) for o in parsed])
    assert ours == applied(ConfigLoaderImpl._apply_overrides_to_config)


def test_a_run_that_named_a_relative_data_path_evaluates_from_another_directory(tmp_path):
    """The saved config holds data.path made absolute: eval from elsewhere reads the same file and
    gives summary.json's test numbers."""
    import numpy as np

    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "here" / "blobs.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    trained = dlrun_here("train", "data=arrays", "data.path=blobs.npz", "trainer.epochs=1", "model.hidden=[8]",
                         f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path / "here")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    result = dlrun_here("eval", f"ckpt={tmp_path / 'run'}", "--json", cwd=tmp_path / "elsewhere")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test"] == summary["test"]
