"""Accuracy of a preset over several seeds, next to TF-IDF + logistic regression on the same split.

Trains the preset once per seed (each a fresh ``python -m trainer`` process; ``--train.seed``
changes the weights, dropout and batch order, not the validation split), reads the best
validation accuracy each run selected (``run_info.json``), and reports mean ± standard deviation
and the training time. The bag-of-words reference (``bow_baseline.py``: TF-IDF over 1-2-grams,
sublinear tf, logistic regression C=4; needs the ``bench`` extra) is fitted on exactly the same
train/validation split.

With ``--cv-folds K`` it runs K-fold cross-validation instead (one seed): fold k validates on
the k-th of K folds of the training data (``--data.cv_folds=K --data.cv_fold=k``) and reports the
final model's accuracy on it (no model selection on the held-out fold), and the reference is
fitted per fold too. ``--report final`` reports the last model with seeds as well: the honest
figure when the validation split is also the reported one (SST-2's official split), since the
selected model was chosen on it.

    python benchmarks/accuracy.py --seeds 1,2,3 -- --config imdb --data.train_files=../shared/data/imdb/train.csv.gz
    python benchmarks/accuracy.py --cv-folds 10 -- --config rt_polarity \
        --data.train_files=../shared/data/rt_polarity/all.csv

Arguments after -- go to the trainer. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(seed: int, trainer_args: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "trainer", *trainer_args, f"--train.seed={seed}", f"--train.output_dir={out}",
               "--logging.tracker=none", "--checkpoint.save_final=false"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"seed {seed} failed:\n{done.stderr[-2000:]}")
    info = json.loads((out / "run_info.json").read_text())
    return {
        "seed": seed,
        "best_accuracy": info["best_metrics"]["accuracy"],
        "best_step": info["best_step"],
        "final_accuracy": info["final_metrics"]["accuracy"],
        "train_seconds": info["train_seconds"],
        "command_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds")
    parser.add_argument("--no-bow", action="store_true", help="skip the TF-IDF + logistic regression reference")
    parser.add_argument("--cv-folds", type=int, default=0, help="K-fold cross-validation instead of seeds")
    parser.add_argument(
        "--report",
        choices=("best", "final"),
        help="whose accuracy to report: each run's selected model (best; the default with seeds) or its last "
        "one (final; the default with --cv-folds, and the one to report when the validation split is the "
        "reported split, as SST-2's, since the selection has seen it)",
    )
    parser.add_argument("trainer_args", nargs="*", help="the trainer's arguments, after --")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    # (seed, extra trainer arguments) per run: seeds, or the folds of one seed.
    plan = [(seed, []) for seed in seeds]
    if args.cv_folds:
        plan = [(seeds[0], [f"--data.cv_folds={args.cv_folds}", f"--data.cv_fold={k}"]) for k in range(args.cv_folds)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, (seed, extra) in enumerate(plan):
            runs.append(train(seed, [*args.trainer_args, *extra], Path(tmp) / f"run-{number}") | {"args": extra})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    # Cross-validation reports the last model on each held-out fold; seeds report the selected one.
    report = args.report or ("final" if args.cv_folds else "best")
    accuracies = [r[f"{report}_accuracy"] for r in runs]
    finals = [r["final_accuracy"] for r in runs]
    result = {
        "trainer_args": args.trainer_args,
        "runs": runs,
        "reported_model": report,
        "accuracy_mean": round(statistics.mean(accuracies), 4),
        "accuracy_std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
        "train_seconds_median": statistics.median(r["train_seconds"] for r in runs),
    }
    result["final_accuracy_mean"] = round(statistics.mean(finals), 4)
    result["final_accuracy_std"] = round(statistics.stdev(finals), 4) if len(finals) > 1 else 0.0
    if not args.no_bow:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bow_baseline import main as bow

        references = [bow([*args.trainer_args, *extra]) for _, extra in (plan if args.cv_folds else plan[:1])]
        reference = statistics.mean(r["tfidf_lr_bigram_accuracy"] for r in references)
        result["tfidf_lr_bigram_accuracy"] = round(reference, 4)
        result["tfidf_lr_bigram_seconds"] = sum(r["tfidf_lr_bigram_seconds"] for r in references)
        result["validation_examples"] = [r["validation_examples"] for r in references]
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
