"""Run a trained model on new text: ``python -m trainer.predict --model DIR [TEXT ...] [--file PATH]``.

    python -m trainer.predict --model runs/imdb/best "A wonderful film." "Two hours I will never get back."
    python -m trainer.predict --model runs/imdb/best --file reviews.csv --json > predictions.jsonl
    cat reviews.txt | python -m trainer.predict --model runs/imdb/best
    python -m trainer.predict --model runs/imdb/best --explain --html attention.html "Dull, but lovely music."
    python -m trainer.predict --model runs/s1/final --model runs/s2/final "A wonderful film."

Texts come from the arguments, a file (--file: .txt one text per line, .csv/.tsv with a text
column, .jsonl with a text field; - for standard input) or, with neither, standard input (one
text per line). Prints the label and the probability of each class per text; --json prints one
JSON object per line. --explain adds each token's attention weight (coloured in a terminal);
--html PATH writes a self-contained page highlighting the tokens of each text. Several --model
folders predict as an ensemble (the average of their probabilities); attention is one model's, so
--explain and --html take a single --model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

from trainer.errors import UserError, check_kind, check_new_file, exit_for, flush_stdout, write_text
from trainer.inference.card import kept_tokens
from trainer.inference.explain import ansi, html_page, top_tokens
from trainer.inference.loaded import add_model_arguments, load_model


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{where} is not valid UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            "convert it, e.g. with iconv -f latin1 -t utf-8"
        ) from exc


def read_texts(path: str, text_column: str) -> list[str]:
    """Texts from a .txt (a line each), .csv/.tsv (a column) or .jsonl (a field) file; - is stdin."""
    if path == "-":
        return _decode(sys.stdin.buffer.read(), "standard input").splitlines()
    file = Path(path)
    check_kind(file, "file", "a .txt, .csv, .tsv or .jsonl file", "--file")
    if not file.is_file():
        raise UserError(f"{path} does not exist or is not a file; give a .txt, .csv, .tsv or .jsonl file")
    content = _decode(file.read_bytes(), path)
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        csv.field_size_limit(sys.maxsize)
        reader = csv.DictReader(io.StringIO(content, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        if text_column not in (reader.fieldnames or []):
            found = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{path} has no column {text_column!r}; columns found: {found} (set --text-column)")
        return [row[text_column] or "" for row in reader]
    if suffix in (".jsonl", ".json"):
        texts = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number} is not a JSON object ({exc.msg}); give one object per line") from exc
            if not isinstance(record, dict) or text_column not in record:
                raise UserError(f"{path}:{number} has no field {text_column!r} (set --text-column)")
            texts.append(str(record[text_column] or ""))
        return texts
    return content.splitlines()


def _color(mode: str) -> bool:
    if mode == "auto":
        return sys.stdout.isatty() and os.environ.get("NO_COLOR") is None and os.environ.get("TERM") != "dumb"
    return mode == "always"


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    explain = args.explain or bool(args.html)
    if explain and len(args.model) > 1:
        raise UserError("--explain and --html show one model's attention; give a single --model")
    if args.html:  # before the predictions are printed, not after; a missing folder is created
        check_new_file(args.html, "--html", args.overwrite, [*args.model, args.file if args.file != "-" else None])
    texts = list(args.texts)
    if args.file:
        texts += read_texts(args.file, args.text_column)
    elif not texts:
        if sys.stdin.isatty():
            raise UserError("no texts: give them as arguments, with --file PATH, or on standard input")
        texts = read_texts("-", args.text_column)
    if not texts:
        raise UserError("no texts to predict (the input was empty)")
    model = load_model(args.model, args.device, args.revision)
    run_batch = model.explain_batch if explain else model.predict
    results = run_batch(texts, batch_size=args.batch_size)
    color = _color(args.color)
    for text, result in zip(texts, results, strict=True):
        if args.json:
            record = {"text": text, **result.to_dict()}
            if explain:
                record["spans"] = [list(span) for span in record["spans"]]
            print(json.dumps(record, ensure_ascii=False))
            continue
        probabilities = "  ".join(f"{name} {p:.3f}" for name, p in result.probabilities.items())
        print(f"{result.label:<10} {probabilities}  {_short(text)}")
        if args.explain:
            if color:
                print("  " + ansi(result).replace("\n", "\n  "))
            top = ", ".join(f"{token} {weight:.3f}" for token, weight in top_tokens(result))
            print(f"  most attended: {top or '(no tokens)'}")
    truncated = sum(r.truncated for r in results)
    if truncated:
        print(
            f"note: {truncated} of {len(results)} texts had more than {model.max_length} tokens and were "
            f"truncated to {kept_tokens(model.meta)} (the model's max_length and truncation)",
            file=sys.stderr,
        )
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.html, html_page(results, f"Attention of {args.model[0]}"))
        print(f"wrote {args.html}", file=sys.stderr)
    flush_stdout()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.predict", description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    add_model_arguments(parser)
    parser.add_argument("--file", help="texts from a .txt, .csv, .tsv or .jsonl file (- for stdin)")
    parser.add_argument("--text-column", default="text", help="the text column/field of a csv or jsonl file")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--explain", action="store_true", help="show each token's attention weight")
    parser.add_argument("--html", metavar="PATH", help="write a page highlighting each text's tokens")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --html file")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour --explain")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size={args.batch_size} must be at least 1")
        return run(args)
    except Exception as exc:  # a reader that left (| head) too: a quiet 0
        return exit_for(exc, args.debug)


if __name__ == "__main__":
    sys.exit(main())
