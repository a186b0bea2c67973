"""``python -m trainer.export``: an exported model folder (or a Hub repo) as an ONNX folder, float32
or int8, checked against the model's own logits before it is put in place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from trainer.data.tokenizer import save_tokenizer
from trainer.errors import UserError, inside, written_atomically
from trainer.inference.folder import (
    CARD_NAME,
    CONFIG_NAME,
    ONNX_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    load_exported,
    sha256_file,
)
from trainer.inference.hub import resolve_model_dir
from trainer.models.sentiment import SentimentRNN


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

    from trainer.inference.onnx import OnnxClassifier, export_onnx, quantize_int8, quiet

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
