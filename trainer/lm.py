"""Language-model pre-training of the classifier's encoder, and starting a classifier from it.

The encoder (embedding and recurrent layers, ``RecurrentEncoder``) learns to predict each next
token with its forward direction and each previous token with its backward direction, on the
training texts and any unlabeled ones (Dai & Le 2015; ULMFiT, Howard & Ruder 2018). Each
direction's states feed an adaptive softmax (Grave et al. 2017): the frequent words get a full
softmax, the rarer ones share small clusters, so a 20,000-word output layer costs a few times
less than a full softmax on a CPU. ``--model.init_from`` then starts a classifier's embedding and
recurrent layers (and its tokenizer) from the exported language model.

A stacked bidirectional encoder cannot be trained this way: its second layer reads both
directions of the first, so each direction would see the token it is asked to predict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from trainer.errors import UserError, check_range
from trainer.model import ModelConfig, RecurrentEncoder

ENCODER_PREFIXES = ("embedding.", "layers.")


@dataclass
class PretrainConfig:
    epochs: int = field(default=2, metadata={"help": "language-model epochs (python -m trainer.pretrain)"})
    max_steps: int | None = field(default=None, metadata={"help": "stop pre-training after this many steps"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate of pre-training (optim.* gives the rest)"})
    cutoffs: list[int] = field(
        default_factory=lambda: [2000, 10000],
        metadata={
            "help": "adaptive softmax: the most frequent cutoffs[0] tokens get a full softmax, each later range a "
            "cluster (those past the vocabulary are dropped; none left: a full softmax)"
        },
    )
    div_value: float = field(default=4.0, metadata={"help": "adaptive softmax: each cluster's size shrinks by this"})

    def __post_init__(self) -> None:
        check_range("pretrain.epochs", self.epochs, 1)
        if self.max_steps is not None:
            check_range("pretrain.max_steps", self.max_steps, 1)
        check_range("pretrain.lr", self.lr, 0.0)
        check_range("pretrain.div_value", self.div_value, 1.0)
        if any(c < 1 for c in self.cutoffs) or sorted(set(self.cutoffs)) != list(self.cutoffs):
            raise UserError(f"pretrain.cutoffs={self.cutoffs} must be increasing positive numbers, e.g. [2000,10000]")


class OutputLayer(nn.Module):
    """Per-token negative log-likelihood of the targets: an adaptive softmax, or a full one when
    the vocabulary is smaller than the first cutoff."""

    def __init__(self, hidden_dim: int, vocab_size: int, cutoffs: list[int], div_value: float) -> None:
        super().__init__()
        cutoffs = [c for c in cutoffs if c < vocab_size - 1]
        self.adaptive = (
            nn.AdaptiveLogSoftmaxWithLoss(hidden_dim, vocab_size, cutoffs, div_value=div_value) if cutoffs else None
        )
        self.full = None if cutoffs else nn.Linear(hidden_dim, vocab_size)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.adaptive is not None:
            return -self.adaptive(hidden, targets).output
        return F.cross_entropy(self.full(hidden), targets, reduction="none")


class LanguageModel(RecurrentEncoder):
    """The encoder with one output layer per direction; ``forward`` gives per-sequence sums of the
    token losses and the number of predicted tokens."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int, pretrain: PretrainConfig) -> None:
        super().__init__(config, vocab_size, pad_id)
        if config.bidirectional and config.num_layers > 1:
            raise UserError(
                f"language-model pre-training needs model.num_layers=1 with a bidirectional encoder (it has "
                f"{config.num_layers}: a second layer reads both directions, so each would see the token it "
                "predicts); or set model.bidirectional=false",
                on_every_rank=True,
            )
        directions = 2 if config.bidirectional else 1
        self.heads = nn.ModuleList(
            OutputLayer(config.hidden_dim, vocab_size, pretrain.cutoffs, pretrain.div_value) for _ in range(directions)
        )

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids, (B,) lengths -> ((B,) summed token losses, (B,) tokens predicted), float32.

        The forward state at position p predicts token p + 1; the backward state at p + 1 (which has
        read the sequence from its end down to p + 1) predicts token p; for every p + 1 < length.
        """
        lengths = lengths.clamp(min=1)
        states = self.dropout(self.encode(input_ids, lengths))  # (B, T, H * directions)
        steps = torch.arange(input_ids.size(1) - 1, device=input_ids.device).unsqueeze(0)
        pairs = steps + 1 < lengths.unsqueeze(1)  # (B, T - 1): (p, p + 1) both real tokens
        rows = pairs.nonzero()[:, 0]
        hidden = self.config.hidden_dim
        sums = torch.zeros(input_ids.size(0), device=input_ids.device)
        for direction, head in enumerate(self.heads):
            if direction == 0:
                inputs, targets = states[:, :-1, :hidden][pairs], input_ids[:, 1:][pairs]
            else:
                inputs, targets = states[:, 1:, hidden:][pairs], input_ids[:, :-1][pairs]
            with torch.autocast(device_type=input_ids.device.type, enabled=False):  # the softmax in float32
                sums = sums.index_add(0, rows, head(inputs.float(), targets))
        return sums, pairs.sum(1).float() * len(self.heads)


def language_model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The mean token loss of a batch. Every output parameter takes part (with weight 0 where no
    target fell in its cluster): DDP's static graph expects a gradient for each, every step."""
    sums, tokens = model(batch["input_ids"], batch["lengths"])
    unused = sum(p.sum() for p in _heads(model).parameters()) * 0.0
    return sums.sum() / tokens.sum().clamp(min=1) + unused


def _heads(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model).heads  # through DDP's wrapper


@torch.no_grad()
def evaluate_language_model(model: nn.Module, loader, accelerator) -> dict:
    """Validation loss (mean token negative log-likelihood, both directions) and perplexity, exact
    on any number of processes (``gather_for_metrics`` drops the repeated examples)."""
    training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in loader:
        sums, tokens = accelerator.gather_for_metrics(model(batch["input_ids"], batch["lengths"]))
        total += sums.double().sum().cpu()
        count += tokens.double().sum().cpu()
    model.train(training)
    loss = float(total / count.clamp(min=1))
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(min(loss, 50.0))))}


def read_pretrained(folder: str) -> tuple[dict, Path]:
    """(config.json, tokenizer path) of a folder ``--model.init_from`` may start from: a language
    model's export, or a classifier's (its encoder is just as usable)."""
    path = Path(folder)
    exports = [name for name in ("best", "final") if (path / name / "config.json").is_file()]
    if not (path / "config.json").is_file():
        if exports:
            choices = " or ".join(str(path / name) for name in exports)
            raise UserError(f"--model.init_from={folder} is a run folder; give {choices}")
        raise UserError(
            f"--model.init_from={folder} is not a model folder (no config.json); give the best/ or final/ of a "
            "python -m trainer.pretrain run"
        )
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        missing = [key for key in ("model", "vocab_size") if key not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / 'config.json'} is not a valid model config ({type(exc).__name__}: {exc})") from exc
    return meta, path / "tokenizer.json"


def architecture_problem(meta: dict, config: ModelConfig, folder: str) -> str | None:
    """Why a classifier of ``config`` cannot take the pretrained encoder described by ``meta``, or None."""
    saved = ModelConfig(**{**meta["model"], "init_from": None, "pretrained_embeddings": None}).architecture()
    changed = {k: (v, getattr(config, k)) for k, v in saved.items() if getattr(config, k) != v}
    if not changed:
        return None
    keep = " ".join(
        f"--model.{k}={str(old).lower() if isinstance(old, bool) else old}" for k, (old, _) in changed.items()
    )
    what = ", ".join(f"{k} {old} (this run: {new})" for k, (old, new) in changed.items())
    return f"--model.init_from={folder} was trained with {what}; train with {keep}, or pre-train this architecture"


def start_from_pretrained(config) -> None:
    """Check ``--model.init_from`` against this run's model (every process, from the main one's
    reading of the folder) and train with its tokenizer: the embedding's rows are its tokens."""
    from trainer.collective import main_decides  # accelerate: not imported with the config

    folder = config.model.init_from
    meta, tokenizer = main_decides(partial(read_pretrained, folder))
    problem = architecture_problem(meta, config.model, folder)
    if problem:
        raise UserError(problem, on_every_rank=True)
    given = config.tokenizer.path
    if given and Path(given).resolve() != Path(tokenizer).resolve():
        raise UserError(
            f"--tokenizer.path={given} is not the tokenizer of --model.init_from={folder}, whose embedding rows "
            "are its tokens; leave tokenizer.path unset",
            on_every_rank=True,
        )
    config.tokenizer.path = str(tokenizer)


def initialise_encoder(model: RecurrentEncoder, folder: str) -> int:
    """Copy the embedding and recurrent layers of the model in ``folder`` into ``model``; returns
    the number of values copied."""
    weights = load_file(str(Path(folder) / "model.safetensors"))
    encoder = {k: v for k, v in weights.items() if k.startswith(ENCODER_PREFIXES)}
    missing, _ = model.load_state_dict(encoder, strict=False)
    left = [k for k in missing if k.startswith(ENCODER_PREFIXES)]
    if left or not encoder:
        raise UserError(f"{folder}/model.safetensors lacks the encoder's {', '.join(left[:3]) or 'weights'}")
    return sum(v.numel() for v in encoder.values())
