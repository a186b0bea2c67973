"""The training loss: classification, optionally with adversarial training on the embeddings
(plain, along the loss gradient; or virtual, on the predictions alone, so texts without labels count
too)."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from trainer.errors import UserError
from trainer.models.sentiment import class_log_probabilities, classification_loss

VAT_XI = 0.1  # the power iteration's finite difference: the L2 norm of its probe, per sequence


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
    direction = per_sequence_unit(gradient_of(loss, embeddings, accelerator, retain_graph=True))
    with accelerator.autocast():
        logits = net(input_ids, lengths, embeddings=embeddings + epsilon * direction)
    return loss + classification_loss(logits, labels, weights=weights)


def virtual_adversarial_loss(
    net: torch.nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor, epsilon: float, accelerator: Accelerator
) -> torch.Tensor:
    """Virtual adversarial training (Miyato et al. 2016, 2017): the divergence KL(p(x) || p(x + r)),
    averaged over the batch, where r, of L2 norm ``epsilon`` per sequence over its real tokens'
    embeddings, is the direction that changes the predictions most, as one power iteration finds it
    (from a random probe of norm ``VAT_XI``). No label is read, so unlabeled texts train the model
    too. ``net`` is the unwrapped model, run inside the step's graph as in ``training_loss``."""
    with torch.no_grad(), accelerator.autocast():
        clean = class_log_probabilities(net(input_ids, lengths))
    embeddings = net.embed(input_ids)  # (B, T, E)
    real = (torch.arange(input_ids.size(1), device=input_ids.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    probe = (VAT_XI * per_sequence_unit(torch.randn_like(embeddings) * real)).requires_grad_()
    with accelerator.autocast():
        probed = class_log_probabilities(net(input_ids, lengths, embeddings=embeddings.detach() + probe))
    direction = per_sequence_unit(gradient_of(kl_divergence(clean, probed), probe, accelerator) * real)
    with accelerator.autocast():
        logits = net(input_ids, lengths, embeddings=embeddings + epsilon * direction)
    return kl_divergence(clean, class_log_probabilities(logits))


def gradient_of(loss: torch.Tensor, x: torch.Tensor, accelerator: Accelerator, **kwargs) -> torch.Tensor:
    """d ``loss`` / d ``x`` alone (parameters untouched), for a direction: only its direction is used,
    so under fp16 the loss is scaled first (no underflow) and the gradient is left scaled."""
    scaled = accelerator.scaler.scale(loss) if accelerator.scaler is not None else loss
    (gradient,) = torch.autograd.grad(scaled, x, **kwargs)
    return gradient


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(reference || other), both log-probabilities (B, C)."""
    return (reference.exp() * (reference - other)).sum(-1).mean()


def per_sequence_unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, T, E) scaled to L2 norm 1 per sequence (a zero sequence stays zero)."""
    return torch.nn.functional.normalize(x.flatten(1), dim=1).view_as(x)
