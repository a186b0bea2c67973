"""The training loss: classification, optionally with adversarial training on the embeddings."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from trainer.errors import UserError
from trainer.models.sentiment import classification_loss


def class_weights(spec: str, counts: list[int], names: list[str]) -> list[float] | None:
    """``--train.class_weights``: none (None), balanced (n / (C * n_c), from the training split's
    label counts, the same on every process whatever its shard holds) or one weight per class."""
    if spec == "none":
        return None
    if spec == "balanced":
        missing = [name for name, count in zip(names, counts, strict=True) if count == 0]
        if missing:
            raise UserError(
                f"train.class_weights=balanced needs every class in the training split, and {', '.join(missing)} "
                "has none; give the weights (--train.class_weights=1,2,...) or add examples",
                on_every_rank=True,
            )
        total = sum(counts)
        return [total / (len(counts) * count) for count in counts]
    weights = [float(w) for w in spec.split(",")]  # checked by TrainConfig
    if len(weights) != len(names):
        raise UserError(
            f"train.class_weights has {len(weights)} weights for {len(names)} classes ({', '.join(names)}); "
            "give one per class, in that order",
            on_every_rank=True,
        )
    return weights


def training_loss(
    model: torch.nn.Module,
    batch: dict,
    accelerator: Accelerator,
    epsilon: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The classification loss (``weights``: per class); with ``epsilon``, plus the loss on
    adversarially perturbed embeddings.

    Adversarial training (Miyato et al. 2017): each sequence's embeddings move by ``epsilon`` (L2
    norm over the whole sequence) along the gradient of its loss, and the loss there is added. The
    perturbed pass runs on the unwrapped model inside the same graph, so DDP sees one forward and
    one backward per step, and every gradient is reduced once.
    """
    input_ids, lengths, labels = batch["input_ids"], batch["lengths"], batch["labels"]
    if not epsilon:
        return classification_loss(model(input_ids, lengths), labels, weights=weights)
    net = accelerator.unwrap_model(model)
    embeddings = net.embed(input_ids)  # (B, T, E)
    loss = classification_loss(model(input_ids, lengths, embeddings=embeddings), labels, weights=weights)
    scaled = accelerator.scaler.scale(loss) if accelerator.scaler is not None else loss  # no fp16 underflow
    (gradient,) = torch.autograd.grad(scaled, embeddings, retain_graph=True)  # parameters untouched
    direction = torch.nn.functional.normalize(gradient.flatten(1), dim=1).view_as(gradient)  # unit L2 per sequence
    with accelerator.autocast():
        logits = net(input_ids, lengths, embeddings=embeddings + epsilon * direction)
    return loss + classification_loss(logits, labels, weights=weights)
