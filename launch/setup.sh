#!/usr/bin/env bash
# Creates .venv if missing and installs the project into it; sourced by train.sh and test.sh.
# Where no NVIDIA GPU is found, torch comes from PyTorch's CPU index, never a multi-GB CUDA build.
#   PYTHON=python3.12  interpreter for a new .venv      VENV=path   where the venv lives
#   TORCH_VERSION=2.13.0  torch to install if missing   TORCH_CPU_INDEX=url   CPU wheel index
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
EXTRAS=${1:-}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
hash=$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)
stamp="$VENV/.installed-$hash${EXTRAS:+-$EXTRAS}"  # an install with extras also leaves the plain stamp
if [ ! -f "$stamp" ]; then
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      "$PY" -m pip install -q "torch${TORCH_VERSION:+==$TORCH_VERSION}"
    else
      # A CPU wheel already on this machine (pip's find-links) if there is one, else PyTorch's CPU index.
      echo "no NVIDIA GPU found: installing the CPU build of torch" >&2
      "$PY" -m pip install -q --no-index --no-deps "torch==${TORCH_VERSION:-2.13.0}" 2>/dev/null ||
        "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" \
          --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
  fi
  "$PY" -m pip install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$hash*" -delete
  touch "$VENV/.installed-$hash" "$stamp"
fi
export PATH="$VENV/bin:$PATH"
