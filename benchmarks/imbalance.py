"""Class imbalance: a preset trained on a skewed split, without and with class weights or the balanced sampler.

Writes, from a labelled CSV with a group column (IMDB train with ``movie_id`` by default):
- a validation split of whole movies (``--data.split_seed``'s order), balanced by dropping reviews
  of the larger class, about ``--validation`` reviews;
- a training split of the other movies with every negative and only 1 positive in ``--ratio``+1
  (90/10 for ``--ratio 9``; ``--minority negative`` swaps the classes).
Then trains the preset once per variant (fresh ``python -m trainer`` processes): ``none``,
``balanced`` (``--train.class_weights=balanced``) and ``sampler`` (``--data.sampler=balanced``,
with ``--sampler-epochs`` epochs: its epochs are shorter, as many examples of each class as the
minority has), and scores each run's ``best/`` on the balanced validation split with
``python -m trainer.evaluate --json``: accuracy, balanced accuracy, macro-F1, per-class recall.

    python benchmarks/imbalance.py -- --config imdb --data.max_length=256
    python benchmarks/imbalance.py --variants sampler --sampler-epochs 40 -- --config imdb --data.max_length=256

    python benchmarks/imbalance.py --tiny --out imbalance.json   # a check in seconds, on generated reviews

Arguments after -- go to the trainer. ``--tiny``: 800 generated reviews (8 per movie), 100 held
out, the ``balanced`` variant only, ``--config tiny`` before the trainer arguments, unless told
otherwise. The last line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import atexit
import csv
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import GROUP_COLUMN, add_options, csv_columns, finish, parse, require_file, tiny_reviews_csv  # noqa: E402

from trainer.errors import UserError  # noqa: E402


def write_splits(source: Path, out: Path, ratio: int, validation: int, seed: int, minority: str) -> dict:
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    by_movie = defaultdict(list)
    for row in rows:
        by_movie[row["movie_id"]].append(row)
    movies = sorted(by_movie)
    random.Random(seed).shuffle(movies)
    held, train = [], []
    for movie in movies:
        (held if len(held) < validation else train).extend(by_movie[movie])
    rng = random.Random(seed)
    minority_label = "1" if minority == "positive" else "0"
    classes = {label: [r for r in held if r["label"] == label] for label in ("0", "1")}
    smaller = min(len(c) for c in classes.values())
    balanced = [r for c in classes.values() for r in rng.sample(c, smaller)]
    majority = [r for r in train if r["label"] != minority_label]
    minority_rows = [r for r in train if r["label"] == minority_label]
    skewed = majority + rng.sample(minority_rows, min(len(minority_rows), len(majority) // ratio))
    rng.shuffle(skewed)
    for name, split in (("train", skewed), ("validation", balanced)):
        with (out / f"{name}.csv").open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label", "movie_id"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(split)
    return {
        "train_examples": len(skewed),
        "train_minority": sum(r["label"] == minority_label for r in skewed),
        "validation_examples": len(balanced),
        "minority": minority,
    }


def check_movie_ids(data: str) -> None:
    """Stops now where ``data`` is missing or has no movie ids to hold out whole movies by."""
    require_file(data, "a CSV with text, label and movie_id")
    if GROUP_COLUMN not in (columns := csv_columns(data)):
        raise UserError(
            f"{data} has no {GROUP_COLUMN} column (found: {', '.join(columns) or 'none'}); "
            "this benchmark holds out whole movies: give a CSV with text, label and movie_id"
        )


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(IMDB), help="a labelled CSV with text, label (0/1) and movie_id")
    parser.add_argument("--ratio", type=int, default=9, help="majority examples per minority example")
    parser.add_argument("--minority", choices=("positive", "negative"), default="positive")
    parser.add_argument("--validation", type=int, help="reviews held out before balancing (default 2500; 100 tiny)")
    parser.add_argument("--split-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="--train.seed of both runs")
    parser.add_argument("--variants", help="of none, balanced, sampler (default none,balanced; balanced with --tiny)")
    parser.add_argument("--sampler-epochs", type=int, help="--train.epochs of the sampler run (default: the preset's)")
    parser.add_argument("trainer_args", nargs="*")
    add_options(parser, "800 generated reviews, the balanced variant: a check of this script, in seconds")
    args = parse(parser)
    tiny = {"validation": 100, "variants": "balanced"}
    full = {"validation": 2500, "variants": "none,balanced"}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    options = {"none": [], "balanced": ["--train.class_weights=balanced"], "sampler": ["--data.sampler=balanced"]}
    if unknown := [v for v in args.variants.split(",") if v not in options]:
        raise UserError(f"--variants: {', '.join(unknown)} is not one of {', '.join(options)}")
    if not args.tiny:
        check_movie_ids(args.data)
    work = Path(tempfile.mkdtemp(prefix="imbalance-"))
    if args.tiny:  # nothing to look at afterwards: the folder goes
        atexit.register(shutil.rmtree, work, True)
        args.data = str(tiny_reviews_csv(work / "reviews.csv", rows=800, per_movie=8))
        args.trainer_args = ["--config", "tiny", *args.trainer_args]
    split = write_splits(Path(args.data), work, args.ratio, args.validation, args.split_seed, args.minority)
    print(f"splits in {work}: {split}", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    data = [f"--data.train_files={work / 'train.csv'}", f"--data.validation_files={work / 'validation.csv'}"]
    results = {}
    if args.sampler_epochs:
        options["sampler"].append(f"--train.epochs={args.sampler_epochs}")
    for variant in args.variants.split(","):
        out = work / f"run-{variant}"
        command = [sys.executable, "-m", "trainer", *args.trainer_args, *data, *options[variant]]
        command += [f"--train.seed={args.seed}", f"--train.output_dir={out}"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"training {variant} ({' '.join(options[variant]) or 'no option'}) failed:\n{done.stderr[-3000:]}")
        evaluate = [sys.executable, "-m", "trainer.evaluate", "--model", str(out / "best")]
        evaluate += ["--data", str(work / "validation.csv"), "--json"]
        scored = json.loads(subprocess.run(evaluate, env=env, capture_output=True, text=True, check=True).stdout)
        info = json.loads((out / "run_info.json").read_text())
        results[variant] = {
            key: round(scored[key], 4) for key in ("accuracy", "balanced_accuracy", "macro_f1", "f1", "loss")
        } | {
            "recall": {name: round(row["recall"], 4) for name, row in scored["per_class"].items()},
            "class_weights": info["data"].get("class_weights"),
            "examples_per_epoch": info["examples_per_epoch"],
            "total_steps": info["total_steps"],
            "train_seconds": round(seconds),
        }
        print(f"{variant}: {results[variant]}", file=sys.stderr, flush=True)
    from trainer.hardware import cpu_info

    report = {"split": split, "trainer_args": args.trainer_args, "seed": args.seed, "results": results}
    return finish(args, {"cpu": cpu_info(), **report})


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
