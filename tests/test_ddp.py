"""Data-parallel training on the CPU with gloo: torchrun's 2 processes against one process.

Every run here says trainer.device=cpu: on a machine with one GPU, auto would put both ranks on
it, which dlrun refuses (2 processes, 1 GPU), and the suite must pass there too."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import dlrun, make_config
from dlrun.errors import UserError
from dlrun.losses import build_loss
from dlrun import checkpoint
from dlrun.train.distributed import World, rank_overrides, shared_run_dir
from dlrun.train.assembly import check_world

# mlp on digits, no dropout: 1294 training samples, so each epoch ends with a batch of 14 (7 per rank).
RUN = ["trainer.device=cpu", "model=mlp", "reg=none", "data.batch_size=64", "trainer.epochs=4", "trainer.seed=3", "logger.every=5"]
# One thread per rank, as torchrun sets; a free port per launch.
ENV = {"OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "dlrun", "train", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """A 2-process torchrun run in a fresh working directory, in Hydra's default run directory."""
    cwd = tmp_path_factory.mktemp("ddp")
    result = run(torchrun(*RUN), cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # one run directory for both ranks, not one each
    return runs[0]


def test_two_ranks_write_one_run_directory_and_train_as_one_process_does(ddp_run, tmp_path):
    assert [p.name for p in (ddp_run / "tb").iterdir()] == [next((ddp_run / "tb").iterdir()).name]  # one event file
    assert len(list(ddp_run.rglob("summary.json"))) == 1 and len(list(ddp_run.rglob("train.log"))) == 1
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["processes"] == 2 and summary["steps"] == 4 * 21
    # every sample once per epoch: the ranks' shards together are the whole set
    assert summary["samples_per_s"] > 0

    single = tmp_path / "single"
    result = dlrun("train", *RUN, f"hydra.run.dir={single}", cwd=tmp_path, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    ours, theirs = weights(ddp_run), weights(single)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)
    # the logged metrics are the global batch's (all-reduced), so they match the single run's too
    one = json.loads((single / "summary.json").read_text())
    assert summary["test"]["acc"] == pytest.approx(one["test"]["acc"], abs=1e-9)
    assert summary["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
    assert summary["best"]["epoch"] == one["best"]["epoch"]


def test_micro_batches_under_ddp_add_up_to_the_ranks_whole_shards(ddp_run, tmp_path):
    """trainer.micro_batch_size=10 cuts each rank's 32 (or 7) samples in 4 (or 1) pieces, all-reducing
    in the last one's backward only (no_sync before it): the same weights as the plain DDP run."""
    result = run(torchrun(*RUN, "trainer.micro_batch_size=10", f"hydra.run.dir={tmp_path / 'micro'}"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = weights(tmp_path / "micro"), weights(ddp_run)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)


def test_a_ddp_run_killed_after_epoch_1_resumes_with_torchrun_to_the_uninterrupted_result(ddp_run, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(torchrun(*RUN, f"hydra.run.dir={run_dir}", "trainer.epochs=4"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV},
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").is_file():  # epoch 1 is written
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun passes it to both ranks, which agree on a step to stop at
    _, err = proc.communicate(timeout=120)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", err[-2000:]
    assert 21 <= summary["steps"] < 4 * 21 and summary["steps"] % 5 == 0  # a step both ranks stopped at
    assert len(checkpoint.load(run_dir / "checkpoints" / "last.pt")["rng"]["ranks"]) == 2

    result = run(torchrun(*RUN, f"hydra.run.dir={run_dir}", "trainer.resume=auto"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    ours, theirs = weights(run_dir), weights(ddp_run)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_a_global_batch_the_processes_do_not_divide_fails_before_training_in_one_line(tmp_path):
    result = dlrun("train", "trainer.devices=2", "trainer.device=cpu", "data.batch_size=33", f"hydra.run.dir={tmp_path / 'r'}",
                   cwd=tmp_path, env=ENV)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["dlrun train: error: data.batch_size=33 is the global batch, split over 2 processes, and 2 "
                     "does not divide it; use a multiple of 2, e.g. data.batch_size=32"], result.stderr
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("events.*"))


# ------------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("classification", [True, False])
def test_the_shards_scaled_losses_average_to_the_whole_batchs_mean(classification):
    torch.manual_seed(0)
    out = torch.randn(13, 4)
    y = torch.randint(0, 4, (13,)) if classification else torch.randn(13, 4)
    loss = build_loss("auto", "classification" if classification else "regression")
    for ranks in (2, 3, 5):  # shards of 7/6, 5/4/4, 3/3/3/2/2 samples
        parts = [loss.shard_mean(o, t, 13, ranks) for o, t in zip(out.tensor_split(ranks), y.tensor_split(ranks))]
        torch.testing.assert_close(torch.stack(parts).mean(), loss(out, y))


class Pixels(torch.utils.data.Dataset):
    """A file-backed dataset's stand-in: sample i is a 1x1x1 uint8 image of value i."""

    def __len__(self):
        return 50

    def __getitem__(self, i):
        return torch.tensor([[[i]]], dtype=torch.uint8), i


@pytest.mark.parametrize("streamed", [False, True])
def test_the_ranks_shards_partition_every_batch_in_order(streamed):
    from dlrun.data.base import Split, StreamedSplit

    split = StreamedSplit(Pixels(), torch.arange(50), workers=0, sample_shape=(1, 1, 1)) if streamed else \
        Split(torch.arange(50).float().unsqueeze(1), torch.arange(50))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    whole = [y for _, y in split.batches(16, order)]
    shards = [[y for _, y in split.batches(16, order, shard=(rank, 3))] for rank in range(3)]
    for step, batch in enumerate(whole):  # 16, 16, 16, 2: the last one leaves rank 2 an empty shard
        parts = [shards[rank][step] for rank in range(3)]
        assert torch.equal(torch.cat(parts), batch)
        if streamed:  # the images follow their labels, the empty part included
            xs = [x for x, _ in split.batches(16, order, shard=(2, 3))]
            assert xs[step].shape == (len(parts[2]), 1, 1, 1) and torch.equal(xs[step].flatten().long(), parts[2])
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_under_torchrun_devices_batch_and_sync_bn_are_checked():
    cfg, _ = make_config("data.batch_size=64")
    check_world(cfg, World(rank=0, size=2))  # 64 = 2 x 32
    with pytest.raises(UserError, match="multiple of 3, e.g. data.batch_size=63"):
        check_world(cfg, World(rank=0, size=3))
    with pytest.raises(UserError, match="trainer.devices=4 but torchrun started 2 processes"):
        check_world(make_config("trainer.devices=4")[0], World(rank=1, size=2))
    with pytest.raises(UserError, match=r"trainer.devices=2 starts 2 processes from the command line"):
        check_world(make_config("trainer.devices=2")[0], World())
    with pytest.raises(UserError, match="sync_bn=true needs GPUs"):
        check_world(make_config("trainer.sync_bn=true", "trainer.device=cpu")[0], World(rank=0, size=2))


def test_one_run_directory_pattern_resolved_at_rank_0s_time():
    when = datetime.datetime(2026, 11, 30, 4, 5, 6, 789)
    assert shared_run_dir("outputs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}", when) == "outputs/2026-11-30/04-05-06-000789"
    assert shared_run_dir("runs/fixed", when) == "runs/fixed"


def test_a_sweep_under_torchrun_is_refused():
    with pytest.raises(UserError, match="a sweep .-m. is not launched under it"):
        rank_overrides(["-m", "optim.lr=0.1,0.01"], World(rank=0, size=2))


def test_sync_bn_turns_every_batchnorm_into_syncbatchnorm_under_ddp():
    from torch import nn

    from dlrun.train.assembly import build_parts

    threads = torch.get_num_threads()
    try:  # build_parts gives each of the ranks on a machine its share of the cores
        cfg, _ = make_config("model=resnet", "trainer.sync_bn=true", "trainer.device=cpu")
        parts = build_parts(cfg, World(rank=0, size=2, local_size=2))
        plain = build_parts(cfg)  # alone: BatchNorm stays
    finally:
        torch.set_num_threads(threads)
    norms = [m for m in parts.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in plain.model.modules())
    # the same parameters and initial values: the conversion keeps them
    for (name, a), (_, b) in zip(parts.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_more_ranks_on_a_machine_than_its_gpus_are_refused_in_one_line(monkeypatch):
    """What the H200 showed (2026-12-04): with one GPU, two ranks under trainer.device=auto both
    want it. dlrun refuses that before any data is read; on the CPU the ranks run with gloo."""
    from dlrun.train.assembly import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    two = World(rank=1, size=2, local_rank=1, local_size=2)
    with pytest.raises(UserError, match=r"^2 processes on this machine but 1 CUDA device\(s\) visible: start at most 1"):
        resolve_device("auto", two)
    assert resolve_device("cpu", two) == torch.device("cpu")
    assert resolve_device("auto", World(rank=1, size=2, local_rank=0, local_size=1)) == torch.device("cuda", 0)
