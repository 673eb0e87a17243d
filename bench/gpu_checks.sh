#!/usr/bin/env bash
# The GPU checks of Issue 11 in one go, for a machine with one CUDA device:
#   1. the tracker's and the trainer's CUDA tests (skipped everywhere else),
#   2. bench/scale_gpu.py over the scale family.
# Usage: bench/gpu_checks.sh OUT_DIR TINYSHAKESPEARE_TXT [extra scale_gpu.py arguments]
# Where signlock is not installed (a bare GPU image with torch), the repository's folders are
# linked into a temporary signlock namespace package first.
set -uo pipefail
out=$1 data=$2
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
if ! python3 -c "import signlock.trainables" 2>/dev/null; then
    shim=$(mktemp -d)/signlock
    mkdir -p "$shim"
    for folder in orchestrator trainables search_spaces analysis cluster; do
        ln -s "$repo/$folder" "$shim/$folder"
    done
    export PYTHONPATH="$(dirname "$shim")${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 SIGNLOCK_TINYSHAKESPEARE=$data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)" | tee -a "$out/gpu.txt"
python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" 2>&1 | tail -1 | tee -a "$out/gpu.txt"
(cd "$repo" && timeout 150 python3 -m pytest -q -p no:cacheprovider \
    tests/trainables/test_tracker.py tests/trainables/test_trainer.py \
    -k "cuda or sparse_backends" 2>&1) | tee "$out/pytest.log" | tail -20
(cd "$repo" && timeout 380 python3 bench/scale_gpu.py --data "$data" --out "$out/scale_gpu.json" "$@" 2>&1) \
    | tee "$out/scale_gpu.log"
