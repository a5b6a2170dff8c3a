"""How much does dlrun's loop cost over a plain hand-written PyTorch loop?

Trains the same MLP on the same in-memory data, in one process, with dlrun's real training
path (`dlrun.train.run.train`, default logging: TensorBoard scalars, update ratios, per-epoch
validation and checkpoints) and with a plain loop (shuffle, forward, backward, step, and the
same per-epoch validation). Each round runs the two back to back; the ratio reported is the
median over rounds of (dlrun steps/s) / (plain steps/s), which cancels the slow drifts of a
shared machine; the ratio of the best round of each is printed beside it. Both by the wall
clock and by CPU time (process_time: what a busy neighbour steals from a shared VM does not
count). 1.0 means no overhead.

    python scripts/bench_overhead.py [--samples 16384] [--epochs 2] [--repeats 15] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import dlrun.train.loop as loop
from dlrun.data.arrays import ArrayData
from dlrun.models.mlp import MLP
from dlrun.paths import CONFIG_DIR
from dlrun.train.run import train


def make_data(path: Path, samples: int, features: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, size=samples + 2048)
    x = (centers[y] + rng.normal(scale=2.0, size=(len(y), features))).astype(np.float32)
    np.savez(path, x_train=x[:samples], y_train=y[:samples], x_test=x[samples:], y_test=y[samples:])


class Clock:
    """Wall and CPU seconds (CPU time leaves out what a busy neighbour on a shared machine steals)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def plain_loop(data: ArrayData, hidden: list[int], epochs: int, lr: float, seed: int) -> tuple[int, tuple[float, float]]:
    """What a user writes by hand: the yardstick."""
    torch.manual_seed(seed)
    model = MLP(data.input_shape, data.num_outputs, hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    x, y, bs = data.train.x, data.train.y, data.batch_size
    steps = 0
    clock = Clock()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), bs):
            index = order[i:i + bs]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        scheduler.step()
        model.eval()
        with torch.inference_mode():
            val_loss = F.cross_entropy(model(data.val.x), data.val.y).item()
    assert math.isfinite(val_loss)
    return steps, clock.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="extra dlrun overrides, e.g. logger.every=10")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    fit_seconds: list[tuple[float, float]] = []
    original_fit = loop.Trainer.fit

    def timed_fit(self):  # time exactly the training loop, not the set-up around it
        clock = Clock()
        try:
            return original_fit(self)
        finally:
            fit_seconds.append(clock.read())

    loop.Trainer.fit = timed_fit
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.npz"
        make_data(path, args.samples, args.features, 10)
        overrides = ["data=arrays", f"data.path={path}", f"trainer.epochs={args.epochs}", "trainer.device=cpu",
                     "optim=adam", "sched=cosine", *args.overrides]
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        data = ArrayData(str(path), batch_size=cfg.data.batch_size)
        hidden = list(cfg.model.hidden)
        plain, ours = [], []
        for repeat in range(args.repeats + 1):  # the first round warms both up and is not counted
            # Alternate which goes first, so neither always gets the warmer or quieter slot.
            if repeat % 2:
                steps, seconds = plain_loop(data, hidden, args.epochs, cfg.optim.lr, cfg.trainer.seed)
            summary = train(cfg, Path(tmp) / f"run{repeat}")
            if not repeat % 2:
                steps, seconds = plain_loop(data, hidden, args.epochs, cfg.optim.lr, cfg.trainer.seed)
            assert summary["steps"] == steps, (summary["steps"], steps)
            if repeat:
                plain.append([steps / t for t in seconds])
                ours.append([steps / t for t in fit_seconds[-1]])

    result = {
        "model": f"MLP {args.features}-{'-'.join(map(str, hidden))}-10", "batch_size": data.batch_size,
        "steps": steps, "threads": torch.get_num_threads(), "torch": torch.__version__, "overrides": args.overrides,
    }
    print(f"{result['model']}, batch {data.batch_size}, {steps} steps, {result['threads']} threads, torch {torch.__version__}")
    for i, clock in enumerate(("wall", "cpu")):
        p, o = [r[i] for r in plain], [r[i] for r in ours]
        paired = sorted(b / a for a, b in zip(p, o))
        result[clock] = {"plain_steps_per_s": max(p), "dlrun_steps_per_s": max(o),
                         "ratio": paired[len(paired) // 2], "ratio_best_of_each": max(o) / max(p)}
        print(f"{clock:>4} clock: plain {max(p):7.1f} steps/s, dlrun {max(o):7.1f} steps/s (best rounds); "
              f"ratio dlrun/plain {result[clock]['ratio']:.3f} (median of {len(paired)} paired rounds; "
              f"best of each {result[clock]['ratio_best_of_each']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
