"""The reference article's training, re-implemented faithfully: the reference the trainer is measured against.

What the article (and the Kaggle notebook it follows) does, bugs included, since that is the
point of a reference:
- every review padded (at the front, zeros) or truncated to one fixed length;
- ``SentimentRNN``: embedding -> dropout -> ``nn.LSTM`` (fused, bidirectional optional) ->
  attention softmax over all positions, padding included -> dropout -> linear -> sigmoid;
- ``BCELoss`` on the sigmoid output, Adam at 1e-3, gradient clipping at 5;
- a hidden state created per epoch and carried (detached) from batch to batch, hence a fixed
  batch size and ``drop_last``;
- a plain PyTorch loop, validation once per epoch, the best validation loss kept.

It gets the same tokenizer, token ids, batch size, model sizes and thread count as the trainer:
the data come from the trainer's own pipeline (``prepare_data``) for the chosen preset.

    python benchmarks/reference_baseline.py --config imdb --data.train_files=../shared/data/imdb/train.csv.gz \\
        --data.max_train_examples=2000 --train.epochs=1
    python benchmarks/reference_baseline.py --tiny --out reference.json   # the tiny preset: a check, in seconds

Other arguments go to the trainer's config (``--tiny`` puts ``--config tiny`` before them). It
prints one JSON object per validation and a summary object last (``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ReferenceSentimentRNN(nn.Module):
    """The article's model, as written there."""

    def __init__(
        self, no_layers, vocab_size, hidden_dim, embedding_dim, output_dim, drop_prob=0.5, bidirectional=False
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.no_layers = no_layers
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(
            input_size=embedding_dim,
            hidden_size=hidden_dim,
            num_layers=no_layers,
            batch_first=True,
            dropout=drop_prob if no_layers > 1 else 0,
            bidirectional=bidirectional,
        )
        lstm_output_dim = hidden_dim * 2 if bidirectional else hidden_dim
        self.attention = nn.Sequential(
            nn.Linear(lstm_output_dim, lstm_output_dim), nn.Tanh(), nn.Linear(lstm_output_dim, 1)
        )
        self.dropout = nn.Dropout(drop_prob)
        self.fc = nn.Linear(lstm_output_dim, output_dim)
        self.sig = nn.Sigmoid()

    def forward(self, x, hidden=None):
        if hidden is None:
            hidden = self.init_hidden(x.size(0))
        embeds = self.dropout(self.embedding(x))
        lstm_out, hidden = self.lstm(embeds, hidden)
        attention_weights = torch.softmax(self.attention(lstm_out), dim=1)  # over padding too
        context = torch.sum(attention_weights * lstm_out, dim=1)
        out = self.fc(self.dropout(context))
        return self.sig(out), hidden

    def init_hidden(self, batch_size):
        device = next(self.parameters()).device
        directions = 2 if self.bidirectional else 1
        shape = (self.no_layers * directions, batch_size, self.hidden_dim)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)


def pad_fixed(sequences: list[list[int]], seq_len: int) -> torch.Tensor:
    """The notebook's ``padding_``: zeros at the front, each review cut to its first seq_len tokens."""
    features = torch.zeros(len(sequences), seq_len, dtype=torch.long)
    for i, ids in enumerate(sequences):
        ids = ids[:seq_len]
        if ids:
            features[i, -len(ids) :] = torch.tensor(ids, dtype=torch.long)
    return features


def fixed_length_set(ds, seq_len: int) -> TensorDataset:
    ids = [list(x) for x in ds["input_ids"]]
    lengths = torch.tensor([min(len(x), seq_len) for x in ids])
    return TensorDataset(pad_fixed(ids, seq_len), torch.tensor(list(ds["label"])), lengths)


def train_reference(config, data, log=print) -> dict:
    """The article's loop on the trainer's data; returns a summary with throughput figures."""
    from trainer.errors import UserError

    torch.manual_seed(config.train.seed)
    seq_len, batch_size = config.data.max_length, config.train.batch_size
    for name, split in (("training", data.train), ("validation", data.validation)):
        if len(split) < batch_size:  # the carried hidden state fixes the batch size: short batches are dropped
            raise UserError(
                f"the {name} split has {len(split)} examples, fewer than one batch of --train.batch_size="
                f"{batch_size}, and the article's loop drops incomplete batches: lower --train.batch_size"
            )
    train_set, val_set = fixed_length_set(data.train, seq_len), fixed_length_set(data.validation, seq_len)
    train_loader = DataLoader(train_set, shuffle=True, batch_size=batch_size, drop_last=True)
    valid_loader = DataLoader(val_set, shuffle=False, batch_size=batch_size, drop_last=True)
    model = ReferenceSentimentRNN(
        config.model.num_layers,
        data.tokenizer.get_vocab_size(),
        config.model.hidden_dim,
        config.model.embedding_dim,
        1,
        drop_prob=config.model.dropout,
        bidirectional=config.model.bidirectional,
    )
    criterion = nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    clip, valid_loss_min = 5, float("inf")
    started, train_seconds, real_tokens, computed_tokens, examples, steps = time.perf_counter(), 0.0, 0, 0, 0, 0
    summary = {}

    def validate(epoch: float) -> float:
        """The article's validation pass; logs a record, returns the accuracy."""
        nonlocal valid_loss_min
        model.eval()
        val_h = model.init_hidden(batch_size)
        losses, correct, seen = [], 0, 0
        with torch.no_grad():
            for inputs, labels, _ in valid_loader:
                val_h = tuple(each.data for each in val_h)
                output, val_h = model(inputs, val_h)
                losses.append(criterion(output.squeeze(), labels.float()).item())
                correct += int(((output.squeeze() > 0.5).long() == labels).sum())
                seen += len(labels)
        model.train()
        val_loss = sum(losses) / len(losses)
        valid_loss_min = min(valid_loss_min, val_loss)  # the article saves the weights here
        record = {"epoch": round(epoch, 3), "step": steps, "elapsed_s": round(time.perf_counter() - started, 2)}
        record |= {"eval/loss": val_loss, "eval/accuracy": correct / seen, "eval/n": seen}
        log(json.dumps(record))
        return correct / seen

    # Validation as in the article once per epoch, or every N steps (--train.eval_every_steps) so
    # that time-to-accuracy is measured on the same schedule as the trainer's.
    every = config.train.eval_every_steps
    accuracy = 0.0
    for epoch in range(config.train.epochs):
        model.train()
        h = model.init_hidden(batch_size)
        tick = time.perf_counter()
        for inputs, labels, lengths in train_loader:
            h = tuple(each.data for each in h)  # carried across batches, as in the article
            model.zero_grad()
            output, h = model(inputs, h)
            loss = criterion(output.squeeze(), labels.float())
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            real_tokens += int(lengths.sum())
            computed_tokens += inputs.numel()
            examples += len(labels)
            steps += 1
            if every and steps % every == 0:
                train_seconds += time.perf_counter() - tick
                accuracy = validate(steps / len(train_loader))
                tick = time.perf_counter()
        train_seconds += time.perf_counter() - tick
        if not every or steps % every:
            accuracy = validate(epoch + 1)
        summary = {
            "best_val_loss": valid_loss_min,
            "final_val_accuracy": accuracy,
            "steps": steps,
            "train_seconds": round(train_seconds, 2),
            "tokens_per_s": real_tokens / train_seconds,
            "examples_per_s": examples / train_seconds,
            "padding_efficiency": real_tokens / computed_tokens,
        }
    return summary


def main(argv: list[str]) -> dict:
    # Imported here: the model above is also used where datasets is not installed (bench_gpu.py).
    from trainer.cli import parse_cli
    from trainer.config import load_config
    from trainer.data import prepare_data

    preset, overrides, _, _ = parse_cli(argv)
    config = load_config(preset, overrides)
    data = prepare_data(config.data, config.tokenizer)
    summary = train_reference(config, data)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"preset": preset, "threads": torch.get_num_threads(), **summary, "peak_rss_mb": round(peak_mb)}


def cli() -> dict:
    from bench_cli import add_options, finish, parse

    from trainer.hardware import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    add_options(parser)
    args, trainer_args = parse(parser, known=True)
    return finish(args, {"cpu": cpu_info(), **main(["--config", "tiny"] * args.tiny + trainer_args)})


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(cli)
