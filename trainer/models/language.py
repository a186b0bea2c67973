"""Language-model pre-training of the classifier's encoder: the model and its loss.

The encoder (embedding and recurrent layers, ``RecurrentEncoder``) learns to predict each next
token with its forward direction and each previous token with its backward direction, on the
training texts and any unlabeled ones (Dai & Le 2015; ULMFiT, Howard & Ruder 2018). Both
directions' states feed one sampled softmax tied to the embedding, so a 20,000-word output layer
costs less than the encoder on a CPU. ``trainer.training.pretrained`` starts a classifier from
the exported language model.

A stacked bidirectional encoder cannot be trained this way: its second layer reads both
directions of the first, so each direction would see the token it is asked to predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trainer.errors import MAX_COUNT, UserError, check_choice, check_range
from trainer.models.sentiment import ModelConfig, RecurrentEncoder

ENCODER_PREFIXES = ("embedding.", "layers.")
MAX_SAMPLES = 1 << 16  # pretrain.samples: a (tokens, samples) score matrix each step
STAGES = ("never", "unlabeled", "always")


@dataclass
class PretrainConfig:
    stage: str = field(
        default="never",
        metadata={
            "help": "a classifier run (python -m trainer) pre-trains its encoder first, as a language model in "
            "OUTPUT_DIR/pretrain, then starts from it: never; unlabeled (when --data.unlabeled_files is given); always"
        },
    )
    finetune_lr_scale: float | None = field(
        default=None,
        metadata={
            "help": "after the pre-training stage, the classifier's embedding and recurrent layers train at this "
            "multiple of optim.lr (ULMFiT's discriminative rates); unset: optim.*_lr_scale as given"
        },
    )
    epochs: int = field(default=2, metadata={"help": "language-model epochs (python -m trainer.pretrain)"})
    max_steps: int | None = field(default=None, metadata={"help": "stop pre-training after this many steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate of pre-training (optim.* gives the rest)"})
    samples: int = field(
        default=256,
        metadata={
            "help": "sampled softmax: each step scores the true next token against this many tokens drawn from the "
            "training split's unigram distribution (to the power 0.75), not against the whole vocabulary"
        },
    )
    tie_embeddings: bool = field(
        default=True,
        metadata={"help": "the output layer's word vectors are the embedding's (projected if sizes differ)"},
    )

    def __post_init__(self) -> None:
        check_choice("pretrain.stage", self.stage, STAGES)
        if self.finetune_lr_scale is not None:
            check_range("pretrain.finetune_lr_scale", self.finetune_lr_scale, 0.0)
        check_range("pretrain.epochs", self.epochs, 1, MAX_COUNT)
        if self.max_steps is not None:
            check_range("pretrain.max_steps", self.max_steps, 1, MAX_COUNT)
        check_range("pretrain.lr", self.lr, 0.0)
        check_range("pretrain.samples", self.samples, 1, MAX_SAMPLES)


class SampledSoftmax(nn.Module):
    """Per-token negative log-likelihood of the targets against ``samples`` tokens drawn from
    ``q`` = (unigram count + 1) ** 0.75 (padding never), each logit corrected by -log(samples * q) so
    that the loss estimates the full softmax's (Jean et al. 2015). Training draws new tokens every
    call; evaluation uses one fixed draw, so validation losses compare across epochs and runs.

    On a CPU this is what makes a 20,000-word output affordable: for 19,000 tokens (64 reviews of
    300) the full softmax took 6.6 s forward and backward, an adaptive softmax 2.6 s, this with
    256 samples 0.11 s (2 cores of an AMD EPYC), against 0.35 s for the whole encoder.
    """

    def __init__(self, hidden_dim: int, embedding: nn.Embedding, counts: torch.Tensor, config: PretrainConfig) -> None:
        super().__init__()
        vocab, dim = embedding.weight.shape
        self.tied = config.tie_embeddings
        self.embedding = [embedding]  # not a submodule: its weight is the encoder's, saved once
        self.weight = None if self.tied else nn.Parameter(torch.randn(vocab, hidden_dim) * hidden_dim**-0.5)
        self.projection = nn.Linear(hidden_dim, dim, bias=False) if self.tied and dim != hidden_dim else None
        self.bias = nn.Parameter(torch.zeros(vocab))
        q = (counts.double().clamp(min=0) + 1) ** 0.75  # add-one: a token unseen in training may be a target
        q[embedding.padding_idx] = 0.0
        self.samples = config.samples
        self.filler = int(q.argmax())  # a token that may be a target, for the positions that have none
        self.register_buffer("q", (q / q.sum()).float())
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("eval_samples", torch.multinomial(self.q, self.samples, True, generator=generator))

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.embedding[0].weight if self.tied else self.weight
        if self.projection is not None:
            hidden = self.projection(hidden)
        drawn = torch.multinomial(self.q, self.samples, True) if self.training else self.eval_samples
        correction = torch.log(self.q * self.samples)
        true = (hidden * weight[targets]).sum(-1) + self.bias[targets] - correction[targets]  # (N,)
        sampled = hidden @ weight[drawn].t() + (self.bias[drawn] - correction[drawn])  # (N, S)
        sampled = sampled.masked_fill(drawn.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))  # the target itself
        return -torch.cat([true.unsqueeze(1), sampled], 1).log_softmax(1)[:, 0]


def check_pretrainable(config: ModelConfig) -> None:
    """A stacked bidirectional encoder cannot be pre-trained (see above): refused at start-up."""
    if config.bidirectional and config.num_layers > 1:
        raise UserError(
            f"language-model pre-training needs model.num_layers=1 with a bidirectional encoder (it has "
            f"{config.num_layers}: a second layer reads both directions, so each would see the token it "
            "predicts); or set model.bidirectional=false",
            on_every_rank=True,
        )


class LanguageModel(RecurrentEncoder):
    """The encoder with an output layer shared by both directions (as ELMo's); ``forward`` gives
    per-sequence sums of the token losses and the number of predicted tokens."""

    def __init__(
        self, config: ModelConfig, vocab_size: int, pad_id: int, pretrain: PretrainConfig, counts: torch.Tensor
    ) -> None:
        check_pretrainable(config)
        super().__init__(config, vocab_size, pad_id)
        self.directions = 2 if config.bidirectional else 1
        self.output = SampledSoftmax(config.hidden_dim, self.embedding, counts, pretrain)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids, (B,) lengths -> ((B,) summed token losses, (B,) tokens predicted), float32.

        The forward state at position p predicts token p + 1; the backward state at p + 1 (which has
        read the sequence from its end down to p + 1) predicts token p; for every p + 1 < length.
        """
        lengths = lengths.clamp(min=1)
        states = self.dropout(self.encode(input_ids, lengths))  # (B, T, H * directions)
        steps = torch.arange(input_ids.size(1) - 1, device=input_ids.device).unsqueeze(0)
        pairs = steps + 1 < lengths.unsqueeze(1)  # (B, T - 1): (p, p + 1) both real tokens
        hidden = self.config.hidden_dim
        sums = torch.zeros(input_ids.size(0), device=input_ids.device)
        # Every position is scored and the padded ones are zeroed: selecting the real ones (a boolean
        # mask, nonzero) would make the host wait for the device at every step. Length-grouped
        # batches have little padding.
        for direction in range(self.directions):
            if direction == 0:
                inputs, targets = states[:, :-1, :hidden], input_ids[:, 1:]  # (B, T - 1, H), (B, T - 1)
            else:
                inputs, targets = states[:, 1:, hidden:], input_ids[:, :-1]
            targets = targets.masked_fill(~pairs, self.output.filler)  # padding is no target: any real token
            with torch.autocast(device_type=input_ids.device.type, enabled=False):  # the softmax in float32
                losses = self.output(inputs.float().flatten(0, 1), targets.flatten())  # (B * (T - 1),)
            sums = sums + (losses.view_as(targets) * pairs).sum(1)
        return sums, pairs.sum(1).float() * self.directions


def token_counts(input_ids, vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in an Arrow list column of ids, chunk by chunk."""
    import numpy as np
    import pyarrow.compute as pc

    total = np.zeros(vocab_size, dtype=np.int64)
    for chunk in input_ids.chunks:
        total += np.bincount(pc.list_flatten(chunk).to_numpy(zero_copy_only=False), minlength=vocab_size)[:vocab_size]
    return torch.from_numpy(total)


def language_model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The mean token loss of a batch."""
    sums, tokens = model(batch["input_ids"], batch["lengths"])
    return sums.sum() / tokens.sum().clamp(min=1)


@torch.no_grad()
def evaluate_language_model(model: nn.Module, loader, accelerator) -> dict:
    """Validation loss (the mean token loss of both directions, against the output layer's fixed
    evaluation sample) and the tokens it was taken over, exact on any number of processes
    (``gather_for_metrics`` drops the repeated examples)."""
    training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in loader:
        sums, tokens = accelerator.gather_for_metrics(model(batch["input_ids"], batch["lengths"]))
        total += sums.double().sum().cpu()
        count += tokens.double().sum().cpu()
    model.train(training)
    loss = float(total / count.clamp(min=1))
    return {"loss": loss, "tokens": int(count)}
