"""Bag-of-words reference on exactly the trainer's train/validation split.

TF-IDF (sublinear tf) + logistic regression (C=4), over unigrams and over 1-2-grams: the
classifier an LSTM has to beat. Needs scikit-learn (pip install -e ".[bench]").

    python benchmarks/bow_baseline.py                      # the built-in corpus (default preset)
    python benchmarks/bow_baseline.py --config imdb --data.train_files=../shared/data/imdb/train.csv.gz
    python benchmarks/bow_baseline.py --tiny --out bow.json  # the tiny preset: a check, in seconds

Other arguments go to the trainer's config; ``--tiny`` puts ``--config tiny`` before them. The last
line is one JSON object (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import importlib.util
import time

from trainer.cli import parse_cli
from trainer.config import load_config
from trainer.data import clean_splits, load_raw_splits
from trainer.errors import UserError

NEEDS_SKLEARN = 'the bag-of-words reference needs scikit-learn: pip install -e ".[bench]"'


def check_sklearn(fix: str = "") -> None:
    """Stops now, not after the work, where scikit-learn is missing."""
    if importlib.util.find_spec("sklearn") is None:
        raise UserError(NEEDS_SKLEARN + fix)


def main(argv: list[str]) -> dict:
    check_sklearn()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    preset, overrides, _, _ = parse_cli(argv)
    config = load_config(preset, overrides)
    splits, _, _ = clean_splits(load_raw_splits(config.data), config.data)
    train, validation = splits["train"], splits["validation"]
    result = {"preset": preset, "train_examples": len(train), "validation_examples": len(validation)}
    for name, ngrams in (("unigram", (1, 1)), ("bigram", (1, 2))):
        started = time.perf_counter()
        vectorizer = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True, min_df=2)
        features = vectorizer.fit_transform(train["text"])
        classifier = LogisticRegression(C=4, max_iter=2000).fit(features, train["label"])
        accuracy = classifier.score(vectorizer.transform(validation["text"]), validation["label"])
        result[f"tfidf_lr_{name}_accuracy"] = round(float(accuracy), 4)
        result[f"tfidf_lr_{name}_seconds"] = round(time.perf_counter() - started, 1)
    return result


def cli() -> dict:
    from bench_cli import add_options, finish, parse

    from trainer.hardware import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_options(parser)
    args, trainer_args = parse(parser, known=True)
    return finish(args, {"cpu": cpu_info(), **main(["--config", "tiny"] * args.tiny + trainer_args)})


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(cli)
