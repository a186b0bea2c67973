"""``Run``: everything a run's loop needs, as ``trainer.training.train.setup`` builds it, and the
``Task`` protocol: what differs between the classifier and the language model (the rest of the
run is the same). Apart, so that every module of the loop can name them without importing the
set-up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from trainer.config import Config
from trainer.data.batching import LengthGroupedBatchSampler
from trainer.data.preparation import Coordination, PreparedData
from trainer.metrics import MetricsLog
from trainer.models.sentiment import RecurrentEncoder
from trainer.training.checkpoint import TrainState
from trainer.training.optim import GradualUnfreezing, MovingAverage


class Task(Protocol):
    name: str  # in run_info.json and in every checkpoint: a run resumes only its own task's
    run_suffix: str  # of the run folder's default name

    def configure(self, config: Config) -> Config: ...
    def data(self, config: Config, coordination: Coordination) -> PreparedData: ...
    def model(self, config: Config, data: PreparedData) -> torch.nn.Module: ...
    def loss(self, run: Run, batch: dict) -> torch.Tensor: ...
    def evaluate(self, run: Run) -> dict: ...
    def summary(self, metrics: dict) -> str: ...
    def export(self, run: Run, name: str, step: int, metrics: dict) -> None: ...
    def after_training(self, run: Run) -> None: ...


@dataclass
class Run:
    """Everything ``fit`` needs, built by ``setup``."""

    config: Config
    accelerator: Accelerator
    run_dir: Path
    data: PreparedData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loader: DataLoader
    sampler: LengthGroupedBatchSampler
    log: MetricsLog
    info: dict
    total_steps: int
    steps_per_epoch: int
    state: TrainState
    task: Task  # Classification, or LanguageModelling
    ema: MovingAverage | None = None  # the moving average of the weights, with train.ema_decay
    unfreezing: GradualUnfreezing | None = None  # with optim.gradual_unfreezing
    started: float = field(default_factory=time.time)

    def weights(self) -> RecurrentEncoder:
        """The model validated and exported: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)
