"""The process group and the ``Accelerator``: the CPU or an accelerator, DDP's settings, and how
the global batch is split over processes and accumulation steps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

from trainer.config import Config, TrainConfig
from trainer.errors import UserError


def on_cpu(config: Config) -> bool:
    """Train on the CPU when asked to or when there is no accelerator.

    Accelerate forms a CPU (gloo) process group only when told it is on the CPU; without this,
    ``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine would start two
    independent single-process runs.
    """
    return config.train.cpu or not torch.accelerator.is_available()


def start_processes(config: Config) -> PartialState:
    """This process's place in the group, which the first call forms (the Accelerator then joins it)."""
    # A collective that waits longer fails the run: NCCL's default, 10 minutes, is less than the main
    # process may take to tokenise a large corpus while the others wait (gloo's is 30).
    return PartialState(cpu=on_cpu(config), timeout=timedelta(minutes=config.train.process_timeout_minutes))


def build_accelerator(config: Config, log_with: list[str], run_dir: Path, precision: str | None) -> Accelerator:
    if not on_cpu(config):  # TF32 on purpose, either way (torch's defaults differ for matmuls and cuDNN)
        torch.set_float32_matmul_precision("high" if config.train.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = config.train.tf32
    # Every parameter gets a gradient every step: no unused-parameter search, gradients that alias
    # DDP's buckets (one copy less), and a static graph, except under accumulation, whose no_sync
    # micro-steps static_graph does not support (torch 2.13 asserts), and under adversarial
    # training (plain or virtual): a static graph's first step would queue its all-reduce at the end
    # of the backward pass that finds the perturbation, before any parameter has a gradient.
    perturbed = config.train.adversarial_epsilon or config.train.vat_epsilon
    static = config.train.gradient_accumulation_steps == 1 and not perturbed
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False, gradient_as_bucket_view=True, static_graph=static)
    try:
        return Accelerator(
            project_dir=run_dir,  # TensorBoard writes under it
            mixed_precision=precision,
            gradient_accumulation_steps=config.train.gradient_accumulation_steps,
            log_with=log_with or None,
            cpu=on_cpu(config),
            step_scheduler_with_optimizer=False,  # stepped once per optimizer step, whatever the process count
            kwargs_handlers=[ddp],
            # Batches go to the GPU from pinned memory (build_dataloaders) without the host waiting.
            dataloader_config=DataLoaderConfiguration(non_blocking=True),
        )
    except ValueError as exc:  # e.g. fp16 without a GPU
        raise UserError(f"train.mixed_precision={config.train.mixed_precision}: {exc}") from exc


def apply_global_batch(train: TrainConfig, processes: int) -> None:
    """With ``train.global_batch_size``: the gradient accumulation that gives it on this many processes."""
    wanted = train.global_batch_size
    if wanted is None:
        return
    per_micro_step = train.batch_size * processes
    if wanted % per_micro_step:
        fix = (
            f"a --train.batch_size that divides {wanted // processes}"
            if wanted % processes == 0
            else f"a number of processes that divides {wanted}"
        )
        raise UserError(
            f"train.global_batch_size={wanted} is not a multiple of batch_size {train.batch_size} x {processes} "
            f"process(es) = {per_micro_step}; choose {fix}, or another global batch size",
            on_every_rank=True,
        )
    train.gradient_accumulation_steps = wanted // per_micro_step


def describe_split(setup: dict) -> str:
    """How a run's global batch is split, from a checkpoint setup."""
    return (
        f"{setup['world_size']} process(es) x batch size {setup['batch_size']} x "
        f"{setup['gradient_accumulation_steps']} accumulation step(s)"
    )
