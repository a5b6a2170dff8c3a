"""Training speed on a GPU (or the CPU): what precision, channels_last and torch.compile buy, and
what dlrun's loop costs over a hand-written one.

1. Throughput. Training steps (forward, loss, backward, SGD with momentum) on synthetic batches
   already on the device, for resnet-18 at CIFAR's 32x32 (batch 512) and at 224x224 (batch 128),
   vgg-11 at 32x32 (batch 512) and LeNet-5 at 32x32 (batch 512), each at fp32 (with TF32, and
   strict: TF32 off), bf16 and fp16 (autocast; fp16 with a GradScaler), with and without
   channels_last and torch.compile. The
   first steps (cudnn.benchmark's trials, the compile) are warm-up and not timed; the timed
   steps end with one synchronize. Images/s, and the ratio to the same model's plain fp32.
2. Overhead. `dlrun train` (its real loop: TensorBoard scalars every logger.every steps, update
   ratios, diagnostics, per-epoch validation and checkpoints) on resnet-18 at 32x32 (--overhead-model) from a
   synthetic uint8 CIFAR-shaped array file, against a plain loop written by hand over the same
   data with the same model, optimizer, precision and layout (gather, scale, normalise, step),
   in the same process. Each one's training steps per second in the epochs after the first (the
   first compiles and tunes), and dlrun / plain: 1.0 means the loop and its logging cost nothing.
3. Host syncs (CUDA only). One more epoch of dlrun's Trainer in the same settings (eager) under
   CUDA's sync debug mode: every operation that made the host wait for the GPU, by step. Only the
   logger.every flushes (and the update-ratio steps, logger.ratio_every) should.

Prints both tables and writes them as JSON (--json), with the device's name, torch's version
and the date. --quick is a smoke test for the CPU: two small models, few steps.

    python scripts/bench_gpu.py [--json docs/bench_gpu.json] [--steps 30] [--no-compile] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import dlrun.train.loop as loop
from dlrun.models.lenet import LeNet
from dlrun.models.resnet import resnet
from dlrun.models.vgg import vgg
from dlrun.paths import CONFIG_DIR
from dlrun.train.assembly import build_parts, build_trainer
from dlrun.train.run import train

# name -> (builder, sample shape, batch size)
MODELS = {
    "resnet18": (lambda: resnet((3, 32, 32), 10, depth=18), (3, 32, 32), 512),
    "resnet18-224": (lambda: resnet((3, 224, 224), 1000, depth=18), (3, 224, 224), 128),
    "vgg11": (lambda: vgg((3, 32, 32), 10, depth=11), (3, 32, 32), 512),
    "lenet": (lambda: LeNet((1, 32, 32), 10), (1, 32, 32), 512),
}
# the same models as dlrun configs, for the overhead run
OVERRIDES = {"resnet18": ["model=resnet", "model.depth=18"], "resnet18-224": ["model=resnet", "model.depth=18"],
             "vgg11": ["model=vgg", "model.depth=11"], "lenet": ["model=lenet"]}
# "32" is what dlrun runs in fp32 on a GPU: TF32 tensor cores for matmuls and convolutions (torch's
# and dlrun's default); "32-strict" turns TF32 off, the IEEE fp32 that papers' "fp32" often means.
AMP = {"32": None, "32-strict": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 on or off for matmuls and cuDNN convolutions, as it was afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    dtype = AMP[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def step_fn(model: torch.nn.Module, device: torch.device, precision: str, compiled: bool):
    """One training step of `model` as a function of (x, y): what every loop does."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    forward = torch.compile(model) if compiled else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            loss = F.cross_entropy(forward(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    return step


def throughput(name: str, device: torch.device, precision: str, channels_last: bool, compiled: bool,
               steps: int, warmup: int, batch: int | None = None) -> float:
    """Images per second of training steps on one synthetic batch, after `warmup` untimed steps."""
    build, shape, default_batch = MODELS[name]
    batch = batch or default_batch
    torch.manual_seed(0)
    model = build().to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with tf32(precision != "32-strict"):
        step = step_fn(model, device, precision, compiled)
        for _ in range(warmup):
            step(x, y)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        sync(device)
    return steps * batch / (time.perf_counter() - start)


class PlainLoop:
    """The loop a user writes by hand over the same uint8 data: shuffle, gather, scale, normalise, step."""

    def __init__(self, model_name: str, x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device,
                 precision: str, channels_last: bool, compiled: bool):
        torch.manual_seed(0)
        model = MODELS[model_name][0]().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.step = step_fn(model, device, precision, compiled)
        self.x, self.y, self.batch, self.device, self.channels_last = x.to(device), y.to(device), batch, device, channels_last
        pixels = self.x.float() / 255
        self.mean = pixels.mean((0, 2, 3), keepdim=True)
        self.std = pixels.std((0, 2, 3), keepdim=True)

    def epoch(self) -> float:
        """One epoch; its steps per second (ends with a sync, as dlrun's epoch does)."""
        start = time.perf_counter()
        order = torch.randperm(len(self.y), device=self.device)
        steps = 0
        for begin in range(0, len(self.y), self.batch):
            index = order[begin:begin + self.batch]
            x = (self.x[index].float() / 255 - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.step(x, self.y[index])
            steps += 1
        sync(self.device)
        return steps / (time.perf_counter() - start)


def overhead(model: str, device: torch.device, precision: str, channels_last: bool, compiled: bool, samples: int,
             batch: int, epochs: int, extra: tuple[str, ...] = ()) -> dict:
    """dlrun's training steps/s against the plain loop's, epochs after the first, on the same data."""
    rng = np.random.default_rng(0)
    shape = MODELS[model][1]
    x = rng.integers(0, 256, size=(samples + 1024, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, size=len(x))
    rates: list[float] = []
    original = loop.Trainer.train_epoch

    def timed_epoch(self):
        start = time.perf_counter()
        metrics = original(self)  # ends with the window's flush: one sync, so the time is real
        rates.append(self.steps_per_epoch / (time.perf_counter() - start))
        return metrics

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npz"
        np.savez(path, x_train=x[:samples], y_train=y[:samples], x_test=x[samples:], y_test=y[samples:])
        overrides = ["data=arrays", f"data.path={path}", f"data.batch_size={batch}", "data.val_fraction=0.02",
                     *OVERRIDES[model], "optim=momentum", "optim.lr=0.01", "sched=constant",
                     f"trainer.epochs={epochs}", f"trainer.device={device}", f"trainer.precision={precision}",
                     f"trainer.channels_last={str(channels_last).lower()}", f"trainer.compile={str(compiled).lower()}",
                     f"hydra.run.dir={tmp}/run", *extra]
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        loop.Trainer.train_epoch = timed_epoch
        try:
            summary = train(cfg, Path(tmp) / "run")
        finally:
            loop.Trainer.train_epoch = original
        if summary["status"] != "finished":  # e.g. stopped by a signal (a time limit): its first epoch alone
            raise SystemExit(f"the overhead run ended {summary['status']!r} after {len(rates)} of {epochs} epochs; "
                             "no overhead figure (give it more time, or fewer --epochs)")
        syncs = host_syncs(cfg) if device.type == "cuda" else None
        train_x = torch.from_numpy(x[:samples])[: summary["steps"] // epochs * batch]
        plain = PlainLoop(model, train_x, torch.from_numpy(y[:len(train_x)]), batch, device, precision, channels_last, compiled)
        plain_rates = [plain.epoch() for _ in range(epochs)]
    dlrun_rate, plain_rate = statistics.median(rates[1:] or rates), statistics.median(plain_rates[1:] or plain_rates)
    return {"model": model, "input": "x".join(map(str, shape)), "batch": batch, "precision": precision,
            "channels_last": channels_last, "compile": compiled, "epochs": epochs,
            "steps_per_epoch": summary["steps"] // epochs, "dlrun_steps_per_s": dlrun_rate,
            "plain_steps_per_s": plain_rate, "ratio": dlrun_rate / plain_rate, "host_syncs": syncs,
            "dlrun_epochs_steps_per_s": rates, "plain_epochs_steps_per_s": plain_rates, "overrides": list(extra)}


def host_syncs(cfg) -> dict:
    """One epoch of dlrun's Trainer, after one of warm-up (cudnn.benchmark), under CUDA's sync debug
    mode: how many times the host waited for the GPU, and at which steps. Eager: the syncs are the
    loop's, and a second compile here would cost more than the rest of the overhead run."""
    cfg = copy.deepcopy(cfg)
    cfg.trainer.compile = False
    trainer = build_trainer(build_parts(cfg), None)
    trainer.train_epoch()
    by_step: dict[int, int] = {}
    step, first = trainer.train_step, trainer.step
    with warnings.catch_warnings(record=True) as caught:  # each sync warns once, into `caught`
        warnings.simplefilter("always")

        def counted_step(*args):
            before = len(caught)
            step(*args)
            if len(caught) > before:
                by_step[trainer.step] = len(caught) - before

        trainer.train_step = counted_step
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    messages = sorted({str(w.message).splitlines()[0][:120] for w in caught})
    return {"steps": trainer.step - first, "syncs": len(caught), "syncs_in_steps": sum(by_step.values()),
            "steps_with_syncs": sorted(by_step), "logger_every": trainer.log_every,
            "ratio_every": trainer.settings.ratio_every, "messages": messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (cudnn.benchmark, compile)")
    parser.add_argument("--precisions", nargs="*", default=list(AMP), choices=list(AMP),
                        help="32: fp32 with TF32 (dlrun's fp32 on a GPU); 32-strict: TF32 off")
    parser.add_argument("--compile", default="both", choices=["off", "on", "both"],
                        help="the throughput settings without torch.compile, with it, or both")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile anywhere (the overhead run too)")
    parser.add_argument("--samples", type=int, default=24576, help="training images of the overhead run")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the overhead run (the first is warm-up)")
    parser.add_argument("--overhead-model", default="resnet18", choices=list(MODELS))
    parser.add_argument("--overhead-overrides", nargs="*", default=[],
                        help="more dlrun overrides for the overhead run, e.g. logger.diagnostics.every=0")
    parser.add_argument("--quick", action="store_true", help="a smoke test of the script: lenet at batch 32, few steps")
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    batch = None
    models, precisions = args.models, args.precisions
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    if args.quick:
        models, batch, args.steps, args.warmup, args.samples, args.epochs = ["lenet"], 32, 2, 1, 256, 2
        args.overhead_model = "lenet"
        precisions, compiles = ["32", "bf16"], [False]
    elif args.no_compile:
        compiles = [False]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}, {datetime.date.today()}")
    print(f"{'model':<13} {'input':<10} {'batch':>5} {'precision':>9} {'channels_last':>13} {'compile':>7} "
          f"{'images/s':>10} {'vs fp32':>7}")
    rows = []
    for model in models:
        _, shape, default_batch = MODELS[model]
        base = None  # the model's first setting: fp32, no channels_last (and no compile, with --compile both)
        for compiled in compiles:
            for precision in precisions:
                for channels_last in (False, True):
                    rate = throughput(model, device, precision, channels_last, compiled, args.steps, args.warmup, batch)
                    base = base or rate  # the first setting is plain fp32
                    row = {"model": model, "input": "x".join(map(str, shape)), "batch": batch or default_batch,
                           "precision": precision, "channels_last": channels_last, "compile": compiled,
                           "images_per_s": rate, "vs_fp32": rate / base}
                    rows.append(row)
                    print(f"{model:<13} {row['input']:<10} {row['batch']:>5} {precision:>9} "
                          f"{'yes' if channels_last else 'no':>13} {'yes' if compiled else 'no':>7} "
                          f"{rate:>10,.0f} {rate / base:>7.2f}")

    fast = device.type == "cuda" and not args.quick  # the overhead run in the settings a GPU trains with
    result = overhead(args.overhead_model, device, "bf16" if fast else "32", channels_last=fast, compiled=fast and not args.no_compile,
                      samples=args.samples, batch=batch or 512, epochs=args.epochs, extra=tuple(args.overhead_overrides))
    print(f"overhead: {result['model']} {result['input']}, batch {result['batch']}, {result['precision']}, channels_last "
          f"{result['channels_last']}, compile {result['compile']}, {result['steps_per_epoch']} steps an epoch: "
          f"dlrun {result['dlrun_steps_per_s']:.1f} steps/s, plain loop {result['plain_steps_per_s']:.1f} steps/s, "
          f"ratio {result['ratio']:.3f}")
    print("  steps/s by epoch (the first compiles and tunes): dlrun "
          + " ".join(f"{r:.1f}" for r in result["dlrun_epochs_steps_per_s"]) + ", plain "
          + " ".join(f"{r:.1f}" for r in result["plain_epochs_steps_per_s"])
          + (f"; overrides {' '.join(result['overrides'])}" if result["overrides"] else ""))
    if result["host_syncs"]:
        syncs = result["host_syncs"]
        print(f"host syncs in one epoch of {syncs['steps']} steps (logger.every {syncs['logger_every']}, ratio_every "
              f"{syncs['ratio_every']}): {syncs['syncs']}, {syncs['syncs_in_steps']} inside steps, at steps "
              f"{syncs['steps_with_syncs']}")
    cifar = {(r["precision"], r["channels_last"], r["compile"]): r["images_per_s"] for r in rows if r["model"] == "resnet18"}
    if ("bf16", True, False) in cifar:
        fast = cifar[("bf16", True, False)]
        against = [f"fp32 = {fast / cifar[('32', False, False)]:.2f}x"]
        if ("32-strict", False, False) in cifar:
            against.append(f"fp32 without TF32 = {fast / cifar[('32-strict', False, False)]:.2f}x")
        print(f"resnet18 3x32x32: bf16 + channels_last / {', / '.join(against)}")
    table = {"device": name, "torch": torch.__version__, "date": str(datetime.date.today()),
             "steps": args.steps, "warmup": args.warmup, "throughput": rows, "overhead": result}
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
