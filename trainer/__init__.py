"""Distributed training of LSTM-attention sentiment classifiers with datasets, tokenizers and accelerate."""

__version__ = "0.1.0"
