#!/usr/bin/env bash
# Fills carry/ (git-ignored) here for benchmarks/gpu.sh on a GPU machine that reaches no package
# registry and has torch, accelerate and tokenizers but not datasets or omegaconf:
#   carry/site.tar.xz         the packages it lacks, at the lock's versions, for its Python
#                             (GPU_PYTHON), unpacked into one folder that gpu.sh puts on PYTHONPATH
#   carry/imdb/train.csv.xz   IMDB's training split (from ../shared/data)
# About 56 MB, under the 64 MiB a device run may carry: pyarrow's wheel alone is 55 MB, its files
# compressed with xz less. Then: run(command="./benchmarks/gpu.sh", carry=["carry"]).
#   GPU_PYTHON=3.12   the GPU machine's Python version
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY=${CARRY:-$ROOT/carry}
GPU_PYTHON=${GPU_PYTHON:-3.12}
PACKAGES=(datasets omegaconf pyarrow pandas python-dateutil dill multiprocess xxhash)
pins=()
for package in "${PACKAGES[@]}"; do
  pin=$(grep -i "^$package==" "$ROOT/launch/requirements.lock") || { echo "error: $package is not in the lock" >&2; exit 2; }
  pins+=("$pin")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$work/wheels" \
  --python-version "$GPU_PYTHON" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 "${pins[@]}"
mkdir -p "$work/site" "$CARRY/imdb"
for wheel in "$work"/wheels/*.whl; do
  python3 -m zipfile -e "$wheel" "$work/site"
done
tar -C "$work/site" -cf - . | xz -6 -T0 >"$CARRY/site.tar.xz"
gzip -dc "$ROOT/../shared/data/imdb/train.csv.gz" | xz -6 -T0 >"$CARRY/imdb/train.csv.xz"
du -sh "$CARRY"
