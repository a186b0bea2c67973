"""Where the rows come from: local files (csv, tsv, json, jsonl, parquet; compressed; globs and
folders of shards), a Hub dataset, or the built-in corpus; read into ``datasets.Dataset`` splits,
with a clear line for every file that cannot be read. ``source_identity`` is what every cache key
starts from: the files' contents (SHA-256), not their names and times."""

from __future__ import annotations

import bz2
import errno
import glob
import gzip
import hashlib
import importlib.util
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import datasets
import pyarrow as pa

from trainer.data import corpus
from trainer.data.config import COMPRESSIONS, FORMATS, DataConfig
from trainer.errors import UserError, check_kind
from trainer.network import bound_hub_requests, hub_unreachable_reason


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


def _other_separator(columns: list[str]) -> str | None:
    """The separator a CSV header read as one column seems to use instead of commas (``text;label``), or None."""
    if len(columns) != 1 or "," in columns[0]:
        return None
    return next((sep for sep in (";", "\t", "|") if sep in columns[0]), None)


def _separator_problem(where: str, separator: str, option: str | None) -> str:
    fix = f"{option}='{separator}'" if option else "a comma-separated copy of the file"
    return f"{where}: its fields seem separated by {separator!r}, not commas (see its header); use {fix}"
