"""Batches: the length-grouped, shard-aware batch sampler (every example once per epoch across
processes, optionally class-balanced), padding to the batch's longest row (in buckets), and the
data loaders a run trains and validates on."""

from __future__ import annotations

import random
from collections.abc import Iterator

import datasets
import torch
from torch.utils.data import DataLoader

from trainer.data.config import DataConfig
from trainer.data.preparation import PreparedData
from trainer.data.tokenizer import pad_batch, pad_id
from trainer.errors import UserError


class LengthGroupedBatchSampler:
    """Shuffled batches of indices, optionally grouped by length, shard-friendly.

    Everything is defined on optimizer steps of a global batch (``batch_size * num_shards *
    accumulation`` examples), so the examples of every step, and their order, do not depend on how
    the global batch is split: one process with batch 4B, two with 2B, or one with B and four
    accumulation micro-steps see the same examples at every step. That is what lets a run resume
    on another number of processes (``steps_in_epoch`` steps done, continue at the next one).

    Each epoch: a seeded permutation; with ``group_by_length``, chunks of ``mega_batches`` global
    batches are sorted by length (as HF Trainer's ``group_by_length``), so each step holds similar
    lengths; the steps are then shuffled, an uneven last one kept last. A step is dealt as ``accumulation`` rounds of
    ``num_shards`` batches, and accelerate's ``BatchSamplerShard`` deals batch i to process
    i % num_shards. The batch count is a multiple of ``num_shards`` with no empty batch, so every
    process gets the same number of batches and every example goes to exactly one process, once
    per epoch. The last, shorter step is spread evenly over as many rounds as it fills; a rest too
    small to give each process one example joins a full step, which then comes last.
    ``step_examples`` tells the loop how many examples a batch's step has, so that every example
    of a step weighs the same however the step is split.

    With ``labels`` (``--data.sampler=balanced``) an epoch is not the whole split: it draws, for
    every class present, as many of its examples as the rarest class has, without replacement and
    anew each epoch (from ``seed`` and the epoch, so a resumed run draws the same), then batches
    them as above. Every process holds the whole split's lengths and labels, so the processes agree
    on the draw and deal it out like any epoch: each drawn example goes to one process, once.

    ``batch_size`` is None on purpose: it tells accelerate that batch sizes vary, so it does not
    try to complete short batches with examples from the start of the epoch.
    """

    batch_size = None

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        num_shards: int = 1,
        seed: int = 0,
        group_by_length: bool = True,
        mega_batches: int = 50,
        accumulation: int = 1,
        labels: list[int] | None = None,
    ) -> None:
        self.classes = None
        self.size = len(lengths)  # examples per epoch
        if labels is not None:
            by_class: dict[int, list[int]] = {}
            for row, label in enumerate(labels):
                by_class.setdefault(label, []).append(row)
            self.classes = [by_class[label] for label in sorted(by_class)]
            self.size = min(map(len, self.classes)) * len(self.classes)
        if self.size < num_shards:
            drawn = " drawn per epoch" if labels is not None else ""
            raise UserError(f"{self.size} training examples{drawn} cannot be shared among {num_shards} processes")
        self.lengths = lengths
        self.per_batch = batch_size
        self.num_shards = num_shards
        self.accumulation = accumulation
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega_batches = mega_batches
        self.epoch = 0

    @property
    def global_batch(self) -> int:
        return self.per_batch * self.num_shards * self.accumulation

    def _last_rounds(self) -> int:
        """Rounds of the last, shorter step (0: none, its examples join the step before)."""
        rest = self.size % self.global_batch
        return min(self.accumulation, rest // self.num_shards)

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch + (self._last_rounds() > 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step_examples(self, micro_batch: int) -> int:
        """The examples of the optimizer step that a process's ``micro_batch``-th batch of the
        epoch belongs to (all processes, all its micro-batches)."""
        rest = self.size % self.global_batch
        if not rest or micro_batch // self.accumulation < self.steps_per_epoch - 1:
            return self.global_batch
        return rest if self._last_rounds() else self.global_batch + rest  # the last step, kept last

    def __len__(self) -> int:
        full_steps = self.size // self.global_batch
        return (full_steps * self.accumulation + self._last_rounds()) * self.num_shards

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = self.epoch_rows(generator)
        size = self.global_batch
        if self.group_by_length:
            mega = size * self.mega_batches
            order = [
                i
                for start in range(0, len(order), mega)
                for i in sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            ]
        full = len(order) // size * size
        steps = [order[i : i + size] for i in range(0, full, size)]
        last = order[full:]
        if last and not self._last_rounds():  # too few to give each process one: into a full step
            last = steps.pop() + last
        random.Random(self.seed + self.epoch).shuffle(steps)
        if last:  # last: accelerate ends an accumulation step early only at the end of the loader
            steps.append(last)
        for step in steps:
            yield from self._deal(step)

    def epoch_rows(self, generator: torch.Generator) -> list[int]:
        """This epoch's examples, shuffled: all of them, or the balanced draw."""
        if self.classes is None:
            return torch.randperm(len(self.lengths), generator=generator).tolist()
        per_class, drawn = self.size // len(self.classes), []
        for rows in self.classes:
            drawn += [rows[i] for i in torch.randperm(len(rows), generator=generator)[:per_class].tolist()]
        return [drawn[i] for i in torch.randperm(len(drawn), generator=generator).tolist()]

    def _deal(self, step: list[int]) -> list[list[int]]:
        """A step's batches, round by round: a full step in batches of ``batch_size``, any other
        spread evenly over its rounds."""
        rounds = self.accumulation if len(step) >= self.global_batch else self._last_rounds()
        count = rounds * self.num_shards
        if len(step) == self.global_batch:
            return [step[i : i + self.per_batch] for i in range(0, len(step), self.per_batch)]
        share, extra = divmod(len(step), count)
        bounds = [k * share + min(k, extra) for k in range(count + 1)]
        return [step[bounds[k] : bounds[k + 1]] for k in range(count)]


class PaddingCollator:
    """Pads a list of rows to the longest, rounded up as ``tokenizer.padded_width`` says."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int = 1, buckets_per_octave: int = 0) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.buckets = buckets_per_octave

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [row["input_ids"] for row in rows]
        input_ids, lengths = pad_batch(ids, self.pad_id, self.multiple, self.buckets)
        labels = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        return {"input_ids": input_ids, "lengths": lengths, "labels": labels}


class RandomBatches:
    """Batches of ``dataset`` drawn at random, for a loss term beside the training batches (virtual
    adversarial training's unlabeled texts). The draw for a step is a function of (seed, process,
    step, draw within the step) alone, so a resumed run draws what the uninterrupted one drew, and
    processes draw different texts. ``width`` cuts each text to that many tokens (its head): a draw
    as wide as the training batch beside it costs what that batch costs, where random texts of a
    long-text corpus would each be padded to the longest (measured on IMDB: 1.65 s a step against
    0.31 s without the term)."""

    def __init__(self, dataset: datasets.Dataset, batch_size: int, collate: PaddingCollator, seed: int, rank: int):
        self.dataset, self.batch_size, self.collate = dataset.with_format(None), batch_size, collate
        self.seed, self.rank = seed, rank

    def draw(self, step: int, index: int = 0, width: int | None = None) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(hash((self.seed, self.rank, step, index)) & (2**63 - 1))
        rows = torch.randint(len(self.dataset), (self.batch_size,), generator=generator).tolist()
        ids = self.dataset[rows]["input_ids"]
        return self.collate([{"input_ids": row[:width], "label": -1} for row in ids])


def lengths_of(ds: datasets.Dataset) -> list[int]:
    """The ``length`` column as a list (per-row access to a datasets column is slow)."""
    return ds.with_format("arrow")["length"].to_pylist()


def build_dataloaders(
    data: PreparedData,
    config: DataConfig,
    batch_size: int,
    eval_batch_size: int,
    num_shards: int = 1,
    seed: int = 0,
    mixed_precision: bool = False,
    pin_memory: bool = False,
    accumulation: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Training loader (length-grouped, shard-friendly batches) and validation loader.

    Validation goes in order of length (least padding); ``gather_for_metrics`` drops the repeats
    accelerate adds to even out the last batches, so metrics are exact on any number of processes.
    """
    multiple = config.pad_to_multiple_of or (8 if mixed_precision else 1)
    collate = PaddingCollator(pad_id(data.tokenizer), multiple, config.length_buckets)
    labels = data.train.with_format("arrow")["label"].to_pylist() if config.sampler == "balanced" else None
    train_lengths = lengths_of(data.train)
    sampler = LengthGroupedBatchSampler(
        train_lengths, batch_size, num_shards, seed, config.group_by_length, accumulation=accumulation, labels=labels
    )
    common = {"collate_fn": collate, "num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    common["pin_memory"] = pin_memory  # page-locked batches copy to a GPU faster
    # Own generators: iterating a loader must not draw from the global RNG (dropout's), or a run
    # resumed mid-epoch would not repeat the uninterrupted one exactly.
    train_loader = DataLoader(data.train, batch_sampler=sampler, generator=torch.Generator(), **common)
    lengths = lengths_of(data.validation)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    validation = data.validation.select(order)
    eval_loader = DataLoader(
        validation, batch_size=eval_batch_size, shuffle=False, generator=torch.Generator(), **common
    )
    return train_loader, eval_loader
