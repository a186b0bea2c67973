#!/usr/bin/env bash
# Creates the venv if missing and installs the project into it; sourced by train.sh and test.sh.
# The first argument names the extras ("dev" for test.sh).
#   DEPS=locked   (default) .venv, every package at the version in launch/requirements.lock, the
#                 versions the test suite passed with (./launch/lock.sh regenerates it)
#   DEPS=latest   .venv-latest, the newest release of everything, upgraded once a day: what a new
#                 release breaks shows here first (DEPS=latest ./launch/test.sh)
#   PYTHON=python3.12  interpreter for a new venv        VENV=path   where the venv lives
#   TORCH_VERSION=x.y.z  another torch than the lock's   TORCH_CPU_INDEX=url   CPU wheel index
#   ALLOW_CPU=1   go on where GPUs are visible but torch has no CUDA (refused otherwise)
# Where no NVIDIA GPU is found, torch is the CPU build (a wheel pip already has, else PyTorch's CPU
# index), never a multi-GB CUDA build; with a GPU, PyPI's CUDA build of the same version.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EXTRAS=${1:-}
DEPS=${DEPS:-locked}
LOCK=$ROOT/launch/requirements.lock
case "$DEPS" in
  locked) VENV=${VENV:-$ROOT/.venv} ;;
  latest) VENV=${VENV:-$ROOT/.venv-latest} ;;
  *) echo "DEPS=$DEPS: use DEPS=locked (the tested versions) or DEPS=latest (the newest releases)" >&2; exit 2 ;;
esac
export DEPS

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# The GPUs this job may use: those CUDA_VISIBLE_DEVICES names when it is set (schedulers set it; as
# CUDA does, up to the first entry that names none: "", "-1", SLURM's "NoDevFiles"), else every GPU.
visible_gpus() {
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    awk -F, '{ for (i = 1; i <= NF; i++) { if ($i !~ /^ *([0-9]+|GPU-[0-9a-fA-F-]+|MIG-.+) *$/) break; n++ } }
      END { print n + 0 }' <<<"$CUDA_VISIBLE_DEVICES"
  else
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  fi
}
gpus=$(visible_gpus)
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

install_locked() {
  local want have constraints
  want=${TORCH_VERSION:-$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' "$LOCK")}
  have=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    if [ "$gpus" -gt 0 ]; then
      pip_install "torch==$want"
    else
      echo "no NVIDIA GPU found: installing the CPU build of torch $want" >&2
      # A CPU wheel already on this machine (pip's find-links) if there is one, else the CPU index.
      pip_install --no-index --no-deps "torch==$want" 2>/dev/null || pip_install "torch==$want" --index-url "$cpu_index"
    fi
  fi
  # The lock as constraints: only what the project and these extras need, each at its locked version.
  # torch is left out (installed above: the lock names its CPU build; GPUs take PyPI's).
  constraints=$(mktemp)
  grep -v '^torch==' "$LOCK" >"$constraints"
  pip_install -c "$constraints" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  rm -f "$constraints"
}

install_latest() {
  if [ "$gpus" -gt 0 ]; then
    pip_install --upgrade torch
  else
    pip_install --upgrade torch --extra-index-url "$cpu_index"
  fi
  pip_install --upgrade --upgrade-strategy eager -e "$ROOT${EXTRAS:+[$EXTRAS]}"
}

# Installed once per version of pyproject.toml and the lock (latest: and per day), then left alone:
# a SLURM job sourcing this on its batch host installs nothing.
hash=$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -c1-16)
[ "$DEPS" = latest ] && hash="$hash-$(date +%F)"
stamp="$VENV/.installed-$hash${EXTRAS:+-$EXTRAS}"  # an install with extras also leaves the plain stamp
if [ ! -f "$stamp" ]; then
  if [ "$DEPS" = latest ]; then install_latest; else install_locked; fi
  find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash*" -delete
  touch "$VENV/.installed-$hash" "$stamp"
fi
if [ "$gpus" -gt 0 ] && [ -z "${ALLOW_CPU:-}" ] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "error: $gpus NVIDIA GPU(s) visible but the torch in $VENV cannot use them, so training would run on the" \
    "CPU: reinstall torch with CUDA ($PY -m pip install --force-reinstall torch==<version>) or set ALLOW_CPU=1" >&2
  exit 2
fi
export PATH="$VENV/bin:$PATH"
