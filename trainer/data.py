"""Data: load (hub, local files or the built-in corpus), normalise labels, split, tokenise, batch.

``prepare_data`` does everything up to tokenised ``datasets.Dataset`` objects, caching the trained
tokenizer and the tokenised splits under ``data.cache_dir`` keyed by what produced them, so a
second run on the same data and tokenizer loads them instead of redoing the work.
``build_dataloaders`` turns them into padded batches.
"""

from __future__ import annotations

import bz2
import dataclasses
import errno
import glob
import gzip
import hashlib
import importlib.util
import json
import lzma
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from trainer import corpus
from trainer.errors import (
    MAX_COUNT,
    MAX_SEED,
    UserError,
    check_choice,
    check_given,
    check_kind,
    check_range,
    check_writable_dir,
    write_error,
    write_text,
)
from trainer.labels import LabelMap
from trainer.network import bound_hub_requests, hub_unreachable_reason
from trainer.tokenizer import (
    MAX_TOKENS,
    TRUNCATIONS,
    TokenizerConfig,
    Truncator,
    load_tokenizer,
    pad_batch,
    pad_id,
    save_tokenizer,
    train_tokenizer,
)

BUILTIN = "builtin"
FORMATS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
ROWS_PER_PROCESS = 10_000  # data.num_proc=null: a tokenising process for each this many rows
SAMPLERS = ("random", "balanced")
MAX_PROCESSES = 256  # data.num_workers, data.num_proc
MAX_BUCKETS = 1024  # data.length_buckets: widths per doubling of length


@dataclass
class DataConfig:
    name: str = field(
        default=BUILTIN, metadata={"help": "'builtin' (generated corpus) or a Hugging Face Hub dataset name"}
    )
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration"})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit)"})
    train_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "local training files (csv, tsv, json, jsonl, parquet; .gz etc. too), globs ('shards/*.parquet') "
            "or folders of them; overrides name"
        },
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "local validation files, globs or folders"}
    )
    unlabeled_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "texts without labels (files, globs or folders; the same text column) that language-model "
            "pre-training (python -m trainer.pretrain) reads besides the training split; a classifier ignores them"
        },
    )
    train_split: str = field(
        default="train",
        metadata={"help": "split to train on (Hub dataset, or a train_files folder whose file names say splits)"},
    )
    validation_split: str | None = field(
        default="auto",
        metadata={
            "help": "split to validate on (Hub dataset or train_files folder); auto: 'validation' if there is one; "
            "null: carve from train"
        },
    )
    text_column: str = field(
        default="text",
        metadata={"help": "column holding the text; several, comma-separated (title,content), are joined into one"},
    )
    text_separator: str = field(
        default="\n", metadata={"help": "what joins several text columns (a missing or empty one is left out)"}
    )
    csv_delimiter: str | None = field(
        default=None, metadata={"help": "the field separator of csv files (default: ',' for .csv, tab for .tsv)"}
    )
    label_column: str = field(default="label", metadata={"help": "column holding the label"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of train carved out for validation when none is given"}
    )
    split_seed: int = field(default=42, metadata={"help": "seed of the validation carve-out and of the folds"})
    group_column: str | None = field(
        default=None,
        metadata={
            "help": "a column of groups (IMDB: movie_id) that the carved validation split and every "
            "cross-validation fold keep on one side: no group is in both train and validation"
        },
    )
    cv_folds: int = field(
        default=0,
        metadata={
            "help": "k-fold cross-validation: validate on fold cv_fold of k (0 = off; needs no validation split)"
        },
    )
    cv_fold: int = field(default=0, metadata={"help": "which fold (0 .. cv_folds-1) is the validation split"})
    max_length: int = field(default=128, metadata={"help": "truncate texts to this many tokens"})
    truncation: str = field(
        default="head",
        metadata={
            "help": "which tokens of a longer text are kept: head (the first), tail (the last) or head_tail (the "
            "first quarter and the last three quarters of max_length); prediction does the same"
        },
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "use at most this many training rows"})
    max_eval_examples: int | None = field(default=None, metadata={"help": "use at most this many validation rows"})
    group_by_length: bool = field(
        default=True, metadata={"help": "batch texts of similar length together (less padding)"}
    )
    sampler: str = field(
        default="random",
        metadata={
            "help": "random: every training example once per epoch; balanced: each epoch draws as many examples of "
            "every class as the rarest has (a new draw each epoch, each example at most once), so epochs are shorter"
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={"help": "pad batches to a multiple of this many tokens (default: 8 under mixed precision, else 1)"},
    )
    length_buckets: int = field(
        default=8,
        metadata={
            "help": "pad each batch up to one of this many widths per doubling of length (at most 1/N more "
            "tokens; far fewer distinct shapes, each of which costs new kernels on a CPU; 0 = off)"
        },
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    num_proc: int | None = field(
        default=None,
        metadata={
            "help": f"processes that tokenise (datasets.map num_proc); null: one per {ROWS_PER_PROCESS:,} rows, at "
            "most one per core; 1: one process, whose tokenizer uses every core itself"
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where tokenizers and tokenised data are cached (default $XDG_CACHE_HOME/sentiment-trainer)"},
    )
    builtin: corpus.CorpusConfig = field(default_factory=corpus.CorpusConfig)

    def __post_init__(self) -> None:
        check_range("data.validation_fraction", self.validation_fraction, 0.01, 0.9)
        check_range("data.split_seed", self.split_seed, 0, MAX_SEED)
        if self.cv_folds:
            check_range("data.cv_folds", self.cv_folds, 2, MAX_COUNT)
            check_range("data.cv_fold", self.cv_fold, 0, self.cv_folds - 1)
        elif self.cv_fold:
            raise UserError(
                f"data.cv_fold={self.cv_fold} needs data.cv_folds (cross-validation is off); set --data.cv_folds=K"
            )
        if self.validation_files and not self.train_files:
            raise UserError("data.validation_files needs data.train_files too (local files for both splits)")
        if self.validation_files and self.cv_folds:
            raise UserError("data.cv_folds validates on a fold of the training data; give no data.validation_files")
        for key in ("train_files", "validation_files", "unlabeled_files"):
            files = getattr(self, key)
            if files is not None and (not files or not all(str(f).strip() for f in files)):
                raise UserError(f"data.{key}={files} names no file where one is expected; give paths, or null")
        for key, give in (
            ("name", f"{BUILTIN!r} or a Hub dataset name"),
            ("config_name", "a Hub dataset configuration, or null"),
            ("revision", "a branch, tag or commit, or null"),
            ("train_split", "a split name such as train"),
            ("validation_split", "a split name, auto, or null to carve one from train"),
            ("label_column", "the column holding the labels"),
            ("group_column", "a column of groups, or null"),
            ("cache_dir", "a folder, or null for the default"),
        ):
            check_given(f"data.{key}", getattr(self, key), give)
        check_range("data.max_length", self.max_length, 1, MAX_TOKENS)
        check_choice("data.truncation", self.truncation, TRUNCATIONS)
        check_choice("data.sampler", self.sampler, SAMPLERS)
        if self.csv_delimiter is not None and (len(self.csv_delimiter) != 1 or self.csv_delimiter in '"\r\n'):
            raise UserError(
                f"data.csv_delimiter={self.csv_delimiter!r} must be one character other than a quote or a line "
                "break, e.g. ';'"
            )
        check_range("data.num_workers", self.num_workers, 0, MAX_PROCESSES)
        if self.num_proc is not None:
            check_range("data.num_proc", self.num_proc, 1, MAX_PROCESSES)
        self._check_columns()
        check_range("data.length_buckets", self.length_buckets, 0, MAX_BUCKETS)
        if self.pad_to_multiple_of is not None:  # a multiple beyond the longest text pads every batch past it
            check_range("data.pad_to_multiple_of", self.pad_to_multiple_of, 1, self.max_length)
        for key in ("max_train_examples", "max_eval_examples"):
            if getattr(self, key) is not None:
                check_range(f"data.{key}", getattr(self, key), 1, MAX_COUNT)

    def _check_columns(self) -> None:
        """Text, label and group columns: named, and each a different column (the label column read as
        the groups, or as text, would train on nonsense)."""
        texts = self.text_columns
        if not [c for c in texts if c]:
            raise UserError(f"data.text_column={self.text_column!r} names no column; e.g. text, or title,content")
        if not all(texts) or len(set(texts)) < len(texts):
            raise UserError(
                f"data.text_column={self.text_column!r} has an empty or repeated name; give each column once, "
                "e.g. title,content"
            )
        if self.label_column in texts:
            raise UserError(
                f"data.label_column={self.label_column!r} is also a text column (data.text_column="
                f"{self.text_column!r}); the labels must be a column of their own"
            )
        if self.group_column is not None and self.group_column in (self.label_column, *texts):
            which = "the label column" if self.group_column == self.label_column else "a text column"
            raise UserError(
                f"data.group_column={self.group_column!r} is {which}; give the column that says which rows belong "
                "together (IMDB: movie_id), or null"
            )

    def tokens_identity(self) -> list:
        """What decides a split's token ids besides the texts and the tokenizer (a cache key part);
        the default truncation adds nothing, so caches written before it existed stay valid."""
        return [self.max_length] + ([self.truncation] if self.truncation != "head" else [])

    @property
    def text_columns(self) -> list[str]:
        return [c.strip() for c in self.text_column.split(",")]

    @property
    def source(self) -> str:
        return "files" if self.train_files else ("builtin" if self.name == BUILTIN else "hub")


@dataclass
class PreparedData:
    train: datasets.Dataset  # columns: input_ids, length, label
    validation: datasets.Dataset
    tokenizer: Tokenizer
    label_map: LabelMap
    stats: dict
    validation_texts: datasets.Dataset | None = None  # the validation split before tokenising: text, label


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sentiment-trainer"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _extension(path: str) -> str:
    """The extension under any compression suffix: csv for data.csv.gz."""
    name = path.lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[-1]


def _file_format(path: str) -> str:
    ext = _extension(path)
    if ext not in FORMATS:
        raise UserError(f"cannot tell the format of {path}; use a .csv, .tsv, .json, .jsonl or .parquet file")
    return ext


def folder_splits(folder: str) -> tuple[dict[str, list[str]], bool]:
    """The data files in ``folder`` (any depth) by split, as the Hub reads a dataset repository,
    and whether names said the splits: a split named in file or folder names
    (``train-00000-of-00004.parquet``, ``data/validation/``), else all of them "train". Hidden
    folders (a download's ``.cache``) are left out. So a Hub snapshot, downloaded or in the Hub's
    cache, reads as ``load_dataset`` reads it online."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns, resolve_pattern

    try:
        patterns = get_data_patterns(folder)
    except EmptyDatasetError:
        return {}, False
    splits = {}
    for split, split_patterns in patterns.items():
        found = set()
        for pattern in split_patterns:
            try:
                found.update(path.removeprefix("file://") for path in resolve_pattern(pattern, folder))
            except FileNotFoundError:
                continue
        if files := sorted(path for path in found if _extension(path) in FORMATS):
            splits[str(split)] = files
    return splits, patterns != {"train": ["**"]}


def expand_files(entries: list[str], option: str, split: str = "train", folders: dict | None = None) -> list[str]:
    """The data files that ``entries`` name: files as given, globs (``shards/*.parquet``, ``**`` too)
    and folders, each sorted by name. A folder gives its data files of ``split`` where its names say
    splits (``folder_splits``, or its entry in ``folders`` where the caller has read it already),
    else all of them."""
    files = []
    for entry in entries:
        if "://" in entry:
            raise UserError(
                f"{entry} is not a local path; train on a Hub dataset with --data.name, or download it "
                "(hf download --repo-type dataset NAME --local-dir DIR) and give the folder"
            )
        if any(c in entry for c in "*?["):
            matched = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
            if not matched:
                raise UserError(f"no file matches {entry!r}; check {option} (quote a glob so the shell leaves it)")
            files += matched
        elif os.path.isdir(entry):
            splits, named = (folders or {}).get(entry) or folder_splits(entry)
            if not splits:
                raise UserError(f"folder {entry} holds no csv, tsv, json, jsonl or parquet file; check {option}")
            if named and split not in splits:
                raise UserError(
                    f"folder {entry} holds the splits {', '.join(splits)} (by its file names) but no {split!r}; "
                    f"give its files or a glob in {option}"
                )
            files += splits[split] if named else splits["train"]
        else:
            files.append(entry)
    return files


def data_files(config: DataConfig) -> tuple[list[str], list[str]]:
    """The local train and validation files. Without ``validation_files``, a train folder whose
    names say splits gives its validation split (``validation_split``; auto: 'validation' where
    there is one), as a Hub dataset does."""
    folders = {entry: folder_splits(entry) for entry in config.train_files if os.path.isdir(entry)}
    train = expand_files(config.train_files, "--data.train_files", config.train_split, folders)
    if config.validation_files:
        return train, expand_files(config.validation_files, "--data.validation_files", "validation")
    if config.validation_split is None:
        return train, []
    split = "validation" if config.validation_split == "auto" else config.validation_split
    validation, found = [], set()
    for splits, named in folders.values():
        if named:
            found.update(splits)
            validation += splits.get(split, [])
    if found and config.validation_split != "auto" and not validation:  # a plain file or folder: carved
        raise UserError(
            f"--data.train_files has no split {split!r} (splits found: {', '.join(sorted(found)) or 'none'}); "
            "give --data.validation_files, or set --data.validation_split=null to carve one from train"
        )
    return train, validation


def _file_identity(paths: list[str], option: str = "--data.train_files / --data.validation_files") -> list:
    """[path, size, sha256] of each file; a missing, unreadable or non-file path is an error naming ``option``."""
    identity = []
    for path in paths:
        check_kind(path, "file", f"a csv, tsv, json, jsonl or parquet file in {option}", "data file")
        if not os.path.isfile(path):
            raise UserError(f"data file {path} does not exist; check {option}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UserError(f"cannot read data file {path} ({exc.strerror}); check its permissions") from exc
        identity.append([os.path.abspath(path), os.path.getsize(path), file_sha256(path)])
    return identity


_CONTENT_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (computed once per process for a file left unchanged): what
    the caches are keyed on. Size and modification time are not enough: a file edited in place
    can keep both (``touch -r``, ``rsync``, a copy that preserves times)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _CONTENT_DIGESTS:
        with open(path, "rb") as f:
            _CONTENT_DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _CONTENT_DIGESTS[key]


# Part of every cache key: raised whenever cleaning or splitting changes what the same files give
# (2: stratified carves), so that no cache made by earlier code passes for this code's.
PREPARATION_VERSION = 2


def source_identity(config: DataConfig) -> dict:
    """What determines the prepared (pre-tokenisation) data; part of every cache key."""
    keys = (
        "text_column",
        "text_separator",
        "label_column",
        "csv_delimiter",
        "validation_fraction",
        "split_seed",
        "group_column",
        "max_train_examples",
        "cv_folds",
        "cv_fold",
    )
    prep = {k: getattr(config, k) for k in (*keys, "max_eval_examples")} | {"version": PREPARATION_VERSION}
    if config.source == "files":
        train, validation = data_files(config)
        files = {"train": _file_identity(train), "validation": _file_identity(validation)}
        return {"files": files, **prep}
    if config.source == "builtin":
        return {"builtin": corpus.CORPUS_VERSION, **asdict(config.builtin), **prep}
    hub = {k: getattr(config, k) for k in ("name", "config_name", "revision", "train_split", "validation_split")}
    return {"hub": hub, **prep}


def _load_files(paths: list[str], delimiter: str | None = None) -> datasets.Dataset:
    formats = {FORMATS[_file_format(p)] for p in paths}
    if len(formats) > 1:
        raise UserError(f"files {paths} mix formats; give files of one format per split")
    builder = formats.pop()
    for path in paths:
        check_codec(path)
    kwargs = {"keep_default_na": False} if builder == "csv" else {}
    if builder == "csv" and (delimiter or all(_file_format(p) == "tsv" for p in paths)):
        kwargs["sep"] = delimiter or "\t"
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log lines would precede ours
    try:
        # Named by the files' contents: datasets' own cache is keyed by path and modification time,
        # and would hand back the rows of a file edited in place as they were.
        content = "content-" + _digest([file_sha256(p) for p in paths])
        return datasets.load_dataset(builder, name=content, data_files=paths, split="train", **kwargs)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{', '.join(paths)} is not valid UTF-8 text ({exc.reason}); convert it, e.g. with iconv"
        ) from exc
    except (ValueError, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as exc:
        # Where datasets reads a file's first rows to learn its columns, its errors come unwrapped.
        if "corresponds to no data" in str(exc):
            raise UserError(f"{', '.join(paths)} holds no rows; check the file") from exc
        cause = exc.__cause__ or exc
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"{', '.join(paths)} is not valid UTF-8 text; convert it, e.g. with iconv") from exc
        full = next((e for e in _causes(exc) if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)), None)
        if full is not None:  # datasets' own copy of the rows, in its cache
            raise OSError(full.errno, os.strerror(full.errno), datasets.config.HF_DATASETS_CACHE) from exc
        if builder == "json":
            for path in paths:
                problem = _json_problem(path)
                if problem:
                    raise UserError(f"{problem}; fix the file (JSON Lines: one object per line)") from exc
        if builder == "csv" and "sep" not in kwargs:
            for path in paths:
                separator = _other_separator([(_read_text(path, first_line=True) or "").rstrip("\r\n")])
                if separator:
                    raise UserError(_separator_problem(path, separator, "--data.csv_delimiter")) from exc
        raise UserError(f"could not read {', '.join(paths)}: {str(cause).splitlines()[0]}") from exc
    finally:
        datasets.logging.set_verbosity(verbosity)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# What reads each compression: (the module, the package that brings it).
CODECS = {
    ".zst": ("zstandard", "the zstandard package (pip install zstandard)"),
    ".bz2": ("bz2", "a Python built with bzip2 support"),
    ".xz": ("lzma", "a Python built with lzma support"),
}


def check_codec(path: str) -> None:
    """A compressed data file whose codec is not installed is refused in one line naming what to install."""
    suffix = Path(path).suffix.lower()
    if suffix in CODECS and importlib.util.find_spec(CODECS[suffix][0]) is None:
        package = CODECS[suffix][1]
        raise UserError(
            f"{path} is {suffix[1:]}-compressed, and reading it needs {package}; install it, or give the file "
            "decompressed"
        )


def _read_text(path: str, first_line: bool = False) -> str | None:
    """A data file's text (or its first line), decompressed; None where it cannot be read so
    (.zip, a missing codec) or it is not UTF-8: the caller's own message then stands."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zip" or (suffix in CODECS and importlib.util.find_spec(CODECS[suffix][0]) is None):
        return None
    module = {".gz": gzip, ".bz2": bz2, ".xz": lzma}.get(suffix)
    if suffix == ".zst":
        import zstandard as module
    try:
        with module.open(path, "rt", encoding="utf-8-sig") if module else open(path, encoding="utf-8-sig") as f:
            return f.readline() if first_line else f.read()
    except (OSError, UnicodeDecodeError, EOFError):
        return None


JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}


def _object_once(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once (a reader would keep one value and lose the other)."""
    record = dict(pairs)
    if len(record) < len(pairs):
        keys = [key for key, _ in pairs]
        raise ValueError(f"key {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    return record


def _json_problem(path: str) -> str | None:
    """``path:line: not a JSON object (why)`` for the first malformed record of a JSON Lines file
    (``path:line:column: why`` in a .json file holding one array), or None. Blank lines are skipped,
    as JSON Lines readers do; a line ``null`` is a row with neither text nor label (dropped)."""
    text = _read_text(path)
    if text is None:
        return None
    if _extension(path) == "json" and text.lstrip().startswith("["):  # one JSON document
        try:
            json.loads(text, object_pairs_hook=_object_once)
        except json.JSONDecodeError as exc:
            return f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}"
        except ValueError as exc:
            return f"{path}: {exc}"
        return None
    lines = text.split("\n")  # not splitlines: U+2028 may stand inside a string
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_object_once)
        except json.JSONDecodeError as exc:
            cut = "; the file ends in the middle of it, cut off" if number == len(lines) else ""
            return f"{path}:{number}: not a JSON object ({exc.msg}{cut})"
        except ValueError as exc:  # a key given twice
            return f"{path}:{number}: not a JSON object ({exc})"
        if record is not None and not isinstance(record, dict):
            return f"{path}:{number}: not a JSON object ({JSON_KINDS.get(type(record), 'another value')})"
    return None


def _unreachable_hub(config: DataConfig, exc: Exception) -> None:
    """The one line for a Hub that did not connect or answer (``trainer.network``), if it did not."""
    if why := hub_unreachable_reason():
        raise UserError(
            f"could not load {config.name!r}: the Hugging Face Hub could not be reached ({why}); check the network "
            "(or HF_ENDPOINT), set HF_HUB_OFFLINE=1 to use a cached copy, or train on local files with "
            "--data.train_files"
        ) from exc


def _load_hub(config: DataConfig) -> datasets.DatasetDict:
    bound_hub_requests()
    try:
        return datasets.load_dataset(config.name, config.config_name, revision=config.revision)
    except (ConnectionError, OSError) as exc:
        _unreachable_hub(config, exc)
        raise UserError(
            f"could not load {config.name!r} from the Hugging Face Hub ({str(exc).splitlines()[0][:160]}); "
            "check the name and the network, or train on local files with --data.train_files"
        ) from exc
    except Exception as exc:  # the hub client raises many types for a missing or unreachable dataset
        if type(exc).__module__.startswith(("datasets", "huggingface_hub", "requests", "httpx")):
            _unreachable_hub(config, exc)
            raise UserError(
                f"could not load {config.name!r} from the Hugging Face Hub ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}); check the name and the network, or use --data.train_files"
            ) from exc
        raise


def load_raw_splits(config: DataConfig) -> dict[str, datasets.Dataset | None]:
    """The raw train and (possibly missing) validation splits, before any cleaning."""
    if config.source == "files":
        delimiter = config.csv_delimiter
        train, validation = data_files(config)
        return {
            "train": _load_files(train, delimiter),
            "validation": _load_files(validation, delimiter) if validation else None,
        }
    if config.source == "builtin":
        return {"train": datasets.Dataset.from_dict(corpus.generate_corpus(config.builtin)), "validation": None}
    splits = _load_hub(config)
    if config.train_split not in splits:
        raise UserError(f"{config.name} has no split {config.train_split!r}; it has: {', '.join(splits)}")
    split = config.validation_split
    if split == "auto":
        split = "validation" if "validation" in splits else None
    elif split is not None and split not in splits:
        raise UserError(
            f"{config.name} has no split {split!r}; it has: {', '.join(splits)} "
            "(or set --data.validation_split=null to carve one from train)"
        )
    return {"train": splits[config.train_split], "validation": splits[split] if split else None}


def load_labelled(
    source: str,
    split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    config_name: str | None = None,
) -> tuple[datasets.Dataset, int]:
    """A labelled split from a local file (``source`` is a path) or the Hub (``split`` of ``source``).

    Returns (dataset with ``text`` and raw ``label`` columns, rows dropped for an empty text or label).
    """
    try:
        config = DataConfig(name=source, config_name=config_name, text_column=text_column, label_column=label_column)
    except UserError as exc:  # named by the command's own options
        message = str(exc)
        for key in ("data.text_column", "data.label_column", "data.config_name", "data.name"):
            option = {"data.name": "--data"}.get(key, "--" + key.removeprefix("data.").replace("_", "-"))
            message = message.replace(key, option)
        raise UserError(message) from exc
    if os.path.exists(source) or _extension(source) in FORMATS:  # a path, maybe a missing one
        _file_identity([source], "--data")  # a clear error for a missing file or a folder
        ds, where = _load_files([source]), source
    else:
        splits = _load_hub(config)
        if split not in splits:
            raise UserError(f"{source} has no split {split!r}; it has: {', '.join(splits)} (choose one with --split)")
        ds, where = splits[split], f"{source} {split}"
    return _drop_empty(_select_columns(ds, config, where))


def _select_columns(ds: datasets.Dataset, config: DataConfig, split: str) -> datasets.Dataset:
    training = split in ("train", "validation")  # else a file or split given to evaluate
    where = f"the {split} split" if training else split
    text_columns = config.text_columns
    # The groups are needed to carve the training split; a given validation split's are kept to count shared groups.
    column = config.group_column
    group = [column] if column and (split == "train" or (split == "validation" and column in ds.column_names)) else []
    checked = (("text_column", text_columns), ("label_column", [config.label_column]), ("group_column", group))
    for key, columns in checked:
        option = f"--data.{key}" if training else f"--{key.replace('_', '-')}"
        for column in columns:
            if column not in ds.column_names:
                found = ", ".join(ds.column_names) or "none"
                separator = _other_separator(ds.column_names)
                if separator:
                    raise UserError(_separator_problem(where, separator, "--data.csv_delimiter" if training else None))
                fix = f"set {option}" + (", or null to carve at random" if key == "group_column" else "")
                raise UserError(f"{where} has no column {column!r}; columns found: {found} ({fix})")
    option = "--data.text_column" if training else "--text-column"
    for column in text_columns:
        text_feature = ds.features[column]
        if isinstance(text_feature, datasets.Json):  # JSON Lines whose values differ in type from row to row
            ds = _texts_only(ds, column, where, option)
        elif not (isinstance(text_feature, datasets.Value) and text_feature.dtype in ("string", "large_string")):
            kind = text_feature.dtype if isinstance(text_feature, datasets.Value) else type(text_feature).__name__
            raise UserError(
                f"{where}: the text column {column!r} holds {kind} values, not text; set {option} "
                "to the column with the texts"
            )
    if len(text_columns) > 1:
        ds = join_text_columns(ds, text_columns, config.text_separator, [config.label_column, *group])
        config = dataclasses.replace(config, text_column="text")
    ds = ds.select_columns([config.text_column, config.label_column, *group])
    if group and group[0] != "group":
        ds = ds.rename_column(group[0], "group")
    label_feature = ds.features[config.label_column]
    if isinstance(label_feature, datasets.ClassLabel):  # hub datasets: ids -> their names
        ds = ds.cast_column(config.label_column, datasets.Value("string"))
        names = label_feature.names
        # -1 marks an unlabelled row (e.g. GLUE test splits): it becomes a missing label, dropped later.
        ds = ds.map(
            lambda b: {
                config.label_column: [
                    names[int(v)] if 0 <= int(v) < len(names) else None for v in b[config.label_column]
                ]
            },
            batched=True,
        )
    if config.text_column != "text":
        ds = ds.rename_column(config.text_column, "text")
    if config.label_column != "label":
        ds = ds.rename_column(config.label_column, "label")
    return ds


def _texts_only(ds: datasets.Dataset, column: str, where: str, option: str) -> datasets.Dataset:
    """A text column of mixed types (a JSON Lines file with a number or a list among its texts) as
    text: a value that is not text becomes a missing one, and its row is dropped and counted with
    the empty ones, as in every format; a column that is mostly not text is refused."""
    values = ds[column]
    present = [v for v in values if _present(v)]
    other = [v for v in present if not isinstance(v, str)]
    if len(other) * 2 > len(present):
        plurals = {list: "arrays", dict: "objects", bool: "true/false values", int: "numbers", float: "numbers"}
        kinds = sorted({plurals.get(type(v), "other values") for v in other})
        raise UserError(
            f"{where}: the text column {column!r} holds {' and '.join(kinds)} in {len(other):,} of its "
            f"{len(present):,} values, not text; set {option} to the column with the texts"
        )
    features = ds.features.copy()
    features[column] = datasets.Value("string")
    return ds.map(
        lambda b: {column: [v if isinstance(v, str) else None for v in b[column]]}, batched=True, features=features
    )


def join_text_columns(ds: datasets.Dataset, columns: list[str], separator: str, kept: list[str]) -> datasets.Dataset:
    """``columns`` joined into one ``text`` column by Arrow, batch by batch, beside the ``kept``
    columns (the label, the group); a missing (null) or empty part is left out, so a review
    without a title is its content alone."""

    def join(table: pa.Table) -> pa.Table:
        parts = [pc.cast(table[c], pa.large_string()) for c in columns]  # parquet and csv may differ
        parts = [pc.if_else(pc.equal(part, ""), None, part) for part in parts]
        text = pc.binary_join_element_wise(*parts, pa.scalar(separator, pa.large_string()), null_handling="skip")
        return pa.table({"text": text, **{column: table[column] for column in kept}})

    features = datasets.Features({"text": datasets.Value("string"), **{c: ds.features[c] for c in kept}})
    joined = ds.with_format("arrow").map(join, batched=True, remove_columns=ds.column_names, features=features)
    return joined.with_format(None)


def _other_separator(columns: list[str]) -> str | None:
    """The separator a CSV header read as one column seems to use instead of commas (``text;label``), or None."""
    if len(columns) != 1 or "," in columns[0]:
        return None
    return next((sep for sep in (";", "\t", "|") if sep in columns[0]), None)


def _separator_problem(where: str, separator: str, option: str | None) -> str:
    fix = f"{option}='{separator}'" if option else "a comma-separated copy of the file"
    return f"{where}: its fields seem separated by {separator!r}, not commas (see its header); use {fix}"


def _present(value: object) -> bool:
    """Not missing: not None, a NaN (how parquet and pandas write a missing number) or blank text."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _drop_empty(ds: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Drop rows whose text or label is missing or blank; returns (kept, number dropped)."""
    kept = ds.filter(
        lambda b: [
            isinstance(t, str) and _present(t) and _present(y) for t, y in zip(b["text"], b["label"], strict=True)
        ],
        batched=True,
    )
    return kept, len(ds) - len(kept)


def encode_labels(ds: datasets.Dataset, label_map: LabelMap, split: str, **map_kwargs) -> datasets.Dataset:
    """Raw label values -> the label map's ids (an unknown label is an error naming ``split``).

    Integer labels that already are their ids (0/1, as most big corpora ship them) are only cast:
    a map would write every text again."""
    feature = ds.features["label"]
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        values = ds.unique("label")
        if all(label_map.encode(v, split) == v for v in values):
            return ds if feature.dtype == "int64" else ds.cast_column("label", datasets.Value("int64"))
    features = ds.features.copy()
    features["label"] = datasets.Value("int64")
    return ds.map(
        lambda b: {"label": [label_map.encode(v, split) for v in b["label"]]},
        batched=True,
        features=features,
        **map_kwargs,
    )


def _why_no_rows(ds: datasets.Dataset, split: str, config: DataConfig) -> str:
    """Which of the text and the label is missing, when no row of ``split`` has both."""
    if len(ds) == 0:
        return f"the {split} split holds no rows; check the data"
    table = ds.with_format("arrow")
    no_text = sum(not _present(t) for t in table["text"].to_pylist())
    no_label = sum(not _present(y) for y in table["label"].to_pylist())
    parts = []
    if no_text:
        parts.append(f"{no_text:,} of {len(ds):,} rows have an empty text (column {config.text_column!r})")
    if no_label:
        parts.append(f"{no_label:,} of {len(ds):,} rows have an empty label (column {config.label_column!r})")
    return f"the {split} split has no usable rows: {' and '.join(parts)}; check the data and the column options"


def clean_splits(raw: dict[str, datasets.Dataset | None], config: DataConfig) -> tuple[dict, LabelMap, dict]:
    """Select and rename columns, drop empty texts, map labels to ids, carve validation, cap sizes.

    Takes ``raw``'s splits over (the dict is left empty): a raw split whose columns are joined into a
    new text is let go at once, so the pages of its memory-mapped file do not stay counted in this
    process's memory (over 1 GB at 2.5M reviews) while the rest is prepared."""
    stats: dict = {}
    splits = {}
    for split in list(raw):
        ds = raw.pop(split)
        if ds is None:
            continue
        selected = _select_columns(ds, config, split)
        del ds
        ds, dropped = _drop_empty(selected)
        stats[f"{split}_dropped_empty"] = dropped
        if len(ds) == 0:
            raise UserError(_why_no_rows(selected, split, config))
        splits[split] = ds
        del selected, ds

    label_map = LabelMap.infer(splits["train"].unique("label"))
    if len(label_map.names) < 2:
        raise UserError(
            f"the training split has a single class ({label_map.names[0]!r}); a classifier needs at least two"
        )
    splits = {split: encode_labels(ds, label_map, split) for split, ds in splits.items()}
    if config.group_column and not any(_present(v) for v in splits["train"]["group"]):
        raise UserError(
            f"--data.group_column={config.group_column} is empty on every training row, so it keeps no rows "
            "together; fill the column, or leave group_column unset"
        )

    if config.cv_folds:
        if "validation" in splits:
            raise UserError(
                "data.cv_folds needs data without a validation split (set --data.validation_split=null, "
                "or give no --data.validation_files)"
            )
        if len(splits["train"]) < config.cv_folds:
            raise UserError(f"{len(splits['train'])} rows cannot be cut into {config.cv_folds} folds")
        held_out = set(fold_rows(splits["train"], config))
        train_rows = [i for i in range(len(splits["train"])) if i not in held_out]
        splits = {"train": splits["train"].select(train_rows), "validation": splits["train"].select(sorted(held_out))}
        stats["validation_fold"] = f"{config.cv_fold} of {config.cv_folds}"
    if "validation" not in splits:
        if len(splits["train"]) < 10:
            raise UserError(
                f"the training split has only {len(splits['train'])} rows, too few to carve a validation split"
            )
        held_out = set(
            carved_group_rows(splits["train"], config) if config.group_column else carved_rows(splits["train"], config)
        )
        train_rows = [i for i in range(len(splits["train"])) if i not in held_out]
        splits = {"train": splits["train"].select(train_rows), "validation": splits["train"].select(sorted(held_out))}
        stats["validation_carved"] = True
    if config.group_column:
        groups = {split: set(ds["group"]) for split, ds in splits.items() if "group" in ds.column_names}
        stats |= {f"{split}_groups": len(values) for split, values in groups.items()}
        if len(groups) == 2:  # 0 when carved or folded; a given validation split may share some
            stats["validation_groups_in_train"] = len(groups["train"] & groups["validation"])
        splits = {split: ds.remove_columns("group") if split in groups else ds for split, ds in splits.items()}
    for split, cap in (("train", config.max_train_examples), ("validation", config.max_eval_examples)):
        if cap is not None and cap < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=config.split_seed).select(range(cap))
    stats.update({f"{split}_examples": len(ds) for split, ds in splits.items()})
    validated = set(splits["validation"].unique("label"))
    stats["validation_classes_missing"] = [name for i, name in enumerate(label_map.names) if i not in validated]
    return splits, label_map, stats


def row_groups(ds: datasets.Dataset) -> tuple[list[list[int]], int]:
    """The rows of each group, groups in order of first appearance (a row with no group is a group
    of its own), and how many rows had none."""
    rows: dict = {}
    ungrouped = 0
    for i, value in enumerate(ds["group"]):
        if not _present(value):
            ungrouped += 1
            value = ("no group", i)
        rows.setdefault(value, []).append(i)
    return list(rows.values()), ungrouped


def _shuffled_groups(ds: datasets.Dataset, seed: int) -> list[list[int]]:
    groups, _ = row_groups(ds)
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [groups[i] for i in order]


def fold_rows(ds: datasets.Dataset, config: DataConfig) -> list[int]:
    """The rows of fold ``cv_fold`` of ``cv_folds``. The folds partition the rows; with a
    ``group_column`` they partition the groups too: the groups, in a seeded order, go one by one
    to the fold with the fewest rows so far (folds within one group's size of each other)."""
    if not config.group_column:  # every k-th row of one seeded permutation
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(config.split_seed))
        return order[config.cv_fold :: config.cv_folds].tolist()
    groups = _shuffled_groups(ds, config.split_seed)
    if len(groups) < config.cv_folds:
        raise UserError(
            f"the {len(groups)} groups of --data.group_column={config.group_column} cannot be cut into "
            f"{config.cv_folds} folds; use fewer --data.cv_folds"
        )
    sizes, chosen = [0] * config.cv_folds, []
    for rows in groups:
        fold = min(range(config.cv_folds), key=lambda k: (sizes[k], k))
        sizes[fold] += len(rows)
        if fold == config.cv_fold:
            chosen.extend(rows)
    return chosen


def carved_rows(ds: datasets.Dataset, config: DataConfig) -> list[int]:
    """The rows of a validation split carved from train, stratified: ``validation_fraction`` of each
    class's rows in a seeded order, and at least one of every class that has two or more (a 96/4
    file must not be validated on one class alone)."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(ds["label"]):
        by_class.setdefault(label, []).append(i)
    generator = torch.Generator().manual_seed(config.split_seed)
    chosen = []
    for label in sorted(by_class):
        rows = by_class[label]
        take = max(1, round(config.validation_fraction * len(rows))) if len(rows) > 1 else 0
        order = torch.randperm(len(rows), generator=generator)[:take].tolist()
        chosen.extend(rows[k] for k in order)
    return sorted(chosen)


def carved_group_rows(ds: datasets.Dataset, config: DataConfig) -> list[int]:
    """The rows of a validation split of whole groups, stratified as groups allow: first, for each
    class found in two groups or more, the first group (in a seeded order) that holds it, unless a
    group taken already does; then every other group that brings the split's count of every class
    closer to ``validation_fraction`` of that class's rows (the sum of the distances shrinks)."""
    labels = ds["label"]
    classes = sorted(set(labels))
    target = {c: config.validation_fraction * n for c, n in zip(classes, _counts(labels, classes), strict=True)}
    have = dict.fromkeys(classes, 0)
    groups = _shuffled_groups(ds, config.split_seed)
    if len(groups) < 2:
        raise UserError(
            f"--data.group_column={config.group_column}: one group holds every row, so no validation split can "
            "keep groups apart; choose another column or none"
        )
    holds = [dict(zip(classes, _counts([labels[i] for i in rows], classes), strict=True)) for rows in groups]
    taken = [False] * len(groups)
    for c in sorted(classes, key=lambda c: target[c]):  # the rarest first
        holders = [g for g in range(len(groups)) if holds[g][c]]
        if len(holders) > 1 and not have[c]:
            taken[holders[0]] = True
            have = {k: have[k] + holds[holders[0]][k] for k in classes}
    for g, adds in enumerate(holds):
        if not taken[g] and sum(abs(have[c] + adds[c] - target[c]) - abs(have[c] - target[c]) for c in classes) < 0:
            taken[g] = True
            have = {c: have[c] + adds[c] for c in classes}
    chosen = [i for g, rows in enumerate(groups) if taken[g] for i in rows]
    if not chosen:
        raise UserError(
            f"--data.group_column={config.group_column}: every group is too large for a validation split of "
            f"{config.validation_fraction:.0%}; raise --data.validation_fraction or choose another column"
        )
    return chosen


def _counts(values: list, classes: list) -> list[int]:
    counted: dict = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return [counted.get(c, 0) for c in classes]


def cached_overlap(splits: dict, path: Path) -> int:
    """``shared_texts`` of the splits, kept in ``path`` (keyed by the data): a restart on millions of
    reviews would otherwise spend seconds on it."""
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["validation_rows_in_train"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    count = shared_texts(splits["train"], splits["validation"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"validation_rows_in_train": count}) + "\n")
    return count


def shared_texts(train: datasets.Dataset, validation: datasets.Dataset, batch_size: int = 100_000) -> int:
    """How many validation rows have exactly the text of some training row.

    Arrow hash look-ups against the validation texts, the training split read in batches: memory
    grows with the validation split, not the training one.
    """

    def texts(table) -> pa.ChunkedArray:  # one string type for both splits (parquet may give large_string)
        column = table["text"]
        return pc.cast(column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column]), pa.large_string())

    val_texts = texts(validation.with_format("arrow"))
    candidates = pc.unique(val_texts)
    found: list[pa.Array] = []
    for batch in train.with_format("arrow").iter(batch_size=batch_size):
        column = texts(batch)
        found += pc.filter(column, pc.is_in(column, value_set=candidates)).chunks
    matched = pc.unique(pa.chunked_array(found, type=pa.large_string()))
    return int(pc.sum(pc.is_in(val_texts, value_set=matched)).as_py() or 0)


def _text_batches(ds: datasets.Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(ds), batch_size):
        yield ds[start : start + batch_size]["text"]


def tokenizer_sample(train: datasets.Dataset, config: TokenizerConfig) -> datasets.Dataset:
    """The training texts the tokenizer learns from: all of them, or ``config.train_sample`` drawn
    with ``config.sample_seed`` (in file order, for sequential reads)."""
    if config.train_sample is None or config.train_sample >= len(train):
        return train
    generator = torch.Generator().manual_seed(config.sample_seed)
    chosen = torch.randperm(len(train), generator=generator)[: config.train_sample].sort().values
    return train.select(chosen.numpy())


def build_tokenizer(train: datasets.Dataset, config: TokenizerConfig, cache_dir: Path, data_key: str) -> tuple:
    """The tokenizer from ``config.path``, the cache, or trained on ``train``.

    Returns (tokenizer, source) with source "file", "cache" or "trained".
    """
    if config.path:
        return load_tokenizer(config.path), "file"
    path = cache_dir / "tokenizers" / f"{_digest([data_key, asdict(config)])}.json"
    if path.is_file():
        return load_tokenizer(path), "cache"
    tokenizer = train_tokenizer(_text_batches(tokenizer_sample(train, config)), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, path)  # whole or not at all
    return tokenizer, "trained"


def tokenize_processes(rows: int, requested: int | None) -> int:
    """``data.num_proc``, or where it is None one process per ``ROWS_PER_PROCESS`` rows, at most
    one per core this process may run on (two processes tokenise 1.4x faster than the tokenizer's
    own threads on 2 cores, docs/large_datasets.md)."""
    if requested is None:
        requested = min(len(os.sched_getaffinity(0)), rows // ROWS_PER_PROCESS)
    return max(1, min(requested, rows))


def tokenized_shards(cache_file: Path, num_proc: int) -> list[Path]:
    """The cache files of a ``datasets.map`` over ``num_proc`` processes."""
    if num_proc == 1:
        return [cache_file]
    return [cache_file.with_name(f"{cache_file.stem}_{i:05d}_of_{num_proc:05d}.arrow") for i in range(num_proc)]


def cached_num_proc(cache_file: Path) -> int | None:
    """The process count of a complete set of cache files for ``cache_file``, if there is one (a
    cache written on a machine with other cores is still a cache)."""
    if cache_file.is_file():
        return 1
    for path in sorted(cache_file.parent.glob(f"{cache_file.stem}_00000_of_*.arrow")):
        count = int(path.stem.rsplit("_of_", 1)[1])
        if all(shard.is_file() for shard in tokenized_shards(cache_file, count)):
            return count
    return None


def tokenize_split(
    ds: datasets.Dataset,
    tokenizer: Tokenizer,
    max_length: int,
    cache_file: Path,
    num_proc: int | None = 1,
    truncation: str = "head",
) -> tuple[datasets.Dataset, bool]:
    """Batched ``datasets.map`` tokenisation cached in ``cache_file``; returns (dataset, cache hit).

    With ``num_proc`` > 1 (None: ``tokenize_processes``), that many forked processes tokenise a
    shard each (cached as ``<name>_0000i_of_0000n.arrow``), each with the tokenizer's own threads
    off: a tokenizer that has used its thread pool before the fork would otherwise deadlock or warn.
    A complete cache is read whatever process count wrote it.
    """
    cached = cached_num_proc(cache_file)
    hit = cached is not None
    num_proc = cached if hit else tokenize_processes(len(ds), num_proc)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # datasets writes each cache file under a temporary name (tmpXXXXXXXX) and renames it once
    # complete: a failed write (a full disk) is never read back as a cache.
    before = set(os.listdir(cache_file.parent))
    kwargs = {"cache_file_name": str(cache_file), "load_from_cache_file": True}
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    if num_proc > 1:
        kwargs["num_proc"] = num_proc
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the forked processes
    try:
        return tokenize(ds, tokenizer, max_length, truncation, **kwargs), hit
    except Exception as exc:
        error = write_error(exc, cache_file)  # while the disk is still full
        for name in set(os.listdir(cache_file.parent)) - before:  # the temporaries a failed write left
            if name.startswith("tmp"):
                Path(cache_file.parent, name).unlink(missing_ok=True)
        if error is None:
            raise
        raise error from exc
    finally:
        if num_proc > 1 and previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        elif num_proc > 1:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def tokenize(
    ds: datasets.Dataset, tokenizer: Tokenizer, max_length: int, truncation: str = "head", **map_kwargs
) -> datasets.Dataset:
    """``text`` -> ``input_ids`` (at most max_length, kept by ``truncation``), ``length`` and
    ``truncated``, by batched map."""
    truncator = Truncator(tokenizer, max_length, truncation)

    def encode(batch: dict) -> dict:
        encodings = truncator.encode(batch["text"])
        ids = [encoding.ids for encoding in encodings]
        truncated = [encoding.truncated for encoding in encodings]
        return {"input_ids": ids, "length": [len(x) for x in ids], "truncated": truncated}

    return ds.map(encode, batched=True, batch_size=1000, remove_columns=["text"], desc="Tokenising", **map_kwargs)


@dataclass
class Coordination:
    """How ``prepare_data`` works with the other processes; the defaults are a single process.

    ``from_main(value)`` returns the main process's ``value`` on every process (a broadcast).
    """

    is_main: bool = True
    main_process_first: Callable[[], AbstractContextManager] = nullcontext
    from_main: Callable[[object], object] = lambda value: value


def prepare_data(
    config: DataConfig, tokenizer_config: TokenizerConfig, coordination: Coordination | None = None
) -> PreparedData:
    """Load, clean, tokenise.

    The main process goes first at each stage and fills the caches; the tokenizer is the main
    process's on every process (tokenizer training is not deterministic across processes, and
    other nodes may not share the cache folder).
    """
    co = coordination or Coordination()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    check_writable_dir(cache_dir, "--data.cache_dir", create=True)
    datasets.disable_progress_bars()  # we report one line per stage instead
    started = time.perf_counter()
    with co.main_process_first():
        identity = source_identity(config)  # checks that local files exist
        raw = load_raw_splits(config)
        if config.source == "hub":  # a new upload of an unpinned dataset must not hit old caches
            identity["fingerprint"] = raw["train"]._fingerprint
        data_key = _digest(identity)
        splits, label_map, stats = clean_splits(raw, config)
        stats["validation_rows_in_train"] = cached_overlap(splits, cache_dir / "overlap" / f"{data_key}.json")
        if co.is_main:
            tokenizer, stats["tokenizer_source"] = build_tokenizer(
                splits["train"], tokenizer_config, cache_dir, data_key
            )
    tokenizer_json = co.from_main(tokenizer.to_str() if co.is_main else None)
    if not co.is_main:
        tokenizer, stats["tokenizer_source"] = Tokenizer.from_str(tokenizer_json), "main process"
    stats["load_seconds"] = round(time.perf_counter() - started, 2)
    with co.main_process_first():
        tokens_key = _digest([data_key, tokenizer_json, *config.tokens_identity()])
        tokenized = {}
        for split, ds in splits.items():
            tokenized[split], stats[f"{split}_tokens_cache_hit"] = tokenize_split(
                ds,
                tokenizer,
                config.max_length,
                cache_dir / "tokenized" / f"{tokens_key}-{split}.arrow",
                config.num_proc,
                config.truncation,
            )
    stats["tokenize_seconds"] = round(time.perf_counter() - started - stats["load_seconds"], 2)
    return PreparedData(tokenized["train"], tokenized["validation"], tokenizer, label_map, stats, splits["validation"])


def prepare_unlabeled(
    config: DataConfig, tokenizer: Tokenizer, coordination: Coordination | None = None
) -> tuple[datasets.Dataset | None, dict]:
    """``data.unlabeled_files`` cleaned and tokenised as the training split is (``label`` -1), or
    None without them; and their statistics. Cached like the splits; the main process goes first."""
    if not config.unlabeled_files:
        return None, {}
    co = coordination or Coordination()
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    option = "--data.unlabeled_files"
    with co.main_process_first():
        paths = expand_files(config.unlabeled_files, option)
        identity = [_file_identity(paths, option), config.text_column, config.text_separator, config.csv_delimiter]
        ds = _load_files(paths, config.csv_delimiter)
        columns = config.text_columns
        for column in columns:
            if column not in ds.column_names:
                found = ", ".join(ds.column_names) or "none"
                raise UserError(f"{option} has no column {column!r}; columns found: {found} (set --data.text_column)")
        if len(columns) > 1:
            ds = join_text_columns(ds, columns, config.text_separator, [])
        else:
            ds = ds.select_columns(columns)
            ds = ds.rename_column(columns[0], "text") if columns[0] != "text" else ds
        rows = len(ds)
        ds = ds.filter(lambda b: [isinstance(t, str) and _present(t) for t in b["text"]], batched=True)
        ds = ds.map(lambda b: {"label": [-1] * len(b["text"])}, batched=True)
        key = _digest([identity, tokenizer.to_str(), *config.tokens_identity()])
        cache_file = cache_dir / "tokenized" / f"{key}-unlabeled.arrow"
        tokenized, hit = tokenize_split(
            ds, tokenizer, config.max_length, cache_file, config.num_proc, config.truncation
        )
    stats = {"unlabeled_examples": len(tokenized), "unlabeled_dropped_empty": rows - len(ds)}
    return tokenized, stats | {"unlabeled_tokens_cache_hit": hit}


class LengthGroupedBatchSampler:
    """Shuffled batches of indices, optionally grouped by length, shard-friendly.

    Everything is defined on optimizer steps of a global batch (``batch_size * num_shards *
    accumulation`` examples), so the examples of every step, and their order, do not depend on how
    the global batch is split: one process with batch 4B, two with 2B, or one with B and four
    accumulation micro-steps see the same examples at every step. That is what lets a run resume
    on another number of processes (``steps_in_epoch`` steps done, continue at the next one).

    Each epoch: a seeded permutation; with ``group_by_length``, chunks of ``mega_batches`` global
    batches are sorted by length (as HF Trainer's ``group_by_length``), so each step holds similar
    lengths; the steps are then shuffled, an uneven last one kept last. A step is dealt as ``accumulation`` rounds of
    ``num_shards`` batches, and accelerate's ``BatchSamplerShard`` deals batch i to process
    i % num_shards. The batch count is a multiple of ``num_shards`` with no empty batch, so every
    process gets the same number of batches and every example goes to exactly one process, once
    per epoch. The last, shorter step is spread evenly over as many rounds as it fills; a rest too
    small to give each process one example joins a full step, which then comes last.
    ``step_examples`` tells the loop how many examples a batch's step has, so that every example
    of a step weighs the same however the step is split.

    With ``labels`` (``--data.sampler=balanced``) an epoch is not the whole split: it draws, for
    every class present, as many of its examples as the rarest class has, without replacement and
    anew each epoch (from ``seed`` and the epoch, so a resumed run draws the same), then batches
    them as above. Every process holds the whole split's lengths and labels, so the processes agree
    on the draw and deal it out like any epoch: each drawn example goes to one process, once.

    ``batch_size`` is None on purpose: it tells accelerate that batch sizes vary, so it does not
    try to complete short batches with examples from the start of the epoch.
    """

    batch_size = None

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        num_shards: int = 1,
        seed: int = 0,
        group_by_length: bool = True,
        mega_batches: int = 50,
        accumulation: int = 1,
        labels: list[int] | None = None,
    ) -> None:
        self.classes = None
        self.size = len(lengths)  # examples per epoch
        if labels is not None:
            by_class: dict[int, list[int]] = {}
            for row, label in enumerate(labels):
                by_class.setdefault(label, []).append(row)
            self.classes = [by_class[label] for label in sorted(by_class)]
            self.size = min(map(len, self.classes)) * len(self.classes)
        if self.size < num_shards:
            drawn = " drawn per epoch" if labels is not None else ""
            raise UserError(f"{self.size} training examples{drawn} cannot be shared among {num_shards} processes")
        self.lengths = lengths
        self.per_batch = batch_size
        self.num_shards = num_shards
        self.accumulation = accumulation
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batches = mega_batches
        self.epoch = 0

    @property
    def global_batch(self) -> int:
        return self.per_batch * self.num_shards * self.accumulation

    def _last_rounds(self) -> int:
        """Rounds of the last, shorter step (0: none, its examples join the step before)."""
        rest = self.size % self.global_batch
        return min(self.accumulation, rest // self.num_shards)

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch + (self._last_rounds() > 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step_examples(self, micro_batch: int) -> int:
        """The examples of the optimizer step that a process's ``micro_batch``-th batch of the
        epoch belongs to (all processes, all its micro-batches)."""
        rest = self.size % self.global_batch
        if not rest or micro_batch // self.accumulation < self.steps_per_epoch - 1:
            return self.global_batch
        return rest if self._last_rounds() else self.global_batch + rest  # the last step, kept last

    def __len__(self) -> int:
        full_steps = self.size // self.global_batch
        return (full_steps * self.accumulation + self._last_rounds()) * self.num_shards

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = self.epoch_rows(generator)
        size = self.global_batch
        if self.group_by_length:
            mega = size * self.mega_batches
            order = [
                i
                for start in range(0, len(order), mega)
                for i in sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            ]
        full = len(order) // size * size
        steps = [order[i : i + size] for i in range(0, full, size)]
        last = order[full:]
        if last and not self._last_rounds():  # too few to give each process one: into a full step
            last = steps.pop() + last
        random.Random(self.seed + self.epoch).shuffle(steps)
        if last:  # last: accelerate ends an accumulation step early only at the end of the loader
            steps.append(last)
        for step in steps:
            yield from self._deal(step)

    def epoch_rows(self, generator: torch.Generator) -> list[int]:
        """This epoch's examples, shuffled: all of them, or the balanced draw."""
        if self.classes is None:
            return torch.randperm(len(self.lengths), generator=generator).tolist()
        per_class, drawn = self.size // len(self.classes), []
        for rows in self.classes:
            drawn += [rows[i] for i in torch.randperm(len(rows), generator=generator)[:per_class].tolist()]
        return [drawn[i] for i in torch.randperm(len(drawn), generator=generator).tolist()]

    def _deal(self, step: list[int]) -> list[list[int]]:
        """A step's batches, round by round: a full step in batches of ``batch_size``, any other
        spread evenly over its rounds."""
        rounds = self.accumulation if len(step) >= self.global_batch else self._last_rounds()
        count = rounds * self.num_shards
        if len(step) == self.global_batch:
            return [step[i : i + self.per_batch] for i in range(0, len(step), self.per_batch)]
        share, extra = divmod(len(step), count)
        bounds = [k * share + min(k, extra) for k in range(count + 1)]
        return [step[bounds[k] : bounds[k + 1]] for k in range(count)]


class PaddingCollator:
    """Pads a list of rows to the longest, rounded up as ``tokenizer.padded_width`` says."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1, buckets_per_octave: int = 0) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.buckets = buckets_per_octave

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [row["input_ids"] for row in rows]
        input_ids, lengths = pad_batch(ids, self.pad_id, self.multiple, self.buckets)
        labels = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return {"input_ids": input_ids, "lengths": lengths, "labels": labels}


def lengths_of(ds: datasets.Dataset) -> list[int]:
    """The ``length`` column as a list (per-row access to a datasets column is slow)."""
    return ds.with_format("arrow")["length"].to_pylist()


def build_dataloaders(
    data: PreparedData,
    config: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    num_shards: int = 1,
    seed: int = 0,
    mixed_precision: bool = False,
    pin_memory: bool = False,
    accumulation: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Training loader (length-grouped, shard-friendly batches) and validation loader.

    Validation goes in order of length (least padding); ``gather_for_metrics`` drops the repeats
    accelerate adds to even out the last batches, so metrics are exact on any number of processes.
    """
    multiple = config.pad_to_multiple_of or (8 if mixed_precision else 1)
    collate = PaddingCollator(pad_id(data.tokenizer), multiple, config.length_buckets)
    labels = data.train.with_format("arrow")["label"].to_pylist() if config.sampler == "balanced" else None
    train_lengths = lengths_of(data.train)
    sampler = LengthGroupedBatchSampler(
        train_lengths, batch_size, num_shards, seed, config.group_by_length, accumulation=accumulation, labels=labels
    )
    common = {"collate_fn": collate, "num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    common["pin_memory"] = pin_memory  # page-locked batches copy to a GPU faster
    # Own generators: iterating a loader must not draw from the global RNG (dropout's), or a run
    # resumed mid-epoch would not repeat the uninterrupted one exactly.
    train_loader = DataLoader(data.train, batch_sampler=sampler, generator=torch.Generator(), **common)
    lengths = lengths_of(data.validation)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    validation = data.validation.select(order)
    eval_loader = DataLoader(
        validation, batch_size=eval_batch_size, shuffle=False, generator=torch.Generator(), **common
    )
    return train_loader, eval_loader
