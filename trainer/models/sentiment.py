"""SentimentRNN: embedding -> dropout -> (bi)RNN -> masked additive attention -> dropout -> linear.

A plain ``nn.Module``: it knows nothing about accelerate, datasets or wandb.

Differences from the reference article's model, each a bug fix:
- attention is masked, so padding gets exactly zero weight;
- the backward direction starts at each sequence's last real token (not at the end of the
  padding), so a sequence's output does not depend on how much padding its batch added;
- the model returns logits (the loss applies the sigmoid), which is safe under autocast;
- the hidden state starts at zero for every batch instead of being carried across batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import UserError, check_choice, check_given, check_range
from trainer.hardware import available_memory

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight matrices per recurrent cell
MAX_WIDTH = 65_536  # embedding_dim, hidden_dim: one such LSTM layer alone would hold 34 billion weights
MAX_LAYERS = 64


@dataclass
class ModelConfig:
    cell: str = field(default="lstm", metadata={"help": "recurrent cell: lstm, gru or rnn"})
    embedding_dim: int = field(default=64, metadata={"help": "token embedding size"})
    hidden_dim: int = field(default=64, metadata={"help": "hidden size of each direction"})
    num_layers: int = field(default=1, metadata={"help": "stacked recurrent layers"})
    bidirectional: bool = field(default=True, metadata={"help": "add a backward direction"})
    dropout: float = field(
        default=0.2, metadata={"help": "dropout on embeddings, between layers and before the classifier"}
    )
    embedding_dropout: float = field(
        default=0.0,
        metadata={"help": "drop whole vocabulary entries: a dropped word is zero at every position in the batch"},
    )
    locked_dropout: bool = field(
        default=False,
        metadata={"help": "one dropout mask per sequence on embeddings and between layers, shared by all steps"},
    )
    weight_drop: float = field(
        default=0.0,
        metadata={"help": "drop recurrent (hidden-to-hidden) weights, one mask per batch (AWD-LSTM's DropConnect)"},
    )
    pretrained_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "a local GloVe/word2vec text file whose vectors initialise the embedding (never downloaded; "
            "its dimension must equal embedding_dim)"
        },
    )

    init_from: str | None = field(
        default=None,
        metadata={
            "help": "a language model from python -m trainer.pretrain (its run's best/ or final/): its embedding, "
            "recurrent layers and tokenizer start the classifier (the architecture must be the same)"
        },
    )

    def __post_init__(self) -> None:
        check_choice("model.cell", self.cell, CELLS)
        if self.init_from and self.pretrained_embeddings:
            raise UserError("model.init_from and model.pretrained_embeddings both set the embedding; give one of them")
        for key in ("embedding_dim", "hidden_dim"):
            check_range(f"model.{key}", getattr(self, key), 1, MAX_WIDTH)
        check_range("model.num_layers", self.num_layers, 1, MAX_LAYERS)
        check_given("model.pretrained_embeddings", self.pretrained_embeddings, "a word-vector file, or null")
        check_given("model.init_from", self.init_from, "an exported language model folder, or null")
        check_range("model.dropout", self.dropout, 0.0, 0.99)
        check_range("model.embedding_dropout", self.embedding_dropout, 0.0, 0.99)
        check_range("model.weight_drop", self.weight_drop, 0.0, 0.99)

    def parameter_count(self, vocab_size: int) -> int:
        """The weights of an encoder of this config over ``vocab_size`` tokens, with an attention
        layer over its output (what a classifier adds, about what a language model's head adds)."""
        directions = 2 if self.bidirectional else 1
        out_dim = self.hidden_dim * directions
        count = vocab_size * self.embedding_dim + out_dim * (out_dim + 2)
        for layer in range(self.num_layers):
            input_dim = self.embedding_dim if layer == 0 else out_dim
            count += directions * GATES[self.cell] * self.hidden_dim * (input_dim + self.hidden_dim + 2)
        return count

    def architecture(self) -> dict:
        """The settings that decide the parameters' shapes (not the regularisation)."""
        keys = ("cell", "embedding_dim", "hidden_dim", "num_layers", "bidirectional")
        return {key: getattr(self, key) for key in keys}


def check_fits_in_memory(config: ModelConfig, vocab_size: int) -> None:
    """Refuse, before allocating, a model whose float32 weights alone exceed the memory there is."""
    count = config.parameter_count(vocab_size)
    free = available_memory()
    if free is not None and count * 4 > free:
        sizes = ", ".join(f"model.{k}={getattr(config, k)}" for k in ("embedding_dim", "hidden_dim", "num_layers"))
        raise UserError(
            f"{sizes} with a vocabulary of {vocab_size:,} tokens make a model of {count:,} weights, "
            f"{count * 4 / 2**30:,.1f} GiB in float32, more than the {free / 2**30:,.1f} GiB of memory available; "
            "choose smaller sizes"
        )


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence's first ``lengths[b]`` steps; padding stays where it is.

    x: (B, T, D), lengths: (B,). The operation is its own inverse.
    """
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)  # (1, T)
    lengths = lengths.unsqueeze(1)  # (B, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def autocast_precision(device_type: str) -> str:
    """The autocast in force on ``device_type`` now: "no", "fp16" or "bf16"."""
    if not torch.is_autocast_enabled(device_type):
        return "no"
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(torch.get_autocast_dtype(device_type), "no")


def recurrent_dtype(device_type: str, precision: str) -> torch.dtype:
    """What the recurrent layers compute in, under a run's mixed precision on that device.

    On a GPU, PyTorch's autocast runs cuDNN's RNNs in float16 whatever autocast's dtype is: under
    bf16 that is float16 without a gradient scaler, so there they run in float32 instead (bf16
    elsewhere, TF32 where allowed). fp16 keeps float16, with accelerate's scaler; a CPU's bf16
    autocast runs them in bf16.
    """
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.float32 if device_type == "cuda" else torch.bfloat16
    return torch.float32


class RecurrentEncoder(nn.Module):
    """embedding -> dropout -> (bi)RNN layers: the part of the model that language-model
    pre-training (``trainer.pretrain``) trains and ``--model.init_from`` hands to a classifier."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int = 0) -> None:
        super().__init__()
        if torch.get_default_device().type != "meta":  # on "meta" nothing is allocated: a model's shapes only
            check_fits_in_memory(config, vocab_size)
        self.config = config
        self.pad_id = pad_id
        rnn_cls = CELLS[config.cell]
        directions = 2 if config.bidirectional else 1
        self.out_dim = config.hidden_dim * directions

        self.embedding = nn.Embedding(vocab_size, config.embedding_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(config.dropout)
        # One single-layer, single-direction RNN per layer and direction: the backward direction
        # runs forward over each sequence reversed within its own length (padding-invariant, and on
        # CPU as fast as the fused bidirectional kernel; packing measured several times slower).
        self.layers = nn.ModuleList()
        for layer in range(config.num_layers):
            input_dim = config.embedding_dim if layer == 0 else self.out_dim
            self.layers.append(
                nn.ModuleList(rnn_cls(input_dim, config.hidden_dim, batch_first=True) for _ in range(directions))
            )

    def encode(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) right-padded ids and (B,) lengths (at least 1) -> (B, T, H * directions): each
        position's forward state, then its backward state (which has read the sequence from its end)."""
        x = self.sequence_dropout(self.embed(input_ids) if embeddings is None else embeddings)  # (B, T, E)
        # No flatten_parameters() here: torch flattens each layer for cuDNN when it is moved to the
        # GPU; on cuDNN every call allocates and copies a new buffer, and one between two forwards
        # of a step (adversarial training) changes weights that the first backward still needs.
        for i, directions in enumerate(self.layers):
            if i > 0:
                x = self.sequence_dropout(x)  # between layers, as nn.LSTM(dropout=...) does
            outputs = [self.recur(directions[0], x)]  # (B, T, H)
            if len(directions) == 2:
                reversed_out = self.recur(directions[1], reverse_within_length(x, lengths))
                outputs.append(reverse_within_length(reversed_out, lengths))
            x = torch.cat(outputs, dim=-1)  # (B, T, H * directions)
        return x

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings; in training, each vocabulary entry is dropped with ``embedding_dropout``.

        One mask over the vocabulary per batch (Gal & Ghahramani 2016; AWD-LSTM's embedding
        dropout): a dropped word vanishes everywhere it occurs, the kept ones are scaled by 1/(1-p).
        """
        x = self.embedding(input_ids)
        p = self.config.embedding_dropout
        if not self.training or p == 0:
            return x
        keep = F.dropout(torch.ones(self.embedding.num_embeddings, 1, device=x.device), p)  # 0 or 1/(1-p)
        return x * F.embedding(input_ids, keep).to(x.dtype)  # (B, T, 1) mask gathered per token

    def recur(self, rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
        """One layer and direction over (B, T, D); in training, its recurrent weights are dropped with ``weight_drop``.

        DropConnect on the hidden-to-hidden matrix (Wan et al. 2013; AWD-LSTM's weight drop): one
        mask per batch, shared by every time step and sequence; the kept weights are scaled by 1/(1-p).
        Under bf16 autocast on a GPU the layer runs in float32 (``recurrent_dtype``).
        """
        if x.is_cuda and recurrent_dtype("cuda", autocast_precision("cuda")) == torch.float32:
            with torch.autocast("cuda", enabled=False):
                return self._recur(rnn, x.float())
        return self._recur(rnn, x)

    def _recur(self, rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
        p = self.config.weight_drop
        if not self.training or p == 0:
            return rnn(x)[0]
        dropped = {"weight_hh_l0": F.dropout(rnn.weight_hh_l0, p)}
        return torch.func.functional_call(rnn, dropped, (x,))[0]

    def sequence_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout on (B, T, D) inputs to a recurrent layer: per element, or locked (one mask per sequence)."""
        p = self.dropout.p
        if not self.config.locked_dropout or not self.training or p == 0:
            return self.dropout(x)
        return x * F.dropout(x.new_ones(x.size(0), 1, x.size(2)), p)  # (B, 1, D): one mask per sequence


class SentimentRNN(RecurrentEncoder):
    def __init__(self, config: ModelConfig, vocab_size: int, num_labels: int, pad_id: int = 0) -> None:
        super().__init__(config, vocab_size, pad_id)
        self.num_labels = num_labels
        out_dim = self.out_dim
        self.attention = nn.Sequential(nn.Linear(out_dim, out_dim), nn.Tanh(), nn.Linear(out_dim, 1))
        # Two classes use a single logit (BCE-with-logits); more use one logit per class.
        self.classifier = nn.Linear(out_dim, 1 if num_labels == 2 else num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: torch.Tensor,
        return_attention: bool = False,
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids: (B, T) right-padded, lengths: (B,) real tokens per row.

        ``embeddings`` (B, T, E), when given, replaces ``embed(input_ids)``: adversarial training
        runs the model on perturbed embeddings.

        Returns logits (B, 1) for two classes or (B, C), and with ``return_attention`` also the
        attention weights (B, T) in float32: they sum to 1 over real tokens and are 0 on padding.
        """
        lengths = lengths.clamp(min=1)  # an empty text still gets one (padding) step to attend to
        x = self.encode(input_ids, lengths, embeddings)  # (B, T, H * directions)
        logits, weights = self.classify(x, lengths)
        return (logits, weights) if return_attention else logits

    def classify(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, H * directions) and lengths (B,), at least 1 -> (logits, attention weights)."""
        mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        # Softmax in float32 with the most negative finite value on padding: no overflow under
        # fp16/bf16 autocast, and exp() of the masked scores is exactly 0.
        scores = self.attention(x).squeeze(-1).float()  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        weights = scores.softmax(dim=-1)  # (B, T)
        context = torch.bmm(weights.unsqueeze(1).to(x.dtype), x).squeeze(1)  # (B, H * directions)
        return self.classifier(self.dropout(context)), weights


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits for one logit (two classes), cross-entropy otherwise; computed in float32.

    ``weights`` (C,) multiplies each example's loss by its class's weight; the mean stays over
    examples (as scikit-learn's ``class_weight``). For one logit this is BCE with
    ``pos_weight = weights[1] / weights[0]``, scaled by ``weights[0]``.
    """
    logits = logits.float()
    if logits.size(-1) == 1:
        losses = F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float(), reduction="none")
    else:
        losses = F.cross_entropy(logits, labels, reduction="none")
    if weights is not None:
        losses = losses * weights.to(losses.device)[labels]
    return losses.mean() if reduction == "mean" else losses


def class_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) or (B, C) logits -> (B, C) log-probabilities in float32, in ``class_probabilities``'
    order: one logit is the positive class's against 0 for the negative's."""
    logits = logits.float()
    if logits.size(-1) == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
    return torch.log_softmax(logits, dim=-1)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) or (B, C) logits -> (B, C) probabilities, C >= 2."""
    logits = logits.float()
    if logits.size(-1) == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=-1)
    return logits.softmax(dim=-1)
