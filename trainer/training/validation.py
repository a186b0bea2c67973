"""Validation during training: metrics over the whole validation set from every process, the best
model so far, and early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from accelerate import Accelerator

from trainer.metrics import classification_metrics, is_better
from trainer.models.sentiment import class_probabilities, classification_loss


@torch.no_grad()
def gather_predictions(model: torch.nn.Module, loader, accelerator: Accelerator) -> tuple[torch.Tensor, ...]:
    """(probabilities (N, C), labels (N,), losses (N,)) over the whole set, from every process.

    ``gather_for_metrics`` drops the examples accelerate repeats to even out the last batches, so
    the result is the same on any number of processes.
    """
    training = model.training
    model.eval()
    probabilities, labels, losses = [], [], []
    for batch in loader:
        logits = model(batch["input_ids"], batch["lengths"])
        loss = classification_loss(logits, batch["labels"], reduction="none")
        gathered = accelerator.gather_for_metrics((class_probabilities(logits), batch["labels"], loss))
        for store, tensor in zip((probabilities, labels, losses), gathered, strict=True):
            store.append(tensor.cpu())
    model.train(training)
    return torch.cat(probabilities), torch.cat(labels), torch.cat(losses)


def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator) -> dict:
    """Metrics over the whole validation set."""
    return classification_metrics(*gather_predictions(model, loader, accelerator))


class Validator:
    """Validates the run's weights, keeps the best model, and says when to stop early.

    ``run`` gives the weights, loaders, log, config and state; ``guard`` stops a diverged run
    before anything is saved; ``note`` prints a line (main process); ``export_best(step,
    metrics)`` writes best/ (main process). Calling it validates and returns True when early
    stopping says to stop.
    """

    def __init__(self, run, guard, note: Callable[[str], None], export_best: Callable[[int, dict], None]) -> None:
        self.run, self.guard, self.note, self.export_best = run, guard, note, export_best
        self.metrics: dict = {}
        self.last_step = -1  # the step last validated

    def due(self, step: int) -> bool:
        """Validate now, besides at the epoch ends? (``train.eval_every_steps``)"""
        every = self.run.config.train.eval_every_steps
        return bool(every) and step % every == 0

    def __call__(self, step: int) -> bool:
        run, state, config = self.run, self.run.state, self.run.config.checkpoint
        self.guard.check(step)
        with run.accelerator.autocast():  # as prepare() wraps the model's forward; the average is not wrapped
            self.metrics, self.last_step = run.task.evaluate(run), step
        if not math.isfinite(self.metrics["loss"]):
            self.guard.diverged(step, "validation loss")
        run.log.write({"epoch": round(step / run.steps_per_epoch, 3), **prefixed("eval/", self.metrics)}, step)
        metric, best = config.best_metric, state.best_metrics
        if best is None or is_better(self.metrics[metric], best[metric], metric):
            state.best_metrics, state.best_step, state.evals_without_improvement = self.metrics, step, 0
            if config.save_best and run.accelerator.is_main_process:
                self.export_best(step, self.metrics)
        else:
            state.evals_without_improvement += 1
        self.note(
            f"step {step} epoch {step / run.steps_per_epoch:.2f}: validation {run.task.summary(self.metrics)}"
            + (" (best)" if state.best_step == step else "")
        )
        patience = config.early_stopping_patience
        if patience and state.evals_without_improvement >= patience:
            self.note(f"early stopping: no better validation {metric} in {patience} evaluations")
            return True
        return False


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in values.items()}
