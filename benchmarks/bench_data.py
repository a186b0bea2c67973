"""Data pipeline speed on the IMDB train split (25k reviews), against a plain-Python baseline.

Measures, each in a fresh process with a fresh cache:
- training the tokenizer (the `imdb` preset's WordPiece) on the training split;
- tokenising with batched ``datasets.map`` (the trainer's own ``prepare_data``), MB of raw text
  per second, with the tokenizer on 1 thread and on all cores;
- the cached rerun: ``prepare_data`` again, and a whole ``python -m trainer`` start until its
  first training step is about to run;
- the plain-Python way of the Kaggle notebook the seed follows: a regex clean-up, ``split()``,
  a ``Counter`` vocabulary, and a dict look-up per word.

    python benchmarks/bench_data.py [--data ../shared/data/imdb/train.csv.gz]
    python benchmarks/bench_data.py --tiny --out data.json   # a check in seconds, on 600 generated reviews

The `imdb` preset validates on whole movies where the CSV has IMDB's ``movie_id`` column, else on
a random carve. The last line is one JSON object (``--out FILE``: also written there);
``tokenize_speedup`` is ours (all cores) / plain Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, imdb_group_overrides, parse, require_file, tiny_reviews_csv  # noqa: E402


def texts_of(data_path: str) -> list[str]:
    from trainer.config import load_config
    from trainer.data import clean_splits, load_raw_splits

    config = load_config("imdb", [f"--data.train_files={data_path}", *imdb_group_overrides(data_path)])
    splits, _, _ = clean_splits(load_raw_splits(config.data), config.data)
    return list(splits["train"]["text"]) + list(splits["validation"]["text"])


def plain_python(texts: list[str]) -> dict:
    """The Kaggle notebook's tokenisation: clean, split, count, keep the 1000 most common, look up."""

    def preprocess_string(s: str) -> str:
        s = re.sub(r"[^\w\s]", "", s)
        s = re.sub(r"\s+", "", s)
        return re.sub(r"\d", "", s)

    started = time.perf_counter()
    counts = Counter()
    for text in texts:
        for word in text.lower().split():
            word = preprocess_string(word)
            if word:
                counts[word] += 1
    vocab = {w: i + 1 for i, (w, _) in enumerate(counts.most_common(1000))}
    vocab_s = time.perf_counter() - started
    started = time.perf_counter()
    ids = [[vocab[w] for w in (preprocess_string(x) for x in t.lower().split()) if w in vocab] for t in texts]
    tokenize_s = time.perf_counter() - started
    return {"vocab_s": vocab_s, "tokenize_s": tokenize_s, "tokens": sum(map(len, ids))}


def ours(data_path: str, cache: str) -> dict:
    """One fresh process's prepare_data, cold then cached."""
    from trainer.config import load_config
    from trainer.data import prepare_data

    overrides = [f"--data.train_files={data_path}", f"--data.cache_dir={cache}", *imdb_group_overrides(data_path)]
    config = load_config("imdb", overrides)
    started = time.perf_counter()
    cold = prepare_data(config.data, config.tokenizer)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    warm = prepare_data(config.data, config.tokenizer)
    assert warm.stats["train_tokens_cache_hit"] and not cold.stats["train_tokens_cache_hit"]
    return {
        "load_and_train_tokenizer_s": cold.stats["load_seconds"],
        "tokenize_s": cold.stats["tokenize_seconds"],
        "cold_total_s": cold_s,
        "cached_total_s": time.perf_counter() - started,
    }


def in_process(function: str, args: list[str], env: dict) -> dict:
    """``function(*args)`` of this module in a fresh process (its own threads and caches)."""
    code = f"import json, sys, bench_data as b; print(json.dumps(b.{function}(*sys.argv[1:])))"
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, cwd=Path(__file__).parent
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def trainer_start(data_path: str, cache: str, env: dict) -> float:
    """Seconds from launching ``python -m trainer`` (warm cache) until it reports its run folder."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            "imdb",
            f"--data.train_files={data_path}",
            *imdb_group_overrides(data_path),
            f"--data.cache_dir={cache}",
            f"--train.output_dir={out}/run",
            "--train.max_steps=1",
            "--logging.tracker=none",
            "--logging.plots=false",  # after the start this measures
        ]
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        ready = seconds_to_run_folder(proc, started)
        proc.wait()
    return ready


def seconds_to_run_folder(proc: subprocess.Popen, started: float) -> float | None:
    """Seconds from ``started`` until the trainer ``proc`` printed its run-folder line (the end of
    its set-up); reads its output to the end."""
    ready = None
    for line in proc.stdout:
        if line.startswith("run folder") and ready is None:
            ready = time.perf_counter() - started
    return ready


def rounded(values: dict) -> dict:
    return {k: round(v, 2) for k, v in values.items()}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(IMDB), help="IMDB train CSV (text,label)")
    add_options(parser, "600 generated reviews instead of --data: a check of this script, in seconds")
    args = parse(parser)
    with tempfile.TemporaryDirectory() as work:
        if args.tiny:
            args.data = str(tiny_reviews_csv(Path(work) / "reviews.csv"))
        require_file(args.data, "the IMDB train CSV")
        return finish(args, measure(args.data))


def measure(data: str) -> dict:
    from trainer.hardware import cpu_info

    texts = texts_of(data)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    baseline = plain_python(texts)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = {}
    for name, threads in (("1_thread", "1"), ("all_cores", str(len(os.sched_getaffinity(0))))):
        with tempfile.TemporaryDirectory() as cache:
            results[name] = in_process("ours", [data, cache], {**env, "RAYON_NUM_THREADS": threads})
            if name == "all_cores":
                results["trainer_start_cached_s"] = trainer_start(data, cache, env)
    one, all_ = results["1_thread"], results["all_cores"]
    return {
        "cpu": cpu_info(),
        "reviews": len(texts),
        "text_mb": round(megabytes, 1),
        "plain_python": {
            "vocab_s": round(baseline["vocab_s"], 2),
            "tokenize_s": round(baseline["tokenize_s"], 2),
            "tokenize_mb_per_s": round(megabytes / baseline["tokenize_s"], 1),
        },
        "ours_1_thread": rounded(one) | {"tokenize_mb_per_s": round(megabytes / one["tokenize_s"], 1)},
        "ours_all_cores": rounded(all_) | {"tokenize_mb_per_s": round(megabytes / all_["tokenize_s"], 1)},
        "trainer_start_cached_s": round(results["trainer_start_cached_s"], 1),
        "tokenize_speedup": round(baseline["tokenize_s"] / all_["tokenize_s"], 2),
    }


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
