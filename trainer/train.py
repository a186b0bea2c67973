"""Train a sentiment classifier: ``python -m trainer [--config PRESET|FILE] [--section.key=value ...]``.

    # CPU or one GPU (built-in data, the `default` preset)
    accelerate launch -m trainer
    # IMDB from the Hugging Face Hub, 8 GPUs, bf16
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 -m trainer --config imdb
    # local files
    accelerate launch -m trainer --data.train_files=train.csv.gz --data.validation_files=val.csv
    # several CPU processes (a real gloo process group)
    accelerate launch --config_file accelerate_configs/cpu_multi.yaml --num_processes 2 -m trainer
    # 4 nodes x 8 GPUs under SLURM
    sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sbatch --config imdb --train.output_dir=/shared/runs/imdb

Flags: --config NAME|PATH, --resume auto|PATH|none, --overwrite, --debug (tracebacks),
--help (every config key).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, gather_object, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from trainer.card import model_card
from trainer.checkpoint import (
    CHECKPOINTS_DIR,
    TrainState,
    export_model,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    state_digest,
)
from trainer.config import Config, TrainConfig, config_reference, load_config, preset_names, to_yaml
from trainer.data import Coordination, LengthGroupedBatchSampler, PreparedData, build_dataloaders, prepare_data
from trainer.errors import UserError, as_user_error, check_writable_dir, exit_for, print_error
from trainer.hardware import choose_precision, cpu_info
from trainer.metrics import METRICS_FOR, MetricsLog, Throughput, classification_metrics, is_better
from trainer.model import SentimentRNN, class_probabilities, classification_loss
from trainer.optim import build_optimizer, build_scheduler
from trainer.plot import plot_run, read_metrics
from trainer.preemption import Preemption, slurm_job
from trainer.tokenizer import pad_id, save_tokenizer
from trainer.tracking import tracker_resume_kwargs, tracker_setup
from trainer.vectors import initialise_embedding, load_word_vectors

DEFAULT_PRESET = "default"


def on_cpu(config: Config) -> bool:
    """Train on the CPU when asked to or when there is no accelerator.

    Accelerate forms a CPU (gloo) process group only when told it is on the CPU; without this,
    ``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine would start two
    independent single-process runs.
    """
    return config.train.cpu or not torch.accelerator.is_available()


def build_accelerator(config: Config, log_with: list[str], run_dir: Path, precision: str | None) -> Accelerator:
    try:
        return Accelerator(
            project_dir=run_dir,  # TensorBoard writes under it
            mixed_precision=precision,
            gradient_accumulation_steps=config.train.gradient_accumulation_steps,
            log_with=log_with or None,
            cpu=on_cpu(config),
            # We step the scheduler ourselves, once per optimizer step, whatever the process count.
            step_scheduler_with_optimizer=False,
            # Every parameter gets a gradient every step: no unused-parameter search, gradients that
            # alias DDP's buckets (one copy less), and a static graph, except under accumulation,
            # whose no_sync micro-steps static_graph does not support (torch 2.13 asserts), and under
            # adversarial training: a static graph's first step would queue its all-reduce at the end of
            # the backward pass that finds the perturbation, before any parameter has a gradient.
            kwargs_handlers=[
                DistributedDataParallelKwargs(
                    find_unused_parameters=False,
                    gradient_as_bucket_view=True,
                    static_graph=config.train.gradient_accumulation_steps == 1 and not config.train.adversarial_epsilon,
                )
            ],
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


def resolve_run_dir(config: Config, preset: str, state: PartialState) -> Path:
    """The run folder, the same on every process; refuses a non-empty one without --overwrite."""
    name = config.train.output_dir
    if name is None:
        name = f"runs/{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name = broadcast_object_list([name])[0]  # processes may start in different seconds
    run_dir = Path(name)
    problem = None
    if state.is_main_process:  # one verdict for all: on a shared file system the others see the same
        try:
            check_writable_dir(run_dir, "--train.output_dir")
            problem = run_dir_problem(run_dir, config)
        except (UserError, OSError) as exc:  # told to every process, which all stop
            problem = str(as_user_error(exc) or exc)
    problem = broadcast_object_list([problem])[0]
    if problem:
        raise UserError(problem, on_every_rank=True)
    return run_dir


def run_dir_problem(run_dir: Path, config: Config) -> str | None:
    """Why the run may not write into ``run_dir``, or None.

    An empty or missing folder is always fine, and ``--overwrite`` allows any. ``--resume auto``
    needs a run folder (one holding the run_info.json every run writes first): a folder of other
    files is never trained into. A named checkpoint (``--resume PATH``) may go into any folder.
    """
    if config.train.overwrite or not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    if config.checkpoint.resume == "none":
        return (
            f"run folder {run_dir} is not empty; resume it with --resume auto, pass --overwrite to "
            "start over in it, or choose another --train.output_dir"
        )
    if config.checkpoint.resume == "auto" and not (run_dir / "run_info.json").is_file():
        return (
            f"{run_dir} holds files but no run of this trainer (no run_info.json), so there is nothing to resume; "
            "choose another --train.output_dir, or pass --overwrite to train into it"
        )
    return None


def read_run_info(run_dir: Path) -> dict:
    """The run's run_info.json, or {} where there is none or it is unreadable (a run killed while writing it)."""
    try:
        info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def choose_checkpoint(config: Config, run_dir: Path, report) -> tuple[str | None, str | None]:
    """(checkpoint to resume from, or None; a problem that stops the run, or None). Main process."""
    mode, overwrite = config.checkpoint.resume, config.train.overwrite
    if mode == "auto" and not overwrite and "final_step" in read_run_info(run_dir):
        return None, (
            f"run {run_dir} has already finished: nothing to resume. Choose another --train.output_dir, "
            "or pass --overwrite to start over in it"
        )
    path = find_resume_checkpoint(run_dir, mode, report)
    if path is None and mode == "auto":
        has_outputs = any((run_dir / name).exists() for name in ("best", "final", CHECKPOINTS_DIR))
        if has_outputs and not overwrite:
            return None, (
                f"run folder {run_dir} holds results but no intact checkpoint to resume from; pass --overwrite "
                "to start over in it, or choose another --train.output_dir"
            )
        report(f"no checkpoint to resume from in {run_dir / CHECKPOINTS_DIR}: starting from scratch")
    return (str(path) if path else None), None


def run_info(config: Config, accelerator: Accelerator, data_stats: dict, precision_reason: str) -> dict:
    import accelerate
    import datasets
    import tokenizers

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions |= {"accelerate": accelerate.__version__, "datasets": datasets.__version__}
    versions["tokenizers"] = tokenizers.__version__
    try:
        import wandb

        versions["wandb"] = wandb.__version__
    except ImportError:
        pass
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "mixed_precision_requested": config.train.mixed_precision,
        "mixed_precision_reason": precision_reason,
        "cpu": cpu_info(),
        "global_batch_size": config.train.batch_size
        * accelerator.num_processes
        * config.train.gradient_accumulation_steps,
        "git_commit": git_commit(),
        "versions": versions,
        "host": platform.node(),
        "command": sys.argv,
        "data": data_stats,
    }


def where_this_process_runs(accelerator: Accelerator) -> dict:
    """This process's rank, host and, under SLURM, node and job (gathered into run_info.json)."""
    place = {"rank": accelerator.process_index, "local_rank": accelerator.local_process_index, "host": platform.node()}
    if os.environ.get("SLURM_JOB_ID"):
        place |= {"slurm_job": slurm_job(), "slurm_node": os.environ.get("SLURMD_NODENAME")}
        place |= {
            "slurm_node_id": os.environ.get("SLURM_NODEID"),
            "slurm_restarts": os.environ.get("SLURM_RESTART_COUNT", "0"),
        }
    return place


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "-q", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


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


def training_loss(model: torch.nn.Module, batch: dict, accelerator: Accelerator, epsilon: float) -> torch.Tensor:
    """The classification loss; with ``epsilon``, plus the loss on adversarially perturbed embeddings.

    Adversarial training (Miyato et al. 2017): each sequence's embeddings move by ``epsilon`` (L2
    norm over the whole sequence) along the gradient of its loss, and the loss there is added. The
    perturbed pass runs on the unwrapped model inside the same graph, so DDP sees one forward and
    one backward per step, and every gradient is reduced once.
    """
    input_ids, lengths, labels = batch["input_ids"], batch["lengths"], batch["labels"]
    if not epsilon:
        return classification_loss(model(input_ids, lengths), labels)
    net = accelerator.unwrap_model(model)
    embeddings = net.embed(input_ids)  # (B, T, E)
    loss = classification_loss(model(input_ids, lengths, embeddings=embeddings), labels)
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else 1.0  # no fp16 underflow
    (gradient,) = torch.autograd.grad(loss * scale, embeddings, retain_graph=True)  # parameters untouched
    direction = torch.nn.functional.normalize(gradient.flatten(1), dim=1).view_as(gradient)  # unit L2 per sequence
    with accelerator.autocast():
        logits = net(input_ids, lengths, embeddings=embeddings + epsilon * direction)
    return loss + classification_loss(logits, labels)


def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator) -> dict:
    """Metrics over the whole validation set."""
    return classification_metrics(*gather_predictions(model, loader, accelerator))


def pretrained_embeddings(config: Config, model: SentimentRNN, data: PreparedData, accelerator: Accelerator):
    """Initialise the embedding from ``model.pretrained_embeddings`` on the main process; DDP then
    broadcasts the main process's weights to the others. Returns the statistics, or None."""
    path = config.model.pretrained_embeddings
    if not path:
        return None
    stats, problem = None, None
    if accelerator.is_main_process:
        try:
            vectors, stats = load_word_vectors(path, data.tokenizer, config.model.embedding_dim)
            initialise_embedding(model.embedding, vectors)
        except UserError as exc:
            problem = str(exc)
    stats, problem = broadcast_object_list([stats, problem])
    if problem:
        raise UserError(problem, on_every_rank=True)
    say(accelerator, f"embedding: {stats['found']:,} of {stats['vocabulary']:,} tokens initialised from {path} "
                     f"({stats['coverage']:.1%})")  # fmt: skip
    return stats


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
    ema: AveragedModel | None = None  # the moving average of the weights, with train.ema_decay
    started: float = field(default_factory=time.time)

    def weights(self) -> SentimentRNN:
        """The model validated and exported: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)


def setup(config: Config, preset: str) -> Run:
    """Process group, run folder, trackers, data, model, optimizer and schedule, all prepared."""
    train_cfg = config.train
    # The process group comes first: the run folder (and so the W&B folder) is agreed on it.
    processes = PartialState(cpu=on_cpu(config))
    apply_global_batch(train_cfg, processes.num_processes)
    run_dir = resolve_run_dir(config, preset, processes)
    log_with, tracker_kwargs, tracker_note = tracker_setup(config.logging, run_dir)
    # The main process's choice for all: processes on CPUs of different kinds must agree.
    precision, precision_reason = broadcast_object_list(
        [choose_precision(config.train.mixed_precision, on_cpu(config))]
    )[0]
    accelerator = build_accelerator(config, log_with, run_dir, precision)
    set_seed(train_cfg.seed)

    coordination = Coordination(
        is_main=accelerator.is_main_process,
        main_process_first=accelerator.main_process_first,
        from_main=lambda value: broadcast_object_list([value])[0],
    )
    data = prepare_data(config.data, config.tokenizer, coordination)
    if config.checkpoint.best_metric not in METRICS_FOR[min(len(data.label_map.names), 3)]:
        raise UserError(
            f"checkpoint.best_metric={config.checkpoint.best_metric} needs two classes; "
            f"the data has {len(data.label_map.names)}: use loss, accuracy, precision, recall or f1",
            on_every_rank=True,
        )
    train_loader, eval_loader = build_dataloaders(
        data,
        config.data,
        batch_size=train_cfg.batch_size,
        eval_batch_size=train_cfg.eval_batch_size or 2 * train_cfg.batch_size,
        num_shards=accelerator.num_processes,
        seed=train_cfg.seed,
        mixed_precision=accelerator.mixed_precision != "no",
        pin_memory=accelerator.device.type == "cuda",
        accumulation=train_cfg.gradient_accumulation_steps,
    )
    sampler = train_loader.batch_sampler
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = train_cfg.max_steps or train_cfg.epochs * steps_per_epoch

    model = SentimentRNN(
        config.model, data.tokenizer.get_vocab_size(), len(data.label_map.names), pad_id(data.tokenizer)
    )
    embedding_stats = pretrained_embeddings(config, model, data, accelerator)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )

    ema = None
    if train_cfg.ema_decay:  # identical on every process, like the weights it follows
        ema = AveragedModel(accelerator.unwrap_model(model), multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay))
        accelerator.register_for_checkpointing(ema)  # saved and restored with the checkpoints

    state = TrainState(setup={
        "world_size": accelerator.num_processes, "batch_size": train_cfg.batch_size,
        "gradient_accumulation_steps": train_cfg.gradient_accumulation_steps, "seed": train_cfg.seed,
        "train_examples": len(data.train), "steps_per_epoch": steps_per_epoch, "ema_decay": train_cfg.ema_decay,
        "embedding_lr_scale": config.optim.embedding_lr_scale,  # the optimizer's groups depend on it
        **{f"model.{key}": value for key, value in config.model.architecture().items()},
        "vocab_size": data.tokenizer.get_vocab_size(), "num_labels": len(data.label_map.names),
    })  # fmt: skip
    resume_from = None
    if config.checkpoint.resume != "none":
        found, problem = None, None
        if accelerator.is_main_process:
            found, problem = choose_checkpoint(config, run_dir, lambda line: say(accelerator, line))
        found, problem = broadcast_object_list([found, problem])
        if problem:
            raise UserError(problem, on_every_rank=True)
        resume_from = found
        if resume_from:
            saved = load_checkpoint(accelerator, Path(resume_from), state)
            old, new = (describe_split(setup) for setup in (saved, state.setup))
            moved = f"; saved with {old}, continuing with {new}" if old != new else ""
            say(accelerator, f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}){moved}")
    if resume_from:
        tracker_kwargs = tracker_resume_kwargs(tracker_kwargs, state.tracker_run_id)

    info = run_info(config, accelerator, data.stats, precision_reason)
    info["resumed_from"] = resume_from
    # Which process tokenised and which reused the cache (the main one goes first).
    info["data_per_rank"] = gather_object([data.stats])
    info["processes"] = gather_object([where_this_process_runs(accelerator)])
    info |= {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    info["pretrained_embeddings"] = embedding_stats
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from:  # what the interrupted run logged after its checkpoint is logged again
            truncate_metrics(run_dir / "metrics.jsonl", state.step)
        else:  # with --overwrite, an earlier run's outputs go: nothing stale may pass for this run's
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            for stale in ("best", "final", CHECKPOINTS_DIR):
                shutil.rmtree(run_dir / stale, ignore_errors=True)
        # run_info.json first: a folder with it is this run's, which --resume auto may continue.
        write_json(run_dir / "run_info.json", info)
        (run_dir / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
        save_tokenizer(data.tokenizer, run_dir / "tokenizer.json")
    if log_with:
        hparams = flatten(asdict(config), scalars_only="tensorboard" in log_with)
        accelerator.init_trackers(config.logging.project, config=hparams, init_kwargs=tracker_kwargs)
        if "wandb" in log_with and accelerator.is_main_process:
            state.tracker_run_id = accelerator.get_tracker("wandb", unwrap=True).id
    log = MetricsLog(run_dir / "metrics.jsonl" if accelerator.is_main_process else None, accelerator.log)

    cached = "from cache" if data.stats["train_tokens_cache_hit"] else "tokenised"
    dropped = sum(v for k, v in data.stats.items() if k.endswith("_dropped_empty"))
    say(
        accelerator,
        f"data: {len(data.train)} train / {len(data.validation)} validation examples "
        f"({data.stats['load_seconds']:.1f}s to load, {cached} in {data.stats['tokenize_seconds']:.1f}s)"
        + (f"; dropped {dropped} rows with an empty text or label" if dropped else ""),
    )
    say(
        accelerator,
        f"run folder {run_dir} | {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"precision {accelerator.mixed_precision} | {len(data.label_map.names)} labels, "
        f"vocabulary {data.tokenizer.get_vocab_size()} | {info['num_parameters']:,} parameters | {total_steps} steps",
    )
    if tracker_note:
        say(accelerator, tracker_note)
    shared = data.stats["validation_rows_in_train"]
    if shared:
        say(accelerator, overlap_warning(config, shared, len(data.validation)))
    return Run(config, accelerator, run_dir, data, model, optimizer, scheduler, train_loader, eval_loader,
               sampler, log, info, total_steps, steps_per_epoch, state, ema)  # fmt: skip


def overlap_warning(config: Config, shared: int, validation_rows: int) -> str:
    """Validation rows that are also training rows make validation optimistic: say so, with the count."""
    line = (
        f"warning: {shared:,} of {validation_rows:,} validation rows ({shared / validation_rows:.1%}) have the exact "
        "text of a training row, so validation overstates accuracy on new reviews"
    )
    files = config.data.validation_files
    if files and {os.path.realpath(f) for f in files} & {os.path.realpath(f) for f in config.data.train_files}:
        line += "; the same file is given in --data.train_files and --data.validation_files"
    return line


def fit(run: Run, preemption: Preemption) -> int:
    """The training loop. Exports best/ and final/; returns the exit code (128 + signal if preempted)."""
    config, accelerator, model, optimizer, state = run.config, run.accelerator, run.model, run.optimizer, run.state
    metrics, last_eval_step, stop, stop_signum = {}, -1, None, 0
    throughput, loss_sum, loss_count = Throughput(), torch.zeros((), device=accelerator.device), 0
    grad_norm_sum, grad_norm_steps = torch.zeros((), device=accelerator.device), 0
    guard = FiniteGuard(run)
    progress = tqdm(total=run.total_steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="training", unit="step")  # fmt: skip

    def note(line: str) -> None:
        if accelerator.is_main_process:
            progress.write(line)  # tqdm.write prints on every process, even with the bar disabled

    def validate() -> None:
        nonlocal metrics, last_eval_step, stop
        guard.check(state.step)
        with accelerator.autocast():  # as prepare() wraps the model's forward; the average is not wrapped
            metrics, last_eval_step = evaluate(run.weights(), run.eval_loader, accelerator), state.step
        if not math.isfinite(metrics["loss"]):
            guard.diverged(state.step, "validation loss")
        run.log.write({"epoch": round(state.step / run.steps_per_epoch, 3), **prefixed("eval/", metrics)}, state.step)
        best = state.best_metrics
        if best is None or is_better(metrics[config.checkpoint.best_metric], best[config.checkpoint.best_metric],
                                     config.checkpoint.best_metric):  # fmt: skip
            state.best_metrics, state.best_step, state.evals_without_improvement = metrics, state.step, 0
            if config.checkpoint.save_best and accelerator.is_main_process:
                export(run, "best", {"step": state.step, "metrics": metrics})
        else:
            state.evals_without_improvement += 1
        note(
            f"step {state.step} epoch {state.step / run.steps_per_epoch:.2f}: validation loss {metrics['loss']:.4f} "
            f"accuracy {metrics['accuracy']:.4f} f1 {metrics['f1']:.4f}"
            + (" (best)" if state.best_step == state.step else "")
        )
        patience = config.checkpoint.early_stopping_patience
        if patience and state.evals_without_improvement >= patience:
            note(f"early stopping: no better validation {config.checkpoint.best_metric} in {patience} evaluations")
            stop = "early stopping"

    def checkpoint() -> None:
        guard.check(state.step, weights=True)
        started = time.perf_counter()
        path = save_checkpoint(accelerator, run.run_dir, state, config.checkpoint.keep_last)
        run.log.write({"checkpoint/seconds": round(time.perf_counter() - started, 3)}, state.step)
        note(f"saved {path}")

    try:
        model.train()
        epochs = math.ceil(run.total_steps / run.steps_per_epoch)
        while state.epoch < epochs and stop is None:
            run.sampler.set_epoch(state.epoch)
            run.train_loader.set_epoch(state.epoch)
            loader = run.train_loader
            if state.batches_in_epoch:  # resuming mid-epoch: continue at the next batch
                loader = accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = training_loss(model, batch, accelerator, config.train.adversarial_epsilon)
                    # Every example of a step weighs the same, however the step is split into
                    # batches (1.0 for a full step; the epoch's last step may be uneven or short).
                    share = len(batch["lengths"]) * run.sampler.num_shards * run.sampler.accumulation
                    weight = share / run.sampler.step_examples(state.batches_in_epoch)
                    accelerator.backward(loss * weight if weight != 1 else loss)
                    grad_norm = None
                    if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.optim.max_grad_norm)
                    optimizer.step()  # a no-op on accumulation micro-steps
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                loss_sum += loss.detach()
                loss_count += 1
                guard.observe(loss, grad_norm)
                throughput.update(int(batch["lengths"].sum()), len(batch["lengths"]))
                if not accelerator.sync_gradients:
                    continue
                if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the step did not happen
                    guard.step_taken()
                    if grad_norm is not None:
                        grad_norm_sum += grad_norm.detach()
                        grad_norm_steps += 1
                    run.scheduler.step()
                    if run.ema is not None:
                        run.ema.update_parameters(accelerator.unwrap_model(model))
                else:
                    guard.step_skipped()
                state.step += 1
                progress.update(1)
                if state.step % config.train.log_every_steps == 0 or state.step == run.total_steps:
                    guard.check(state.step)
                    record = {"train/loss": accelerator.reduce(loss_sum / loss_count, "mean").item()}
                    if grad_norm_steps:  # before clipping, averaged over the steps taken since the last record
                        record["train/grad_norm"] = grad_norm_sum.item() / grad_norm_steps
                        grad_norm_sum.zero_()
                        grad_norm_steps = 0
                    record["train/lr"] = run.scheduler.get_last_lr()[0]
                    rates = throughput.read()
                    totals = accelerator.reduce(torch.tensor(list(rates.values()), device=accelerator.device), "sum")
                    record |= prefixed("train/", dict(zip(rates, totals.tolist(), strict=True)))
                    run.log.write({**record, "epoch": round(state.step / run.steps_per_epoch, 3)}, state.step)
                    progress.set_postfix(loss=f"{record['train/loss']:.4f}", tok_s=f"{totals[0]:,.0f}")
                    loss_sum.zero_()
                    loss_count = 0
                if config.train.eval_every_steps and state.step % config.train.eval_every_steps == 0:
                    with throughput.paused():
                        validate()
                signum = preemption.requested(accelerator)
                if signum and (stop is not None or state.step >= run.total_steps):
                    signum = 0  # finishing anyway: the end of training (or early stopping) wins
                if signum:
                    stop, stop_signum = f"signal {signal.Signals(signum).name}", signum
                every = config.checkpoint.save_every_steps
                if signum or (every and state.step % every == 0 and state.step < run.total_steps):
                    with throughput.paused():
                        checkpoint()
                if stop or state.step >= run.total_steps:
                    break
            else:  # the epoch ran to its end
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                with throughput.paused():
                    if last_eval_step != state.step:
                        validate()
                    if state.step < run.total_steps:
                        checkpoint()
                continue
            if stop is None or stop == "early stopping":  # max_steps reached, or stopped by validation
                if last_eval_step != state.step:
                    validate()
                break
    finally:  # also when a check stops the run: the bar must not print after its error
        progress.close()

    if stop and stop.startswith("signal"):
        # The time-limit warning requeues a SLURM job; SIGTERM (scancel, preemption) does not.
        requeue = stop_signum == signal.SIGUSR1 and accelerator.is_main_process
        requeued = Preemption.requeue() if requeue else None
        line = f"stopped by {stop} at step {state.step}; resume with --checkpoint.resume=auto"
        say(accelerator, line + (f" ({requeued})" if requeued else ""))
        leave_together(accelerator)
        return 128 + stop_signum

    guard.check(state.step, weights=True)
    digests = gather_object([state_digest(run.weights())])
    if accelerator.is_main_process:
        if config.checkpoint.save_final:
            export(run, "final", {"step": state.step, "metrics": metrics})
        run.info |= {"final_step": state.step, "final_metrics": metrics, "best_metric": config.checkpoint.best_metric}
        run.info |= {"best_metrics": state.best_metrics, "best_step": state.best_step, "weight_digests": digests}
        run.info |= {"stopped_early": stop == "early stopping", "train_seconds": round(time.time() - run.started, 1)}
        write_json(run.run_dir / "run_info.json", run.info)
        if config.logging.plots:
            draw_plots(run.run_dir)
    best, metric = state.best_metrics, config.checkpoint.best_metric
    other = "loss" if metric == "accuracy" else "accuracy"
    say(
        accelerator,
        f"done in {time.time() - run.started:.0f}s: best validation {metric} {best[metric]:.4f} "
        f"({other} {best[other]:.4f}, step {state.best_step}) saved to {run.run_dir / 'best'}",
    )
    leave_together(accelerator)
    return 0


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


def leave_together(accelerator: Accelerator) -> None:
    """No process exits before the main one has written the run (or requeued the job): after a
    signal every process exits non-zero, and the first to go gets the others stopped (by torchrun,
    and by SLURM's --kill-on-bad-exit across nodes), main process included."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def export(run: Run, name: str, extra: dict) -> None:
    """best/ or final/: weights, config.json, tokenizer and a model card."""
    model = run.weights()
    metric = run.config.checkpoint.best_metric
    selected = f"the best validation {metric} of the run" if name == "best" else "the last step of the run"
    extra = {**extra, "selected_by": selected, "num_parameters": run.info["num_parameters"]}
    yaml_text, config = to_yaml(run.config), asdict(run.config)

    def card(meta: dict) -> str:
        return model_card(meta, yaml_text, config, run.data.stats)

    export_model(
        run.run_dir / name, model, run.data.tokenizer, run.data.label_map.names, run.config.data.max_length, extra, card
    )


def draw_plots(run_dir: Path) -> None:
    """The run's curves into run_dir/plots; a drawing problem must not fail a finished run."""
    try:
        plot_run(run_dir)
    except Exception as exc:
        print(f"warning: could not draw the plots ({type(exc).__name__}: {exc}); "
              f"retry with python -m trainer.plot {run_dir}", file=sys.stderr)  # fmt: skip


def prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in values.items()}


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run logs the later ones again)."""
    if path.is_file():
        kept = [record for record in read_metrics(path) if record["step"] <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")


def say(accelerator: Accelerator, line: str) -> None:
    """Print on the main process only (``accelerator.print`` prints once per node)."""
    if accelerator.is_main_process:
        print(line, flush=True)


def write_json(path: Path, obj: dict) -> None:
    """Atomically: a kill while writing leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def flatten(tree: dict, prefix: str = "", scalars_only: bool = False) -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; TensorBoard's hparams take only scalars (lists, None -> str)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.", scalars_only)
        elif scalars_only and not isinstance(value, (int, float, str, bool)):
            flat[f"{prefix}{key}"] = str(value)
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_cli(argv: list[str]) -> tuple[str, list[str], bool, bool]:
    """(preset, overrides, overwrite, debug); --help prints the reference and exits."""
    preset, overrides, overwrite, debug = DEFAULT_PRESET, [], False, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(__doc__)
            print(f"Presets: {', '.join(preset_names())}\n\nConfig keys (--section.key=value):")
            print(config_reference())
            raise SystemExit(0)
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                preset = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                preset, i = argv[i + 1], i + 1
            else:
                raise UserError("--config needs a preset name or a YAML file")
        elif arg == "--resume" or arg.startswith("--resume="):
            if "=" in arg:
                overrides.append(f"--checkpoint.resume={arg.split('=', 1)[1]}")
            elif i + 1 < len(argv):
                overrides.append(f"--checkpoint.resume={argv[i + 1]}")
                i += 1
            else:
                raise UserError("--resume needs auto, none or a checkpoint folder")
        elif arg == "--overwrite":
            overwrite = True
        elif arg == "--debug":
            debug = True
        else:
            overrides.append(arg)
        i += 1
    return preset, overrides, overwrite, debug


def report(exc: UserError, debug: bool) -> None:
    """One line on stderr, from the process that failed.

    An error every process meets alike (the command line, the run folder) is printed by the main
    process alone; any other by the process that raised it, tagged with its rank when there are
    several. The launcher then stops the other processes.
    """
    state = PartialState(cpu=not torch.accelerator.is_available())  # as setup() made it, if it did
    if exc.on_every_rank and not state.is_main_process:
        return
    where = f"[rank {state.process_index}] " if state.num_processes > 1 and not exc.on_every_rank else ""
    print_error(exc, debug, where)


def interrupted(run: Run | None) -> str:
    """What Ctrl-C leaves behind, and how to go on from it."""
    if run is None:
        return "interrupted before training started; nothing was trained"
    saved = list_checkpoints(run.run_dir / CHECKPOINTS_DIR)
    if not saved:
        return f"interrupted at step {run.state.step}, before the first checkpoint; start again to train"
    command = f"--resume auto --train.output_dir={run.run_dir}"
    return f"interrupted at step {run.state.step}; resume from {saved[-1]} with {command}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    run = None
    # From the start: a signal during setup (data preparation can take a while) is not lost; the
    # run stops after its first step.
    preemption = Preemption()
    preemption.install()
    try:
        try:
            preset, overrides, overwrite, debug = parse_cli(argv)
            config = load_config(preset, overrides)
        except UserError as exc:
            exc.on_every_rank = True  # every process parses the same command line
            raise
        config.train.overwrite = config.train.overwrite or overwrite
        run = setup(config, preset)
        return fit(run, preemption)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # the launcher's rank: no process group is needed to know it
            print(interrupted(run), file=sys.stderr)
        return 130
    except Exception as exc:
        return exit_for(exc, debug, report)
    finally:
        preemption.uninstall()


if __name__ == "__main__":
    sys.exit(main())
