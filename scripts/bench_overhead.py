"""How much does dlrun's loop cost over a plain hand-written PyTorch loop?

Trains the same MLP on the same in-memory data, in one process, two ways at once: dlrun's real
training path (`dlrun.train.run.train` with default logging: TensorBoard scalars, update ratios,
per-epoch validation and checkpoints) and a plain loop (forward, loss, backward, step, and a
validation pass per epoch) with its own copy of the model and optimizer.

The two are interleaved step by step: beside each of dlrun's steps the plain loop takes one
step on its own next batch (its own shuffle and gather), before dlrun's on even steps and after
it on odd ones. On a shared machine whose speed drifts
by 2x within seconds, runs measured one after the other cannot resolve a few percent; steps
measured microseconds apart see the same machine. Two ratios dlrun / plain (1.0: no overhead):

- step path: the time from one training step to the next, within an epoch (loop, batch gather,
  forward, backward, update, and dlrun's per-step logging: scalars, update ratios, grad norm),
  against the plain loop's gather and step. This is what logging costs.
- whole loop: dlrun's whole `fit` (the per-epoch validation, checkpoints and best-weights copy
  too) against the plain loop's steps and per-epoch validation.

Prints both per run and their medians.

Diagnostics (logger.diagnostics: histograms, per-layer statistics every `every` steps): each
repeat trains twice, once as configured (diagnostics on at the default frequency unless an
override says otherwise) and once with logger.diagnostics.every=0, both interleaved with the plain
loop. The on/off step-rate ratio is the ratio of their dlrun/plain ratios (medians): the plain loop
beside each is the yardstick that takes the machine's drift out. The lines above it are the
diagnostics-on runs, as before.

--regime small is the second regime: a small MLP (40-100-100-10, 15,210 parameters) on (4000, 40)
arrays, Adam lr 1e-2, batch 100, constant lr, 6,000 steps (167 epochs of 36 steps) on 2 threads,
run whole (validation every epoch, default logging and checkpoints): small models with short
epochs are where dlrun's bookkeeping weighs most, and where people run many experiments.

--calibrate is the A/A run: dlrun's training step is replaced by a second copy of the plain step,
inside dlrun's loop and through the same harness, on the batch dlrun's loop gathered. Its ratio is what the loop around the step and
the measurement itself cost; the A/B ratio minus it is what dlrun's step, logging and
checkpoints add.

    python scripts/bench_overhead.py [--samples 16384] [--epochs 2] [--repeats 5] [--calibrate] [overrides ...]
    python scripts/bench_overhead.py --regime small [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import dlrun.train.loop as loop
from dlrun.models.mlp import MLP
from dlrun.paths import CONFIG_DIR
from dlrun.train.run import train


def make_data(path: Path, samples: int, features: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, size=samples + 2048)
    x = (centers[y] + rng.normal(scale=2.0, size=(len(y), features))).astype(np.float32)
    np.savez(path, x_train=x[:samples], y_train=y[:samples], x_test=x[samples:], y_test=y[samples:])


class PlainLoop:
    """What a user writes by hand, driven one step at a time beside dlrun's loop."""

    def __init__(self, trainer: loop.Trainer, hidden: list[int], lr: float, epochs: int, cosine: bool = True):
        data = trainer.data
        self.model = MLP(data.input_shape, data.num_outputs, hidden=hidden)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs) if cosine else None
        self.data, self.train, self.val, self.batch_size = data, data.train, data.val, data.batch_size
        self.generator = torch.Generator().manual_seed(1)
        self.epoch = 0
        self.seconds = 0.0       # everything it did: steps and per-epoch validation
        self.step_seconds = 0.0  # its steps alone

    def step(self, epoch: int, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """One step on its own next batch (its own shuffle and gather, as a hand-written loop has),
        or on `batch` (the A/A twin: the batch dlrun's loop gathered)."""
        start = time.perf_counter()
        if epoch != self.epoch:  # a new epoch: validate the last one, step the schedule, reshuffle
            if self.epoch:
                self.end_epoch()
            self.epoch, self.position = epoch, 0
            self.order = torch.randperm(len(self.train), generator=self.generator)
        step_start = time.perf_counter()
        if batch is None:
            index = self.order[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            batch = self.data.batch(self.train, index)  # gather and standardise, as any loop must
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        end = time.perf_counter()
        self.seconds += end - start
        self.step_seconds += end - step_start

    def end_epoch(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            F.cross_entropy(self.model(self.data.prepare(self.val.x)), self.val.y).item()
        if self.scheduler is not None:
            self.scheduler.step()
        self.model.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--calibrate", action="store_true", help="A/A: dlrun's step replaced by a plain step")
    parser.add_argument("--regime", choices=("default", "small"), default="default",
                        help="small: the 15,210-parameter MLP, 36-step epochs, 6,000 steps, 2 threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="extra dlrun overrides, e.g. logger.every=10")
    args = parser.parse_args()
    small = args.regime == "small"
    if small:
        args.samples, args.features, args.threads = 4000, 40, args.threads or 2  # 3600 train after val takes 10%
    if args.threads:
        torch.set_num_threads(args.threads)

    runs: list[dict[str, float]] = []
    label = {"diagnostics": "on"}  # which config the next train() call runs
    original_fit, original_step = loop.Trainer.fit, loop.Trainer.train_step

    def fit(self):
        self.plain = PlainLoop(self, hidden, lr, self.epochs, cosine=not small)
        self.step_seconds, self.last_step_end, self.last_step_epoch = 0.0, None, None
        start = time.perf_counter()
        try:
            return original_fit(self)
        finally:
            dlrun_seconds = time.perf_counter() - start - self.plain.seconds
            last = time.perf_counter()
            self.plain.end_epoch()  # the plain loop's last validation, outside dlrun's time
            plain_seconds = self.plain.seconds + time.perf_counter() - last
            runs.append({"diagnostics": label["diagnostics"], "steps": self.step, "plain": self.step / plain_seconds, "dlrun": self.step / dlrun_seconds,
                         "plain_step": self.step / self.plain.step_seconds, "dlrun_step": self.step / self.step_seconds})

    def train_step(self, x, y, mix=None):
        # dlrun's step path: from the end of its last step to here (the loop, the batch gather)...
        now = time.perf_counter()
        if self.last_step_epoch == self.epoch:
            self.step_seconds += now - self.last_step_end
        # The two sides take turns going first: the one that runs second finds the caches as the
        # other left them, which alone moved the A/A ratio by 5% when the plain loop always led.
        plain_first = self.step % 2 == 0
        if plain_first:
            self.plain.step(self.epoch)
        start = time.perf_counter()
        step_with_logging(self, x, y, mix)
        # ...plus the step itself. An epoch's first step leaves out the epoch's end before it.
        end = time.perf_counter()
        self.step_seconds += end - start
        if not plain_first:
            self.plain.step(self.epoch)
        self.last_step_end, self.last_step_epoch = time.perf_counter(), self.epoch

    def step_with_logging(self, x, y, mix=None):
        if args.calibrate:  # A/A: the same plain step again, with its own model, in dlrun's place
            if not hasattr(self, "twin"):
                self.twin = PlainLoop(self, hidden, lr, self.epochs, cosine=not small)
            self.twin.step(self.epoch, (x, y))  # dlrun's batch: its gather is the loop's, not a second one
            self.step += 1
        else:
            original_step(self, x, y, mix)

    loop.Trainer.fit, loop.Trainer.train_step = fit, train_step
    if args.calibrate:
        loop.Trainer._flush = lambda self, grad_norm=None: None  # nothing of dlrun's is logged
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.npz"
        make_data(path, args.samples, args.features, 10)
        overrides = ["data=arrays", f"data.path={path}", f"trainer.epochs={args.epochs}", "trainer.device=cpu",
                     "optim=adam", "sched=cosine", *args.overrides]
        if small:
            overrides = ["data=arrays", f"data.path={path}", "trainer.device=cpu", "model.hidden=[100,100]",
                         "optim=adam", "optim.lr=0.01", "sched=constant", "data.batch_size=100",
                         "trainer.max_steps=6000", f"trainer.threads={args.threads}", *args.overrides]
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
            cfg_off = compose("train", overrides=[*overrides, "logger.diagnostics.every=0"])
        hidden, lr = list(cfg.model.hidden), float(cfg.optim.lr)
        settings = [("on", cfg)] if args.calibrate or small else [("on", cfg), ("off", cfg_off)]
        for repeat in range(args.repeats + 2):  # the first two runs warm both up and are not counted
            for name, config in settings:  # on and off alternate: both see the same machine
                label["diagnostics"] = name
                train(config, Path(tmp) / f"run{repeat}{name}")
    runs = runs[2 * len(settings):]
    off_runs = [r for r in runs if r["diagnostics"] == "off"]
    runs = [r for r in runs if r["diagnostics"] == "on"]

    ratios = [r["dlrun"] / r["plain"] for r in runs]
    step_ratios = [r["dlrun_step"] / r["plain_step"] for r in runs]
    result = {
        "model": f"MLP {args.features}-{'-'.join(map(str, hidden))}-10", "batch_size": int(cfg.data.batch_size),
        "steps": runs[0]["steps"], "threads": torch.get_num_threads(), "torch": torch.__version__,
        "overrides": args.overrides, "calibrate": args.calibrate, "runs": runs, "ratio": statistics.median(ratios),
        "step_ratio": statistics.median(step_ratios),
    }
    print(f"{result['model']}, batch {result['batch_size']}, {result['steps']} steps a run, "
          f"{result['threads']} threads, torch {torch.__version__}, overrides {args.overrides or 'none'}"
          + (", A/A calibration: plain step in dlrun's place" if args.calibrate else ""))
    for r, ratio, step_ratio in zip(runs, ratios, step_ratios):
        print(f"  step path: plain {r['plain_step']:7.1f} dlrun {r['dlrun_step']:7.1f} steps/s, ratio {step_ratio:.3f}"
              f"   whole loop: plain {r['plain']:7.1f} dlrun {r['dlrun']:7.1f} steps/s, ratio {ratio:.3f}")
    print(f"step path  ratio dlrun/plain: {result['step_ratio']:.3f} (median of {len(runs)} runs)")
    print(f"whole loop ratio dlrun/plain: {result['ratio']:.3f} (median of {len(runs)} runs)")
    if off_runs:
        off_ratio = statistics.median(r["dlrun"] / r["plain"] for r in off_runs)
        off_step_ratio = statistics.median(r["dlrun_step"] / r["plain_step"] for r in off_runs)
        every = cfg.logger.diagnostics.every if "diagnostics" in cfg.logger else None
        result.update(off_runs=off_runs, off_ratio=off_ratio, off_step_ratio=off_step_ratio,
                      diagnostics_ratio=result["ratio"] / off_ratio,
                      diagnostics_step_ratio=result["step_ratio"] / off_step_ratio)
        print(f"diagnostics off (logger.diagnostics.every=0): step path ratio {off_step_ratio:.3f}, "
              f"whole loop ratio {off_ratio:.3f} dlrun/plain (median of {len(off_runs)} runs)")
        print(f"diagnostics on/off step-rate ratio: {result['diagnostics_ratio']:.3f} whole loop, "
              f"{result['diagnostics_step_ratio']:.3f} step path (logger.diagnostics.every={every})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
