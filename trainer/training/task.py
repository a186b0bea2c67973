"""What a run trains for. The set-up, the loop, checkpoints, resume, signals and trackers are the
same for every task; a task says what differs: its data, its model, its loss, its validation and
what it exports. ``Classification`` is ``python -m trainer``'s, ``LanguageModelling``
``python -m trainer.pretrain``'s (and the pre-training stage's, ``trainer.training.stage``)."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

import datasets
import numpy as np
import torch

from trainer.config import Config, to_yaml
from trainer.data.batching import RandomBatches
from trainer.data.preparation import Coordination, PreparedData, prepare_data, prepare_unlabeled
from trainer.data.tokenizer import pad_id
from trainer.errors import UserError
from trainer.inference.card import model_card
from trainer.inference.folder import export_model
from trainer.inference.loaded import load_model
from trainer.inference.mistakes import losses_from, top_mistakes, write_mistakes
from trainer.metrics import METRICS_FOR
from trainer.models.language import (
    LanguageModel,
    check_pretrainable,
    evaluate_language_model,
    language_model_loss,
    token_counts,
)
from trainer.models.sentiment import SentimentRNN
from trainer.training.loss import class_weights, training_loss, virtual_adversarial_loss
from trainer.training.run import Run
from trainer.training.validation import evaluate


class Classification:
    """The sentiment classifier: labelled data, ``SentimentRNN``, classification metrics, best/ and
    final/ as model folders that ``trainer.evaluate``, ``trainer.predict`` and ``load_model`` read."""

    name = "classification"
    run_suffix = ""

    def configure(self, config: Config) -> Config:
        train = config.train
        if train.vat_texts == "unlabeled" and not config.data.unlabeled_files:
            train.vat_epsilon = 0.0  # virtual adversarial training on unlabeled texts only, and none given
        return config

    def __init__(self) -> None:
        self.class_weights: torch.Tensor | None = None
        self.unlabeled: datasets.Dataset | None = None  # virtual adversarial training's texts
        self.batches: RandomBatches | None = None
        self.draw = (-1, 0)  # (step, draws in it): under accumulation a step draws once per micro-batch

    def data(self, config: Config, coordination: Coordination) -> PreparedData:
        data = prepare_data(config.data, config.tokenizer, coordination)
        if config.train.vat_epsilon and config.train.vat_texts != "training":  # the texts VAT draws from
            self.unlabeled, stats = prepare_unlabeled(config.data, data.tokenizer, coordination)
            data.stats |= stats
        labels = len(data.label_map.names)
        column = data.train.with_format("arrow")["label"].to_numpy()
        counts = np.bincount(column, minlength=labels).tolist()
        data.stats["train_label_counts"] = dict(zip(data.label_map.names, counts, strict=True))
        weights = class_weights(config.train.class_weights, counts, data.label_map.names)
        if weights is not None:
            data.stats["class_weights"] = dict(zip(data.label_map.names, weights, strict=True))
            self.class_weights = torch.tensor(weights)
        if config.checkpoint.best_metric not in METRICS_FOR[min(labels, 3)]:
            raise UserError(
                f"checkpoint.best_metric={config.checkpoint.best_metric} needs two classes; "
                f"the data has {labels}: use loss, accuracy, precision, recall or f1",
                on_every_rank=True,
            )
        return data

    def model(self, config: Config, data: PreparedData) -> torch.nn.Module:
        return SentimentRNN(
            config.model, data.tokenizer.get_vocab_size(), len(data.label_map.names), pad_id(data.tokenizer)
        )

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        epsilon = run.config.train.adversarial_epsilon
        weights = self.class_weights
        if weights is not None and weights.device != batch["labels"].device:  # moved once, not at every step
            weights = self.class_weights = weights.to(batch["labels"].device)
        loss = training_loss(run.model, batch, run.accelerator, epsilon, weights)
        if vat := run.config.train.vat_epsilon:  # on unlabeled texts (as Miyato et al.) or on the batch: vat_texts
            net, accelerator = run.accelerator.unwrap_model(run.model), run.accelerator
            texts = self.unlabeled_batch(run, batch["input_ids"].size(1)) if self.unlabeled is not None else batch
            input_ids, lengths = (texts[key].to(accelerator.device) for key in ("input_ids", "lengths"))
            loss = loss + virtual_adversarial_loss(net, input_ids, lengths, vat, accelerator)
        return loss

    def unlabeled_batch(self, run: Run, width: int) -> dict:
        """As many unlabeled texts as a training batch holds, drawn for this step and process, each
        cut to the batch's ``width`` in tokens (so that the term costs what the batch costs)."""
        if self.batches is None:  # padded as the training batches are, by the training loader's collator
            train = run.config.train
            collate = run.train_loader.collate_fn
            self.batches = RandomBatches(
                self.unlabeled, train.batch_size, collate, train.seed, run.accelerator.process_index
            )
        step, count = self.draw
        self.draw = (run.state.step, count + 1 if step == run.state.step else 0)
        return self.batches.draw(*self.draw, width=width)

    def evaluate(self, run: Run) -> dict:
        return evaluate(run.weights(), run.eval_loader, run.accelerator)

    def summary(self, metrics: dict) -> str:
        return f"loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} f1 {metrics['f1']:.4f}"

    def export(self, run: Run, name: str, step: int, metrics: dict) -> None:
        """best/ or final/: weights, config.json, tokenizer and a model card."""
        metric = run.config.checkpoint.best_metric
        selected = f"the best validation {metric} of the run" if name == "best" else "the last step of the run"
        extra = {
            "truncation": run.config.data.truncation,
            "step": step,
            "metrics": metrics,
            "selected_by": selected,
            "num_parameters": run.info["num_parameters"],
        }
        yaml_text, config = to_yaml(run.config), asdict(run.config)
        card = partial(model_card, config_yaml=yaml_text, config=config, stats=run.data.stats)
        labels, max_length = run.data.label_map.names, run.config.data.max_length
        export_model(run.run_dir / name, run.weights(), run.data.tokenizer, labels, max_length, extra, card)

    def after_training(self, run: Run) -> None:
        """mistakes.jsonl and mistakes.html in the run folder (main process): the validation examples
        the exported model got wrong most confidently, scored as shipped (its tokenizer, truncation
        and weights), with its attention over each text."""
        count, texts = run.config.checkpoint.mistakes, run.data.validation_texts
        folders = [run.run_dir / name for name in ("best", "final") if (run.run_dir / name / "config.json").is_file()]
        if not count or not folders or texts is None:
            return
        model = load_model(folders[0], run.accelerator.device)
        text, labels = texts["text"], torch.tensor(texts["label"])
        probabilities = model.probabilities(text, batch_size=run.config.train.eval_batch_size or 64)
        losses, names = losses_from(probabilities, labels), run.data.label_map.names
        found = top_mistakes(text, probabilities, labels, losses, names, count)
        title = f"The {len(found)} most confident validation mistakes of {folders[0]}"
        write_mistakes(found, str(run.run_dir / "mistakes"), model, title)
        run.info["mistakes"] = {"model": folders[0].name, "written": len(found)}


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
        config.train.adversarial_epsilon = config.train.vat_epsilon = 0.0  # a classifier's regularisers
        config.optim.gradual_unfreezing = 0  # a classifier's fine-tuning (the softmax is the embedding's)
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
