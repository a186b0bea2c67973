#!/usr/bin/env bash
# Set up (.venv with the dev extra), lint, then run the tests; arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/launch/setup.sh" dev
cd "$ROOT"
ruff check .
ruff format --check .
exec python -m pytest "$@"
