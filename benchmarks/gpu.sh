#!/usr/bin/env bash
# The GPU check, one prepared command for a machine with one NVIDIA GPU (under 8 minutes there):
# benchmarks/gpu_check.py's stages (environment; correctness and tokens/s against the reference
# article's loop in fp32/fp16/bf16; one IMDB epoch per precision with its time, peak memory and the
# LSTM's dtype; kill and resume bit-exact; host syncs per steady step; predict and evaluate), each
# appended to OUT/stages.jsonl as it ends. The tests run the same script on a CPU: --tiny.
#   ./benchmarks/gpu.sh [OUT]            one GPU (default OUT: gpu_check)
#   ./benchmarks/gpu.sh --tiny OUT       every stage on the CPU at a tiny size
# The GPU machine may reach no package registry: what its Python lacks (datasets, omegaconf, ...)
# comes unpacked in carry/site.tar.xz, put on PYTHONPATH beside the machine's own torch and CUDA,
# and IMDB as carry/imdb/train.csv.xz (./benchmarks/gpu_carry.sh fills carry/ here).
#   PYTHON=python3   the GPU machine's interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tiny=()
if [ "${1:-}" = --tiny ]; then
  tiny=(--tiny)
  shift
fi
OUT=${1:-gpu_check}
PYTHON=${PYTHON:-python3}
CARRY=${CARRY:-$ROOT/carry}
if [ ${#tiny[@]} -eq 0 ]; then
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU found (nvidia-smi); this script measures the GPU path (--tiny runs it on the CPU)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi
mkdir -p "$OUT"
site=""
if [ -f "$CARRY/site.tar.xz" ]; then  # the packages the machine lacks, unpacked once
  if [ ! -d "$OUT/site" ]; then
    "$PYTHON" - "$CARRY/site.tar.xz" "$OUT/site" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    archive.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
PY
  fi
  site=$OUT/site
fi
data=()
if [ -f "$CARRY/imdb/train.csv.xz" ]; then
  data=(--data "$CARRY/imdb/train.csv.xz")
elif [ -f "$ROOT/../shared/data/imdb/train.csv.gz" ] && [ ${#tiny[@]} -eq 0 ]; then
  data=(--data "$ROOT/../shared/data/imdb/train.csv.gz")
fi
export PYTHONPATH="$ROOT${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
timeout "${GPU_CHECK_SECONDS:-470}" "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --out "$OUT" "${tiny[@]}" "${data[@]}"
