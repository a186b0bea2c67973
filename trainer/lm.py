"""Language-model pre-training of the classifier's encoder (Dai & Le, 2015).

With ``--train.objective=lm`` the run trains the embedding and the recurrent layers of a
``SentimentRNN`` to predict each next token of the training texts (the forward direction) and
each previous token (the backward direction), with labels unused. A classifier run then starts
from those weights with ``--model.init_from=<pre-training run>/best``.

The output layer is an adaptive softmax (``nn.AdaptiveLogSoftmaxWithLoss``, Grave et al. 2017)
over the vocabulary sorted by training frequency: a full softmax over 20k tokens would cost ten
times the LSTM itself on a CPU. Its cut-offs put the most frequent tokens in the head.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from trainer.checkpoint import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME
from trainer.errors import UserError
from trainer.model import ModelConfig, SentimentRNN, reverse_within_length
from trainer.tokenizer import TokenizerConfig

ENCODER_PREFIXES = ("embedding.", "layers.")
DIV_VALUE = 4


def check_pretrainable(model: SentimentRNN) -> None:
    config = model.config
    if config.bidirectional and config.num_layers > 1:
        raise UserError(
            f"language-model pre-training of a bidirectional encoder needs model.num_layers=1 (got "
            f"{config.num_layers}: its upper layers would see the tokens they predict); use one layer or "
            "model.bidirectional=false",
            on_every_rank=True,
        )


def frequency_order(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """rank[token_id]: the token's place in the frequency order of ``token_ids`` (all training
    tokens, flat; 0 = most frequent)."""
    counts = torch.bincount(token_ids.long(), minlength=vocab_size)
    order = torch.sort(counts, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(vocab_size)
    return rank


def cutoffs_for(vocab_size: int, hidden_dim: int) -> list[int]:
    """Adaptive-softmax clusters: the 2,000 most frequent tokens, the next 8,000, the rest; a
    cluster is dropped where its projection (``hidden_dim / 4**k``) would have no dimension left."""
    cutoffs = sorted({min(2000, vocab_size // 4), min(10000, vocab_size // 2)})
    cutoffs = [c for c in cutoffs if 0 < c < vocab_size - 1]
    return [c for k, c in enumerate(cutoffs, start=1) if hidden_dim // DIV_VALUE**k >= 1]


class LanguageModel(nn.Module):
    """A ``SentimentRNN``'s embedding and recurrent layers (shared, same parameter names) plus an
    adaptive-softmax output layer; attention and classifier are left out, so every parameter gets
    a gradient (DDP needs no unused-parameter search)."""

    def __init__(self, encoder: SentimentRNN, token_rank: torch.Tensor) -> None:
        super().__init__()
        check_pretrainable(encoder)
        self.config = encoder.config
        self.pad_id = encoder.pad_id
        self.embedding, self.layers, self.dropout = encoder.embedding, encoder.layers, encoder.dropout
        self._encode = encoder.encode  # uses exactly the modules above
        self.register_buffer("token_rank", token_rank.clone())
        vocab_size = encoder.embedding.num_embeddings
        self.head = nn.AdaptiveLogSoftmaxWithLoss(
            encoder.config.hidden_dim,
            vocab_size,
            cutoffs_for(vocab_size, encoder.config.hidden_dim),
            div_value=float(DIV_VALUE),
        )

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed negative log-likelihood per row (B,), predicted tokens per row (B,)), float32.

        Position t of the forward direction predicts token t+1; the backward direction, reading
        each sequence reversed within its length, predicts the token before. Padding is never
        read or predicted.
        """
        lengths = lengths.clamp(min=1)
        forward_out, backward_out = self._encode(input_ids, lengths, keep_reversed=True)
        steps = torch.arange(input_ids.size(1) - 1, device=input_ids.device).unsqueeze(0)
        predicted = steps < (lengths - 1).unsqueeze(1)  # (B, T-1): position t has a token t+1
        streams = [(forward_out, input_ids)]
        if backward_out is not None:
            reversed_ids = reverse_within_length(input_ids.unsqueeze(-1), lengths).squeeze(-1)
            streams.append((backward_out, reversed_ids))
        nll = torch.zeros(input_ids.size(0), device=input_ids.device, dtype=torch.float32)
        rows = torch.arange(input_ids.size(0), device=input_ids.device).unsqueeze(1).expand_as(predicted)[predicted]
        for hidden, ids in streams:
            hidden = self.dropout(hidden[:, :-1][predicted])  # (N, H)
            targets = self.token_rank[ids[:, 1:][predicted]]  # (N,)
            log_probs = self.head(hidden, targets).output  # (N,)
            nll = nll.index_add(0, rows, -log_probs.float())
        # A batch may have no target in a rare-token cluster; its weights still join the graph
        # (with zero gradient) so that DDP, which expects every parameter, reduces them too.
        nll = nll + 0.0 * sum(p.sum() for p in self.head.tail.parameters())
        return nll, predicted.sum(1) * len(streams)


def lm_loss(nll: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per predicted token of the batch."""
    return nll.sum() / tokens.sum().clamp(min=1)


def encoder_state(lm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pre-trained weights a classifier takes over: embedding and recurrent layers."""
    return {k: v for k, v in lm_state.items() if k.startswith(ENCODER_PREFIXES)}


ENCODER_KEYS = ("cell", "embedding_dim", "hidden_dim", "num_layers", "bidirectional")


def resolve_init_from(model_config: ModelConfig, tokenizer_config: TokenizerConfig) -> dict | None:
    """Check ``model.init_from`` against this run's config; the run then uses its tokenizer.

    Returns the pre-trained folder's config.json contents, or None without ``init_from``.
    """
    if not model_config.init_from:
        return None
    folder = Path(model_config.init_from)
    config_path, weights, tokenizer = folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / TOKENIZER_NAME
    if not (config_path.is_file() and weights.is_file() and tokenizer.is_file()):
        raise UserError(
            f"model.init_from={folder} is not a pre-trained encoder folder (it needs {CONFIG_NAME}, {WEIGHTS_NAME} "
            f"and {TOKENIZER_NAME}); give the best/ or final/ folder of a train.objective=lm run",
            on_every_rank=True,
        )
    meta = json.loads(config_path.read_text(encoding="utf-8"))
    if meta.get("architecture") != "LanguageModel":
        raise UserError(
            f"model.init_from={folder} holds a {meta.get('architecture', 'unknown')} model, not a pre-trained "
            "encoder; give the best/ or final/ folder of a train.objective=lm run",
            on_every_rank=True,
        )
    ours = dataclasses.asdict(model_config)
    theirs = meta["model"]
    differ = [f"model.{k}={ours[k]} (pre-trained: {theirs[k]})" for k in ENCODER_KEYS if ours[k] != theirs[k]]
    if differ:
        raise UserError(
            f"model.init_from={folder} was pre-trained with other sizes: {', '.join(differ)}; use its sizes",
            on_every_rank=True,
        )
    if tokenizer_config.path and Path(tokenizer_config.path).resolve() != tokenizer.resolve():
        raise UserError(
            f"tokenizer.path={tokenizer_config.path} is not the tokenizer of model.init_from={folder}; drop "
            "tokenizer.path (the pre-trained encoder's tokenizer is used)",
            on_every_rank=True,
        )
    tokenizer_config.path = str(tokenizer)
    return meta


def load_encoder(model: SentimentRNN, folder: str | Path) -> int:
    """Copy the pre-trained embedding and recurrent weights into ``model``; returns the count of
    tensors copied. Attention and classifier keep their fresh initialisation."""
    state = encoder_state(load_file(str(Path(folder) / WEIGHTS_NAME)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    left = [k for k in missing if k.startswith(ENCODER_PREFIXES)]
    if left or unexpected:
        raise UserError(
            f"{folder}/{WEIGHTS_NAME} does not hold a full encoder (missing {left[:3]}); re-run pre-training"
        )
    return len(state)
