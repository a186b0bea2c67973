"""Distributed training of LSTM-attention sentiment classifiers with datasets, tokenizers and accelerate."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from trainer import load_model`` without importing torch for ``import trainer``."""
    if name == "load_model":
        from trainer.inference import load_model

        return load_model
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
