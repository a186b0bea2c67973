"""Evaluate an exported model on labelled data: ``python -m trainer.evaluate --model DIR --data PATH_OR_HUB``.

    python -m trainer.evaluate --model runs/imdb/best --data test.csv --json
    python -m trainer.evaluate --model runs/imdb/best --data stanfordnlp/imdb --split test --plot confusion.png
    accelerate launch --num_processes 2 -m trainer.evaluate --model runs/imdb/best --data test.csv
    python -m trainer.evaluate --model runs/s1/final --model runs/s2/final --model runs/s3/final --data test.csv

Reports accuracy, precision, recall, F1, ROC-AUC (two classes; macro averages for more), the mean
loss, the confusion matrix and the number of examples; --json prints them as one JSON object.
Labels are read with the model's own label map (0/1, neg/pos, negative/positive, ...); a label the
model does not know is an error. Rows with an empty text or label are skipped and counted. Under
``accelerate launch`` each process scores a share and the result equals the single-process one.
Several --model folders are evaluated as an ensemble: the average of their class probabilities
(each model reads the texts with its own tokenizer; the loss is that of the average; the count of
truncated texts and max_length are the first model's).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator, PartialState
from torch.utils.data import DataLoader

from trainer.data.batching import PaddingCollator, lengths_of
from trainer.data.cleaning import encode_labels, load_labelled
from trainer.data.labels import LabelMap
from trainer.data.tokenising import tokenize
from trainer.errors import UserError, check_new_file, exit_for
from trainer.inference.folder import load_exported
from trainer.inference.loaded import SentimentModel, add_model_arguments, check_same_labels
from trainer.inference.mistakes import check_outputs, losses_from, top_mistakes, write_mistakes
from trainer.metrics import classification_metrics, per_class_report
from trainer.training.collective import collective_failure, report
from trainer.training.validation import gather_predictions


def confusion_matrix(probabilities: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    """counts[true][predicted]."""
    size = probabilities.size(1)
    matrix = torch.zeros(size, size, dtype=torch.long)
    matrix.index_put_((labels, probabilities.argmax(1)), torch.ones_like(labels), accumulate=True)
    return matrix.tolist()


def evaluate_model(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    datasets.disable_progress_bars()  # one result, not a progress bar per step
    models = [load_exported(path, args.revision) for path in args.model]
    onnx = any(m.get("format") == "onnx" for *_, m in models)  # onnxruntime's CPU provider, GPU or not
    cpu = args.cpu or onnx or not torch.accelerator.is_available()
    state = PartialState(cpu=cpu)
    meta = models[0][2]
    labels = [[m["id2label"][str(i)] for i in range(len(m["id2label"]))] for *_, m in models]
    names = labels[0]
    try:
        check_same_labels(labels, args.model)
    except UserError as exc:
        exc.on_every_rank = True
        raise
    label_map = LabelMap(names)
    try:
        with state.main_process_first():  # the main process fills the datasets cache first
            ds, skipped = load_labelled(args.data, args.split, args.text_column, args.label_column, args.config_name)
            if len(ds) == 0:
                raise UserError(f"{args.data} has no rows with both a text and a label")
            if args.max_examples:
                ds = ds.select(range(min(args.max_examples, len(ds))))
            where = args.data if Path(args.data).exists() else f"the {args.split} split of {args.data}"
            ds = encode_labels(ds, label_map, where, keep_in_memory=True)
            # One order for every model (the first one's lengths): batches of similar length.
            tokenized = [
                tokenize(ds, tok, int(m["max_length"]), m.get("truncation", "head"), keep_in_memory=True)
                for _, tok, m in models
            ]
    except UserError as exc:  # the same data on every process: reported once
        exc.on_every_rank = True
        raise
    truncated = sum(tokenized[0].with_format("arrow")["truncated"].to_pylist())
    lengths = lengths_of(tokenized[0])
    order = sorted(range(len(ds)), key=lambda i: -lengths[i])
    accelerator = Accelerator(cpu=cpu, mixed_precision="no")
    scored = []
    for (model, _, m), model_ds in zip(models, tokenized, strict=True):
        loader = DataLoader(model_ds.select(order), args.batch_size, collate_fn=PaddingCollator(int(m["pad_id"])))
        loader = accelerator.prepare_data_loader(loader)
        scored.append(gather_predictions(model.to(accelerator.device), loader, accelerator))
    accelerator.end_training()  # every process leaves the group together (no abort at exit)
    probabilities, labels, losses = scored[0]
    if len(scored) > 1:  # the ensemble's own loss: the negative log of its averaged probability
        probabilities = torch.stack([p for p, _, _ in scored]).mean(0)
        losses = losses_from(probabilities, labels)
    metrics = classification_metrics(probabilities, labels, losses)
    if args.errors and accelerator.is_main_process:
        texts = ds.select(order)["text"]  # the loader's order, which gather_for_metrics keeps
        mistakes = top_mistakes(texts, probabilities, labels, losses, names, args.errors)
        title = f"The {len(mistakes)} most confident mistakes of {_models(args.model)} on {Path(args.data).name}"
        if len(args.model) > 1:
            title += f" (attention of {args.model[0]})"
        attention_model = SentimentModel(*models[0])
        written = write_mistakes(mistakes, args.errors_out, attention_model, title)
        print(f"wrote {written[0]} and {written[1]} ({len(mistakes)} mistakes)", file=sys.stderr)
    result = {"model": args.model[0] if len(args.model) == 1 else args.model, "data": args.data}
    if not Path(args.data).exists():
        result["split"] = args.split
    result |= {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    result |= {"labels": names, "per_class": per_class_report(probabilities, labels, names)}
    result |= {"confusion_matrix": confusion_matrix(probabilities, labels)}
    result |= {"skipped_rows": skipped, "truncated": truncated, "max_length": int(meta["max_length"])}
    result |= {"num_processes": accelerator.num_processes, "seconds": round(time.perf_counter() - started, 2)}
    return result


def _models(model: str | list[str]) -> str:
    """A model folder, or the ensemble of several (``--model`` given once is a list of one)."""
    models = [model] if isinstance(model, str) else model
    return models[0] if len(models) == 1 else f"the ensemble of {', '.join(models)}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def show(result: dict) -> str:
    notes = []
    if result["skipped_rows"]:
        notes.append(f"{_count(result['skipped_rows'], 'row')} without a text or label skipped")
    if result["truncated"]:
        notes.append(f"{_count(result['truncated'], 'text')} truncated to {result['max_length']} tokens")
    what = f"{_models(result['model'])} on {result['data']}: {result['n']:,} examples"
    lines = [what + (f" ({'; '.join(notes)})" if notes else "")]
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "f1", "roc_auc", "loss")
    lines.append(" | ".join(f"{k} {result[k]:.4f}" for k in keys if isinstance(result.get(k), float)))
    name_width = max(8, *(len(n) for n in result["labels"])) + 2
    if result.get("per_class"):
        lines.append(f"{'':>{name_width}}{'precision':>11}{'recall':>9}{'f1':>9}{'support':>10}")
    for name, row in result.get("per_class", {}).items():
        scores = "".join(f"{row[k]:>{w}.4f}" for k, w in (("precision", 11), ("recall", 9), ("f1", 9)))
        lines.append(f"{name:>{name_width}}{scores}{row['support']:>10,}")
    width = max(8, *(len(n) for n in result["labels"])) + 2
    lines.append("confusion matrix (rows: true label, columns: predicted)")
    lines.append(" " * width + "".join(f"{n:>{width}}" for n in result["labels"]))
    for name, row in zip(result["labels"], result["confusion_matrix"], strict=True):
        lines.append(f"{name:>{width}}" + "".join(f"{count:>{width},}" for count in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="a csv/tsv/json/jsonl/parquet file, or a Hub dataset name")
    parser.add_argument("--split", default="test", help="the Hub split to evaluate (default test)")
    parser.add_argument("--config-name", help="the Hub dataset configuration")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="PNG", help="also draw the confusion matrix into this PNG file")
    parser.add_argument("--errors", type=int, default=0, metavar="N", help="write the N most confident mistakes")
    parser.add_argument(
        "--errors-out", default="errors", metavar="PREFIX", help="--errors files: PREFIX.jsonl and PREFIX.html"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --plot or --errors file")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-examples", type=int, help="evaluate the first N rows only")
    parser.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is present")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1 or (args.max_examples is not None and args.max_examples < 1):
            raise UserError("--batch-size and --max-examples must be at least 1", on_every_rank=True)
        if args.errors < 0:
            raise UserError(f"--errors={args.errors} must be 0 (off) or more", on_every_rank=True)
        try:
            inputs = [*args.model, args.data]  # a Hub name that is no local path is skipped
            if args.errors:
                check_outputs(args.errors_out, args.overwrite, inputs)
            if args.plot:
                check_new_file(args.plot, "--plot", args.overwrite, inputs)
        except UserError as exc:  # the same on every process: reported once
            exc.on_every_rank = True
            raise
        result = evaluate_model(args)
    except Exception as exc:
        return exit_for(collective_failure(exc) or exc, args.debug, report)
    if PartialState().is_main_process:
        try:
            if args.plot:  # first: a reader that leaves (| head) still gets it drawn
                from trainer.plot import plot_confusion

                shown = [f"{Path(m).parent.name}/{Path(m).name}" for m in args.model]
                title = f"{_models(shown)} on {Path(args.data).name}"
                plot_confusion(result["confusion_matrix"], result["labels"], args.plot, title)
                print(f"wrote {args.plot}", file=sys.stderr)
            print(json.dumps(result) if args.json else show(result), flush=True)
        except Exception as exc:  # a full disk, or standard output's reader left (a quiet 0)
            return exit_for(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
