"""``prepare_data``: load, clean, split and tokenise for a run, the main process first at each
stage (it fills the caches the others read), and ``prepare_unlabeled`` for unlabeled texts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import datasets
from tokenizers import Tokenizer

from trainer.data.cleaning import as_text, check_columns, clean_splits
from trainer.data.config import DataConfig
from trainer.data.labels import LabelMap
from trainer.data.sources import _digest, _file_identity, _load_files, expand_files, load_raw_splits, source_identity
from trainer.data.splits import _present, cached_overlap
from trainer.data.tokenising import build_tokenizer, tokenize_split
from trainer.data.tokenizer import TokenizerConfig
from trainer.errors import check_writable_dir


@dataclass
class PreparedData:
    train: datasets.Dataset  # columns: input_ids, length, label
    validation: datasets.Dataset
    tokenizer: Tokenizer
    label_map: LabelMap
    stats: dict
    validation_texts: datasets.Dataset | None = None  # the validation split before tokenising: text, label


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sentiment-trainer"


@dataclass
class Coordination:
    """How ``prepare_data`` works with the other processes; the defaults are a single process.

    ``from_main(value)`` returns the main process's ``value`` on every process (a broadcast).
    """

    is_main: bool = True
    main_process_first: Callable[[], AbstractContextManager] = nullcontext
    from_main: Callable[[object], object] = lambda value: value


def prepare_data(
    config: DataConfig, tokenizer_config: TokenizerConfig, coordination: Coordination | None = None
) -> PreparedData:
    """Load, clean, tokenise.

    The main process goes first at each stage and fills the caches; the tokenizer is the main
    process's on every process (tokenizer training is not deterministic across processes, and
    other nodes may not share the cache folder).
    """
    co = coordination or Coordination()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    check_writable_dir(cache_dir, "--data.cache_dir", create=True)
    datasets.disable_progress_bars()  # we report one line per stage instead
    started = time.perf_counter()
    with co.main_process_first():
        identity = source_identity(config)  # checks that local files exist
        raw = load_raw_splits(config)
        if config.source == "hub":  # a new upload of an unpinned dataset must not hit old caches
            identity["fingerprint"] = raw["train"]._fingerprint
        data_key = _digest(identity)
        splits, label_map, stats = clean_splits(raw, config)
        stats["validation_rows_in_train"] = cached_overlap(splits, cache_dir / "overlap" / f"{data_key}.json")
        if co.is_main:
            tokenizer, stats["tokenizer_source"] = build_tokenizer(
                splits["train"], tokenizer_config, cache_dir, data_key
            )
    tokenizer_json = co.from_main(tokenizer.to_str() if co.is_main else None)
    if not co.is_main:
        tokenizer, stats["tokenizer_source"] = Tokenizer.from_str(tokenizer_json), "main process"
    stats["load_seconds"] = round(time.perf_counter() - started, 2)
    with co.main_process_first():
        tokens_key = _digest([data_key, tokenizer_json, *config.tokens_identity()])
        tokenized = {}
        for split, ds in splits.items():
            tokenized[split], stats[f"{split}_tokens_cache_hit"] = tokenize_split(
                ds,
                tokenizer,
                config.max_length,
                cache_dir / "tokenized" / f"{tokens_key}-{split}.arrow",
                config.num_proc,
                config.truncation,
            )
    stats["tokenize_seconds"] = round(time.perf_counter() - started - stats["load_seconds"], 2)
    return PreparedData(tokenized["train"], tokenized["validation"], tokenizer, label_map, stats, splits["validation"])


def prepare_unlabeled(
    config: DataConfig, tokenizer: Tokenizer, coordination: Coordination | None = None
) -> tuple[datasets.Dataset | None, dict]:
    """``data.unlabeled_files`` cleaned and tokenised as the training split is (``label`` -1), or
    None without them; and their statistics. Cached like the splits; the main process goes first."""
    if not config.unlabeled_files:
        return None, {}
    co = coordination or Coordination()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    option = "--data.unlabeled_files"
    with co.main_process_first():
        paths = expand_files(config.unlabeled_files, option)
        identity = [_file_identity(paths, option), config.text_column, config.text_separator, config.csv_delimiter]
        ds = _load_files(paths, config.csv_delimiter)
        check_columns(ds, config.text_columns, option, "--data.text_column", training=True)
        ds = as_text(ds, config, option, "--data.text_column", kept=[])
        rows = len(ds)
        ds = ds.filter(lambda b: [isinstance(t, str) and _present(t) for t in b["text"]], batched=True)
        ds = ds.map(lambda b: {"label": [-1] * len(b["text"])}, batched=True)
        key = _digest([identity, tokenizer.to_str(), *config.tokens_identity()])
        cache_file = cache_dir / "tokenized" / f"{key}-unlabeled.arrow"
        tokenized, hit = tokenize_split(
            ds, tokenizer, config.max_length, cache_file, config.num_proc, config.truncation
        )
    stats = {"unlabeled_examples": len(tokenized), "unlabeled_dropped_empty": rows - len(ds)}
    return tokenized, stats | {"unlabeled_tokens_cache_hit": hit}
