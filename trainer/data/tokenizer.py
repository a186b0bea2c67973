"""Tokenizer (Hugging Face ``tokenizers``): train on the training split, or load a tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from trainer.errors import (
    MAX_COUNT,
    MAX_SEED,
    UserError,
    check_choice,
    check_given,
    check_kind,
    check_range,
    write_text,
)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
# Trained tokenizers put these at fixed ids.
PAD_ID, UNK_ID = 0, 1
TOKENIZER_MODELS = ("wordpiece", "wordlevel", "bpe")
MAX_VOCAB = 10_000_000  # tokens: an embedding row each
MAX_TOKENS = 1 << 20  # max_length: tokens a text is cut to


@dataclass
class TokenizerConfig:
    path: str | None = field(
        default=None, metadata={"help": "an existing tokenizer.json to use instead of training one"}
    )
    model: str = field(default="wordlevel", metadata={"help": "wordlevel (whole words), wordpiece or bpe"})
    vocab_size: int = field(default=2000, metadata={"help": "largest vocabulary, special tokens included"})
    min_frequency: int = field(default=2, metadata={"help": "drop tokens seen fewer times in training texts"})
    lowercase: bool = field(default=True, metadata={"help": "lowercase before tokenising"})
    train_sample: int | None = field(
        default=200_000,
        metadata={
            "help": "train on at most this many training texts, a seeded sample, so the time stays flat on big "
            "corpora (null: all of them)"
        },
    )
    sample_seed: int = field(default=0, metadata={"help": "seed of that sample"})

    def __post_init__(self) -> None:
        check_choice("tokenizer.model", self.model, TOKENIZER_MODELS)
        if self.train_sample is not None:
            check_range("tokenizer.train_sample", self.train_sample, 1, MAX_COUNT)
        check_range("tokenizer.vocab_size", self.vocab_size, 3, MAX_VOCAB)
        check_range("tokenizer.min_frequency", self.min_frequency, 1, MAX_COUNT)
        check_range("tokenizer.sample_seed", self.sample_seed, 0, MAX_SEED)
        check_given("tokenizer.path", self.path, "a tokenizer.json, or null to train one")


def build_normalizer(lowercase: bool) -> normalizers.Normalizer:
    steps = [
        normalizers.NFKC(),
        normalizers.Replace(Regex(r"(?i)<br\s*/?>"), " "),  # IMDB's line breaks
        normalizers.Replace(Regex(r"[\x00-\x08\x0b-\x1f\x7f]"), " "),  # stray control characters
    ]
    if lowercase:
        steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps)


def train_tokenizer(texts: Iterator[list[str]], config: TokenizerConfig) -> Tokenizer:
    """Train on batches of texts (the training split only)."""
    special = [PAD_TOKEN, UNK_TOKEN]
    kwargs = {"vocab_size": config.vocab_size, "min_frequency": config.min_frequency, "special_tokens": special}
    if config.model == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        trainer = trainers.WordPieceTrainer(**kwargs, show_progress=False)
    elif config.model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        trainer = trainers.BpeTrainer(**kwargs, show_progress=False)
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        trainer = trainers.WordLevelTrainer(**kwargs, show_progress=False)
    tokenizer.normalizer = build_normalizer(config.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert tokenizer.token_to_id(PAD_TOKEN) == PAD_ID and tokenizer.token_to_id(UNK_TOKEN) == UNK_ID
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if (path / "tokenizer.json").is_file():  # a model or run folder
        raise UserError(f"tokenizer file {path} is a folder; give the tokenizer.json in it, {path / 'tokenizer.json'}")
    check_kind(path, "file", "a tokenizer.json, or leave tokenizer.path unset", "tokenizer file")
    if not path.is_file():
        raise UserError(f"tokenizer file {path} does not exist; give a tokenizer.json or leave tokenizer.path unset")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a valid tokenizer.json ({str(exc).splitlines()[0]})") from exc
    if tokenizer.token_to_id(PAD_TOKEN) is None:
        raise UserError(f"tokenizer {path} has no {PAD_TOKEN} token; add it or train a new tokenizer")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> None:
    """Whole or not at all (``write_text``): a full disk leaves no cut tokenizer.json."""
    write_text(path, tokenizer.to_str())


TRUNCATIONS = ("head", "tail", "head_tail")


@dataclass
class Encoded:
    """One text's tokens after truncation; ``tokens`` and ``offsets`` (characters) only when asked for."""

    ids: list[int]
    truncated: bool
    tokens: list[str] = field(default_factory=list)
    offsets: list[tuple[int, int]] = field(default_factory=list)


def head_tail_sizes(max_length: int) -> tuple[int, int]:
    """The tokens ``head_tail`` keeps from the start and from the end: a quarter and the rest
    (Sun et al. 2019 kept 128 + 382 of BERT's 510 for IMDB)."""
    head = max_length // 4
    return head, max_length - head


class Truncator:
    """Encodes texts to at most ``max_length`` token ids, in Rust: the first tokens (``head``), the
    last (``tail``) or both (``head_tail``). Training, validation and prediction all use it, so a
    model reads its texts the way it was trained to. ``tokenizer`` itself is left as it is."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, truncation: str = "head") -> None:
        check_choice("data.truncation", truncation, TRUNCATIONS)
        self.max_length, self.truncation = max_length, truncation
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        if truncation == "head_tail":
            self.tokenizer.no_truncation()  # every token, then the two ends are kept
        else:
            self.tokenizer.enable_truncation(max_length, direction="left" if truncation == "tail" else "right")

    def encode(self, texts: list[str], offsets: bool = False) -> list[Encoded]:
        """Without ``offsets``, ``encode_batch_fast`` (no character offsets: about a quarter faster)."""
        encodings = self.tokenizer.encode_batch(texts) if offsets else self.tokenizer.encode_batch_fast(texts)
        if self.truncation != "head_tail":
            return [
                Encoded(e.ids, bool(e.overflowing), e.tokens if offsets else [], e.offsets if offsets else [])
                for e in encodings
            ]
        head, tail = head_tail_sizes(self.max_length)

        def ends(xs: list) -> list:
            return list(xs) if len(xs) <= self.max_length else [*xs[:head], *xs[len(xs) - tail :]]

        return [
            Encoded(
                ends(e.ids),
                len(e.ids) > self.max_length,
                ends(e.tokens) if offsets else [],
                [tuple(o) for o in ends(e.offsets)] if offsets else [],
            )
            for e in encodings
        ]


def padded_width(longest: int, multiple: int = 1, buckets_per_octave: int = 0) -> int:
    """The width a batch whose longest row has ``longest`` tokens is padded to.

    With ``buckets_per_octave`` n, rounded up to one of n evenly spaced widths per doubling of
    length (16, 18, ..., 30, 32, 36, ... for n = 8): at most 1/n more tokens, and a run meets a few
    dozen shapes instead of one per length (on a CPU each new shape costs oneDNN new kernels).
    Then rounded up to ``multiple``.
    """
    width = max(1, longest)
    if buckets_per_octave:
        step = max(1, (1 << (width.bit_length() - 1)) // buckets_per_octave)
        width = -(-width // step) * step
    return -(-width // multiple) * multiple


def pad_batch(
    sequences: list[list[int]], pad: int, multiple: int = 1, buckets_per_octave: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, T) right-padded to ``padded_width`` of the longest; lengths (B,))."""
    lengths = torch.tensor([len(ids) for ids in sequences], dtype=torch.long)
    width = padded_width(max(map(len, sequences), default=1), multiple, buckets_per_octave)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return input_ids, lengths


def pad_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(PAD_TOKEN)
