"""Initialise the embedding from a local word-vector file (GloVe or word2vec text format).

Never downloads anything: the user gives a path (``--model.pretrained_embeddings=glove.6B.300d.txt``).
Each line is ``word v1 ... vD``; a word2vec header line ``COUNT D`` is skipped. Tokens of the
tokenizer's vocabulary found in the file get its vector (the file is streamed; only those vectors
are kept), the others keep their random initialisation, and padding stays zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from trainer.data.tokenizer import PAD_TOKEN
from trainer.errors import UserError, check_kind


def load_word_vectors(path: str | Path, tokenizer: Tokenizer, dim: int) -> tuple[dict[int, torch.Tensor], dict]:
    """({token id: vector} for the vocabulary's tokens found in the file, statistics)."""
    path = Path(path)
    check_kind(path, "file", "a GloVe/word2vec text file", "word-vector file")
    if not path.is_file():
        raise UserError(f"word-vector file {path} does not exist; give a local GloVe/word2vec text file")
    vocab = {token: i for token, i in tokenizer.get_vocab().items() if token != PAD_TOKEN}
    found: dict[int, torch.Tensor] = {}
    lines = 0
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header: COUNT DIM
                lines += 1
                if len(parts) != dim + 1:
                    found_dim = len(parts) - 1
                    raise UserError(
                        f"{path}:{number} has {found_dim}-dimensional vectors and model.embedding_dim is {dim}; "
                        f"set --model.embedding_dim={found_dim} or use a file with {dim}-dimensional vectors"
                    )
                token_id = vocab.get(parts[0])
                if token_id is not None and token_id not in found:
                    try:
                        found[token_id] = torch.tensor([float(x) for x in parts[1:]])
                    except ValueError as exc:
                        raise UserError(f"{path}:{number} holds a value that is not a number ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason}); give a GloVe/word2vec text file") from exc
    if lines == 0:
        raise UserError(f"{path} holds no vectors; give a GloVe/word2vec text file")
    stats = {"path": str(path), "vectors_in_file": lines, "vocabulary": len(vocab), "found": len(found)}
    stats["coverage"] = round(len(found) / max(len(vocab), 1), 4)
    return found, stats


def initialise_embedding(embedding: torch.nn.Embedding, vectors: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for token_id, vector in vectors.items():
            embedding.weight[token_id] = vector


def initialise_from_file(embedding: torch.nn.Embedding, path: str | Path, tokenizer: Tokenizer) -> dict:
    """``embedding``'s rows of the tokens found in the word-vector file ``path`` set to their
    vectors (the others keep their initialisation); returns the statistics."""
    vectors, stats = load_word_vectors(path, tokenizer, embedding.embedding_dim)
    initialise_embedding(embedding, vectors)
    return stats
