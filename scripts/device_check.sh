#!/usr/bin/env bash
# The checks CI cannot run, for a session that is lent a GPU machine (the tool library's `device`).
# That machine has torch, rich, tensorboard, matplotlib and scikit-learn, but not Hydra and a few
# small packages: they travel as wheels.
#
#   here, once:   echo /.whl/ >> .git/info/exclude && bash scripts/device_check.sh --fetch
#   there:        device run, carry [".whl"], timeout_s 590:  bash scripts/device_check.sh
#
# Each step has its own time limit, so one that hangs costs only its share; everything it prints
# also goes to $OUT/device_check.log, and bench_gpu.py's table to $OUT/bench_gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch" ]]; then
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl hydra-core==1.3.2 omegaconf==2.3.0 google-crc32c==1.7.1 torchinfo==1.8.0 \
        hydra-joblib-launcher==1.2.0 hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle==3.1.1
    python3 -m pip download --no-deps --no-binary=:none: -d .whl antlr4-python3-runtime==4.9.3  # an sdist only
    ls -la .whl
    exit 0
fi

OUT="${OUT:-/tmp/device_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* || exit 1
export PYTHONPATH="/tmp/site:$PWD/src"
step() { local limit=$1; shift; echo "=== $* (limit ${limit}s)"; local t0=$SECONDS; timeout "$limit" "$@"; echo "=== rc=$? in $((SECONDS - t0)) s"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"
cd /tmp && mkdir -p run && cd run
# the CUDA paths: the tests (the CUDA augmentation test runs there), a short training, its flags
step 150 python3 -m pytest -q -x -p no:cacheprovider "$OLDPWD/tests/test_augment.py" "$OLDPWD/tests/test_speed_settings.py" \
    "$OLDPWD/tests/test_data.py" "$OLDPWD/tests/test_train.py" -m "not slow"
step 60 python3 -m dlrun train trainer.device=cuda trainer.epochs=3
step 60 python3 -m dlrun train trainer.device=cuda model=lenet trainer.precision=fp16 trainer.channels_last=true trainer.epochs=2
step 60 python3 -m dlrun train trainer.device=cuda data.on_device=false trainer.epochs=2
step 90 python3 -m dlrun train trainer.device=cuda model=lenet trainer.compile=true trainer.epochs=2
# the speed figures of docs/benchmarks.md
step 200 python3 "$OLDPWD/scripts/bench_gpu.py" --steps 20 --warmup 5 --models resnet18 vgg11 lenet \
    --json "$OUT/bench_gpu.json"
step 60 python3 "$OLDPWD/scripts/bench_data.py"
echo "=== done"
