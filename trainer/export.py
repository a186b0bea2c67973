"""Exported models (``best/``, ``final/``): a self-contained folder of weights, config.json,
tokenizer and model card, written atomically and checked when loaded. Nothing here imports
accelerate or the training loop: loading a model for inference needs neither."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from trainer.errors import UserError, check_choice, check_kind, check_range, inside, written_atomically
from trainer.hub import resolve_model_dir
from trainer.model import ModelConfig, RecurrentEncoder, SentimentRNN
from trainer.tokenizer import MAX_TOKENS, MAX_VOCAB, TRUNCATIONS, load_tokenizer, pad_id, save_tokenizer

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


def _weights_file(model_dir: Path) -> str:
    """The weights' file name of a model folder: model.safetensors, or model.onnx for an ONNX export."""
    try:
        meta = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return WEIGHTS_NAME  # the config's own problem is reported below
    return ONNX_NAME if isinstance(meta, dict) and meta.get("format") == "onnx" else WEIGHTS_NAME


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
    weights = _weights_file(model_dir)
    missing = [n for n in (weights, CONFIG_NAME, TOKENIZER_NAME) if not (model_dir / n).is_file()]
    exports = [name for name in ("best", "final") if (model_dir / name / WEIGHTS_NAME).is_file()]
    if missing and exports:
        choices = " or ".join(str(model_dir / name) for name in exports)
        raise UserError(f"{model_dir} is a run folder, not a model folder; give {choices}")
    if missing:
        raise UserError(f"{model_dir} is not a complete model folder: missing {', '.join(missing)}")
    try:
        meta = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{model_dir / CONFIG_NAME} is not a valid model config ({type(exc).__name__}: {exc})") from exc
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
        from trainer.onnx_model import OnnxClassifier

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


def _check_parity(model: SentimentRNN, onnx_model, vocab_size: int) -> float:
    """The largest |logit| difference between the eager model and its ONNX graph on a batch of
    very different lengths (1 to 300 tokens), against a fixed draw of tokens."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([300, 1, 57, 128, 9, 300, 2, 200])
    ids = torch.randint(1, vocab_size, (len(lengths), int(lengths.max())), generator=generator)
    ids[torch.arange(ids.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)] = model.pad_id
    with torch.inference_mode():
        expected = model(ids, lengths)
    return float((onnx_model(ids, lengths) - expected).abs().max())


def export_onnx_folder(model_dir: Path, out_dir: Path, quantize: str | None, source: str) -> dict:
    """An ONNX folder from an exported one: model.onnx (float32 or int8), config.json, tokenizer, card.

    Written atomically; returns the new config.json contents, with the float32 graph's parity
    (``onnx_max_abs_logit_difference``) against the eager model.
    """
    from huggingface_hub import ModelCard

    from trainer.onnx_model import OnnxClassifier, export_onnx, quantize_int8, quiet

    model, tokenizer, meta = load_exported(model_dir)
    if meta.get("format") == "onnx":
        raise UserError(f"{model_dir} is already an ONNX export; give the folder it was exported from")
    # Replaces an earlier export (the caller was told to overwrite it) only once complete; a full disk: nothing.
    with written_atomically(out_dir, out_dir.with_name(f".{out_dir.name}.tmp")) as tmp:
        tmp.mkdir(parents=True)
        export_onnx(model, tmp / ONNX_NAME)
        difference = _check_parity(model, OnnxClassifier(tmp / ONNX_NAME), meta["vocab_size"])
        if difference > 1e-3:
            raise RuntimeError(f"the ONNX graph's logits differ from the model's by {difference:.2g}")
        if quantize:
            quantize_int8(tmp / ONNX_NAME, tmp / "model.int8.onnx")
            os.replace(tmp / "model.int8.onnx", tmp / ONNX_NAME)
        config = {
            **{k: v for k, v in meta.items() if k != "weights_sha256"},
            "format": "onnx",
            "quantization": quantize,
            "onnx_inputs": ["input_ids", "lengths"],
            "onnx_outputs": ["logits", "attention"],
            "onnx_float32_max_abs_logit_difference": difference,
            "source": {"model": source, "weights_sha256": meta.get("weights_sha256")},
            "weights_sha256": sha256_file(tmp / ONNX_NAME),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_tokenizer(tokenizer, tmp / TOKENIZER_NAME)
        if (model_dir / CARD_NAME).is_file():
            with quiet():  # an export older than the card's metadata has none: it is added
                card = ModelCard.load(model_dir / CARD_NAME)
            card.data.tags = [*(card.data.tags or []), "onnx", *([quantize] if quantize else [])]
            kind = f"{quantize} weights (onnxruntime's dynamic quantisation)" if quantize else "float32"
            card.text += (
                f"\n## ONNX\n\nThis folder holds `{ONNX_NAME}` ({kind}), exported from `{source}` with "
                f"`python -m trainer.export`. Inputs: `input_ids` (batch, length) and `lengths` (batch,), int64, "
                "right-padded; outputs: `logits` and `attention` (batch, length). `load_model`, "
                "`python -m trainer.predict` and `python -m trainer.evaluate` run it through onnxruntime.\n"
            )
            card.save(tmp / CARD_NAME)
    return config


EXPORTED_FILES = {WEIGHTS_NAME, ONNX_NAME, CONFIG_NAME, TOKENIZER_NAME, CARD_NAME}


def check_output_folder(out_dir: Path, model_dir: Path, overwrite: bool) -> None:
    """The folder an export replaces as a whole: never the model it reads, a folder holding it or one
    inside it, and with ``overwrite`` only an earlier export (files this tool writes, nothing else)."""
    if inside(model_dir, out_dir):
        raise UserError(f"--output {out_dir} holds the model {model_dir} that is exported; give another folder")
    if inside(out_dir, model_dir):
        raise UserError(f"--output {out_dir} lies in the model folder {model_dir}; give a folder outside it")
    if not out_dir.exists():
        return
    if not overwrite:
        raise UserError(f"{out_dir} already exists; give another --output, or --overwrite to replace it")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORTED_FILES) if out_dir.is_dir() else []
    if not out_dir.is_dir() or foreign:
        what = (
            "is a file" if not out_dir.is_dir() else f"holds files an export does not write ({', '.join(foreign[:3])})"
        )
        raise UserError(
            f"--output {out_dir} {what}; --overwrite replaces an earlier export, never other files: give another "
            "--output"
        )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from trainer.errors import exit_for

    parser = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Export a trained model folder (runs/<run>/best, or a Hub repo id) for onnxruntime.",
    )
    parser.add_argument("--model", required=True, help="an exported model folder, or a Hub repo id (user/name)")
    parser.add_argument("--revision", help="the Hub repo's branch, tag or commit (a repo id only)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="the format to write (onnx)")
    parser.add_argument("--quantize", choices=("int8",), help="dynamic int8 quantisation of the weights")
    parser.add_argument("--output", help="the folder to write (default: beside the model, <name>-onnx[-int8])")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        model_dir = resolve_model_dir(args.model, args.revision)
        suffix = "-onnx" + (f"-{args.quantize}" if args.quantize else "")
        local = Path(args.model).exists()
        default = model_dir.with_name(model_dir.name + suffix) if local else Path(args.model.split("/")[-1] + suffix)
        out_dir = Path(args.output) if args.output else default
        check_output_folder(out_dir, model_dir, args.overwrite)
        config = export_onnx_folder(model_dir, out_dir, args.quantize, args.model)
    except Exception as exc:
        return exit_for(exc, args.debug)
    size = (out_dir / ONNX_NAME).stat().st_size / 1e6
    print(
        f"wrote {out_dir / ONNX_NAME} ({size:.1f} MB{', int8' if args.quantize else ''}; float32 graph within "
        f"{config['onnx_float32_max_abs_logit_difference']:.1e} of the model's logits)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
