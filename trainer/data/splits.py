"""Which rows validate: a stratified carve of the training rows, whole groups where a group
column says which rows belong together (a movie, a product), cross-validation folds; and how many
validation texts the training split also holds."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import torch

from trainer.data.config import DataConfig
from trainer.errors import UserError, write_text


def _present(value: object) -> bool:
    """Not missing: not None, a NaN (how parquet and pandas write a missing number) or blank text."""
    if isinstance(value, float) and math.isnan(value):
        return False
    return value is not None and not (isinstance(value, str) and value.strip() == "")


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
    counts = Counter(labels)
    target = {c: config.validation_fraction * counts[c] for c in classes}
    have: Counter = Counter()
    groups = _shuffled_groups(ds, config.split_seed)
    if len(groups) < 2:
        raise UserError(
            f"--data.group_column={config.group_column}: one group holds every row, so no validation split can "
            "keep groups apart; choose another column or none"
        )
    holds = [Counter(labels[i] for i in rows) for rows in groups]
    taken = [False] * len(groups)
    for c in sorted(classes, key=lambda c: target[c]):  # the rarest first
        holders = [g for g in range(len(groups)) if holds[g][c]]
        if len(holders) > 1 and not have[c]:
            taken[holders[0]] = True
            have += holds[holders[0]]
    for g, adds in enumerate(holds):
        if not taken[g] and sum(abs(have[c] + adds[c] - target[c]) - abs(have[c] - target[c]) for c in classes) < 0:
            taken[g] = True
            have += adds
    chosen = [i for g, rows in enumerate(groups) if taken[g] for i in rows]
    if not chosen:
        raise UserError(
            f"--data.group_column={config.group_column}: every group is too large for a validation split of "
            f"{config.validation_fraction:.0%}; raise --data.validation_fraction or choose another column"
        )
    return chosen


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
