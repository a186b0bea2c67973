"""Exported models (``best/``, ``final/``): a self-contained folder of weights, config.json,
tokenizer and model card, written atomically and checked when loaded. Nothing here imports
accelerate or the training loop: loading a model for inference needs neither."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from trainer.errors import UserError
from trainer.model import ModelConfig, RecurrentEncoder, SentimentRNN
from trainer.tokenizer import load_tokenizer, save_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenizer_digest(tokenizer: Tokenizer) -> str:
    """Identifies the exact tokenizer an exported model was trained with."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def export_model(
    out_dir: Path,
    model: RecurrentEncoder,
    tokenizer: Tokenizer,
    label_names: list[str],
    max_length: int,
    extra: dict | None = None,
    card: Callable[[dict], str] | None = None,
) -> None:
    """Write a self-contained model folder, atomically: a reader never sees a half-written one.

    ``card(meta)`` returns the folder's README.md (the model card) from its config.json contents.
    A language model (``trainer.pretrain``) has no labels: ``label_names`` is empty.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    if not all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point()):
        raise ValueError("refusing to export non-finite (nan or inf) weights")  # the trainer stops before this
    save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    meta = {
        "architecture": type(model).__name__,
        "model": dataclasses.asdict(model.config),
        "vocab_size": model.embedding.num_embeddings,
        "num_labels": len(label_names),
        "pad_id": model.pad_id,
        "max_length": max_length,
        "id2label": {str(i): name for i, name in enumerate(label_names)},
        "tokenizer_sha256": _tokenizer_digest(tokenizer),
        "weights_sha256": sha256_file(tmp / WEIGHTS_NAME),
        **(extra or {}),
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, tmp / TOKENIZER_NAME)
    if card is not None:
        (tmp / "README.md").write_text(card(meta), encoding="utf-8")
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_exported(model_dir: str | Path) -> tuple[SentimentRNN, Tokenizer, dict]:
    """(model in eval mode, tokenizer, config.json contents) from an exported folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist; give an exported folder such as runs/<run>/best")
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME, TOKENIZER_NAME) if not (model_dir / n).is_file()]
    exports = [name for name in ("best", "final") if (model_dir / name / WEIGHTS_NAME).is_file()]
    if missing and exports:
        choices = " or ".join(str(model_dir / name) for name in exports)
        raise UserError(f"{model_dir} is a run folder, not a model folder; give {choices}")
    if missing:
        raise UserError(f"{model_dir} is not a complete model folder: missing {', '.join(missing)}")
    try:
        meta = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        if meta.get("architecture") == "LanguageModel":
            raise UserError(
                f"{model_dir} is a language model (python -m trainer.pretrain): it does not classify; train a "
                f"classifier from it with --model.init_from={model_dir}"
            )
        model = SentimentRNN(ModelConfig(**meta["model"]), meta["vocab_size"], meta["num_labels"], meta["pad_id"])
        missing = [key for key in ("max_length", "id2label") if key not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{model_dir / CONFIG_NAME} is not a valid model config ({type(exc).__name__}: {exc})") from exc
    expected = meta.get("weights_sha256")  # exports older than the checksum have none
    if expected and sha256_file(model_dir / WEIGHTS_NAME) != expected:
        raise UserError(
            f"{model_dir / WEIGHTS_NAME} does not match the checksum in {CONFIG_NAME}: the file was damaged or "
            "changed after export; restore it or export the model again"
        )
    try:
        weights = load_file(str(model_dir / WEIGHTS_NAME))
        model.load_state_dict(weights)
    except Exception as exc:  # safetensors header errors, missing keys, shape mismatches
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(
            f"{model_dir / WEIGHTS_NAME} does not match {CONFIG_NAME} ({first}); re-export the model"
        ) from exc
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise UserError(
            f"{model_dir / WEIGHTS_NAME} holds non-finite (nan or inf) weights in {', '.join(bad[:3])}; "
            "it cannot predict: use another export"
        )
    model.eval()
    tokenizer = load_tokenizer(model_dir / TOKENIZER_NAME)
    expected = meta.get("tokenizer_sha256")
    if tokenizer.get_vocab_size() != meta["vocab_size"] or (expected and expected != _tokenizer_digest(tokenizer)):
        raise UserError(
            f"{model_dir / TOKENIZER_NAME} is not the tokenizer these weights were trained with "
            f"({tokenizer.get_vocab_size()} tokens, the model has {meta['vocab_size']}); restore the exported one"
        )
    return model, tokenizer, meta


def state_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to compare weights across processes and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
