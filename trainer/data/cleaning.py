"""From raw rows to clean splits: the text, label and group columns selected (several text
columns joined), rows without a text or label dropped and counted, labels mapped to ids, and the
validation split carved or folded (``trainer.data.splits``)."""

from __future__ import annotations

import os

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.config import FORMATS, DataConfig
from trainer.data.labels import LabelMap
from trainer.data.sources import (
    _extension,
    _file_identity,
    _load_files,
    _load_hub,
    _other_separator,
    _separator_problem,
)
from trainer.data.splits import _present, carved_group_rows, carved_rows, fold_rows
from trainer.errors import UserError


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
    label = [config.label_column]
    for key, columns in (("text_column", text_columns), ("label_column", label), ("group_column", group)):
        option = f"--data.{key}" if training else f"--{key.replace('_', '-')}"
        other = "null to carve at random" if key == "group_column" else None
        check_columns(ds, columns, where, option, training, other)
    ds = as_text(ds, config, where, "--data.text_column" if training else "--text-column", [*label, *group])
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
    if config.label_column != "label":
        ds = ds.rename_column(config.label_column, "label")
    return ds


def check_columns(
    ds: datasets.Dataset, columns: list[str], where: str, option: str, training: bool, other: str | None = None
) -> None:
    """Each of ``columns`` must be in ``ds``: else one line naming the columns found and ``option``
    (or ``other`` fix), or the separator that a one-column CSV header suggests."""
    for column in columns:
        if column not in ds.column_names:
            found = ", ".join(ds.column_names) or "none"
            separator = _other_separator(ds.column_names)
            if separator:
                raise UserError(_separator_problem(where, separator, "--data.csv_delimiter" if training else None))
            fix = f"set {option}" + (f", or {other}" if other else "")
            raise UserError(f"{where} has no column {column!r}; columns found: {found} ({fix})")


def as_text(ds: datasets.Dataset, config: DataConfig, where: str, option: str, kept: list[str]) -> datasets.Dataset:
    """The text column(s) checked to hold text and made one ``text`` column (several joined with
    ``data.text_separator``), beside the ``kept`` columns and nothing else."""
    columns = config.text_columns
    for column in columns:
        feature = ds.features[column]
        if isinstance(feature, datasets.Json):  # JSON Lines whose values differ in type from row to row
            ds = _texts_only(ds, column, where, option)
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
            raise UserError(
                f"{where}: the text column {column!r} holds {kind} values, not text; set {option} "
                "to the column with the texts"
            )
    if len(columns) > 1:
        return join_text_columns(ds, columns, config.text_separator, kept)
    ds = ds.select_columns([columns[0], *kept])
    return ds.rename_column(columns[0], "text") if columns[0] != "text" else ds


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
