"""Pre-train the classifier's encoder as a language model, then fine-tune a classifier from it.

    # 1. the language model, on the training split's texts (and any unlabeled ones)
    python -m trainer.pretrain --config imdb --data.train_files=train.csv.gz --train.output_dir=runs/imdb-lm
    # 2. the classifier, from its embedding, recurrent layers and tokenizer
    python -m trainer --config imdb --data.train_files=train.csv.gz --model.init_from=runs/imdb-lm/best

The same run as ``python -m trainer`` in every other way: processes (``accelerate launch``,
``sbatch launch/slurm.sbatch``), checkpoints, ``--resume auto``, signals, trackers. It reads the
same config (use the classifier's, so that both see the same training split: the validation split
is carved the same way and the language model never reads it), with ``pretrain.epochs``,
``pretrain.max_steps`` and ``pretrain.lr`` in place of the classifier's, and a sampled softmax
(``pretrain.samples``, ``pretrain.tie_embeddings``) as the output layer. ``--data.unlabeled_files``
adds texts without labels. best/ holds the model with the lowest validation loss (the token
loss of both directions, against one fixed sample of the vocabulary), final/ the last one.

Flags: --config NAME|PATH, --resume auto|PATH|none, --overwrite, --debug (tracebacks),
--help (every config key; the pretrain.* ones are this command's, but for pretrain.stage and
pretrain.finetune_lr_scale, which are a classifier's: ``python -m trainer`` with a pre-training stage
runs this command's run in OUTPUT_DIR/pretrain first, ``trainer.training.stage``).
"""

from __future__ import annotations

import sys

from trainer.training.task import LanguageModelling


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import main as cli_main

    return cli_main(argv, LanguageModelling(), __doc__)


if __name__ == "__main__":
    sys.exit(main())
