#!/usr/bin/env bash
# The checks CI cannot run, for a session that is lent a GPU machine (the tool library's `device`).
# That machine has torch, rich, tensorboard, matplotlib and scikit-learn, but not Hydra and a few
# small packages: they travel as wheels.
#
#   here, once:   echo /.whl/ >> .git/info/exclude && bash scripts/device_check.sh --fetch
#   there:        device run, carry [".whl"], timeout_s 590:  bash scripts/device_check.sh [PART ...]
#
# PARTs (all three when none is named), each step under its own time limit:
#   bench   the figures of docs/benchmarks.md (issue 10's targets): bench_gpu.py eager and compiled,
#           bench_data.py; about 5 minutes
#   cifar   `dlrun train experiment=cifar10_fast` on synthetic CIFAR-10-shaped files (the machine has
#           no internet): its wall time and images/s; about 3 minutes
#   checks  the CUDA tests and short CUDA trainings; about 3 minutes
# One device call runs at most 10 minutes, and the steps' limits add up to more than that, so make
# two calls, the acceptance figures first: "bench" (timeout_s 590), then "cifar checks" with what
# is left of the session's 15 device minutes (start-up included).
#
# A step that hangs costs only its share; everything printed also goes to $OUT/device_check.log,
# bench_gpu.py's tables to $OUT/bench_gpu_*.json, the cifar10_fast summary to
# $OUT/cifar10_fast_summary.json.
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
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* || exit 1
export PYTHONPATH="/tmp/site:$REPO/src"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s)"; local t0=$SECONDS; timeout "$limit" "$@"; echo "=== rc=$? in $((SECONDS - t0)) s"; }

PARTS=" ${*:-bench cifar checks} "
if [[ "$PARTS" == " all " ]]; then PARTS=" bench cifar checks "; fi
has() { [[ "$PARTS" == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
mkdir -p /tmp/run && cd /tmp/run  # outputs/ lands here, not in the checkout
if has bench; then
# the speed figures of docs/benchmarks.md: every setting without compile, then resnet-18 compiled,
# then (inside the second) dlrun's loop against a plain one in bf16 + channels_last + compile
step 150 python3 "$REPO/scripts/bench_gpu.py" --steps 20 --warmup 5 --models resnet18 resnet18-224 vgg11 lenet \
    --compile off --no-compile --epochs 3 --json "$OUT/bench_gpu_eager.json"
step 240 python3 "$REPO/scripts/bench_gpu.py" --steps 20 --warmup 5 --models resnet18 --precisions 32 bf16 \
    --compile on --json "$OUT/bench_gpu_compiled.json"
step 60 python3 "$REPO/scripts/bench_data.py"
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
DLRUN_DATA=/tmp/cifar step 300 python3 -m dlrun train experiment=cifar10_fast hydra.run.dir=/tmp/run/cifar10_fast ${CIFAR_OVERRIDES:-}
cp /tmp/run/cifar10_fast/summary.json "$OUT/cifar10_fast_summary.json" && python3 - <<'PY'
import json
s = json.load(open("/tmp/run/cifar10_fast/summary.json"))
print(f"cifar10_fast: {s['status']}, {s['epochs']} epochs, {s['steps']} steps, wall {s['wall_s']:.1f} s, "
      f"{s['samples_per_s']:,.0f} training images/s, precision {s['precision']}")
PY
fi
if has checks; then
# the CUDA paths: the tests (the CUDA augmentation test runs there), a short training, its flags
step 150 python3 -m pytest -q -x -p no:cacheprovider "$REPO/tests/test_augment.py" "$REPO/tests/test_speed_settings.py" \
    "$REPO/tests/test_data.py" "$REPO/tests/test_train.py" -m "not slow"
step 60 python3 -m dlrun train trainer.device=cuda trainer.epochs=3
step 60 python3 -m dlrun train trainer.device=cuda model=lenet trainer.precision=fp16 trainer.channels_last=true trainer.epochs=2
step 60 python3 -m dlrun train trainer.device=cuda data.on_device=false trainer.epochs=2
step 90 python3 -m dlrun train trainer.device=cuda model=lenet trainer.compile=true trainer.epochs=2
fi
echo "=== done"
