"""The pieces of the training loop, each testable alone: the epochs (with the resume position),
one training step, the training records, when to save, why the loop stopped, the progress bar.
``trainer.training.train.fit`` puts them together."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch
from tqdm.auto import tqdm

from trainer.metrics import Throughput
from trainer.training.checkpoint import save_checkpoint
from trainer.training.validation import prefixed


class Stop(enum.Enum):
    """Why training stopped before its last step (reaching it is no stop reason)."""

    EARLY_STOPPING = "early stopping"
    SIGNAL = "signal"


class Progress:
    """The progress bar, and the lines printed above it, on the main process only."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc="training", unit="step")

    def step(self) -> None:
        self.bar.update(1)

    def show(self, record: dict) -> None:
        """The latest training record beside the bar."""
        self.bar.set_postfix(loss=f"{record['train/loss']:.4f}", tok_s=f"{record['train/tokens_per_s']:,.0f}")

    def note(self, line: str) -> None:
        if self.enabled:
            self.bar.write(line)  # tqdm.write prints on every process, even with the bar disabled

    def close(self) -> None:
        self.bar.close()


class CheckpointPolicy:
    """When to save a full checkpoint: every ``every`` steps (0: never) before the last one, at an
    epoch end before the last step (the end of training exports instead), and when a signal stops
    the run."""

    def __init__(self, every: int, total_steps: int) -> None:
        self.every, self.total_steps = every, total_steps

    def after_step(self, step: int, signalled: bool) -> bool:
        return signalled or bool(self.every and step % self.every == 0 and step < self.total_steps)

    def at_epoch_end(self, step: int) -> bool:
        return step < self.total_steps


class Epochs:
    """The run's epochs still to do, each as the loader to iterate: it sets the epoch on the
    sampler and the loader (a new order each epoch) and, resuming mid-epoch, skips the batches
    already done. ``end()`` records that an epoch ran to its end."""

    def __init__(self, run) -> None:
        self.run, self.state = run, run.state
        self.count = math.ceil(run.total_steps / run.steps_per_epoch)

    def __iter__(self) -> Iterator:
        run, state = self.run, self.state
        while state.epoch < self.count:
            run.sampler.set_epoch(state.epoch)
            run.train_loader.set_epoch(state.epoch)
            if state.batches_in_epoch:  # resuming mid-epoch: continue at the next batch
                yield run.accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch)
            else:
                yield run.train_loader

    def end(self) -> None:
        self.state.epoch, self.state.batches_in_epoch = self.state.epoch + 1, 0


class TrainRecords:
    """The training metrics logged every ``train.log_every_steps``: the mean loss of the micro-steps,
    the mean gradient norm (before clipping) of the steps taken, the learning rate and the
    throughput summed over processes. Kept on the device in between: no host sync per step."""

    def __init__(self, run) -> None:
        self.run = run
        device = run.accelerator.device
        self.loss_sum, self.loss_count = torch.zeros((), device=device), 0
        self.grad_norm_sum, self.grad_norm_steps = torch.zeros((), device=device), 0
        self.throughput = Throughput()

    def micro_step(self, loss: torch.Tensor, batch: dict) -> None:
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.throughput.update(batch["lengths"].sum(), len(batch["lengths"]))  # a device tensor: no sync

    def step_taken(self, grad_norm: torch.Tensor | None) -> None:
        if grad_norm is not None:
            self.grad_norm_sum += grad_norm.detach()
            self.grad_norm_steps += 1

    def due(self, step: int) -> bool:
        return step % self.run.config.train.log_every_steps == 0 or step == self.run.total_steps

    def write(self, step: int) -> dict:
        """Log a record (every process takes part in the reductions) and start the next one."""
        accelerator = self.run.accelerator
        record = {"train/loss": accelerator.reduce(self.loss_sum / self.loss_count, "mean").item()}
        if self.grad_norm_steps:
            record["train/grad_norm"] = self.grad_norm_sum.item() / self.grad_norm_steps
        record["train/lr"] = self.run.scheduler.get_last_lr()[0]
        rates = self.throughput.read()
        totals = accelerator.reduce(torch.tensor(list(rates.values()), device=accelerator.device), "sum")
        record |= prefixed("train/", dict(zip(rates, totals.tolist(), strict=True)))
        self.run.log.write({**record, "epoch": round(step / self.run.steps_per_epoch, 3)}, step)
        self.loss_sum.zero_()
        self.grad_norm_sum.zero_()
        self.loss_count = self.grad_norm_steps = 0
        return record

    def paused(self) -> AbstractContextManager:
        """Validation and saving do not count as training time."""
        return self.throughput.paused()


def optimizer_step(run) -> torch.Tensor:
    """The end of an optimizer step: drop the frozen layers' gradients (gradual unfreezing), clip,
    step, clear the gradients. Returns the gradient norm
    before clipping, which is logged (with no ``max_grad_norm`` it is measured, not clipped).

    The one place where the weights change, called through this module's name: tests inject
    their faults here (``tests/faults``), whatever accelerate or torch do inside."""
    if run.unfreezing is not None:
        run.unfreezing.drop_frozen_gradients(run.state.step)
    max_norm = run.config.optim.max_grad_norm or float("inf")
    grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), max_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train_step(run, batch: dict, guard, records: TrainRecords) -> bool:
    """One micro-batch: forward and backward; at the end of its optimizer step, clipping, the
    optimizer, the schedule and the moving average (unless fp16's scaler skipped the step).
    Returns True when an optimizer step ended."""
    accelerator, model, sampler = run.accelerator, run.model, run.sampler
    with accelerator.accumulate(model):
        loss = run.task.loss(run, batch)
        # Every example of a step weighs the same, however the step is split into batches (1.0 for
        # a full step; the epoch's last step may be uneven or short).
        share = len(batch["lengths"]) * sampler.num_shards * sampler.accumulation
        weight = share / sampler.step_examples(run.state.batches_in_epoch)
        accelerator.backward(loss * weight if weight != 1 else loss)
        grad_norm = optimizer_step(run) if accelerator.sync_gradients else None
    run.state.batches_in_epoch += 1
    records.micro_step(loss, batch)
    guard.observe(loss, grad_norm)
    if not accelerator.sync_gradients:
        return False
    if accelerator.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
        guard.step_skipped()
        return True
    guard.step_taken()
    records.step_taken(grad_norm)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(accelerator.unwrap_model(model))
    return True


def save(run, guard, progress: Progress) -> None:
    """A full checkpoint of the run now (every process), its time logged."""
    guard.check(run.state.step, weights=True)
    started = time.perf_counter()
    path = save_checkpoint(run.accelerator, run.run_dir, run.state, run.config.checkpoint.keep_last)
    run.log.write({"checkpoint/seconds": round(time.perf_counter() - started, 3)}, run.state.step)
    progress.note(f"saved {path}")
