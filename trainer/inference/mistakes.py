"""Where a model is wrong: its most confident mistakes, as JSONL and as an attention page.

``python -m trainer.evaluate ... --errors N`` writes them; each record has the text, the true and
the predicted label, the probability of the predicted label and the example's loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.errors import check_new_file, write_text


def output_paths(prefix: str) -> tuple[Path, Path]:
    """``errors`` -> errors.jsonl and errors.html."""
    base = Path(prefix)
    base = base.with_suffix("") if base.suffix in (".jsonl", ".html") else base
    return base.with_name(base.name + ".jsonl"), base.with_name(base.name + ".html")


def check_outputs(prefix: str, overwrite: bool, inputs: list[str]) -> None:
    """Before any work: the two files must be new (or ``overwrite``), not ``inputs``, and their folder writable."""
    for path in output_paths(prefix):
        check_new_file(path, "--errors-out", overwrite, inputs)


def losses_from(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's loss from class probabilities: the negative log of its label's (an
    ensemble's, or a model scored as shipped, has no logits)."""
    return -probabilities.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log()


def top_mistakes(
    texts: list[str], probabilities: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor, names: list[str], n: int
) -> list[dict]:
    """The ``n`` wrong predictions the model was surest of (highest probability of its wrong label)."""
    predicted = probabilities.argmax(1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[confidence.argsort(descending=True, stable=True)][:n]
    return [
        {
            "text": texts[i],
            "label": names[int(labels[i])],
            "predicted": names[int(predicted[i])],
            "probability": round(float(probabilities[i, predicted[i]]), 6),
            "loss": round(float(losses[i]), 6),
        }
        for i in order.tolist()
    ]


def write_mistakes(records: list[dict], prefix: str, model, title: str) -> tuple[Path, Path]:
    """errors.jsonl, and errors.html: each mistake with ``model``'s attention over its tokens."""
    from trainer.inference.explain import html_page

    jsonl, page = output_paths(prefix)
    jsonl.parent.mkdir(parents=True, exist_ok=True)  # check_outputs allowed a missing folder
    write_text(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    explanations = model.explain_batch([r["text"] for r in records]) if records else []
    captions = [f"(true label: {r['label']}; loss {r['loss']:.3f})" for r in records]
    write_text(page, html_page(explanations, title, captions))
    return jsonl, page
