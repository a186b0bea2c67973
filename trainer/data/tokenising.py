"""The tokenizer (read from ``tokenizer.path``, from the cache, or trained on the training split)
and the tokenised splits, written once into the cache (in several processes for large ones) and
read from it by every later run on the same data and tokenizer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer

from trainer.data.config import ROWS_PER_PROCESS
from trainer.data.sources import _digest
from trainer.data.tokenizer import TokenizerConfig, Truncator, load_tokenizer, save_tokenizer, train_tokenizer
from trainer.errors import write_error


def _text_batches(ds: datasets.Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(ds), batch_size):
        yield ds[start : start + batch_size]["text"]


def tokenizer_sample(train: datasets.Dataset, config: TokenizerConfig) -> datasets.Dataset:
    """The training texts the tokenizer learns from: all of them, or ``config.train_sample`` drawn
    with ``config.sample_seed`` (in file order, for sequential reads)."""
    if config.train_sample is None or config.train_sample >= len(train):
        return train
    generator = torch.Generator().manual_seed(config.sample_seed)
    chosen = torch.randperm(len(train), generator=generator)[: config.train_sample].sort().values
    return train.select(chosen.numpy())


def build_tokenizer(train: datasets.Dataset, config: TokenizerConfig, cache_dir: Path, data_key: str) -> tuple:
    """The tokenizer from ``config.path``, the cache, or trained on ``train``.

    Returns (tokenizer, source) with source "file", "cache" or "trained".
    """
    if config.path:
        return load_tokenizer(config.path), "file"
    path = cache_dir / "tokenizers" / f"{_digest([data_key, asdict(config)])}.json"
    if path.is_file():
        return load_tokenizer(path), "cache"
    tokenizer = train_tokenizer(_text_batches(tokenizer_sample(train, config)), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, path)  # whole or not at all
    return tokenizer, "trained"


def tokenize_processes(rows: int, requested: int | None) -> int:
    """``data.num_proc``, or where it is None one process per ``ROWS_PER_PROCESS`` rows, at most
    one per core this process may run on (two processes tokenise 1.4x faster than the tokenizer's
    own threads on 2 cores, docs/large_datasets.md)."""
    if requested is None:
        requested = min(len(os.sched_getaffinity(0)), rows // ROWS_PER_PROCESS)
    return max(1, min(requested, rows))


def tokenized_shards(cache_file: Path, num_proc: int) -> list[Path]:
    """The cache files of a ``datasets.map`` over ``num_proc`` processes."""
    if num_proc == 1:
        return [cache_file]
    return [cache_file.with_name(f"{cache_file.stem}_{i:05d}_of_{num_proc:05d}.arrow") for i in range(num_proc)]


def cached_num_proc(cache_file: Path) -> int | None:
    """The process count of a complete set of cache files for ``cache_file``, if there is one (a
    cache written on a machine with other cores is still a cache)."""
    if cache_file.is_file():
        return 1
    for path in sorted(cache_file.parent.glob(f"{cache_file.stem}_00000_of_*.arrow")):
        count = int(path.stem.rsplit("_of_", 1)[1])
        if all(shard.is_file() for shard in tokenized_shards(cache_file, count)):
            return count
    return None


def tokenize_split(
    ds: datasets.Dataset,
    tokenizer: Tokenizer,
    max_length: int,
    cache_file: Path,
    num_proc: int | None = 1,
    truncation: str = "head",
) -> tuple[datasets.Dataset, bool]:
    """Batched ``datasets.map`` tokenisation cached in ``cache_file``; returns (dataset, cache hit).

    With ``num_proc`` > 1 (None: ``tokenize_processes``), that many forked processes tokenise a
    shard each (cached as ``<name>_0000i_of_0000n.arrow``), each with the tokenizer's own threads
    off: a tokenizer that has used its thread pool before the fork would otherwise deadlock or warn.
    A complete cache is read whatever process count wrote it.
    """
    cached = cached_num_proc(cache_file)
    hit = cached is not None
    num_proc = cached if hit else tokenize_processes(len(ds), num_proc)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # datasets writes each cache file under a temporary name (tmpXXXXXXXX) and renames it once
    # complete: a failed write (a full disk) is never read back as a cache.
    before = set(os.listdir(cache_file.parent))
    kwargs = {"cache_file_name": str(cache_file), "load_from_cache_file": True}
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    if num_proc > 1:
        kwargs["num_proc"] = num_proc
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the forked processes
    try:
        return tokenize(ds, tokenizer, max_length, truncation, **kwargs), hit
    except Exception as exc:
        error = write_error(exc, cache_file)  # while the disk is still full
        for name in set(os.listdir(cache_file.parent)) - before:  # the temporaries a failed write left
            if name.startswith("tmp"):
                Path(cache_file.parent, name).unlink(missing_ok=True)
        if error is None:
            raise
        raise error from exc
    finally:
        if num_proc > 1 and previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif num_proc > 1:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def tokenize(
    ds: datasets.Dataset, tokenizer: Tokenizer, max_length: int, truncation: str = "head", **map_kwargs
) -> datasets.Dataset:
    """``text`` -> ``input_ids`` (at most max_length, kept by ``truncation``), ``length`` and
    ``truncated``, by batched map."""
    truncator = Truncator(tokenizer, max_length, truncation)

    def encode(batch: dict) -> dict:
        encodings = truncator.encode(batch["text"])
        ids = [encoding.ids for encoding in encodings]
        truncated = [encoding.truncated for encoding in encodings]
        return {"input_ids": ids, "length": [len(x) for x in ids], "truncated": truncated}

    return ds.map(encode, batched=True, batch_size=1000, remove_columns=["text"], desc="Tokenising", **map_kwargs)
