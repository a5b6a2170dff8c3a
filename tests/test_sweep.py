"""sweep=random: log-uniform sampling, reproducible trials, failures isolated, resumable sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dlrun.errors import UserError
from dlrun.sweep.space import as_override, dimensions, parse, sample
from tests.conftest import make_config

SPACE = {"optim": {"lr": "loguniform(1e-5, 1e-1)", "momentum": "uniform(0.5, 0.99)"},
         "data": {"batch_size": "randint(32, 256)"}, "model": {"hidden": "choice([64], [128], [256,256])"}}


def test_learning_rates_are_log_uniform_and_uniform_dimensions_uniform():
    dims = dimensions(SPACE)
    trials = [sample(dims, seed=0, trial=i) for i in range(200)]
    log_lr = np.log10([t["optim.lr"] for t in trials])
    assert stats.kstest(log_lr, stats.uniform(loc=-5, scale=4).cdf).pvalue > 0.01
    assert stats.kstest(np.array([t["optim.lr"] for t in trials]), stats.uniform(loc=1e-5, scale=0.1).cdf).pvalue < 1e-6
    momentum = [t["optim.momentum"] for t in trials]
    assert stats.kstest(momentum, stats.uniform(loc=0.5, scale=0.49).cdf).pvalue > 0.01
    sizes = [t["data.batch_size"] for t in trials]
    assert min(sizes) >= 32 and max(sizes) <= 256 and all(isinstance(s, int) for s in sizes)
    assert {tuple(t["model.hidden"]) for t in trials} == {(64,), (128,), (256, 256)}


def test_the_same_seed_draws_the_same_trials_whatever_ran_before():
    dims = dimensions(SPACE)
    assert sample(dims, 7, 5) == sample(dims, 7, 5)  # trial 5 alone, as a resumed sweep draws it
    assert [sample(dims, 7, i) for i in range(10)] == [sample(dims, 7, i) for i in range(10)]
    assert sample(dims, 7, 5) != sample(dims, 8, 5) and sample(dims, 7, 5) != sample(dims, 7, 6)


def test_overrides_and_bad_dimensions():
    assert as_override("optim.lr", 0.000123456789) == "++optim.lr=0.000123457"
    assert as_override("model.hidden", [256, 256]) == "++model.hidden=[256,256]"
    assert as_override("model.activation", "tanh") == "++model.activation=tanh"
    for text, message in [("loguniform(0, 1)", "loguniform needs a > 0"), ("uniform(1, 0)", "two numbers a < b"),
                          ("lognormal(1, 2)", "write a dimension as"), ("randint(1.5, 3)", "two integers"),
                          ("choice()", "at least one value")]:
        with pytest.raises(UserError, match=message):
            parse("optim.lr", text)


def sweep_cmd(sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "dlrun", "train", "-m", "sweep=random", f"hydra.sweep.dir={sweep_dir}",
            "trainer.device=cpu", "trainer.epochs=1", "model.hidden=[16]", "logger.diagnostics.every=0", *overrides]


def trials(sweep_dir: Path) -> list[dict]:
    return json.loads((sweep_dir / "sweep.json").read_text())["trials"]


@pytest.fixture(scope="module")
def sweep12(tmp_path_factory):
    """A 12-trial random sweep of the MLP on digits, 2 trials at a time."""
    tmp_path = tmp_path_factory.mktemp("sweep12")
    result = subprocess.run(sweep_cmd(tmp_path / "sw", "sweep.n_trials=12", "sweep.n_jobs=2"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp_path / "sw"


@pytest.mark.slow
def test_a_12_trial_sweep_with_2_parallel_jobs(sweep12):
    rows = trials(sweep12)
    assert [r["trial"] for r in rows] == list(range(12)) and {r["status"] for r in rows} == {"finished"}
    for r in rows:
        summary = json.loads((Path(r["dir"]) / "summary.json").read_text())
        lr = float(next(o for o in r["overrides"] if o.startswith("++optim.lr=")).split("=")[1])
        assert summary["hparams"]["optim.lr"] == pytest.approx(lr)  # the trial ran what was drawn
        assert summary["best"]["value"] == r["value"]


@pytest.mark.slow
def test_a_trial_that_raises_and_one_that_diverges_fail_alone(tmp_path):
    space = "sweep.space.optim.lr=choice(0.01,-1,1e6)"  # -1: refused; 1e6 with SGD: nan
    seed = next(s for s in range(100) if sorted(sample(dimensions({"optim": {"lr": "choice(0.01,-1,1e6)"}}), s, i)
                                                 ["optim.lr"] for i in range(4)) == [-1, 0.01, 0.01, 1e6])
    result = subprocess.run(sweep_cmd(tmp_path / "sw", "optim=sgd", space, "sweep.n_trials=4", f"sweep.seed={seed}"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]  # some trials failed (2 would be a mistake)
    assert f"2 of 4 trials failed; see {tmp_path / 'sw' / 'sweep.json'}" in result.stderr
    rows = {next(o for o in r["overrides"] if o.startswith("++optim.lr=")): r for r in trials(tmp_path / "sw")}
    assert rows["++optim.lr=-1"]["status"] == "failed" and "optim.lr=-1 must be a number > 0" in rows["++optim.lr=-1"]["error"]
    assert rows["++optim.lr=1e+06"]["status"] == "failed" and "training diverged" in rows["++optim.lr=1e+06"]["error"]
    assert rows["++optim.lr=0.01"]["status"] == "finished"


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    sweep_dir = tmp_path / "sw"
    cmd = sweep_cmd(sweep_dir, "sweep.n_trials=5")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (sweep_dir / "1" / "summary.json").is_file() or \
            json.loads((sweep_dir / "1" / "summary.json").read_text())["status"] != "finished":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, launcher workers too
    proc.wait(timeout=60)
    done = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")
            if json.loads(p.read_text())["status"] == "finished"}
    assert {"0", "1"} <= set(done) and len(done) < 5
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(done)} of 5 trials in {sweep_dir} have ended; running the other {5 - len(done)}" in result.stdout + result.stderr
    rows = trials(sweep_dir)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"finished"}
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3", "4"]
    assert {name: (sweep_dir / name / "summary.json").stat().st_mtime_ns for name in done} == done  # not re-run


@pytest.mark.slow
def test_report_lists_the_trials_best_first_and_plots_them(sweep12, capsys):
    from dlrun.sweep.report import main as report_main

    report_main([str(sweep12), "--json"])
    report = json.loads(capsys.readouterr().out)
    values = [t["value"] for t in report["trials"]]
    assert len(values) == 12 and values == sorted(values, reverse=True)  # val/acc: the highest first
    best = report["trials"][0]
    assert report["best_command"].startswith("dlrun train trainer.device=cpu trainer.epochs=1")
    assert f"optim.lr={best['overrides'][-2].split('=')[1]}" in report["best_command"]
    lo, hi = report["suggested"]["optim.lr"]  # around the top 3 trials' learning rates
    top_lrs = [t["values"]["optim.lr"] for t in report["trials"][:3]]
    assert lo <= min(top_lrs) and hi >= max(top_lrs) and 1e-5 <= lo < hi <= 0.2
    assert not (sweep12 / "report").exists()  # --json writes nothing
    report_main([str(sweep12)])
    out = capsys.readouterr().out
    assert "dlrun report:" in out and "best: trial" in out and "'sweep.space.optim.lr=loguniform(" in out
    assert sorted(p.name for p in (sweep12 / "report").glob("*.png")) == ["optim.lr.png", "optim.weight_decay.png"]


@pytest.mark.slow
def test_ensemble_averages_the_members_softmax(sweep12):
    import torch

    from dlrun.evaluate import rebuild
    from dlrun.sweep.ensemble import ensemble

    result = ensemble([sweep12], top=3)
    members = [Path(m["dir"]) for m in result["members"]]
    assert len(members) == 3
    probs = []
    for run_dir in members:  # each member's softmax on the test split, computed here on its own
        parts, _, _ = rebuild(str(run_dir))
        parts.model.eval()
        with torch.no_grad():
            probs.append(torch.softmax(parts.model(parts.data.batch("test", slice(None))[0]), dim=1))
        summary = json.loads((run_dir / "summary.json").read_text())
        member = next(m for m in result["members"] if m["dir"] == str(run_dir))
        assert member["acc"] == pytest.approx(summary["test"]["acc"], abs=1e-9)  # the run's own test accuracy
    mean = torch.stack(probs).mean(0)
    assert torch.allclose(result["probabilities"], mean, atol=1e-6)
    y = parts.data.splits["test"].y
    assert result["ensemble"]["acc"] == pytest.approx((mean.argmax(1) == y).float().mean().item())


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_a_2_trial_sweep(tmp_path):
    result = subprocess.run(sweep_cmd(tmp_path / "sw", "sweep.n_trials=2", "hydra/launcher=submitit_local"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["status"] for r in trials(tmp_path / "sw")] == ["finished", "finished"]
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr


def test_the_shipped_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from dlrun.paths import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        full = compose("train", overrides=["sweep=random", "hydra/launcher=slurm", "sweep.n_jobs=4"],
                       return_hydra_config=True)
    assert full.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (full.hydra.launcher.array_parallelism, full.hydra.launcher.gpus_per_node) == (4, 1)


@pytest.mark.parametrize("launcher, threads", [("parallel", True), ("submitit_local", True), ("slurm", False)])
def test_parallel_trials_divide_this_machines_cores_but_not_a_clusters(launcher, threads, monkeypatch):
    from hydra import compose, initialize_config_dir

    from dlrun.paths import CONFIG_DIR
    from dlrun.sweep.sweeper import SearchSweeper

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        full = compose("train", overrides=["sweep=random", f"hydra/launcher={launcher}", "sweep.n_jobs=4",
                                           "sweep.n_trials=2"], return_hydra_config=True)
    sweeper = SearchSweeper()
    sweeper.config = full
    for trial in sweeper.trials(["sweep=random"]):
        assert ("trainer.threads=2" in trial) == threads and "trainer.resume=auto" in trial


def fake_sweep(folder: Path, n: int) -> Path:
    """A sweep directory as dlrun train -m sweep=random leaves it, without training: n trials over
    two log-uniform dimensions, trial i scoring i / n."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "multirun.yaml").write_text("sweep:\n  space:\n    optim:\n      lr: loguniform(1e-5,1e-1)\n"
                                          "      weight_decay: loguniform(1e-6,1e-2)\n")
    for i in range(n):
        (folder / str(i) / ".hydra").mkdir(parents=True)
        (folder / str(i) / ".hydra" / "overrides.yaml").write_text(
            f"- ++optim.lr={1e-3 * (i + 1)}\n- ++optim.weight_decay={1e-5 * (i + 1)}\n")
        (folder / str(i) / "summary.json").write_text(json.dumps(
            {"status": "finished", "best": {"monitor": "val/acc", "value": i / n}, "epochs": 1, "wall_s": 1.0}))
    return folder


def test_reports_suggestions_come_in_the_tables_order_in_every_process(tmp_path):
    """Not in a set's order, which Python's string hashing changes from one process to the next."""
    folder = fake_sweep(tmp_path / "sw", 6)
    for seed in range(4):
        out = subprocess.run([sys.executable, "-m", "dlrun", "report", str(folder), "--json"], capture_output=True,
                             text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True).stdout
        assert list(json.loads(out)["suggested"]) == ["optim.lr", "optim.weight_decay"], seed


def test_report_into_a_pipe_its_reader_closed_ends_quietly(tmp_path):
    """`dlrun report DIR --json | head -1`: no BrokenPipeError traceback, exit 1 (as rich's tables)."""
    fake_sweep(tmp_path, 400)  # enough trials that the JSON outgrows a pipe's buffer
    for args in (["--json"], []):
        reader = subprocess.Popen([sys.executable, "-m", "dlrun", "report", str(tmp_path), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        reader.stdout.readline()
        reader.stdout.close()  # as head does after its line
        err = reader.stderr.read().decode()
        assert reader.wait(timeout=60) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_report_and_ensemble_mistakes_are_one_line(tmp_path, capsys):
    from dlrun.cli import main as cli_main

    (tmp_path / "empty").mkdir()
    cases = [(["report", str(tmp_path / "nope")], "nope: no such directory; pass a sweep directory"),
             (["report", str(tmp_path / "empty")], "no trial folders (0/, 1/, ...)"),
             (["report", str(tmp_path / "empty"), "--top", "x"], "--top needs a whole number >= 1, got 'x'; e.g. --top 5"),
             (["ensemble", str(tmp_path / "empty")], "no trial folders"),
             (["ensemble", str(tmp_path / "nope"), "--top", "2"], "no such directory")]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            cli_main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err


def test_a_new_dimension_on_the_command_line_needs_no_plus_and_is_kept_as_text():
    from dlrun.cli import quote_dimension
    from tests.conftest import make_config

    args = ["sweep.space.optim.lr=loguniform(1e-4,1e-2)", "sweep.space.model.hidden=choice([64],[128],[256,256])"]
    assert [quote_dimension(a) for a in args] == ["++sweep.space.optim.lr='loguniform(1e-4,1e-2)'",
                                                  "++sweep.space.model.hidden='choice([64],[128],[256,256])'"]
    assert quote_dimension("optim.lr=0.1") == "optim.lr=0.1"
    cfg, _ = make_config("sweep=random", *map(quote_dimension, args))
    assert cfg.sweep.space.model.hidden == "choice([64],[128],[256,256])"
    from omegaconf import OmegaConf

    assert [d.key for d in dimensions(OmegaConf.to_container(cfg.sweep.space))] == ["optim.lr", "optim.weight_decay", "model.hidden"]


def test_a_value_fixed_on_the_command_line_for_a_sampled_key_is_refused_before_any_trial(tmp_path, monkeypatch, capsys):
    """optim.lr=0.1 beside a space that samples optim.lr would be replaced by the draws; the fix
    the line names, dropping the dimension, runs with the fixed value."""
    from dlrun.cli import main as cli_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "-m", "sweep=random", "sweep.n_trials=2", "optim.lr=0.1", f"hydra.sweep.dir={tmp_path / 'a'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == ["dlrun train: error: optim.lr=0.1: sweep.space also samples optim.lr; drop "
                                             "optim.lr=0.1 to search it, or drop the dimension with "
                                             "'~sweep.space.optim.lr' to fix it"]
    assert not (tmp_path / "a").exists()
    cfg, _ = make_config("sweep=random", "optim.lr=0.1", "~sweep.space.optim.lr")
    assert list(cfg.sweep.space.optim) == ["weight_decay"] and cfg.optim.lr == 0.1
