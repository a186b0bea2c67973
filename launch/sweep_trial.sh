#!/usr/bin/env bash
# One trial of the W&B sweep in launch/sweep.yaml: `wandb agent` runs it with the trial's
# --section.key=value arguments. It trains through ./launch/train.sh (the accelerate config for
# the hardware found) into runs/sweep-<W&B run id>, logging to the sweep's W&B run.
#   SWEEP_PRESET  preset or YAML file (default imdb)
#   SWEEP_ARGS    more trainer arguments for every trial, e.g. "--data.train_files=my.csv"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${WANDB_RUN_ID:-}" ]; then
  echo "error: WANDB_RUN_ID is not set; start trials with: wandb agent ENTITY/PROJECT/SWEEP_ID" >&2
  exit 2
fi
read -r -a extra <<< "${SWEEP_ARGS:-}"
exec "$ROOT/launch/train.sh" --config "${SWEEP_PRESET:-imdb}" "${extra[@]}" \
  --logging.tracker=wandb --train.output_dir="$ROOT/runs/sweep-$WANDB_RUN_ID" "$@"
