"""What every benchmark script's command line shares: ``--tiny``, ``--out`` and the data it runs on.

``--tiny`` runs a script end to end in seconds on 2 CPU cores, on the built-in generator's reviews
(written as a small IMDB-like CSV where a script reads one), never on ../shared/data: a check that
the script still runs (tests/test_benchmarks.py), whose numbers say nothing. ``--out FILE`` also
writes the report, the JSON object the script prints last, to FILE; an existing FILE is refused
before any work unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import json
import lzma
import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trainer.errors import UserError, check_new_file, exit_for  # noqa: E402

TINY_HELP = "run end to end in seconds on generated data: checks the script, measures nothing"
# The column the imdb preset keeps on one side of its carved validation split.
GROUP_COLUMN = "movie_id"


def add_options(parser: argparse.ArgumentParser, tiny_help: str = TINY_HELP) -> None:
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--out", help="also write the report (the JSON printed last) to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None, known: bool = False):
    """``parser``'s arguments (with ``known``: and the rest, for scripts that pass them on), after
    checking ``--out`` before any work."""
    args, rest = parser.parse_known_args(argv) if known else (parser.parse_args(argv), [])
    if args.out:
        check_new_file(args.out, "--out", args.overwrite)
    return (args, rest) if known else args


def finish(args: argparse.Namespace, report: dict) -> dict:
    """Writes ``report`` to ``--out`` (whole or not at all: a temporary file renamed) and returns it."""
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return report


def run(main: Callable[[], dict]) -> None:
    """A script's entry point: ``main()``'s report as the last line of stdout (the CPU on stderr);
    bad input (a ``UserError``, a file the system refuses) is one line on stderr and exit code 2."""
    from trainer.hardware import describe_cpu

    try:
        report = main()
    except Exception as exc:  # exit_for re-raises what is not the user's to fix
        sys.exit(exit_for(exc, debug=False))
    print(f"CPU: {describe_cpu()}", file=sys.stderr, flush=True)
    print(json.dumps(report))


def tiny_reviews_csv(path: Path, rows: int = 600, per_movie: int = 6, seed: int = 0) -> Path:
    """``path``: IMDB-like rows (text, label, movie_id) from the built-in generator, ``per_movie``
    reviews of each movie, for the scripts that read IMDB's train.csv.gz."""
    from trainer.data.corpus import CorpusConfig, generate_corpus

    corpus = generate_corpus(CorpusConfig(num_examples=rows, seed=seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", GROUP_COLUMN])
        for i, (text, label) in enumerate(zip(corpus["text"], corpus["label"], strict=True)):
            writer.writerow([text, label, f"tt{i // per_movie:07d}"])
    return path


def csv_columns(path: str | Path) -> list[str]:
    """The header of a CSV or TSV file, compressed or not (``[]`` where it has none)."""
    path = Path(path)
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    suffixes = [s for s in path.suffixes if s not in openers]
    opener = openers.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter="\t" if suffixes[-1:] == [".tsv"] else ","), [])
    return header


def imdb_group_overrides(path: str | Path) -> list[str]:
    """Overrides for the ``imdb`` preset on a CSV: none where it has IMDB's movie ids (the preset
    validates on whole movies), else a validation split carved at random."""
    try:
        columns = csv_columns(path)
    except (OSError, UnicodeDecodeError, csv.Error):  # the trainer names what is wrong with it
        return []
    return [] if GROUP_COLUMN in columns else ["--data.group_column=null"]


def require_file(path: str | Path, what: str) -> None:
    """A data file a script needs: missing, it stops now in one line that says what to give."""
    if not Path(path).is_file():
        raise UserError(f"{path} not found; pass --data PATH to {what}, or --tiny to run on generated data")
