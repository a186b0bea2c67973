"""Tokenising the IMDB training split (25k reviews) through the trainer's own pipeline.

Reports loading, tokenizer training and batched ``datasets.map`` tokenisation (time and MB/s
of raw text), cold and then from the cache, in a fresh cache folder.

    python benchmarks/tokenize_imdb.py [--data ../shared/data/imdb/train.csv.gz]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from trainer.config import load_config
from trainer.data import prepare_data

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "train.csv.gz"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT), help="IMDB train CSV (text,label)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        config = load_config("imdb", [f"--data.train_files={args.data}", f"--data.cache_dir={cache}"])
        started = time.perf_counter()
        cold = prepare_data(config.data, config.tokenizer)
        cold_seconds = time.perf_counter() - started
        started = time.perf_counter()
        warm = prepare_data(config.data, config.tokenizer)
        warm_seconds = time.perf_counter() - started
    assert warm.stats["train_tokens_cache_hit"] and not cold.stats["train_tokens_cache_hit"]
    reviews = len(cold.train) + len(cold.validation)
    # Raw text size: the texts the tokeniser read (train split for the tokenizer, both for map).
    megabytes = sum(len(t.encode()) for t in _texts(config)) / 1e6
    return {
        "reviews": reviews,
        "text_mb": round(megabytes, 1),
        "load_and_train_tokenizer_s": cold.stats["load_seconds"],
        "tokenize_s": cold.stats["tokenize_seconds"],
        "tokenize_mb_per_s": round(megabytes / cold.stats["tokenize_seconds"], 1),
        "cold_total_s": round(cold_seconds, 2),
        "cached_total_s": round(warm_seconds, 2),
        "tokens": sum(cold.train["length"]) + sum(cold.validation["length"]),
    }


def _texts(config) -> list[str]:
    from trainer.data import clean_splits, load_raw_splits

    splits, _, _ = clean_splits(load_raw_splits(config.data), config.data)
    return list(splits["train"]["text"]) + list(splits["validation"]["text"])


if __name__ == "__main__":
    print(json.dumps(main()))
