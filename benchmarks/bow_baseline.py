"""Bag-of-words reference on exactly the trainer's train/validation split.

TF-IDF (sublinear tf) + logistic regression (C=4), over unigrams and over 1-2-grams: the
classifier an LSTM has to beat. Needs scikit-learn (pip install -e ".[bench]").

    python benchmarks/bow_baseline.py                      # the built-in corpus (default preset)
    python benchmarks/bow_baseline.py --config imdb --data.train_files=../shared/data/imdb/train.csv.gz
"""

from __future__ import annotations

import json
import sys
import time

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from trainer.cli import parse_cli
from trainer.config import load_config
from trainer.data import clean_splits, load_raw_splits


def main(argv: list[str]) -> dict:
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


if __name__ == "__main__":
    from trainer.hardware import cpu_info, describe_cpu

    print(f"CPU: {describe_cpu()}", file=sys.stderr, flush=True)
    print(json.dumps({"cpu": cpu_info(), **main(sys.argv[1:])}))
