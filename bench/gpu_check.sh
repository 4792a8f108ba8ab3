#!/usr/bin/env bash
# One prepared command for a machine with one CUDA GPU (docs/speed.md, "Checking a GPU"):
#   1. installs what that machine lacks from wheels/ (bench/prepare_wheels.sh made it), offline;
#   2. runs the one-GPU test suite (tests/gpu: every method compiled in bf16, packing, QLoRA,
#      generation, Liger's fused loss);
#   3. runs bench/throughput.py on CUDA with a larger model (bench/configs/gpu_360m.json).
# Budget: under 8 minutes in all (the suite ~3 min, the bench ~4 min). Results land in
# bench/results/throughput_cuda.{json,md} and $OUT (when set) for the caller to fetch.
# Without CUDA it says so and exits 0 after the checks that do not need a GPU.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo "=== $1 ($(( $(date +%s) - start )) s)"; }

stage "environment"
if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
    # --no-deps for tunesmith: the machine's own torch/transformers stay as they are.
    $PY -m pip install --quiet --no-index --find-links wheels \
        datasets trl bitsandbytes liger-kernel rouge-score pytest psutil safetensors pyyaml tqdm \
        || echo "warning: some wheels did not install (see above)"
    $PY -m pip install --quiet --no-deps --no-build-isolation -e . \
        || echo "warning: editable install failed; using PYTHONPATH=src"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'PYEOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "peft", "datasets", "trl", "bitsandbytes", "liger_kernel"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - report and go on
        print(name, "missing:", type(exc).__name__)
PYEOF
has_cuda=$($PY -c "import torch; print(int(torch.cuda.is_available()))")

stage "one-GPU tests"
if [ "$has_cuda" = 1 ]; then
    timeout 300 $PY -m pytest -q -m gpu tests/gpu -x --durations=10 -p no:cacheprovider \
        2>&1 | tee "$OUT/gpu_tests.log" | tail -40
    echo "pytest exit ${PIPESTATUS[0]}"
else
    $PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -3
    echo "no CUDA here: the GPU tests skip (shown above)"
fi

stage "CUDA throughput"
if [ "$has_cuda" = 1 ]; then
    timeout 240 $PY bench/throughput.py --cuda --model-config bench/configs/gpu_360m.json \
        --systems tunesmith-bf16,tunesmith-compiled-bf16,tunesmith-packing-compiled-bf16,hf-trainer-bf16 \
        --steps 12 --batch-size 8 --cutoff-len 512 2>&1 | tail -25
    cp bench/results/throughput_cuda.* "$OUT"/ 2>/dev/null || true
else
    echo "no CUDA here: skipping the CUDA bench"
fi
stage "done"
