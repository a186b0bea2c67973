"""The training loss: classification, optionally with adversarial training on the embeddings."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from trainer.model import classification_loss


def training_loss(model: torch.nn.Module, batch: dict, accelerator: Accelerator, epsilon: float) -> torch.Tensor:
    """The classification loss; with ``epsilon``, plus the loss on adversarially perturbed embeddings.

    Adversarial training (Miyato et al. 2017): each sequence's embeddings move by ``epsilon`` (L2
    norm over the whole sequence) along the gradient of its loss, and the loss there is added. The
    perturbed pass runs on the unwrapped model inside the same graph, so DDP sees one forward and
    one backward per step, and every gradient is reduced once.
    """
    input_ids, lengths, labels = batch["input_ids"], batch["lengths"], batch["labels"]
    if not epsilon:
        return classification_loss(model(input_ids, lengths), labels)
    net = accelerator.unwrap_model(model)
    embeddings = net.embed(input_ids)  # (B, T, E)
    loss = classification_loss(model(input_ids, lengths, embeddings=embeddings), labels)
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0  # no fp16 underflow
    (gradient,) = torch.autograd.grad(loss * scale, embeddings, retain_graph=True)  # parameters untouched
    direction = torch.nn.functional.normalize(gradient.flatten(1), dim=1).view_as(gradient)  # unit L2 per sequence
    with accelerator.autocast():
        logits = net(input_ids, lengths, embeddings=embeddings + epsilon * direction)
    return loss + classification_loss(logits, labels)
