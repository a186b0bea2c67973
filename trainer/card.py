"""The model card: a README.md in every exported model folder (data, config, metrics, how to use)."""

from __future__ import annotations

import math

METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "roc_auc", "loss", "n")


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


def model_card(meta: dict, config_yaml: str, config: dict, stats: dict) -> str:
    """Markdown for README.md; ``meta`` is the folder's config.json contents."""
    model = meta["model"]
    labels = [meta["id2label"][str(i)] for i in range(len(meta["id2label"]))]
    kind = f"{model['num_layers']}-layer {'bidirectional ' if model['bidirectional'] else ''}{model['cell'].upper()}"
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
    return f"""# Sentiment classifier: {kind} with attention

Labels: {", ".join(f"`{name}`" for name in labels)}. Trained with sentiment-trainer (`python -m trainer`).

## Data

- Training data: {describe_data(config["data"])}
- {stats.get("train_examples", "?")} training and {stats.get("validation_examples", "?")} validation examples
  (validation {validation}); texts cut to the first {meta["max_length"]} tokens
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
```

```python
from trainer import load_model

model = load_model("MODEL_DIR")
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
