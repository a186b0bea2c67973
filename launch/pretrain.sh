#!/usr/bin/env bash
# Language-model pre-training (python -m trainer.pretrain) as ./launch/train.sh runs training: set up
# .venv, pick the accelerate config for the hardware found; arguments go to trainer.pretrain, e.g.
#   ./launch/pretrain.sh --config imdb --data.train_files=../shared/data/imdb/train.csv.gz --train.output_dir=runs/imdb-lm
TRAINER_MODULE=trainer.pretrain exec "$(dirname "${BASH_SOURCE[0]}")/train.sh" "$@"
