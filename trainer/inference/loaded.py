"""A trained model in use: load an exported folder, predict labels, explain with attention.

from trainer import load_model

model = load_model("runs/imdb/best")
model.predict(["A wonderful film.", "Dull."])   # [Prediction(label='positive', ...), ...]
model.explain("A wonderful film.")              # tokens, their character spans, attention weights

hub = load_model("user/imdb-sentiment")         # a Hub repo id: downloaded once into the HF cache
onnx = load_model("runs/imdb/best-onnx-int8")   # python -m trainer.export: run by onnxruntime

ensemble = load_model(["runs/rt-s1/final", "runs/rt-s2/final", "runs/rt-s3/final"])
ensemble.predict(["A wonderful film."])          # the average of the three models' probabilities
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from trainer.data.tokenizer import Encoded, Truncator, pad_batch
from trainer.errors import UserError
from trainer.inference.folder import load_exported
from trainer.models.sentiment import class_probabilities


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # label name -> probability, in label order
    num_tokens: int  # tokens the model read (after truncation)
    truncated: bool  # the text had more than max_length tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Explanation(Prediction):
    text: str
    tokens: list[str]  # the model's tokens, in order
    spans: list[tuple[int, int]]  # each token's [start, end) characters in ``text``
    weights: list[float]  # attention on each token: sums to 1 over the tokens


class SentimentModel:
    """An exported model with its tokenizer, ready for inference (no gradients, eval mode)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, meta: dict, device: str | torch.device = "cpu"):
        try:
            self.device = torch.device(device)
            self.model = model.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise UserError(f"device {str(device)!r} is not usable here ({str(exc).splitlines()[0]}); use cpu") from exc
        self.meta = meta
        self.labels = [meta["id2label"][str(i)] for i in range(len(meta["id2label"]))]
        self.max_length = int(meta["max_length"])
        self.pad_id = int(meta["pad_id"])
        self.tokenizer = tokenizer
        self.truncation = meta.get("truncation", "head")  # exports older than the option kept the head
        self._truncator = Truncator(tokenizer, self.max_length, self.truncation)

    def encode(self, texts: Sequence[str], offsets: bool = False) -> list[Encoded]:
        """Token ids cut to ``max_length`` as in training (the export's ``truncation``); with
        ``offsets``, also the tokens and their characters (what explanations show), which costs
        about a quarter more time (measured on IMDB)."""
        return self._truncator.encode(list(texts), offsets)

    def _forward(self, encodings: list[Encoded], attention: bool = False):
        input_ids, lengths = pad_batch([e.ids for e in encodings], self.pad_id)
        with torch.inference_mode():
            out = self.model(input_ids.to(self.device), lengths.to(self.device), return_attention=attention)
        logits, weights = out if attention else (out, None)
        if not torch.isfinite(logits).all():
            raise UserError("the model gave non-finite (nan or inf) outputs: its weights are damaged; use another one")
        return class_probabilities(logits).cpu(), (weights.cpu() if attention else None)

    def _prediction(self, probabilities: torch.Tensor, encoding: Encoded) -> dict:
        probs = {name: round(float(p), 6) for name, p in zip(self.labels, probabilities.tolist(), strict=True)}
        return {
            "label": self.labels[int(probabilities.argmax())],
            "probabilities": probs,
            "num_tokens": len(encoding.ids),
            "truncated": encoding.truncated,
        }

    def _scores(self, encodings: list[Encoded], batch_size: int, attention: bool) -> tuple[torch.Tensor, list]:
        """(N, C) probabilities and, with ``attention``, each text's weights; in the order given."""
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))  # batches of similar length
        probabilities = torch.empty(len(encodings), len(self.labels))
        weights: list = [None] * len(encodings)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            chunk_probabilities, chunk_weights = self._forward([encodings[i] for i in chunk], attention)
            probabilities[chunk] = chunk_probabilities
            for row, i in enumerate(chunk):
                if attention:
                    weights[i] = chunk_weights[row, : len(encodings[i].ids)].tolist()
        return probabilities, weights

    def _run(self, texts: Sequence[str], batch_size: int, attention: bool) -> list:
        _check_texts(texts)
        encodings = self.encode(texts, offsets=attention)
        probabilities, weights = self._scores(encodings, batch_size, attention)
        results: list = []
        for i, encoding in enumerate(encodings):
            fields = self._prediction(probabilities[i], encoding)
            if not attention:
                results.append(Prediction(**fields))
                continue
            results.append(
                Explanation(
                    **fields,
                    text=texts[i],
                    tokens=list(encoding.tokens),
                    spans=[tuple(span) for span in encoding.offsets],
                    weights=weights[i],
                )
            )
        return results

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(N, C) class probabilities, in the order of ``texts`` and of ``labels``."""
        _check_texts(texts)
        return self._scores(self.encode(texts), batch_size, attention=False)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """One prediction per text, in order."""
        return self._run(texts, batch_size, attention=False)

    def explain(self, text: str) -> Explanation:
        """The prediction and the attention weight of each of the text's tokens."""
        return self._run([text], 1, attention=True)[0]

    def explain_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[Explanation]:
        """``explain`` for many texts, batched."""
        return self._run(texts, batch_size, attention=True)


def check_same_labels(labels: Sequence[list[str]], names: Sequence[str]) -> None:
    """An ensemble's models must have the same labels in the same order (their probability columns)."""
    for other, name in zip(labels[1:], names[1:], strict=True):
        if other != labels[0]:
            raise UserError(
                f"{name} has the labels {', '.join(other)} and {names[0]} {', '.join(labels[0])}; an ensemble "
                "needs models trained on the same labels, in the same order"
            )


class Ensemble:
    """Several exported models used as one: each reads the texts with its own tokenizer, and their
    class probabilities are averaged. ``num_tokens`` and ``truncated`` are the first model's.
    Attention belongs to a single model, so an ensemble predicts but does not explain."""

    def __init__(self, members: Sequence[SentimentModel], names: Sequence[str] | None = None):
        if not members:
            raise UserError("an ensemble needs at least one model")
        self.members = list(members)
        names = names or [f"model {i + 1}" for i in range(len(self.members))]
        check_same_labels([member.labels for member in self.members], names)
        self.labels, self.max_length = self.members[0].labels, self.members[0].max_length
        self.meta = self.members[0].meta  # what the first model reads (max_length, truncation)

    def _averaged(self, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, list[Encoded]]:
        """The members' average probabilities and the first member's encodings (read once)."""
        _check_texts(texts)
        first, *others = self.members
        encodings = first.encode(texts)
        scores = [first._scores(encodings, batch_size, attention=False)[0]]
        scores += [member.probabilities(texts, batch_size) for member in others]
        return torch.stack(scores).mean(0), encodings

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(N, C) the members' average class probabilities, in the order of ``texts``."""
        return self._averaged(texts, batch_size)[0]

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """One prediction per text, in order, from the averaged probabilities."""
        probabilities, encodings = self._averaged(texts, batch_size)
        first = self.members[0]
        return [Prediction(**first._prediction(p, e)) for p, e in zip(probabilities, encodings, strict=True)]

    def explain(self, text: str) -> Explanation:
        return self.explain_batch([text])[0]

    def explain_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[Explanation]:
        raise TypeError("an ensemble predicts but does not explain (attention is one model's); use .members[i]")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts; wrap a single text in a list")


def add_model_arguments(parser) -> None:
    """``--model`` (repeatable) and ``--revision``, the same for every command that loads a model."""
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help="an exported model folder (runs/<run>/best, or an ONNX export), or a Hub repo id (user/name); "
        "repeat it for an ensemble",
    )
    parser.add_argument("--revision", help="the branch, tag or commit of a Hub repo id (default: main)")


def load_model(
    model_dir: str | Path | Sequence[str | Path], device: str | torch.device = "cpu", revision: str | None = None
) -> SentimentModel | Ensemble:
    """Load an exported model folder (``best/``, ``final/``, an ONNX export) or a Hub repo id
    (``user/name``, at ``revision``); see ``SentimentModel``. Several give an ``Ensemble`` that
    averages their probabilities."""
    if isinstance(model_dir, str | Path):
        model_dir = [model_dir]
    if not model_dir:
        raise UserError("no model folder given; give an exported folder such as runs/<run>/best")
    members = [SentimentModel(*load_exported(path, revision), device) for path in model_dir]
    return members[0] if len(members) == 1 else Ensemble(members, [str(path) for path in model_dir])
