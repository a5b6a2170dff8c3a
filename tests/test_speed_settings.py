"""The GPU speed settings, exercised on the CPU: bf16 and fp16 autocast, channels_last,
torch.compile, deterministic algorithms, and experiment=cifar10_fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dlrun.errors import UserError
from dlrun.train.assembly import build_parts, build_trainer, resolve_precision
from tests.conftest import ROOT, make_config, train
from tests.test_vision_data import cifar_files

LENET = ("model=lenet", "trainer.epochs=2", "logger.diagnostics.every=0")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return train(tmp_path_factory.mktemp("fp32"), *LENET)


def close(a: dict, b: dict, rel: float) -> None:
    assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], rel=rel)
    assert a["best"]["val"]["loss"] == pytest.approx(b["best"]["val"]["loss"], rel=rel)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_in_its_dtype_and_ends_near_fp32(tmp_path, fp32, precision, dtype):
    """bf16 keeps 8 bits of mantissa, fp16 10: two epochs of LeNet land within 1% of fp32's losses.
    fp16 on the CPU runs (torch has CPU fp16 autocast and a CPU GradScaler), slowly, as asked."""
    cfg, _ = make_config(*LENET, f"trainer.precision={precision}")
    parts = build_parts(cfg)
    trainer = build_trainer(parts, None)
    x, y = parts.data.batch("train", torch.arange(8))
    out, _, _ = trainer.forward_loss(x, y)
    assert out.dtype == dtype and (trainer.engine.scaler is not None) == (precision == "fp16")
    summary = train(tmp_path, *LENET, f"trainer.precision={precision}")
    assert summary["precision"] == precision
    close(summary, fp32, rel=1e-2)


def test_channels_last_lays_out_weights_and_batches_as_nhwc_and_changes_no_number(tmp_path, fp32):
    cfg, _ = make_config(*LENET, "trainer.channels_last=true")
    parts = build_parts(cfg)
    trainer = build_trainer(parts, None)
    conv = parts.model.features[3]  # 6 -> 16 channels (with one channel, NCHW and NHWC are the same strides)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x, _, _ = trainer.training_batch(*parts.data.train.take(torch.arange(4)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (4, 1, 8, 8)
    close(train(tmp_path, *LENET, "trainer.channels_last=true"), fp32, rel=1e-5)


def test_channels_last_on_data_that_are_not_images_is_one_line():
    with pytest.raises(UserError, match="channels_last=true lays out images .* this run's data are sequence"):
        build_parts(make_config("data=digits_rows", "model=lstm", "trainer.channels_last=true")[0])


@pytest.mark.slow  # a cold torch.compile takes ~25 s per model on 2 cores
@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_compile_trains_through_the_compiled_module_to_eager_numbers(tmp_path, model):
    import torch._dynamo

    overrides = (f"model={model}", "trainer.epochs=1", "logger.diagnostics.every=0")
    eager = train(tmp_path / "eager", *overrides)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = train(tmp_path / "compiled", *overrides, "trainer.compile=true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # training and evaluation graphs
    assert compiled["test"]["acc"] == pytest.approx(eager["test"]["acc"], abs=1 / 359)  # one test image at most
    close(compiled, eager, rel=1e-4)


def test_compile_wraps_training_and_evaluation_and_diagnostics_stay_eager():
    cfg, _ = make_config("model=mlp", "trainer.compile=true", "trainer.compile_mode=max-autotune-no-cudagraphs")
    parts = build_parts(cfg)
    trainer = build_trainer(parts, None)
    engine = trainer.engine
    assert isinstance(engine.train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.eval_model is engine.train_model and engine.eager_model is parts.model
    assert engine.train_model._orig_mod is parts.model


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False


def test_deterministic_turns_on_torchs_deterministic_algorithms_and_off_again(monkeypatch, restore_determinism):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    build_parts(make_config("trainer.deterministic=true")[0])
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    build_parts(make_config("trainer.deterministic=false")[0])
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_is_bf16_on_gpus_that_have_it_else_fp16_and_fp32_on_the_cpu(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_cifar10_fast_composes_page_s_resnet9_recipe_with_the_gpu_settings():
    cfg, choices = make_config("experiment=cifar10_fast")
    assert (choices["data"], choices["model"], choices["optim"], choices["sched"], choices["augment"]) == \
        ("cifar10", "resnet9", "nesterov", "onecycle", "cutout")
    assert cfg.data.batch_size == 512 and cfg.trainer.epochs == 24
    assert cfg.optim.lr == 0.4 and cfg.optim.momentum == 0.9 and cfg.optim.nesterov
    assert cfg.reg.weight_decay == 5e-4 and cfg.loss.label_smoothing == 0.2
    assert (cfg.augment.crop_padding, cfg.augment.flip, cfg.augment.cutout) == (4, True, 8)
    assert cfg.sched.anneal_strategy == "linear" and cfg.sched.pct_start == pytest.approx(5 / 24, abs=1e-4)
    assert cfg.trainer.channels_last and cfg.trainer.compile and cfg.trainer.precision == "auto"
    assert cfg.eval.tta == "flip"


def test_cifar10_fast_trains_on_cifar_files_and_its_lr_is_a_triangle(tmp_path, monkeypatch):
    cifar_files(tmp_path / "data", classes=10, per_batch=64, n_test=64)
    monkeypatch.setenv("DLRUN_DATA", str(tmp_path / "data"))
    # 5 x 64 training images, 6 of them held out; 2 epochs of 2 steps of 128; compile off: it is slow here.
    summary = train(tmp_path / "run", "experiment=cifar10_fast", "data.batch_size=128", "trainer.epochs=2",
                    "trainer.compile=false", "data.val_fraction=0.02")
    assert summary["status"] == "finished" and summary["params"] == 6_573_130 and summary["steps"] == 6
    assert summary["hparams"]["trainer.channels_last"] is True
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    lr = [e.value for e in events.Scalars("lr")]
    peak = lr.index(max(lr))
    assert max(lr) == pytest.approx(0.4, rel=0.3) and 0 < peak < len(lr) - 1  # up, then down
    assert lr[0] < 0.01 and lr[-1] < lr[peak] / 2


def test_bench_gpu_runs_on_the_cpu_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--quick", "--json", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())
    rows = table["throughput"]
    assert {r["precision"] for r in rows} >= {"32", "bf16"} and {r["channels_last"] for r in rows} == {False, True}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert table["overhead"]["ratio"] > 0 and "images/s" in result.stdout
    overhead = table["overhead"]
    assert len(overhead["dlrun_epochs_steps_per_s"]) == len(overhead["plain_epochs_steps_per_s"]) == overhead["epochs"]


def test_bench_gpu_gives_no_overhead_figure_from_a_run_that_did_not_finish(tmp_path, monkeypatch):
    """On the H200 a time limit's SIGTERM stopped the overhead run after its first epoch; dlrun saved
    and returned, and the script printed that epoch (compile and cudnn tuning in it) as dlrun's rate:
    ratio 0.118. Such a run now gives no figure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "train", lambda cfg, run_dir: {"status": "interrupted after epoch 1", "steps": 8})
    with pytest.raises(SystemExit, match="overhead run ended 'interrupted after epoch 1' after 0 of 2 epochs"):
        bench.overhead("lenet", torch.device("cpu"), "32", False, False, samples=256, batch=32, epochs=2)


# Each of these hands a tensor's value to Python; on a GPU each waits for the device to finish.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


def host_reads_by_step(trainer) -> dict[int, int]:
    """One epoch of `trainer`; how many times each step read a tensor back to the host.

    torch keeps Adam's and its kin's step counters on the host on every device (optimizer.py's
    _get_value reads them with .item()), so those reads wait for nothing and are not counted.
    """
    reads: dict[int, int] = {}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name):
        def read(tensor, *args, **kwargs):
            if not any(tensor is state.get("step") for state in trainer.optimizer.state.values()):
                reads[trainer.step] = reads.get(trainer.step, 0) + 1
            return originals[name](tensor, *args, **kwargs)
        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        trainer.train_epoch()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return reads


@pytest.mark.parametrize("overrides", [
    (),
    ("model=lenet", "augment=cutmix", "optim=nesterov", "sched=onecycle", "reg=maxnorm", "trainer.grad_clip=1.0",
     "trainer.ema_decay=0.99", "trainer.precision=bf16", "trainer.channels_last=true"),
    ("model=lstm", "data=digits_rows", "reg=label_smoothing", "augment=none", "trainer.grad_clip_mode=value",
     "trainer.grad_clip=0.5"),
    ("trainer.micro_batch_size=24", "reg=l2"),
], ids=["defaults", "lenet-cutmix-ema-maxnorm-bf16", "lstm-smoothing-clip", "micro-batches-l2"])
def test_training_steps_read_nothing_back_between_the_logger_flushes(overrides):
    """The issue's "no host sync per step", shown on the CPU: between two `logger.every` flushes a
    training step hands no tensor value to Python, so a GPU runs ahead of the host. 21 steps of
    64 digits with every=5: one read at each flush (steps 5, 10, 15, 20 and the epoch's end, 21)."""
    cfg, _ = make_config(*overrides, "logger.every=5", "logger.ratio_every=0", "logger.diagnostics.every=0")
    trainer = build_trainer(build_parts(cfg), None)
    assert host_reads_by_step(trainer) == {5: 1, 10: 1, 15: 1, 20: 1, 21: 1}
