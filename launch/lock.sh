#!/usr/bin/env bash
# Regenerates launch/requirements.lock with uv: one version of every package that the project and
# all its extras need, for Python 3.11 on x86_64 Linux, torch as its CPU build. Pins already in the
# lock are kept where pyproject.toml allows them; arguments go to `uv pip compile`:
#   ./launch/lock.sh                          after a change of pyproject.toml
#   ./launch/lock.sh --upgrade                every package to its newest release
#   ./launch/lock.sh --upgrade-package datasets
# Then run ./launch/test.sh (it installs the new lock) and commit the lock with what it needed.
#   TORCH_VERSION=x.y.z   the torch to lock (default: the lock's)
#   TORCH_FIND_LINKS=dir|url   where its CPU wheel is: pip's find-links if it has one, else PyTorch's CPU index
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK=$ROOT/launch/requirements.lock
UV_VERSION=0.13.9
torch_version=${TORCH_VERSION:-$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' "$LOCK" 2>/dev/null || true)}
torch_version=${torch_version:-2.13.0}
links=${TORCH_FIND_LINKS:-}
if [ -z "$links" ]; then
  local_links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  if [ -n "$local_links" ] && compgen -G "$local_links/torch-$torch_version+cpu-*.whl" >/dev/null; then
    links=$local_links
  else
    links=https://download.pytorch.org/whl/cpu/torch/
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/uv"
"$work/uv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
echo "torch==$torch_version+cpu" >"$work/torch.txt"
cd "$ROOT"
"$work/uv/bin/uv" pip compile pyproject.toml --all-extras --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --find-links "$links" --constraint "$work/torch.txt" \
  --no-header --quiet --output-file "$LOCK" "$@"
sed -i "s|-c $work/torch.txt|torch's CPU build (launch/lock.sh)|" "$LOCK"
sed -i "1i # The versions the test suite passed with; launch/setup.sh installs them. Made by ./launch/lock.sh\\
# (uv $UV_VERSION: uv pip compile pyproject.toml --all-extras, Python 3.11, x86_64 Linux, torch's CPU build)." "$LOCK"
echo "wrote $LOCK"
