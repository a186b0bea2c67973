"""Label normalisation: ints, bools or strings ("pos"/"neg", "positive"/"negative", ...) -> ids 0..C-1."""

from __future__ import annotations

import math
from collections.abc import Iterable

from trainer.errors import UserError

# Canonical sentiment names in id order; any spelling below maps onto them.
SENTIMENT_ORDER = ["negative", "neutral", "positive"]
SYNONYMS = {
    "negative": "negative",
    "neg": "negative",
    "bad": "negative",
    "false": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
    "good": "positive",
    "true": "positive",
}


def _as_number(value: object) -> int | None:
    """Integers, integral floats and digit strings as int; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _numeric_names(numbers: set[int]) -> dict[int, str]:
    if numbers <= {0, 1}:
        return {0: "negative", 1: "positive"}
    if numbers <= {-1, 1}:
        return {-1: "negative", 1: "positive"}
    return {n: str(n) for n in numbers}


def canonical_label(value: object, numeric_names: dict[int, str] | None) -> str:
    """The canonical name of one raw label value."""
    if isinstance(value, bool):
        return "positive" if value else "negative"
    number = _as_number(value)
    if number is not None:
        # With string or boolean training labels, 0/1 and -1/1 still mean negative/positive.
        names = numeric_names if numeric_names is not None else _numeric_names({number})
        return names.get(number, str(number))
    if isinstance(value, str):
        text = value.strip()
        return SYNONYMS.get(text.lower(), text)
    if isinstance(value, float):
        raise UserError(f"label {value!r} is not a class; labels must be integers, booleans or strings")
    return str(value)


class LabelMap:
    """Maps raw label values to contiguous ids; ``names[i]`` is the name of id i."""

    def __init__(self, names: list[str], numeric_names: dict[int, str] | None = None) -> None:
        self.names = names
        self.numeric_names = numeric_names
        self._ids = {name: i for i, name in enumerate(names)}

    @classmethod
    def infer(cls, values: Iterable[object]) -> LabelMap:
        """Build the map from the training split's distinct label values."""
        values = [v for v in values if v is not None]
        numbers = {_as_number(v) for v in values}
        numeric_names = _numeric_names(numbers) if None not in numbers and numbers else None
        names = sorted({canonical_label(v, numeric_names) for v in values})
        if numeric_names is not None:
            order = {name: n for n, name in numeric_names.items()}
            names.sort(key=lambda name: order.get(name, 0))
        elif set(names) <= set(SENTIMENT_ORDER):
            names.sort(key=SENTIMENT_ORDER.index)
        return cls(names, numeric_names)

    def encode(self, value: object, split: str = "train") -> int:
        name = canonical_label(value, self.numeric_names)
        if name not in self._ids:
            known = ", ".join(self.names)
            if split in ("train", "validation"):  # training data
                where, has, option = f"the {split} split", "the training split has", "--data.label_column"
            else:  # data given to a trained model: a file, or a Hub split
                where, has, option = split, "the model knows", "--label-column"
            raise UserError(f"unknown label {value!r} in {where}; {has}: {known} (fix the labels or the {option})")
        return self._ids[name]
