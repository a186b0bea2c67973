"""Where a training step's time goes: one change at a time, on identical batches, in one process.

Every variant trains from the same initial weights on the same IMDB examples (the `imdb` preset,
``../shared/data``) and times complete optimizer steps (forward, backward, clipping, AdamW, zeroing
the gradients); variants alternate round by round and each reports the median over rounds of its
real (non-padding) tokens per second, with the ratio to ``trainer`` (what the trainer does):

- ``trainer``: what the trainer does in float32: length-grouped batches, masked per-direction
  LSTMs, AdamW as ``trainer.training.optim.build_optimizer`` makes it (foreach), ``set_to_none=True``;
- ``fixed_padding``: the same examples padded to ``max_length`` (the reference article's batches);
- ``reference_model``: the reference article's fused bidirectional ``nn.LSTM``, unmasked, on the trainer's batches;
- ``packed``: ``pack_padded_sequence`` through a fused bidirectional ``nn.LSTM``;
- ``zero_grad_keep``: ``zero_grad(set_to_none=False)``;
- ``adamw_fused`` / ``adamw_for_loop``: AdamW's fused kernel / its per-parameter loop;
- ``one_thread``: ``torch.set_num_threads(1)``;
- ``bf16_autocast``: ``torch.autocast("cpu", torch.bfloat16)``; the JSON says what dtype the LSTM
  output had under it;
- ``compile``: ``torch.compile`` of the model (compile time reported apart, first steps excluded);
- ``accelerate``: the same step through ``Accelerator.prepare``/``backward``/``clip_grad_norm_``,
  against ``trainer``, the plain loop: the overhead of accelerate itself.

Also measured: DataLoader collation per batch with 0 and 2 workers, as a share of a step.

    python benchmarks/bench_step.py                      # about 4 minutes on 2 CPU cores
    python benchmarks/bench_step.py --rounds 5 --steps 4 --variants trainer,accelerate
    python benchmarks/bench_step.py --tiny --out step.json   # a check in seconds, on generated reviews

``--tiny``: 600 generated reviews of 64 tokens at most, 2 rounds of 2 steps, every variant but ``compile`` (which
compiles for a minute), unless told otherwise. The `imdb` preset validates on whole movies where
the CSV has IMDB's ``movie_id`` column, else on a random carve. The last line is one JSON object
(``--out FILE``: also written there).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
IMDB = REPO.parent / "shared" / "data" / "imdb" / "train.csv.gz"

from bench_cli import add_options, finish, imdb_group_overrides, parse, require_file, tiny_reviews_csv  # noqa: E402

from trainer.config import load_config  # noqa: E402
from trainer.data import build_dataloaders, prepare_data  # noqa: E402
from trainer.data.tokenizer import pad_id  # noqa: E402
from trainer.errors import UserError  # noqa: E402
from trainer.models.sentiment import SentimentRNN, classification_loss  # noqa: E402
from trainer.training.optim import build_optimizer  # noqa: E402

VARIANTS = (
    "trainer",
    "fixed_padding",
    "reference_model",
    "packed",
    "zero_grad_keep",
    "adamw_fused",
    "adamw_for_loop",
    "one_thread",
    "bf16_autocast",
    "compile",
    "accelerate",
)


class FusedBiLSTM(nn.Module):
    """Embedding -> fused bidirectional nn.LSTM (optionally packed) -> masked attention -> linear."""

    def __init__(self, reference: SentimentRNN, packed: bool) -> None:
        super().__init__()
        config = reference.config
        self.packed = packed
        self.embedding = copy.deepcopy(reference.embedding)
        self.dropout = nn.Dropout(config.dropout)
        # "layers", as SentimentRNN names its recurrent layers: build_optimizer groups them by that name.
        self.layers = nn.LSTM(
            config.embedding_dim,
            config.hidden_dim,
            config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            bidirectional=True,
        )
        self.attention = copy.deepcopy(reference.attention)
        self.classifier = copy.deepcopy(reference.classifier)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(input_ids))
        if self.packed:
            # pack_padded_sequence wants the lengths on the CPU (int64), wherever the batch is.
            packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
            x = pad_packed_sequence(self.layers(packed)[0], batch_first=True, total_length=input_ids.size(1))[0]
        else:  # the reference article's way: padding runs through the LSTM and gets attention
            x = self.layers(x)[0]
        mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) < lengths.unsqueeze(1) if self.packed else None
        scores = self.attention(x).squeeze(-1).float()
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        context = torch.bmm(scores.softmax(-1).unsqueeze(1).to(x.dtype), x).squeeze(1)
        return self.classifier(self.dropout(context))


def fixed_padding(batches: list[dict], max_length: int, pad: int) -> list[dict]:
    out = []
    for batch in batches:
        ids = torch.full((batch["input_ids"].size(0), max_length), pad, dtype=torch.long)
        ids[:, : batch["input_ids"].size(1)] = batch["input_ids"]
        out.append({**batch, "input_ids": ids})
    return out


class Variant:
    """One way of running the step; ``run(batches)`` returns seconds for the timed steps."""

    def __init__(self, name: str, reference: SentimentRNN, config, batches: list[dict]) -> None:
        self.name, self.batches, self.config = name, batches, config
        self.threads = 1 if name == "one_thread" else torch.get_num_threads()
        self.autocast = name == "bf16_autocast"
        self.zero_to_none = name != "zero_grad_keep"
        self.accelerator = None
        if name in ("reference_model", "packed"):
            self.model = FusedBiLSTM(reference, packed=name == "packed")
        else:
            self.model = copy.deepcopy(reference)
        self.optimizer = build_optimizer(self.model, config.optim)
        if name in ("adamw_fused", "adamw_for_loop"):  # the same groups, another implementation
            for group in self.optimizer.param_groups:
                group["fused"], group["foreach"] = name == "adamw_fused", False
        self.compile_seconds = None
        if name == "compile":
            self.model = torch.compile(self.model)
        if name == "accelerate":
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=True, mixed_precision="no")
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    def step(self, batch: dict) -> None:
        model, optimizer, accelerator = self.model, self.optimizer, self.accelerator
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = model(batch["input_ids"], batch["lengths"])
            loss = classification_loss(logits, batch["labels"])
        if accelerator is not None:
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), self.config.optim.max_grad_norm)
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), self.config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=self.zero_to_none)

    def warm_up(self) -> None:
        started = time.perf_counter()
        for batch in self.batches[:2]:  # compile (both shapes' first runs), allocator, oneDNN primitives
            self.step(batch)
        if self.name == "compile":
            self.compile_seconds = round(time.perf_counter() - started, 1)

    def run(self) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            started = time.perf_counter()
            for batch in self.batches:
                self.step(batch)
            return time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)


def lstm_dtype_under_autocast(model: SentimentRNN, batch: dict) -> str:
    """The dtype the first LSTM's output has under CPU bf16 autocast."""
    seen = []
    handle = model.layers[0][0].register_forward_hook(lambda m, i, o: seen.append(str(o[0].dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(batch["input_ids"][:2], batch["lengths"][:2])
    handle.remove()
    return seen[0]


def collate_seconds(data, config, workers: int, batches: int) -> float:
    """Seconds per batch to produce ``batches`` training batches with ``workers`` workers."""
    config.data.num_workers = workers
    loader, _ = build_dataloaders(data, config.data, config.train.batch_size, config.train.batch_size)
    batches = min(batches, len(loader) - 1)  # one epoch at most
    iterator = iter(loader)
    next(iterator)  # workers start
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = (time.perf_counter() - started) / batches
    del iterator
    return seconds


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(IMDB), help="IMDB train CSV (text,label)")
    parser.add_argument("--steps", type=int, help="timed steps per variant per round (default 4; 2 with --tiny)")
    parser.add_argument("--rounds", type=int, help="rounds, each variant once a round (default 5; 2 with --tiny)")
    parser.add_argument("--variants", help="comma-separated, from: " + ", ".join(VARIANTS) + " (default: all)")
    parser.add_argument("overrides", nargs="*", help="trainer-style overrides on the imdb preset, after --")
    add_options(parser, "600 generated reviews, 2 rounds of 2 steps, no compile: a check of this script, in seconds")
    args = parse(parser)
    tiny = {"steps": 2, "rounds": 2, "variants": ",".join(v for v in VARIANTS if v != "compile")}
    full = {"steps": 4, "rounds": 5, "variants": ",".join(VARIANTS)}
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        raise UserError(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    if "trainer" not in names:
        names.insert(0, "trainer")
    with tempfile.TemporaryDirectory() as work:
        if args.tiny:
            args.data = str(tiny_reviews_csv(Path(work) / "reviews.csv"))
            args.overrides = ["--data.max_length=64", *args.overrides]
        require_file(args.data, "the IMDB train CSV")
        return finish(args, measure(args, names))


def measure(args: argparse.Namespace, names: list[str]) -> dict:
    from trainer.hardware import cpu_info

    config = load_config("imdb", [f"--data.train_files={args.data}", *imdb_group_overrides(args.data), *args.overrides])
    torch.manual_seed(config.train.seed)
    data = prepare_data(config.data, config.tokenizer)
    loader, _ = build_dataloaders(data, config.data, config.train.batch_size, config.train.batch_size)
    loader.batch_sampler.set_epoch(0)
    batches = [batch for batch, _ in zip(loader, range(args.steps + 2), strict=False)]
    real_tokens = sum(int(b["lengths"].sum()) for b in batches[2:])
    reference = SentimentRNN(config.model, data.tokenizer.get_vocab_size(), 2, pad_id(data.tokenizer))

    variants = {}
    for name in names:
        chosen = batches
        if name == "fixed_padding":
            chosen = fixed_padding(batches, config.data.max_length, pad_id(data.tokenizer))
        variants[name] = Variant(name, reference, config, chosen)
        variants[name].warm_up()
        variants[name].batches = chosen[2:]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):  # alternate the order too
            seconds[name].append(variants[name].run())
        print(
            f"round {round_ + 1}/{args.rounds}: " + ", ".join(f"{n} {s[-1]:.2f}s" for n, s in seconds.items()),
            file=sys.stderr,
        )

    base = statistics.median(seconds["trainer"])
    results = {}
    for name in names:
        median = statistics.median(seconds[name])
        results[name] = {
            "tokens_per_s": round(real_tokens / median),
            "seconds_per_step": round(median / args.steps, 4),
            "speed_vs_trainer": round(base / median, 3),
        }
    if "compile" in variants:
        results["compile"]["compile_seconds"] = variants["compile"].compile_seconds
    step_s = base / args.steps
    collate = {f"{w}_workers_s_per_batch": round(collate_seconds(data, config, w, 20), 4) for w in (0, 2)}
    collate["share_of_step_0_workers"] = round(collate["0_workers_s_per_batch"] / step_s, 4)
    report = {
        "cpu": cpu_info(),
        "config": {"max_length": config.data.max_length, "batch_size": config.train.batch_size}
        | {k: getattr(config.model, k) for k in ("embedding_dim", "hidden_dim", "num_layers", "bidirectional")},
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "rounds": args.rounds,
        "padding_efficiency": round(real_tokens / sum(b["input_ids"].numel() for b in batches[2:]), 3),
        "variants": results,
        "collate": collate,
        "lstm_output_dtype_under_bf16_autocast": lstm_dtype_under_autocast(reference, batches[0]),
    }
    if "accelerate" in results:
        report["accelerate_overhead"] = round(statistics.median(seconds["accelerate"]) / base - 1, 4)
    return report


if __name__ == "__main__":
    import bench_cli

    bench_cli.run(main)
