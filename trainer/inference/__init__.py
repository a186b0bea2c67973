"""Inference: what a shipped model needs, and nothing of training (no accelerate, datasets or
wandb): the loaded model and ensembles (``loaded``), the exported folder (``folder``), ONNX
(``onnx``), the Hub (``hub``), model cards (``card``), attention explanations (``explain``) and
the worst mistakes (``mistakes``)."""

from trainer.inference.loaded import (
    Ensemble,
    Explanation,
    Prediction,
    SentimentModel,
    add_model_arguments,
    check_same_labels,
    load_model,
)

__all__ = [
    "Ensemble",
    "Explanation",
    "Prediction",
    "SentimentModel",
    "add_model_arguments",
    "check_same_labels",
    "load_model",
]
