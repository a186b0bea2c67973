#!/usr/bin/env bash
# The GPU check: correctness against the CPU, training tokens/s in fp32/fp16/bf16, the trainer's
# model against the reference article's, achieved FLOP/s, peak memory, and a short run of the trainer (when
# `datasets` is installed). Needs one NVIDIA GPU and a Python with torch and tokenizers (accelerate,
# datasets and wandb optional). Writes one JSON file; finishes in under 8 minutes.
#   ./benchmarks/gpu.sh [RESULT.json]        (default gpu_result.json; PYTHON=... to choose python)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULT=${1:-gpu_result.json}
PYTHON=${PYTHON:-python}
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU found (nvidia-smi); this script measures the GPU path" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
timeout 470 "$PYTHON" "$ROOT/benchmarks/bench_gpu.py" --out "$RESULT"
echo "wrote $RESULT"
