"""The renovation's golden file: 14 small CPU runs that span the zoo and the recipe, and what each
ends with (summary.json's numbers and a digest of the final weights), recorded before a refactor
and reproduced to the bit after it (tests/test_golden.py).

    python -m tests.golden           # record tests/golden.json (only when the numbers are meant to change)

Every run uses one thread: a sum split over more threads adds in another order, and the recording
must not depend on the machine's core count. The DDP run is two real processes (gloo).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden.json")

COMMON = ["trainer.device=cpu", "trainer.threads=1", "trainer.epochs=2", "logger.hparams=false"]
# name -> overrides. Together: mlp, cnn, lenet, resnet, lstm, gru; sgd, momentum, nesterov, adam, adamw,
# rmsprop, adagrad, lbfgs; every schedule; every regularizer; EMA; micro-batches; mixup; a stop and
# its resume; DDP.
RUNS: dict[str, list[str]] = {
    "mlp-sgd-constant": ["optim=sgd", "sched=constant", "optim.lr=0.1"],
    "mlp-nesterov-step-l2": ["optim=nesterov", "sched=step", "reg=l2", "init=he_normal"],
    "mlp-adagrad-plateau-early_stopping": ["optim=adagrad", "sched=plateau", "reg=early_stopping", "trainer.epochs=3"],
    "mlp-lbfgs-elastic_net": ["optim=lbfgs", "sched=constant", "reg=elastic_net", "data.batch_size=256"],
    "mlp-adam-linear-weight_decay-ema": ["sched=linear", "reg=weight_decay", "trainer.ema_decay=0.9"],
    "mlp-adamw-inverse_sqrt-micro": ["optim=adamw", "sched=inverse_sqrt", "trainer.micro_batch_size=24"],
    "cnn-adam-cosine-dropout": ["model=cnn", "reg=dropout"],
    "lenet-momentum-multistep-maxnorm": ["model=lenet", "optim=momentum", "sched=multistep", "reg=maxnorm"],
    "lenet-sgd-inverse_time-mixup": ["model=lenet", "optim=sgd", "sched=inverse_time", "augment=mixup"],
    "resnet-adamw-onecycle-label_smoothing": ["model=resnet", "optim=adamw", "sched=onecycle",
                                              "reg=label_smoothing", "trainer.max_steps=12"],
    "lstm-rmsprop-exponential-l1": ["model=lstm", "data=digits_rows", "optim=rmsprop", "sched=exponential",
                                    "reg=l1", "trainer.max_steps=15"],
    "gru-adam-cosine": ["model=gru", "data=digits_rows", "trainer.max_steps=10"],
}
STOP_RESUME = ["model=mlp", "sched=cosine", "trainer.epochs=3"]  # stopped after epoch 1, resumed to 3
DDP = ["model=mlp", "data.batch_size=64"]
NAMES = [*RUNS, "mlp-stop-resume", "mlp-ddp-2-processes"]

NOT_NUMBERS = {"wall_s", "samples_per_s"}  # times; the rest of summary.json's numbers are the run's


def numbers(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """summary.json's numbers (and statuses) as flat key -> value, times left out."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if key in NOT_NUMBERS or key in ("hparams", "choices", "dlrun_version", "resumed"):
            continue
        if isinstance(value, dict):
            out.update(numbers(value, name + "."))
        elif isinstance(value, (int, float, str)) or value is None:
            out[name] = value
    return out


def weights_digest(run_dir: Path) -> dict[str, str]:
    """sha256 of the final weights (and the EMA's), each tensor's name, dtype, shape and bytes in order."""
    from dlrun import checkpoint

    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    out = {}
    for part in ("model", "ema"):
        tensors = state.get(part)
        if not isinstance(tensors, dict):
            continue
        if "module" in tensors and isinstance(tensors["module"], dict):  # an EMA's own state_dict
            tensors = tensors["module"]
        digest = hashlib.sha256()
        for name, tensor in tensors.items():
            if isinstance(tensor, torch.Tensor):
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        out[part] = digest.hexdigest()
    return out


def run(name: str, base: Path) -> dict[str, Any]:
    """Train golden run `name` under `base`; its numbers and weights' digest."""
    from tests.conftest import train

    run_dir = base / name
    if name == "mlp-stop-resume":
        train(run_dir, *COMMON, *STOP_RESUME, "trainer.stop_at_epoch=1")
        summary = train(run_dir, *COMMON, *STOP_RESUME, "trainer.resume=auto")
    elif name == "mlp-ddp-2-processes":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
        result = subprocess.run([sys.executable, "-m", "dlrun", "train", *COMMON, *DDP, "trainer.devices=2",
                                 f"hydra.run.dir={run_dir}"], cwd=base, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        summary = train(run_dir, *COMMON, *RUNS[name])
    return {"numbers": numbers(summary), "weights": weights_digest(run_dir)}


def machine() -> dict[str, str]:
    """What the bits depend on besides dlrun: torch's build and the CPU kernels it picks."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run(name, Path(tmp)) for name in NAMES}
    GOLDEN.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN.relative_to(ROOT)}: {len(runs)} runs")
