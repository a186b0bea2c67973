"""Stopping a run whose numbers stop being numbers, before it saves them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer.errors import UserError
from trainer.training.checkpoint import CHECKPOINTS_DIR, list_checkpoints

if TYPE_CHECKING:
    from trainer.training.run import Run


class TrainingDiverged(UserError):
    """The loss, a gradient or the weights became nan or inf: nothing more is saved."""


class FiniteGuard:
    """Stops a run whose loss, gradient norm or weights become non-finite, before it saves them.

    Every micro-step's loss and each step's gradient norm (before clipping) are folded into one
    flag on the device, without a host sync; ``check`` reads it (summed over the processes, so
    all of them stop together) at the points where the loop syncs anyway and before anything is
    written. Under fp16 a step the gradient scaler skipped for overflow does not count: the
    scaler handles it, and the weights did not change.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        device = run.accelerator.device
        self.pending = torch.zeros((), device=device)  # this optimizer step's micro-steps
        self.bad = torch.zeros((), device=device)  # steps taken with a non-finite loss or gradient

    def observe(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.pending += (~torch.isfinite(loss.detach())).float()
        if grad_norm is not None:
            self.pending += (~torch.isfinite(grad_norm.detach())).float()

    def step_taken(self) -> None:
        self.bad += self.pending
        self.pending.zero_()

    def step_skipped(self) -> None:
        self.pending.zero_()

    def check(self, step: int, weights: bool = False) -> None:
        """Raise ``TrainingDiverged`` on every process if any of them saw a non-finite value."""
        flags = self.bad.reshape(1)
        if weights:
            finite = torch.stack([torch.isfinite(p).all() for p in self.run.weights().parameters()]).all()
            flags = torch.cat([flags, (~finite).float().reshape(1)])  # no host sync until the check below
        flags = self.run.accelerator.reduce(flags, "sum") if self.run.accelerator.num_processes > 1 else flags
        if flags[0].item():
            self.diverged(step, "training loss or gradient norm")
        if weights and flags[1].item():
            self.diverged(step, "model weights")

    def diverged(self, step: int, what: str) -> None:
        run = self.run
        saved = list_checkpoints(run.run_dir / CHECKPOINTS_DIR)
        kept = f"the last checkpoint, {saved[-1]}, and best/ are from before it" if saved else "no checkpoint was saved"
        raise TrainingDiverged(
            f"training diverged by step {step}: the {what} became nan or inf, so nothing from it was saved; {kept}. "
            f"Lower --optim.lr (it is {run.config.optim.lr:g}) or keep --optim.max_grad_norm on and train anew "
            "(a resumed run keeps its checkpoint's learning rate), or resume with --resume auto after a fault "
            "in the data or the machine",
            on_every_rank=True,
        )
