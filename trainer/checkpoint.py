"""Model exports (``best/``, ``final/``): safetensors weights + config + tokenizer + label names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from trainer.errors import UserError, check_choice
from trainer.metrics import METRIC_MODES
from trainer.model import ModelConfig, SentimentRNN
from trainer.tokenizer import load_tokenizer, save_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"


@dataclass
class CheckpointConfig:
    best_metric: str = field(
        default="loss", metadata={"help": "validation metric that picks best/: loss, accuracy, f1, roc_auc, ..."}
    )
    save_best: bool = field(default=True, metadata={"help": "export the best model to best/"})
    save_final: bool = field(default=True, metadata={"help": "export the last model to final/"})

    def __post_init__(self) -> None:
        check_choice("checkpoint.best_metric", self.best_metric, METRIC_MODES)


def export_model(
    out_dir: Path,
    model: SentimentRNN,
    tokenizer: Tokenizer,
    label_names: list[str],
    max_length: int,
    extra: dict | None = None,
) -> None:
    """Write a self-contained model folder, atomically: a reader never sees a half-written one."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    meta = {
        "architecture": "SentimentRNN",
        "model": dataclasses.asdict(model.config),
        "vocab_size": model.embedding.num_embeddings,
        "num_labels": model.num_labels,
        "pad_id": model.pad_id,
        "max_length": max_length,
        "id2label": {str(i): name for i, name in enumerate(label_names)},
        **(extra or {}),
    }
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, tmp / TOKENIZER_NAME)
    old = out_dir.with_name(f".{out_dir.name}.old")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_exported(model_dir: str | Path) -> tuple[SentimentRNN, Tokenizer, dict]:
    """(model in eval mode, tokenizer, config.json contents) from an exported folder."""
    model_dir = Path(model_dir)
    missing = [n for n in (WEIGHTS_NAME, CONFIG_NAME, TOKENIZER_NAME) if not (model_dir / n).is_file()]
    if missing:
        raise UserError(f"{model_dir} is not a complete model folder: missing {', '.join(missing)}")
    meta = json.loads((model_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    model = SentimentRNN(ModelConfig(**meta["model"]), meta["vocab_size"], meta["num_labels"], meta["pad_id"])
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_NAME)))
    model.eval()
    return model, load_tokenizer(model_dir / TOKENIZER_NAME), meta


def state_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to compare weights across processes and runs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
