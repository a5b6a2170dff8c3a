#!/usr/bin/env bash
# The checks CI cannot run, for a session that is lent a GPU machine (the tool library's `device`).
# That machine has torch, rich, tensorboard, matplotlib, scikit-learn and pytest-xdist, but not
# Hydra and a few small packages: they travel as wheels.
#
#   here, once:   echo /.whl/ >> .git/info/exclude && bash scripts/device_check.sh --fetch
#   there:        device run, carry [".whl"]:  bash scripts/device_check.sh PART [PART ...]
#
# PARTs, each step under its own time limit; the times are what the H200 took on 2026-12-04
# (torch 2.11, the machine already started; a start costs a minute or two more):
#   bench   bench_gpu.py eager (every model x precision x layout, then dlrun's loop against a plain
#           one), compiled (resnet-18), bench_data.py; about 6 minutes
#   cifar   `dlrun train experiment=cifar10_fast` on synthetic CIFAR-10-shaped files (the machine has
#           no internet), compiled as the preset says and eager: wall time and images/s; about 2 minutes
#   checks  one short CUDA training of each model family and of each speed setting, in parallel, and
#           the CUDA-only tests; about 2 minutes
#   suite   the whole test suite on the GPU machine (pytest-xdist, 15 workers): about 10 minutes
#           there, where every test trains on CUDA; 29% of it ran in 175 s on 2026-12-04
# A session has 15 device minutes, start-ups included, and one call runs at most 10: two calls at
# most, the second made at once while the machine is warm. "bench" is the acceptance figures.
#
# A step that hangs costs only its share; everything printed also goes to $OUT/device_check.log,
# bench_gpu.py's tables to $OUT/bench_gpu_*.json, the cifar10_fast summaries to
# $OUT/cifar10_fast*_summary.json, the suite's log to $OUT/suite.log.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

if [[ "${1:-}" == "--fetch" ]]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl hydra-core==1.3.2 omegaconf==2.3.0 google-crc32c==1.7.1 torchinfo==1.8.0 \
        hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle==3.1.1
    python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # an sdist only: a pure-Python wheel of it
    ls -la .whl
    exit 0
fi

OUT="${OUT:-/tmp/device_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
# (NO_WHEELS=1: a smoke test here, where the environment has Hydra: CIFAR_OVERRIDES below)
[[ -n "${NO_WHEELS:-}" ]] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* || exit 1
export PYTHONPATH="/tmp/site:$REPO/src"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s)"; local t0=$SECONDS; timeout "$limit" "$@"; echo "=== rc=$? in $((SECONDS - t0)) s"; }

PARTS=" ${*:-bench cifar checks} "
if [[ "$PARTS" == " all " ]]; then PARTS=" bench cifar checks suite "; fi
has() { [[ "$PARTS" == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
mkdir -p /tmp/run && cd /tmp/run  # outputs/ lands here, not in the checkout
if has bench; then
# the speed figures of docs/benchmarks.md: every setting without compile, then resnet-18 compiled,
# then (inside the second) dlrun's loop against a plain one in bf16 + channels_last + compile
# (the eager throughput rows took 110 s, 4 compiled resnet-18 settings and the compiled overhead run 136 s)
step 200 python3 "$REPO/scripts/bench_gpu.py" --steps 20 --warmup 5 --models resnet18 resnet18-224 vgg11 lenet \
    --compile off --no-compile --epochs 4 --json "$OUT/bench_gpu_eager.json"
step 230 python3 "$REPO/scripts/bench_gpu.py" --steps 20 --warmup 5 --models resnet18 --precisions 32 32-strict bf16 \
    --compile on --json "$OUT/bench_gpu_compiled.json"
step 50 python3 "$REPO/scripts/bench_data.py"
fi
if has cifar; then
# experiment=cifar10_fast as a user runs it, on random CIFAR-10-shaped pickles (50,000 + 10,000
# images): the time is the real one, the accuracy chance's
python3 - <<'PY'
import pickle, pathlib
import numpy as np
root = pathlib.Path("/tmp/cifar/cifar-10-batches-py")
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 10000).tolist()}
    (root / name).write_bytes(pickle.dumps(batch))
(root / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
PY
# (CIFAR_OVERRIDES: more overrides, e.g. a CPU smoke test: trainer.device=cpu trainer.max_steps=2 trainer.compile=false)
# compiled, as the preset says (on 2026-12-04 its first epoch, the compile, took 36 of 58 s), then eager
for variant in "" "trainer.compile=false"; do
    name=cifar10_fast${variant:+_eager}
    DLRUN_DATA=/tmp/cifar step 150 python3 -m dlrun train experiment=cifar10_fast hydra.run.dir=/tmp/run/$name $variant ${CIFAR_OVERRIDES:-}
    cp /tmp/run/$name/summary.json "$OUT/${name}_summary.json" && NAME=$name python3 - <<'PY'
import json, os
s = json.load(open(f"/tmp/run/{os.environ['NAME']}/summary.json"))
print(f"{os.environ['NAME']}: {s['status']}, {s['epochs']} epochs, {s['steps']} steps, wall {s['wall_s']:.1f} s, "
      f"{s['samples_per_s']:,.0f} training images/s, precision {s['precision']}, compile {s['hparams']['trainer.compile']}")
PY
done
fi
if has checks; then
# the CUDA paths: one short training of each model family in bf16 (precision auto), then fp16, fp32,
# compiled, host batches, EMA with TTA and micro-batches, in parallel (the GPU has room for all);
# then the CUDA-only tests
fam() { local name=$1; shift; (cd /tmp/run && timeout 150 python3 -m dlrun train trainer.device=cuda hydra.run.dir=/tmp/run/fam_$name "$@" \
    > "/tmp/run/fam_$name.log" 2>&1; echo "rc=$?" >> "/tmp/run/fam_$name.log"); }
for m in mlp cnn lenet alexnet vgg resnet resnet9 googlenet rnn lstm gru; do fam "$m" model=$m trainer.epochs=2 & done
wait
fam fp16_lenet model=lenet trainer.precision=fp16 trainer.channels_last=true trainer.epochs=2 &
fam fp16_lstm model=lstm trainer.precision=fp16 trainer.epochs=2 &
fam fp32_resnet model=resnet trainer.precision=32 trainer.epochs=2 &
fam host_batches data.on_device=false trainer.epochs=2 &
fam compile_lenet model=lenet trainer.compile=true trainer.epochs=2 &
fam compile_resnet model=resnet trainer.compile=true trainer.channels_last=true trainer.epochs=2 &
fam ema_tta model=resnet9 trainer.ema_decay=0.99 eval.tta=flip augment=cutmix trainer.epochs=2 &
fam micro model=resnet trainer.micro_batch_size=24 trainer.epochs=2 &
wait
for f in /tmp/run/fam_*.log; do echo "--- $(basename "$f" .log): $(grep -E 'finished|error|Error' "$f" | tail -1) $(tail -1 "$f")"; done \
    | tee "$OUT/families.log"
for f in /tmp/run/fam_*.log; do grep -q "rc=0" "$f" || { echo "=== $f"; tail -40 "$f"; }; done
step 120 python3 -m pytest -q -rfE -p no:cacheprovider -p no:benchmark "$REPO/tests/test_augment.py" "$REPO/tests/test_data.py" \
    "$REPO/tests/test_speed_settings.py" -k "cuda or gpu or pinned"
fi
if has suite; then
# every test on the GPU machine (trainer.device=auto picks the GPU). -v: a test's name and verdict
# reach the log as it ends, so a time limit still leaves the names of the failures
python3 -c "import xdist" 2>/dev/null && XDIST=(-n "${SUITE_WORKERS:-15}") || XDIST=()
step "${SUITE_LIMIT:-560}" python3 -m pytest -v --tb=short -rfE -p no:cacheprovider -p no:benchmark "${XDIST[@]}" \
    "$REPO/tests" > "$OUT/suite.log" 2>&1
grep -E "FAILED|ERROR" "$OUT/suite.log" | head -40
echo "$(grep -c PASSED "$OUT/suite.log") passed"
tail -c 8000 "$OUT/suite.log"
fi
echo "=== done"
