"""Metric maths from per-example predictions, and the JSONL + tracker metrics log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch

from trainer.errors import write_error


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve for binary labels (Mann-Whitney U, ties counted half)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores.double())
    sorted_scores = scores.double()[order]
    ranks = torch.empty(len(scores), dtype=torch.float64)
    # Average ranks over ties.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2
    ranks[order] = average[inverse]
    rank_sum = ranks[labels.bool()].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def classification_metrics(probabilities: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor) -> dict:
    """probabilities: (N, C), labels: (N,), losses: (N,) per-example losses.

    Two classes: precision/recall/F1 of class 1 and ROC-AUC. More: macro averages.
    """
    num_classes = probabilities.size(1)
    predictions = probabilities.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [true, predicted]
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    true_pos = confusion.diag().double()
    predicted = confusion.sum(0).double()
    actual = confusion.sum(1).double()
    precision = torch.where(predicted > 0, true_pos / predicted.clamp(min=1), torch.zeros_like(true_pos))
    recall = torch.where(actual > 0, true_pos / actual.clamp(min=1), torch.zeros_like(true_pos))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(true_pos))
    metrics = {"loss": losses.double().mean().item(), "accuracy": (predictions == labels).double().mean().item()}
    # Under class imbalance (as scikit-learn): the mean recall over the classes in labels, and the
    # mean F1 over the classes in labels or predictions.
    occurring, present = actual > 0, (actual + predicted) > 0
    metrics["balanced_accuracy"] = recall[occurring].mean().item()
    metrics["macro_f1"] = f1[present].mean().item()
    if num_classes == 2:
        metrics.update(precision=precision[1].item(), recall=recall[1].item(), f1=f1[1].item())
        metrics["roc_auc"] = roc_auc(probabilities[:, 1], labels)
    else:  # macro averages over the classes that occur (in labels or predictions), as scikit-learn
        metrics.update(
            precision=precision[present].mean().item(),
            recall=recall[present].mean().item(),
            f1=f1[present].mean().item(),
        )
    metrics["n"] = len(labels)
    return metrics


def per_class_report(probabilities: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class, by name (as scikit-learn's classification_report)."""
    num_classes = probabilities.size(1)
    predictions = probabilities.argmax(dim=1)
    report = {}
    for c, name in enumerate(names[:num_classes]):
        true_pos = int(((predictions == c) & (labels == c)).sum())
        predicted, support = int((predictions == c).sum()), int((labels == c).sum())
        precision = true_pos / predicted if predicted else 0.0
        recall = true_pos / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return report


# Metrics reported for 2 classes and for 3 or more (no ROC-AUC there).
METRICS_FOR = {2: ("loss", "accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "f1", "roc_auc")}
METRICS_FOR[3] = METRICS_FOR[2][:-1]
METRIC_MODES = {"loss": "min", **{name: "max" for name in METRICS_FOR[2][1:]}}


def is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if METRIC_MODES[metric] == "min" else value > best


class Throughput:
    """Real (non-padding) tokens and examples per second of training since the last ``read``.

    Time spent inside ``paused()`` (validation, checkpoints) does not count.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0
        self.examples = 0

    def update(self, tokens: int | torch.Tensor, examples: int) -> None:
        """``tokens`` may be a tensor on the accelerator: it is added there and read in ``read``."""
        self.tokens = self.tokens + tokens
        self.examples += examples

    @contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - started

    def read(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rates = {"tokens_per_s": float(self.tokens) / elapsed, "examples_per_s": self.examples / elapsed}
        self.reset()
        return rates


def append_line(path: Path, line: str) -> None:
    """``line`` added to ``path``, or (a full disk) nothing: a record cut half-way is taken back, so
    the file stays whole lines; the error names the file."""
    data = (line + "\n").encode("utf-8")
    with path.open("ab", buffering=0) as f:  # unbuffered: nothing is left to fail when it closes
        start = f.tell()
        try:
            written = 0
            while written < len(data):
                written += f.write(data[written:])
        except OSError as exc:
            with suppress(OSError):
                f.truncate(start)
            raise write_error(exc, path) or exc from exc


class MetricsLog:
    """Appends one JSON object per record to ``metrics.jsonl`` and forwards it to the trackers.

    Each record carries ``elapsed_s``, seconds since this process started logging.
    """

    def __init__(self, path: Path | None, log_to_trackers) -> None:
        self.path = path
        self.log_to_trackers = log_to_trackers
        self.started = time.perf_counter()

    def write(self, record: dict, step: int) -> None:
        record = {"step": step, **record, "elapsed_s": round(time.perf_counter() - self.started, 3)}
        if self.path is not None:
            append_line(self.path, json.dumps(record))
        self.log_to_trackers({k: v for k, v in record.items() if k != "step"}, step=step)
