"""The model card: a README.md in every exported model folder (data, config, metrics, how to use)."""

from __future__ import annotations

import math

from huggingface_hub import EvalResult, ModelCardData

METRIC_ORDER = ("accuracy", "balanced_accuracy", "macro_f1", "precision", "recall", "f1", "roc_auc", "loss", "n")


def describe_data(data: dict) -> str:
    """One line on where the training data came from, from ``DataConfig`` as a dict."""
    if data.get("train_files"):
        line = f"local files {', '.join(data['train_files'])}"
        if data.get("validation_files"):
            line += f" (validation: {', '.join(data['validation_files'])})"
        return line
    if data.get("name") == "builtin":
        builtin = data["builtin"]
        return f"the built-in generated reviews ({builtin['num_examples']} examples, seed {builtin['seed']})"
    return f"the Hugging Face Hub dataset `{data['name']}`, split `{data.get('train_split', 'train')}`"


def _dataset(data: dict) -> tuple[str | None, str]:
    """(the Hub dataset id or None, a name for the model index) of the training data."""
    if data.get("train_files"):
        return None, ", ".join(path.rsplit("/", 1)[-1] for path in data["train_files"])
    if data.get("name") == "builtin":
        return None, "built-in generated reviews"
    return data["name"], data["name"]


def card_metadata(meta: dict, config: dict, extra_tags: tuple[str, ...] = ()) -> str:
    """The card's YAML metadata (between ``---`` lines), as the Hub reads it: library, task, tags,
    dataset, license and the validation metrics as a model index."""
    hub_id, dataset_name = _dataset(config["data"])
    metrics = meta.get("metrics") or {}
    reported = [
        name for name in METRIC_ORDER[:-2] if isinstance(metrics.get(name), float) and math.isfinite(metrics[name])
    ]
    results = [
        EvalResult(
            task_type="text-classification",
            task_name="Sentiment classification",
            dataset_type=hub_id or "custom",
            dataset_name=dataset_name,
            dataset_split="validation",
            metric_type=name,
            metric_name=name,
            metric_value=round(metrics[name], 4),
        )
        for name in reported
    ]
    card_data = ModelCardData(
        library_name="sentiment-trainer",
        pipeline_tag="text-classification",
        tags=["sentiment-analysis", "text-classification", meta["model"]["cell"], "attention", *extra_tags],
        datasets=[hub_id] if hub_id else None,
        license=config["checkpoint"].get("license"),
        metrics=reported or None,
        model_name=config["logging"].get("run_name") or "sentiment-classifier",
        eval_results=results or None,
    )
    return f"---\n{card_data.to_yaml()}\n---\n"


def kept_tokens(meta: dict) -> str:
    """Which tokens of a longer text the model reads, in words."""
    n, truncation = meta["max_length"], meta.get("truncation", "head")
    if truncation == "head_tail":
        head = n // 4
        return f"the first {head} and the last {n - head} tokens (head_tail)"
    return f"the {'last' if truncation == 'tail' else 'first'} {n} tokens"


def model_kind(model: dict) -> str:
    return f"{model['num_layers']}-layer {'bidirectional ' if model['bidirectional'] else ''}{model['cell'].upper()}"


def model_card(meta: dict, config_yaml: str, config: dict, stats: dict) -> str:
    """Markdown for README.md, YAML metadata first; ``meta`` is the folder's config.json contents."""
    model = meta["model"]
    labels = [meta["id2label"][str(i)] for i in range(len(meta["id2label"]))]
    kind = model_kind(model)
    metrics = meta.get("metrics") or {}
    rows = [
        f"| {name} | {metrics[name]:.4f} |"
        if isinstance(metrics[name], float) and math.isfinite(metrics[name])
        else f"| {name} | {metrics[name]} |"
        for name in METRIC_ORDER
        if name in metrics
    ]
    decay = config["train"].get("ema_decay")
    averaged = f"\nThe weights are an exponential moving average of the trained ones (decay {decay})." if decay else ""
    validation = "carved from the training data" if stats.get("validation_carved") else "the given validation split"
    return f"""{card_metadata(meta, config)}
# Sentiment classifier: {kind} with attention

Labels: {", ".join(f"`{name}`" for name in labels)}. Trained with sentiment-trainer (`python -m trainer`).

## Data

- Training data: {describe_data(config["data"])}
- {stats.get("train_examples", "?")} training and {stats.get("validation_examples", "?")} validation examples
  (validation {validation}); texts cut to {kept_tokens(meta)}
- Tokenizer: {config["tokenizer"]["model"]}, {meta["vocab_size"]} tokens (`tokenizer.json`)

## Model

Embedding {model["embedding_dim"]} → dropout → {kind} (hidden size {model["hidden_dim"]} per direction)
→ masked additive attention → dropout → linear; {meta.get("num_parameters", "?")} parameters.{averaged}

## Validation metrics

Step {meta.get("step", "?")} ({meta.get("selected_by", "the last step of the run")}).

| metric | value |
|---|---|
{chr(10).join(rows)}

## Use

```bash
python -m trainer.predict --model MODEL_DIR "An absolute joy from start to finish."
python -m trainer.predict --model MODEL_DIR --file reviews.csv --json
python -m trainer.predict --model MODEL_DIR --explain --html attention.html "Dull, but the score is lovely."
python -m trainer.evaluate --model MODEL_DIR --data test.csv --json
python -m trainer.export --model MODEL_DIR --format onnx --quantize int8   # for onnxruntime
```

`MODEL_DIR` is this folder, or its Hub repo id (`user/name`) once pushed with
`python -m trainer.push --model MODEL_DIR --repo user/name`.

```python
from trainer import load_model

model = load_model("MODEL_DIR")  # or a Hub repo id: load_model("user/name", revision="main")
model.predict(["An absolute joy from start to finish."])[0].label
model.explain("Dull, but the score is lovely.").weights
```

## Files

- `model.safetensors`: the weights
- `config.json`: model sizes, vocabulary size, labels (`id2label`), `max_length`, step and metrics
- `tokenizer.json`: the tokenizer (Hugging Face `tokenizers`)

## Training config

```yaml
{config_yaml.rstrip()}
```
"""
