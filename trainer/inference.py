"""A trained model in use: load an exported folder, predict labels, explain with attention.

from trainer import load_model

model = load_model("runs/imdb/best")
model.predict(["A wonderful film.", "Dull."])   # [Prediction(label='positive', ...), ...]
model.explain("A wonderful film.")              # tokens, their character spans, attention weights
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Encoding, Tokenizer

from trainer.checkpoint import load_exported
from trainer.errors import UserError
from trainer.model import class_probabilities
from trainer.tokenizer import pad_batch, truncating_copy


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
        self._truncating = truncating_copy(tokenizer, self.max_length)

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        return self._truncating.encode_batch(list(texts))

    def _forward(self, encodings: list[Encoding], attention: bool = False):
        input_ids, lengths = pad_batch([e.ids for e in encodings], self.pad_id)
        with torch.inference_mode():
            out = self.model(input_ids.to(self.device), lengths.to(self.device), return_attention=attention)
        logits, weights = out if attention else (out, None)
        return class_probabilities(logits).cpu(), (weights.cpu() if attention else None)

    def _prediction(self, probabilities: torch.Tensor, encoding: Encoding) -> dict:
        probs = {name: round(float(p), 6) for name, p in zip(self.labels, probabilities.tolist(), strict=True)}
        return {
            "label": self.labels[int(probabilities.argmax())],
            "probabilities": probs,
            "num_tokens": len(encoding.ids),
            "truncated": bool(encoding.overflowing),
        }

    def _run(self, texts: Sequence[str], batch_size: int, attention: bool) -> list:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts; wrap a single text in a list")
        encodings = self.encode(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))  # batches of similar length
        results: list = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            probabilities, weights = self._forward([encodings[i] for i in chunk], attention)
            for row, i in enumerate(chunk):
                encoding, fields = encodings[i], self._prediction(probabilities[row], encodings[i])
                if not attention:
                    results[i] = Prediction(**fields)
                    continue
                results[i] = Explanation(
                    **fields,
                    text=texts[i],
                    tokens=list(encoding.tokens),
                    spans=[tuple(span) for span in encoding.offsets],
                    weights=weights[row, : len(encoding.ids)].tolist(),
                )
        return results

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """One prediction per text, in order."""
        return self._run(texts, batch_size, attention=False)

    def explain(self, text: str) -> Explanation:
        """The prediction and the attention weight of each of the text's tokens."""
        return self._run([text], 1, attention=True)[0]

    def explain_batch(self, texts: Sequence[str], batch_size: int = 32) -> list[Explanation]:
        """``explain`` for many texts, batched."""
        return self._run(texts, batch_size, attention=True)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> SentimentModel:
    """Load an exported model folder (``best/``, ``final/``); see ``SentimentModel``."""
    model, tokenizer, meta = load_exported(model_dir)
    return SentimentModel(model, tokenizer, meta, device)
