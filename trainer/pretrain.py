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
--help (every config key; the pretrain.* ones are this command's).
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import datasets
import torch

from trainer.config import Config
from trainer.data.preparation import Coordination, PreparedData, prepare_data, prepare_unlabeled
from trainer.data.tokenizer import pad_id
from trainer.inference.folder import export_model
from trainer.models.language import (
    LanguageModel,
    check_pretrainable,
    evaluate_language_model,
    language_model_loss,
    token_counts,
)


class LanguageModelling:
    """The encoder as a forward (and backward) language model; best/ and final/ are language-model
    folders for ``--model.init_from``."""

    name = "language-model"
    run_suffix = "-lm"

    def configure(self, config: Config) -> Config:
        check_pretrainable(config.model)
        pretrain = config.pretrain
        config.train.epochs, config.train.max_steps, config.optim.lr = pretrain.epochs, pretrain.max_steps, pretrain.lr
        config.checkpoint.best_metric = "loss"  # the only metric a language model has
        config.train.adversarial_epsilon = 0.0  # a classifier's regulariser
        config.data.sampler = "random"  # balancing classes is a classifier's concern
        return config

    def data(self, config: Config, coordination: Coordination) -> PreparedData:
        data = prepare_data(config.data, config.tokenizer, coordination)
        unlabeled, stats = prepare_unlabeled(config.data, data.tokenizer, coordination)
        if unlabeled is not None:
            data.train = datasets.concatenate_datasets([data.train, unlabeled.cast(data.train.features)])
        data.stats |= stats | {"language_model_examples": len(data.train)}
        return data

    def model(self, config: Config, data: PreparedData) -> torch.nn.Module:
        vocabulary = data.tokenizer.get_vocab_size()
        counts = token_counts(data.train.with_format("arrow")["input_ids"], vocabulary)  # the sampler's
        return LanguageModel(config.model, vocabulary, pad_id(data.tokenizer), config.pretrain, counts)

    def loss(self, run, batch: dict) -> torch.Tensor:
        return language_model_loss(run.model, batch)

    def evaluate(self, run) -> dict:
        return evaluate_language_model(run.weights(), run.eval_loader, run.accelerator)

    def summary(self, metrics: dict) -> str:
        return f"loss {metrics['loss']:.4f} over {metrics['tokens']:,} tokens"

    def export(self, run, name: str, step: int, metrics: dict) -> None:
        """best/ or final/: the language model's weights, config.json and tokenizer."""
        selected = "the lowest validation loss of the run" if name == "best" else "the last step of the run"
        extra = {"step": step, "metrics": metrics, "selected_by": selected, "pretrain": asdict(run.config.pretrain)}
        extra |= {"data": asdict(run.config.data), "num_parameters": run.info["num_parameters"]}
        export_model(run.run_dir / name, run.weights(), run.data.tokenizer, [], run.config.data.max_length, extra)

    def after_training(self, run) -> None:
        """Nothing: a language model has no mistakes to show."""


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import main as cli_main

    return cli_main(argv, LanguageModelling(), __doc__)


if __name__ == "__main__":
    sys.exit(main())
