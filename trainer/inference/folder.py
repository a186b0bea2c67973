"""The exported model folder (``best/``, ``final/``, an ONNX export): weights, config.json,
tokenizer and model card, written atomically and checked when loaded (config.json against the
weights, the tokenizer against config.json). Nothing here imports accelerate, datasets or the
training loop: loading a model for inference needs none of them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from trainer.data.tokenizer import MAX_TOKENS, MAX_VOCAB, TRUNCATIONS, load_tokenizer, pad_id, save_tokenizer
from trainer.errors import UserError, check_choice, check_kind, check_range, written_atomically
from trainer.inference.hub import resolve_model_dir
from trainer.models.sentiment import ModelConfig, RecurrentEncoder, SentimentRNN

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"


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
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    if not all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point()):
        raise ValueError("refusing to export non-finite (nan or inf) weights")  # the trainer stops before this
    with written_atomically(out_dir, out_dir.with_name(f".{out_dir.name}.tmp")) as tmp:  # a full disk: nothing
        tmp.mkdir(parents=True)
        _write_export(tmp, state, model, tokenizer, label_names, max_length, extra, card)


def _write_export(tmp: Path, state: dict, model, tokenizer, label_names, max_length, extra, card) -> None:
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
        (tmp / CARD_NAME).write_text(card(meta), encoding="utf-8")


def _read_config(model_dir: Path) -> dict:
    """config.json of a complete model folder, checked: the folder's first problem is a UserError."""
    if model_dir.is_file() and model_dir.name in (WEIGHTS_NAME, ONNX_NAME, CONFIG_NAME, TOKENIZER_NAME):
        raise UserError(f"--model {model_dir} is a file of a model folder; give the folder, {model_dir.parent}")
    check_kind(model_dir, "folder", "an exported model folder such as runs/<run>/best, or a Hub repo id", "--model")
    if not model_dir.is_dir():
        raise UserError(
            f"model folder {model_dir} does not exist; give an exported folder such as runs/<run>/best, or a Hub "
            "repo id (user/name)"
        )
    meta, unreadable = None, None
    if (model_dir / CONFIG_NAME).is_file():  # read once; its problems are reported after the missing files
        try:
            meta = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        except ValueError as exc:
            unreadable = exc
    weights = ONNX_NAME if isinstance(meta, dict) and meta.get("format") == "onnx" else WEIGHTS_NAME
    missing = [n for n in (weights, CONFIG_NAME, TOKENIZER_NAME) if not (model_dir / n).is_file()]
    exports = [name for name in ("best", "final") if (model_dir / name / WEIGHTS_NAME).is_file()]
    if missing and exports:
        choices = " or ".join(str(model_dir / name) for name in exports)
        raise UserError(f"{model_dir} is a run folder, not a model folder; give {choices}")
    if missing:
        raise UserError(f"{model_dir} is not a complete model folder: missing {', '.join(missing)}")
    if unreadable is not None:
        kind = type(unreadable).__name__
        raise UserError(f"{model_dir / CONFIG_NAME} is not a valid model config ({kind}: {unreadable})") from unreadable
    if isinstance(meta, dict) and meta.get("architecture") == "LanguageModel":
        raise UserError(
            f"{model_dir} is a language model (python -m trainer.pretrain): it does not classify; train a "
            f"classifier from it with --model.init_from={model_dir}"
        )
    check_meta(meta, model_dir / CONFIG_NAME)
    expected = meta.get("weights_sha256")  # exports older than the checksum have none
    if expected and sha256_file(model_dir / weights) != expected:
        raise UserError(
            f"{model_dir / weights} does not match the checksum in {CONFIG_NAME}: the file was damaged or "
            "changed after export; restore it or export the model again"
        )
    return meta


def _integer(meta: dict, key: str, low: int, high: int) -> None:
    value = meta[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{key}={value!r} is not a whole number")
    check_range(key, value, low, high)


def check_meta(meta: object, path: Path, classifier: bool = True) -> None:
    """The values of an exported folder's config.json (``path``), each checked as a run's config
    checks it, and its labels against ``num_labels`` (none for a language model, ``classifier``
    False): a file edited after export is refused in one line naming it, the key and the fix."""
    required = ("model", "vocab_size", "pad_id", "max_length") + (("num_labels", "id2label") if classifier else ())
    try:
        if not isinstance(meta, dict):
            raise UserError(f"it holds {type(meta).__name__}, not a JSON object")
        missing = [key for key in required if key not in meta]
        if missing:
            raise UserError(f"{', '.join(missing)} missing")
        if not isinstance(meta["model"], dict):
            raise UserError(f"model={meta['model']!r} is not a mapping of the model's settings")
        unknown = sorted(set(meta["model"]) - {f.name for f in dataclasses.fields(ModelConfig)})
        if unknown:
            raise UserError(f"model.{unknown[0]} is not a model setting")
        ModelConfig(**meta["model"])
        _integer(meta, "vocab_size", 3, MAX_VOCAB)
        _integer(meta, "pad_id", 0, meta["vocab_size"] - 1)
        _integer(meta, "max_length", 1, MAX_TOKENS)
        if meta.get("truncation") is not None:
            check_choice("truncation", meta["truncation"], TRUNCATIONS)
        if meta.get("format") is not None:
            check_choice("format", meta["format"], ("onnx",))
        if meta.get("architecture") is not None:
            check_choice("architecture", meta["architecture"], ("SentimentRNN", "LanguageModel"))
        if classifier:
            _check_labels(meta)
    except UserError as exc:
        raise UserError(f"{path}: {exc}; restore the file, or export the model again") from exc


def _check_labels(meta: dict) -> None:
    """``id2label`` names labels 0 .. num_labels-1, each once: the model's outputs, in order."""
    _integer(meta, "num_labels", 2, MAX_VOCAB)
    labels, count = meta["id2label"], meta["num_labels"]
    if not isinstance(labels, dict) or set(labels) != {str(i) for i in range(count)}:
        found = len(labels) if isinstance(labels, dict | list) else repr(labels)
        raise UserError(f"id2label holds {found} labels, num_labels={count}: it must name labels 0 to {count - 1}")
    names = [labels[str(i)] for i in range(count)]
    if not all(isinstance(name, str) and name.strip() for name in names) or len(set(names)) < count:
        raise UserError(f"id2label={labels} must name each label once, as text")


def _check_shapes(model_dir: Path, meta: dict) -> None:
    """The weights' shapes, read from the file's header, against those config.json describes:
    before a model of those sizes is allocated."""
    with torch.device("meta"):  # shapes only, nothing allocated
        config = ModelConfig(**meta["model"])
        model = SentimentRNN(config, meta["vocab_size"], meta["num_labels"], meta["pad_id"])
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    try:
        with safe_open(str(model_dir / WEIGHTS_NAME), "pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as exc:  # a damaged header
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"{model_dir / WEIGHTS_NAME} cannot be read ({first}); re-export the model") from exc
    problems = [f"{name} missing" for name in expected if name not in found]
    problems += [f"{name} unexpected" for name in found if name not in expected]
    problems += [
        f"{name} is {'x'.join(map(str, found[name]))}, config.json makes it {'x'.join(map(str, shape))}"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    if problems:
        raise UserError(
            f"{model_dir / CONFIG_NAME} does not describe {model_dir / WEIGHTS_NAME} ({'; '.join(problems[:2])}): "
            "it was changed after export; restore it, or export the model again"
        )


def _check_onnx(model, model_dir: Path, meta: dict) -> None:
    """An ONNX graph against config.json: one token, the vocabulary's last, must give one output per
    label (a single one for two), before any prediction."""
    count = meta["num_labels"]
    try:
        logits = model(torch.tensor([[meta["vocab_size"] - 1]]), torch.tensor([1]))
    except Exception as exc:  # onnxruntime's own error types: an index past the graph's embedding
        raise UserError(
            f"{model_dir / CONFIG_NAME} does not describe {model_dir / ONNX_NAME}: the graph cannot read token "
            f"{meta['vocab_size'] - 1} (vocab_size={meta['vocab_size']}); restore it, or export the model again"
        ) from exc
    outputs = 1 if count == 2 else count
    if tuple(logits.shape) != (1, outputs):
        raise UserError(
            f"{model_dir / CONFIG_NAME} does not describe {model_dir / ONNX_NAME}: the graph gives "
            f"{logits.shape[-1]} output(s), num_labels={count} needs {outputs}; restore it, or export the model again"
        )


def _load_weights(model_dir: Path, meta: dict) -> SentimentRNN:
    _check_shapes(model_dir, meta)
    model = SentimentRNN(ModelConfig(**meta["model"]), meta["vocab_size"], meta["num_labels"], meta["pad_id"])
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
    return model.eval()


def load_exported(model_dir: str | Path, revision: str | None = None) -> tuple:
    """(model in eval mode, tokenizer, config.json contents) from an exported folder or a Hub repo id.

    The model is a ``SentimentRNN``, or for an ONNX export (``python -m trainer.export``) an
    ``OnnxClassifier`` called the same way.
    """
    model_dir = resolve_model_dir(model_dir, revision)
    meta = _read_config(model_dir)
    if meta.get("format") == "onnx":
        from trainer.inference.onnx import OnnxClassifier

        model = OnnxClassifier(model_dir / ONNX_NAME)
        _check_onnx(model, model_dir, meta)
    else:
        model = _load_weights(model_dir, meta)
    tokenizer = load_tokenizer(model_dir / TOKENIZER_NAME)
    expected = meta.get("tokenizer_sha256")
    if tokenizer.get_vocab_size() != meta["vocab_size"] or (expected and expected != _tokenizer_digest(tokenizer)):
        raise UserError(
            f"{model_dir / TOKENIZER_NAME} is not the tokenizer these weights were trained with "
            f"({tokenizer.get_vocab_size()} tokens, the model has {meta['vocab_size']}); restore the exported one"
        )
    if pad_id(tokenizer) is not None and pad_id(tokenizer) != meta["pad_id"]:
        raise UserError(
            f"{model_dir / CONFIG_NAME}: pad_id={meta['pad_id']} is not the tokenizer's padding token "
            f"({pad_id(tokenizer)}); restore the file, or export the model again"
        )
    return model, tokenizer, meta


def check_complete(model_dir: Path) -> dict:
    """config.json of a folder that can be shared as it is: loadable, checksums matching, with its card."""
    check_kind(model_dir, "folder", "an exported model folder such as runs/<run>/best", "--model")
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir} is not a local folder; give an exported one such as runs/<run>/best")
    meta = load_exported(model_dir)[2]
    if not (model_dir / CARD_NAME).is_file():
        raise UserError(f"{model_dir} has no model card ({CARD_NAME}); export the model again (python -m trainer)")
    return meta


def state_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to compare weights across processes and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
