"""The `dlrun` command as a user runs it: a subprocess, no terminal."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import dlrun, dlrun_here, refused


def test_help_lists_commands_without_importing_torch_or_hydra():
    code = ("import sys; from dlrun.cli import main; main(['--help']); "
            "heavy = [m for m in ('torch', 'hydra', 'omegaconf', 'tensorboard') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: dlrun <command>" in result.stdout and "  train  " in result.stdout


def test_unknown_command_is_one_line_and_exit_2(tmp_path):
    result = dlrun("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dlrun: error: unknown command 'frobnicate'; choose one of: train, summary, eval, check, report, ensemble (dlrun --help lists them)"]


def test_train_is_a_hydra_app_cfg_job_overrides_and_additions(tmp_path):
    result = dlrun("train", "--cfg", "job", "model=lenet", "optim=sgd", "optim.lr=0.2", "+trainer.note=hello",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "_target_: dlrun.models.lenet.LeNet" in result.stdout
    assert "_target_: torch.optim.SGD" in result.stdout and "lr: 0.2" in result.stdout
    assert "note: hello" in result.stdout
    assert not (tmp_path / "outputs").exists()  # --cfg prints and runs nothing
    helped = dlrun("train", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "model: alexnet, cnn, googlenet, gru, lenet, lstm, mlp, resnet, resnet9, rnn, vgg" in helped.stdout


@pytest.mark.parametrize("override,message", [
    ("optim.nonexistent=1", "optim.nonexistent: unknown key for torch.optim.Adam; its keys: lr, betas, eps, weight_decay, foreach"),
    ("nogroup.key=1", "Could not override 'nogroup.key'; To append to your config use +nogroup.key=1"),
    ("model=resnet50", "Could not find 'model/resnet50'; Available options in 'model': alexnet, cnn, googlenet, gru, lenet, lstm, mlp, resnet, resnet9, rnn, vgg"),
    ("optim.lr=abc", "optim.lr='abc' must be a number > 0"),
])
def test_bad_overrides_are_one_line_and_exit_2(tmp_path, override, message):
    result = dlrun_here("train", override, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_data_and_resume_paths_are_one_line_and_touch_nothing(tmp_path):
    earlier = tmp_path / "outputs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text('{"kept": true}')
    x = np.zeros((10, 3), np.float32)
    np.savez(tmp_path / "no_x_train.npz", y_train=np.zeros(10, int), x_test=x, y_test=np.zeros(10, int))
    np.savez(tmp_path / "short_y.npz", x_train=x, y_train=np.zeros(9, int), x_test=x, y_test=np.zeros(10, int))
    cases = {
        ("data=arrays", f"data.path={tmp_path / 'missing.npz'}"): "no such file or directory",
        ("data=arrays", f"data.path={tmp_path / 'no_x_train.npz'}"): "has no x_train",
        ("data=arrays", f"data.path={tmp_path / 'short_y.npz'}", "data.val_fraction=0.2"): "x_train has 10 samples but y_train has 9",
        (f"trainer.resume={tmp_path / 'no_such_run'}",): "no_such_run': no such file or directory; trainer.resume takes",
    }
    for overrides, message in cases.items():
        result = dlrun_here("train", *overrides, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert (earlier / "summary.json").read_text() == '{"kept": true}'
    runs = [p.parent for p in (tmp_path / "outputs").rglob("summary.json") if p.parent != earlier]
    assert len(runs) == len(cases) and all(refused(run) for run in runs)
    assert not list((tmp_path / "outputs").rglob("*.pt"))


def test_hydra_full_error_still_gives_the_traceback(tmp_path):
    result = dlrun("train", "data=arrays", f"data.path={tmp_path / 'missing.npz'}", cwd=tmp_path,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "dlrun.errors.UserError: data.path=" in result.stderr


@pytest.mark.slow
def test_default_train_reaches_95_percent_and_prints_the_results_table(tmp_path):
    result = dlrun("train", "hydra.run.dir=outputs/custom", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (summary_path,) = (tmp_path / "outputs").rglob("summary.json")
    assert summary_path == tmp_path / "outputs/custom/summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "finished" and summary["test"]["acc"] >= 0.95
    assert f"test accuracy  │ {summary['test']['acc']:.4f}" in result.stdout
    run_dir = summary_path.parent
    assert str(run_dir) in result.stdout and "tensorboard --logdir" in result.stdout
    for name in (".hydra/config.yaml", "train.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert "epoch 30/30" in (run_dir / "train.log").read_text()
    assert summary["choices"]["model"] == "mlp" and summary["choices"]["data"] == "digits"


@pytest.mark.slow
def test_cn_quick_is_train_cut_to_20_steps_for_any_choice_of_groups():
    """configs/quick.yaml sets no group's own keys, so every data=, model=, ... still composes under it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dlrun.paths import CONFIG_DIR
    from dlrun.schema import validate

    changed = {"trainer.max_steps": 20, "logger.every": 5, "logger.diagnostics.every": 10}
    for overrides in ([], ["model=cnn", "optim=sgd", "sched=onecycle", "reg=[l2,dropout]"], ["experiment=resnet"]):
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            train, quick = (compose(name, overrides) for name in ("train", "quick"))
        validate(quick)
        assert {key: OmegaConf.select(quick, key) for key in changed} == changed
        for key, value in changed.items():
            OmegaConf.update(train, key, value)
        assert quick == train, overrides


def test_cn_quick_trains_20_steps_into_outputs_quick_and_eval_reads_its_checkpoint(tmp_path):
    result = dlrun_here("train", "-cn", "quick", "trainer.device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "outputs" / "quick").glob("*/*")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["test"]["acc"] > 0.5) == ("finished", 20, True), summary
    assert "config_name: quick" in (run / ".hydra" / "hydra.yaml").read_text()
    evaluated = dlrun_here("eval", f"ckpt={run / 'checkpoints' / 'last.pt'}", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test"]["acc"] == summary["test"]["acc"]


def test_multirun_puts_four_jobs_in_one_sweep_directory(tmp_path):
    result = dlrun_here("train", "-m", "optim=sgd,adam", "model=mlp,lenet", "trainer.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    combos = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        combos.add((summary["choices"]["optim"], summary["choices"]["model"]))
        (event_file,) = (job / "tb").iterdir()
        events = EventAccumulator(str(event_file))
        events.Reload()
        assert "val/acc" in events.Tags()["scalars"]
    assert combos == {("sgd", "mlp"), ("sgd", "lenet"), ("adam", "mlp"), ("adam", "lenet")}


@pytest.mark.slow
def test_tensorboard_serves_the_run_its_scalars_and_hparams(tmp_path):
    import shutil
    import socket
    import time
    import urllib.request

    from tests.conftest import train

    train(tmp_path / "outputs" / "run", "trainer.epochs=2", "model.hidden=[16]")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("tensorboard") or str(Path(sys.executable).parent / "tensorboard")
    server = subprocess.Popen([binary, "--logdir", str(tmp_path / "outputs"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def get(path, data=None):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    try:
        runs, deadline = [], time.time() + 60
        while time.time() < deadline and not runs:
            try:
                runs = get("/data/runs")
            except OSError:
                pass
            time.sleep(0.5)
        assert runs == ["run/tb"]
        values = get("/data/plugin/scalars/scalars?run=run/tb&tag=val/acc")
        assert [step for _, step, _ in values] == [21, 42]
        experiment = get("/data/plugin/hparams/experiment", data=b'{"experimentName": ""}')
        assert "optim.lr" in {info["name"] for info in experiment["hparamInfos"]}
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash")
def test_the_bash_completion_script_completes_groups_options_keys_and_commands(tmp_path):
    """What `eval "$(dlrun train --shell-completion install=bash)"` installs, in a real bash: it calls
    `dlrun -sc query=bash` back, which dlrun refused as an unknown command ('-sc')."""
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "dlrun").is_file(), "the dlrun entry point of this environment"
    script = tmp_path / "complete.sh"
    script.write_text('''
eval "$(dlrun train --shell-completion install=bash)"
for line in "dlrun train optim=ad" "dlrun train trainer.epo" "dlrun ev"; do
    COMP_LINE="$line"; COMP_POINT=${#COMP_LINE}; words=($COMP_LINE); COMP_CWORD=$(( ${#words[@]} - 1 ))
    COMPREPLY=(); hydra_bash_completion
    echo "${COMPREPLY[*]}"
done
complete -p dlrun
''')
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 4, result.stdout + result.stderr
    assert sorted(lines[0].split()) == ["optim=adagrad", "optim=adam", "optim=adamw"]
    assert lines[1].split() == ["trainer.epochs="]
    assert lines[2].split() == ["eval"]
    assert lines[3].endswith(" dlrun")  # the program is completed, not a second command named "train"
