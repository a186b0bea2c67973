"""What a run trains for. The set-up, the loop, checkpoints, resume, signals and trackers are the
same for every task; a task says what differs: its data, its model, its loss, its validation and
what it exports. ``Classification`` is ``python -m trainer``'s; ``trainer.pretrain`` has the
language model's."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

import numpy as np
import torch

from trainer.config import Config, to_yaml
from trainer.data.preparation import Coordination, PreparedData, prepare_data
from trainer.data.tokenizer import pad_id
from trainer.errors import UserError
from trainer.inference.card import model_card
from trainer.inference.folder import export_model
from trainer.inference.loaded import load_model
from trainer.inference.mistakes import losses_from, top_mistakes, write_mistakes
from trainer.metrics import METRICS_FOR
from trainer.models.sentiment import SentimentRNN
from trainer.training.loss import class_weights, training_loss
from trainer.training.run import Run
from trainer.training.validation import evaluate


class Classification:
    """The sentiment classifier: labelled data, ``SentimentRNN``, classification metrics, best/ and
    final/ as model folders that ``trainer.evaluate``, ``trainer.predict`` and ``load_model`` read."""

    name = "classification"
    run_suffix = ""

    def configure(self, config: Config) -> Config:
        return config

    def __init__(self) -> None:
        self.class_weights: torch.Tensor | None = None

    def data(self, config: Config, coordination: Coordination) -> PreparedData:
        data = prepare_data(config.data, config.tokenizer, coordination)
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
        return training_loss(run.model, batch, run.accelerator, epsilon, weights)

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
