"""The data pipeline, one module per stage:

- ``config``: ``DataConfig``, the options of every stage;
- ``sources``: local files, folders and globs, the Hub, the built-in corpus; what identifies them;
- ``cleaning``: columns, empty rows, labels;
- ``splits``: validation carved from train (stratified, by groups) and cross-validation folds;
- ``tokenising``: the tokenizer trained or read, and the cached tokenised splits;
- ``preparation``: all of the above for a run (``prepare_data``), the main process first;
- ``batching``: the length-grouped sampler, padding, the data loaders;

with ``corpus`` (the built-in reviews), ``labels`` and ``tokenizer``. The names below are
importable from ``trainer.data`` itself; each module is imported when one of its names is used,
so that ``trainer.data.tokenizer`` (which inference uses) does not bring in ``datasets``.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "BUILTIN": "config",
    "CODECS": "sources",
    "COMPRESSIONS": "config",
    "Coordination": "preparation",
    "DataConfig": "config",
    "FORMATS": "config",
    "JSON_KINDS": "sources",
    "LengthGroupedBatchSampler": "batching",
    "MAX_BUCKETS": "config",
    "MAX_PROCESSES": "config",
    "PREPARATION_VERSION": "sources",
    "PaddingCollator": "batching",
    "PreparedData": "preparation",
    "ROWS_PER_PROCESS": "config",
    "SAMPLERS": "config",
    "build_dataloaders": "batching",
    "build_tokenizer": "tokenising",
    "cached_num_proc": "tokenising",
    "cached_overlap": "splits",
    "carved_group_rows": "splits",
    "carved_rows": "splits",
    "check_codec": "sources",
    "clean_splits": "cleaning",
    "data_files": "sources",
    "default_cache_dir": "preparation",
    "encode_labels": "cleaning",
    "expand_files": "sources",
    "file_sha256": "sources",
    "fold_rows": "splits",
    "folder_splits": "sources",
    "join_text_columns": "cleaning",
    "lengths_of": "batching",
    "load_labelled": "cleaning",
    "load_raw_splits": "sources",
    "prepare_data": "preparation",
    "prepare_unlabeled": "preparation",
    "row_groups": "splits",
    "shared_texts": "splits",
    "source_identity": "sources",
    "tokenize": "tokenising",
    "tokenize_processes": "tokenising",
    "tokenize_split": "tokenising",
    "tokenized_shards": "tokenising",
    "tokenizer_sample": "tokenising",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(f"trainer.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
