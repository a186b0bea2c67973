"""Accuracy of a preset over several seeds, next to TF-IDF + logistic regression on the same split.

Trains the preset once per seed (each a fresh ``python -m trainer`` process; ``--train.seed``
changes the weights, dropout and batch order, not the validation split), reads the best
validation accuracy each run selected (``run_info.json``), and reports mean ± standard deviation
and the training time. The bag-of-words reference (``bow_baseline.py``: TF-IDF over 1-2-grams,
sublinear tf, logistic regression C=4; needs the ``bench`` extra) is fitted on exactly the same
train/validation split.

With ``--cv-folds K`` it runs K-fold cross-validation instead (seed 1 unless ``--seeds`` says
otherwise; each seed trains on every fold): fold k validates on the k-th of K folds of the
training data (``--data.cv_folds=K --data.cv_fold=k``) and reports the final model's accuracy on
it (no model selection on the held-out fold), and the reference is fitted per fold too.
``--report final`` reports the last model with seeds as well: the honest figure when the
validation split is also the reported one (SST-2's official split), since the selected model was
chosen on it.

``--split-seeds 1,2,3`` repeats all of it on several validation splits (``--data.split_seed``: another
carve-out, or other folds), so that one lucky split cannot carry a decision; with a
``--data.group_column`` (the ``imdb`` preset's ``movie_id``) every split keeps each group on one side.
The reference is fitted on every split, and both are reported as mean ± std over all of them.

``--pretrain`` first pre-trains a language model on each validation split's training split
(``python -m trainer.pretrain`` with the same arguments, plus ``--pretrain-args``) and starts every
run of that split from it (``--model.init_from``); its time is reported beside the training time.

A preset with a pre-training stage (``pretrain.stage``, e.g. ``imdb`` with ``--data.unlabeled_files``)
pre-trains in every run; that stage's time is reported as ``pretrain_seconds`` too.

``--folds 8,9`` runs only those folds of the K (to split a cross-validation over machines or
sessions; the per-fold lines on stderr of each part are the data to join).

``--ensemble`` also reports the ensemble of the seeds' reported models (the average of their class
probabilities, as ``python -m trainer.evaluate --model A --model B ...``): one on the validation
split, or one per fold with ``--cv-folds``.

    python benchmarks/accuracy.py --seeds 1 --split-seeds 1,2,3 -- --config imdb \
        --data.train_files=../shared/data/imdb/train.csv.gz
    python benchmarks/accuracy.py --cv-folds 10 -- --config rt_polarity \
        --data.train_files=../shared/data/rt_polarity/all.csv
    python benchmarks/accuracy.py --cv-folds 10 --seeds 1,2,3 --ensemble -- --config rt_polarity \
        --data.train_files=../shared/data/rt_polarity/all.csv

    python benchmarks/accuracy.py --tiny --out accuracy.json   # a check in seconds: tiny preset, 1 epoch, seed 1

Arguments after -- go to the trainer (``--tiny`` puts ``--config tiny --train.epochs=1`` before
them). The last line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_cli import add_options, finish, parse  # noqa: E402


def run_module(module: str, seed: int, args: list[str], out: Path) -> dict:
    """One run of ``module`` (trainer or trainer.pretrain) in a fresh process; its run_info.json."""
    command = [sys.executable, "-m", module, *args, f"--train.seed={seed}", f"--train.output_dir={out}"]
    command += ["--logging.tracker=none", "--logging.plots=false"]  # the run folder is temporary
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{module} seed {seed} failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "run_info.json").read_text())


def pretrain(trainer_args: list[str], out: Path) -> dict:
    """The language model every run of a split starts from."""
    info = run_module("trainer.pretrain", 1, trainer_args, out)
    best = info["best_metrics"]
    return {
        "pretrain_seconds": info["train_seconds"],
        "pretrain_loss": best["loss"],
        "pretrain_step": info["best_step"],
    }


def train(seed: int, trainer_args: list[str], out: Path, keep_final: bool) -> dict:
    started = time.perf_counter()
    info = run_module("trainer", seed, [*trainer_args, f"--checkpoint.save_final={str(keep_final).lower()}"], out)
    stage = {}
    if (out / "pretrain" / "run_info.json").is_file():  # the preset's pre-training stage ran first
        lm = json.loads((out / "pretrain" / "run_info.json").read_text())
        stage = {"pretrain_seconds": lm["train_seconds"], "pretrain_loss": lm["best_metrics"]["loss"]}
    return stage | {
        "seed": seed,
        "best_accuracy": info["best_metrics"]["accuracy"],
        "best_step": info["best_step"],
        "final_accuracy": info["final_metrics"]["accuracy"],
        "final_loss": info["final_metrics"]["loss"],
        "train_seconds": info["train_seconds"],
        "command_seconds": round(time.perf_counter() - started, 1),
    }


def ensemble_accuracy(trainer_args: list[str], model_dirs: list[Path]) -> float:
    """Accuracy of the models' averaged probabilities on the trainer's own validation split."""
    from trainer.cli import parse_cli
    from trainer.config import load_config
    from trainer.data import clean_splits, load_raw_splits
    from trainer.inference import load_model

    preset, overrides, _, _ = parse_cli(trainer_args)
    config = load_config(preset, overrides)
    splits, label_map, _ = clean_splits(load_raw_splits(config.data), config.data)
    validation = splits["validation"]
    ensemble = load_model(model_dirs)
    predicted = ensemble.probabilities(validation["text"], batch_size=256).argmax(1).tolist()
    names = [ensemble.labels[i] for i in predicted]
    return statistics.mean(name == label_map.names[i] for name, i in zip(names, validation["label"], strict=True))


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", help="comma-separated training seeds (default 1,2,3; 1 with --cv-folds)")
    parser.add_argument(
        "--split-seeds", help="comma-separated --data.split_seed values: one validation split (or fold set) each"
    )
    parser.add_argument("--no-bow", action="store_true", help="skip the TF-IDF + logistic regression reference")
    parser.add_argument("--cv-folds", type=int, default=0, help="K-fold cross-validation instead of seeds")
    parser.add_argument(
        "--folds", help="comma-separated folds to run of --cv-folds (default all), to split one over machines"
    )
    parser.add_argument(
        "--report",
        choices=("best", "final"),
        help="whose accuracy to report: each run's selected model (best; the default with seeds) or its last "
        "one (final; the default with --cv-folds, and the one to report when the validation split is the "
        "reported split, as SST-2's, since the selection has seen it)",
    )
    parser.add_argument("--ensemble", action="store_true", help="also report the ensemble of the seeds' models")
    parser.add_argument(
        "--pretrain", action="store_true", help="start each split's runs from a language model pre-trained on it"
    )
    parser.add_argument(
        "--pretrain-args", default="", help="more arguments for trainer.pretrain, e.g. '--pretrain.epochs=4'"
    )
    parser.add_argument("trainer_args", nargs="*", help="the trainer's arguments, after --")
    add_options(parser, "the tiny preset for 1 epoch, seed 1 unless --seeds: a check of this script, in seconds")
    args = parse(parser)
    if args.tiny:
        args.trainer_args = ["--config", "tiny", "--train.epochs=1", *args.trainer_args]
    if not args.no_bow:
        from bow_baseline import check_sklearn

        check_sklearn(", or pass --no-bow")
    seeds = [int(s) for s in (args.seeds or ("1" if args.cv_folds or args.tiny else "1,2,3")).split(",")]
    if args.ensemble and len(seeds) < 2:
        parser.error("--ensemble needs two or more --seeds, e.g. --seeds 1,2,3")
    folds = list(range(args.cv_folds))
    if args.folds:
        parts = [k.strip() for k in args.folds.split(",")]
        folds = [int(k) for k in parts if k.isdigit() and int(k) < args.cv_folds]
        if len(set(folds)) != len(parts):  # a fold out of range, not a number, or given twice
            parser.error(f"--folds {args.folds}: give folds 0 to K-1 of --cv-folds K, each once, e.g. --folds 8,9")
    # Groups of runs that share a validation split: the seeds, or the seeds of each fold, on each split seed.
    by_fold = [[f"--data.cv_folds={args.cv_folds}", f"--data.cv_fold={k}"] for k in folds] or [[]]
    split_seeds = [[f"--data.split_seed={int(s)}"] for s in args.split_seeds.split(",")] if args.split_seeds else [[]]
    groups = [[*split, *fold] for split in split_seeds for fold in by_fold]
    # Cross-validation reports the last model on each held-out fold; seeds report the selected one.
    report = args.report or ("final" if args.cv_folds else "best")
    runs, ensembles = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for number, extra in enumerate(groups):
            outs = [Path(tmp) / f"run-{number}-{i}" for i in range(len(seeds))]
            trainer_args, language_model = [*args.trainer_args, *extra], {}
            if args.pretrain:
                lm = Path(tmp) / f"lm-{number}"
                language_model = pretrain([*trainer_args, *shlex.split(args.pretrain_args)], lm)
                print(json.dumps(language_model | {"args": extra}), file=sys.stderr, flush=True)
                trainer_args.append(f"--model.init_from={lm / 'best'}")
            for seed, out in zip(seeds, outs, strict=True):
                runs.append(train(seed, trainer_args, out, args.ensemble) | {"args": extra} | language_model)
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            if args.ensemble:
                accuracy = ensemble_accuracy(trainer_args, [out / report for out in outs])
                seconds = sum(r["train_seconds"] for r in runs[-len(seeds) :])
                ensembles.append({"seeds": seeds, "args": extra, "accuracy": accuracy, "train_seconds": seconds})
                print(json.dumps(ensembles[-1]), file=sys.stderr, flush=True)
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
    if all("pretrain_seconds" in r for r in runs):  # --pretrain, or the preset's pre-training stage
        result["pretrain_seconds_median"] = statistics.median(r["pretrain_seconds"] for r in runs)
    result["final_accuracy_mean"] = round(statistics.mean(finals), 4)
    result["final_accuracy_std"] = round(statistics.stdev(finals), 4) if len(finals) > 1 else 0.0
    if ensembles:
        accuracies = [e["accuracy"] for e in ensembles]
        result["ensembles"] = ensembles
        result["ensemble_accuracy_mean"] = round(statistics.mean(accuracies), 4)
        result["ensemble_accuracy_std"] = round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0
        result["ensemble_train_seconds_median"] = statistics.median(e["train_seconds"] for e in ensembles)
    if not args.no_bow:
        from bow_baseline import main as bow

        references = [bow([*args.trainer_args, *extra]) | {"args": extra} for extra in groups]
        scores = [r["tfidf_lr_bigram_accuracy"] for r in references]
        result["tfidf_lr_bigram_accuracy"] = round(statistics.mean(scores), 4)
        result["tfidf_lr_bigram_std"] = round(statistics.stdev(scores), 4) if len(scores) > 1 else 0.0
        result["tfidf_lr_bigram_per_split"] = [
            {"args": r["args"], "accuracy": r["tfidf_lr_bigram_accuracy"]} for r in references
        ]
        result["tfidf_lr_bigram_seconds"] = sum(r["tfidf_lr_bigram_seconds"] for r in references)
        result["validation_examples"] = [r["validation_examples"] for r in references]
    from trainer.hardware import cpu_info

    return finish(args, {"cpu": cpu_info(), **result})


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
