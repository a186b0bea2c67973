"""Starting a classifier from a pre-trained language model (``--model.init_from``): its
tokenizer, and its embedding and recurrent layers, checked against the classifier's architecture."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from safetensors.torch import load_file

from trainer.data.tokenizer import load_tokenizer
from trainer.errors import UserError, check_kind
from trainer.inference.folder import check_meta, sha256_file
from trainer.models.language import ENCODER_PREFIXES
from trainer.models.sentiment import ModelConfig, RecurrentEncoder
from trainer.training.collective import main_decides


def read_pretrained(folder: str) -> tuple[dict, Path]:
    """(config.json, tokenizer path) of a folder ``--model.init_from`` may start from: a language
    model's export, or a classifier's (its encoder is just as usable)."""
    path = Path(folder)
    exports = [name for name in ("best", "final") if (path / name / "config.json").is_file()]
    check_kind(path, "folder", "the best/ or final/ folder of a python -m trainer.pretrain run", "--model.init_from")
    if not (path / "config.json").is_file():
        if exports:
            choices = " or ".join(str(path / name) for name in exports)
            raise UserError(f"--model.init_from={folder} is a run folder; give {choices}")
        raise UserError(
            f"--model.init_from={folder} is not a model folder (no config.json); give the best/ or final/ of a "
            "python -m trainer.pretrain run"
        )
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path / 'config.json'} is not a valid model config ({type(exc).__name__}: {exc})") from exc
    check_meta(meta, path / "config.json", classifier=False)
    tokenizer = path / "tokenizer.json"
    if tokenizer.is_file() and (size := load_tokenizer(tokenizer).get_vocab_size()) != meta["vocab_size"]:
        raise UserError(
            f"{tokenizer} has {size} tokens, and {path / 'config.json'} {meta['vocab_size']}: it is not the tokenizer "
            "the model was trained with; restore the folder, or pre-train again"
        )
    weights, expected = path / "model.safetensors", meta.get("weights_sha256")
    if expected and weights.is_file() and sha256_file(weights) != expected:
        raise UserError(
            f"{weights} does not match the checksum in {path / 'config.json'}: the file was damaged or changed after "
            "export; restore it, or pre-train again"
        )
    return meta, tokenizer


def architecture_problem(meta: dict, config: ModelConfig, folder: str) -> str | None:
    """Why a classifier of ``config`` cannot take the pretrained encoder described by ``meta``, or None."""
    saved = ModelConfig(**{**meta["model"], "init_from": None, "pretrained_embeddings": None}).architecture()
    changed = {k: (v, getattr(config, k)) for k, v in saved.items() if getattr(config, k) != v}
    if not changed:
        return None
    keep = " ".join(
        f"--model.{k}={str(old).lower() if isinstance(old, bool) else old}" for k, (old, _) in changed.items()
    )
    what = ", ".join(f"{k} {old} (this run: {new})" for k, (old, new) in changed.items())
    return f"--model.init_from={folder} was trained with {what}; train with {keep}, or pre-train this architecture"


def start_from_pretrained(config) -> None:
    """Check ``--model.init_from`` against this run's model (every process, from the main one's
    reading of the folder) and train with its tokenizer: the embedding's rows are its tokens."""

    folder = config.model.init_from
    meta, tokenizer = main_decides(partial(read_pretrained, folder))
    problem = architecture_problem(meta, config.model, folder)
    if problem:
        raise UserError(problem, on_every_rank=True)
    given = config.tokenizer.path
    if given and Path(given).resolve() != Path(tokenizer).resolve():
        raise UserError(
            f"--tokenizer.path={given} is not the tokenizer of --model.init_from={folder}, whose embedding rows "
            "are its tokens; leave tokenizer.path unset",
            on_every_rank=True,
        )
    config.tokenizer.path = str(tokenizer)


def initialise_encoder(model: RecurrentEncoder, folder: str) -> int:
    """Copy the embedding and recurrent layers of the model in ``folder`` into ``model``; returns
    the number of values copied."""
    weights = load_file(str(Path(folder) / "model.safetensors"))
    encoder = {k: v for k, v in weights.items() if k.startswith(ENCODER_PREFIXES)}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [k for k, v in encoder.items() if k in shapes and v.shape != shapes[k]]
    if wrong:  # its config.json or tokenizer.json changed after export
        found, needed = ("x".join(map(str, t)) for t in (encoder[wrong[0]].shape, shapes[wrong[0]]))
        raise UserError(
            f"{folder}/model.safetensors does not match its config.json and tokenizer.json ({wrong[0]} is {found}, "
            f"they make it {needed}); restore the folder, or pre-train again"
        )
    missing, _ = model.load_state_dict(encoder, strict=False)
    left = [k for k in missing if k.startswith(ENCODER_PREFIXES)]
    if left or not encoder:
        raise UserError(f"{folder}/model.safetensors lacks the encoder's {', '.join(left[:3]) or 'weights'}")
    return sum(v.numel() for v in encoder.values())
