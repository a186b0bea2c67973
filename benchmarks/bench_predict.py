"""Prediction speed of an exported model on IMDB reviews: reviews per second by batch size.

Times ``load_model(DIR).predict(texts, batch_size=B)`` (tokenising included) on the first N reviews
of ../shared/data/imdb/train.csv.gz, after one warm-up pass, median of repeats.

    python benchmarks/bench_predict.py runs/imdb/best [--reviews 2000] [--batch-sizes 1,32,128]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"

from trainer.inference import load_model  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported model folder")
    parser.add_argument("--data", default=str(IMDB), help="a CSV with a text column (IMDB train by default)")
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} not found; pass --data PATH to a CSV with a text column")
    opener = gzip.open if args.data.endswith(".gz") else open
    with opener(args.data, "rt", encoding="utf-8", newline="") as f:
        texts = [row["text"] for _, row in zip(range(args.reviews), csv.DictReader(f), strict=False)]
    model = load_model(args.model)
    tokens = sum(len(e.ids) for e in model.encode(texts))
    results = {}
    for batch_size in map(int, args.batch_sizes.split(",")):
        subset = texts if batch_size > 1 else texts[:200]  # one at a time is slow: fewer texts
        model.predict(subset[:batch_size], batch_size=batch_size)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model.predict(subset, batch_size=batch_size)
            seconds.append(time.perf_counter() - started)
        results[str(batch_size)] = round(len(subset) / statistics.median(seconds), 1)
    started = time.perf_counter()
    model.encode(texts)
    tokenize_share = (time.perf_counter() - started) / (len(texts) / results[max(results, key=int)])
    return {
        "model": args.model,
        "reviews": len(texts),
        "mean_tokens_per_review": round(tokens / len(texts), 1),
        "max_length": model.max_length,
        "threads": torch.get_num_threads(),
        "reviews_per_s_by_batch_size": results,
        "tokenize_share_at_largest_batch": round(tokenize_share, 3),
    }


if __name__ == "__main__":
    from trainer.hardware import cpu_info, describe_cpu

    print(f"CPU: {describe_cpu()}", file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_info(), **main()}))
