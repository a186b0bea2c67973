#!/usr/bin/env bash
# Set up (.venv) and train through `accelerate launch` on the hardware found; arguments go to the
# trainer, e.g. ./launch/train.sh --config imdb --train.epochs=3
#   ACCELERATE_CONFIG=path  use this accelerate config instead of picking one
#   NUM_PROCESSES=N         processes for the multi-GPU config (default: every GPU this job may use,
#                           CUDA_VISIBLE_DEVICES's when set)
#   DRY_RUN=1               print the accelerate command instead of running it
#   TRAINER_MODULE=M        run M instead of trainer (launch/pretrain.sh: trainer.pretrain)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/launch/setup.sh" ""  # no extras (an explicit argument: the sourced script would see ours)

# $gpus: the GPUs this job may use (setup.sh's visible_gpus: CUDA_VISIBLE_DEVICES, else nvidia-smi).
launch_args=()
if [ -n "${ACCELERATE_CONFIG:-}" ]; then
  launch_args=(--config_file "$ACCELERATE_CONFIG")
elif [ "$gpus" -gt 1 ]; then
  launch_args=(--config_file "$ROOT/accelerate_configs/multi_gpu.yaml" --num_processes "${NUM_PROCESSES:-$gpus}")
elif [ "$gpus" -eq 1 ]; then
  launch_args=(--config_file "$ROOT/accelerate_configs/gpu.yaml")
else
  launch_args=(--config_file "$ROOT/accelerate_configs/cpu.yaml" --num_cpu_threads_per_process "$(nproc)")
fi
# Precision is the trainer's --train.mixed_precision (default auto: bf16 where the hardware runs it
# natively, AVX512-BF16/AMX on a CPU, else float32 on a CPU and fp16 on an older GPU).
command=(accelerate launch "${launch_args[@]}" -m "${TRAINER_MODULE:-trainer}" "$@")
if [ -n "${DRY_RUN:-}" ]; then
  echo "${command[*]}"
  exit 0
fi
exec "${command[@]}"
