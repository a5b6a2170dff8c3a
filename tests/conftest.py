"""Shared helpers: compose the real config tree and train in-process (no subprocess start-up)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from dlrun.paths import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def process_state_as_it_was():
    """What an in-process run changes for the rest of the process, put back after each test:
    torch's thread count (trainer.threads; a reference run with other threads sums in another
    order and differs in the 8th digit), and the root logger's handlers that a Hydra app's logging
    config adds (they write to streams pytest closes with the test, and to that test's train.log:
    a later test reading stderr would see "--- Logging error ---" tracebacks)."""
    import torch

    threads, before = torch.get_num_threads(), set(logging.getLogger().handlers)
    yield
    torch.set_num_threads(threads)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in before and type(h).__name__ != "LogCaptureHandler"]:
        root.removeHandler(handler)
        handler.close()


def make_config(*overrides: str):
    """The composed job config and Hydra's group choices, as `dlrun train` would see them."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def train(run_dir: Path, *overrides: str) -> dict:
    """Run dlrun's training in this process; return summary.json as written to disk."""
    from dlrun.train.run import train as run_training

    cfg, choices = make_config(*overrides)
    run_training(cfg, run_dir, choices=choices)
    return json.loads((run_dir / "summary.json").read_text())


def refused(run_dir: Path) -> bool:
    """A run refused before training: summary.json says failed (a sweep's report sees why), and no
    event file or checkpoint was written."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["status"] == "failed" and not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("events.*"))


def dlrun(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would, without a terminal."""
    return subprocess.run([sys.executable, "-m", "dlrun", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120", **(env or {})}, timeout=300)


def dlrun_here(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dlrun ARGS` in this process, as dlrun() gives it: without the 2-3 s a subprocess spends
    importing torch. For what needs no process of its own (signals, ranks and the entry point do)."""
    import contextlib
    import io

    from dlrun.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update({"COLUMNS": "120", **(env or {})})
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["dlrun", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def not_a_requeued_slurm_job(monkeypatch):
    """The suite may run inside a SLURM job: SLURM_RESTART_COUNT would turn the refusals the tests
    expect into resumes (a requeued job continues its run); only tests that say so are "requeued"."""
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)


@pytest.fixture
def npz(tmp_path):
    """Write a small npz in the Keras convention; returns a function(**arrays) -> path."""

    def write(name: str = "data.npz", **arrays: np.ndarray) -> Path:
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return write


def blobs(n: int, features: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs: a tiny classification set any model learns in a few steps."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    return (centers[y] + rng.normal(size=(n, features))).astype(np.float32), y
