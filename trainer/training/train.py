"""Set-up and the training loop: ``setup`` builds a ``Run`` (process group, run folder, trackers,
data, model, optimizer, schedule, resume), ``fit`` trains it. The command line is
``trainer.cli``; the loop's pieces are in ``trainer.training.loop``."""

from __future__ import annotations

import signal
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from trainer.config import Config
from trainer.data.batching import build_dataloaders
from trainer.data.preparation import Coordination, PreparedData
from trainer.errors import UserError
from trainer.hardware import choose_precision
from trainer.inference.folder import state_digest
from trainer.metrics import MetricsLog
from trainer.models.vectors import initialise_from_file
from trainer.plot import draw_plots
from trainer.training.checkpoint import TrainState, load_checkpoint
from trainer.training.collective import from_main, main_decides, say
from trainer.training.guard import FiniteGuard
from trainer.training.loop import CheckpointPolicy, Epochs, Progress, Stop, TrainRecords, save, train_step
from trainer.training.optim import GradualUnfreezing, MovingAverage, build_optimizer, build_scheduler
from trainer.training.preemption import Preemption
from trainer.training.pretrained import initialise_encoder, start_from_pretrained
from trainer.training.processes import apply_global_batch, build_accelerator, describe_split, on_cpu, start_processes
from trainer.training.run import Run, Task
from trainer.training.rundir import (
    announce,
    choose_checkpoint,
    resolve_run_dir,
    run_info,
    start_run_folder,
    where_this_process_runs,
    write_json,
)
from trainer.training.task import Classification
from trainer.training.tracking import flatten, start_trackers, tracker_resume_kwargs, tracker_setup
from trainer.training.validation import Validator


def setup(config: Config, preset: str, task: Task | None = None) -> Run:
    """Process group, run folder, trackers, data, model, optimizer and schedule, all prepared."""
    train, task = config.train, task or Classification()
    # The process group comes first: the run folder (and so the W&B folder) is agreed on it.
    apply_global_batch(train, start_processes(config).num_processes)
    run_dir = resolve_run_dir(config, Path(preset).stem + task.run_suffix)
    log_with, tracker_kwargs, tracker_note = tracker_setup(config.logging, run_dir)
    # The main process's choice for all: processes on CPUs of different kinds must agree.
    precision, why = from_main(choose_precision(train.mixed_precision, on_cpu(config)))
    accelerator = build_accelerator(config, log_with, run_dir, precision)
    set_seed(train.seed)

    if config.model.init_from:  # its tokenizer, checked against the model's architecture
        start_from_pretrained(config)
    coordination = Coordination(accelerator.is_main_process, accelerator.main_process_first, from_main)
    data = task.data(config, coordination)
    train_loader, eval_loader = build_dataloaders(
        data,
        config.data,
        batch_size=train.batch_size,
        eval_batch_size=train.eval_batch_size or 2 * train.batch_size,
        num_shards=accelerator.num_processes,
        seed=train.seed,
        mixed_precision=accelerator.mixed_precision != "no",
        pin_memory=accelerator.device.type == "cuda",
        accumulation=train.gradient_accumulation_steps,
    )
    sampler = train_loader.batch_sampler
    total_steps = train.max_steps or train.epochs * sampler.steps_per_epoch

    model = task.model(config, data)
    embedding_stats = None
    if path := config.model.pretrained_embeddings:  # the main process's; DDP broadcasts its weights
        embedding_stats = main_decides(partial(initialise_from_file, model.embedding, path, data.tokenizer))
        found, vocabulary, coverage = (embedding_stats[k] for k in ("found", "vocabulary", "coverage"))
        say(f"embedding: {found:,} of {vocabulary:,} tokens initialised from {path} ({coverage:.1%})")
    if folder := config.model.init_from:  # the main process's, as above
        copied = main_decides(partial(initialise_encoder, model, folder))
        say(f"embedding and recurrent layers: {copied:,} weights from {folder}")
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    ema = None
    if train.ema_decay:  # identical on every process, like the weights it follows
        ema = MovingAverage(accelerator.unwrap_model(model), train.ema_decay)
        accelerator.register_for_checkpointing(ema)  # saved and restored with the checkpoints
    unfreezing = None
    if epochs := config.optim.gradual_unfreezing:  # the step decides what trains: nothing to checkpoint
        unfreezing = GradualUnfreezing(accelerator.unwrap_model(model), epochs, sampler.steps_per_epoch)

    state = TrainState(setup=run_setup(config, accelerator, data, sampler.steps_per_epoch) | {"task": task.name})
    resume_from = None
    if config.checkpoint.resume != "none":
        resume_from = main_decides(partial(choose_checkpoint, config, run_dir, say))
    if resume_from:
        saved = load_checkpoint(accelerator, Path(resume_from), state)
        if train.max_steps and state.step > total_steps:  # it would train on past the end it was given
            raise UserError(
                f"checkpoint {resume_from} is at step {state.step}, past this run's last step {total_steps} "
                "(--train.max_steps, or --train.epochs); raise it to go on, or start a new run",
                on_every_rank=True,
            )
        old, new = (describe_split(setup) for setup in (saved, state.setup))
        moved = f"; saved with {old}, continuing with {new}" if old != new else ""
        say(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch}){moved}")
        tracker_kwargs = tracker_resume_kwargs(tracker_kwargs, state.tracker_run_id)

    info = run_info(config, accelerator, data.stats, why) | {"task": task.name}
    info["resumed_from"] = resume_from
    info["data_per_rank"] = gather_object([data.stats])  # which process tokenised, which read the cache
    info["processes"] = gather_object([where_this_process_runs(accelerator)])
    info |= {"total_steps": total_steps, "steps_per_epoch": sampler.steps_per_epoch, "examples_per_epoch": sampler.size}
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    info["pretrained_embeddings"] = embedding_stats
    info["gradual_unfreezing"] = unfreezing and unfreezing.joins
    main_decides(partial(start_run_folder, run_dir, info, config, data.tokenizer, state.step if resume_from else None))
    if log_with:
        hparams = flatten(asdict(config), scalars_only="tensorboard" in log_with)
        tracker_note = start_trackers(accelerator, config.logging.project, hparams, tracker_kwargs) or tracker_note
        if "wandb" in log_with and accelerator.is_main_process:
            state.tracker_run_id = accelerator.get_tracker("wandb", unwrap=True).id
    log = MetricsLog(run_dir / "metrics.jsonl" if accelerator.is_main_process else None, accelerator.log)
    loaders = {"train_loader": train_loader, "eval_loader": eval_loader, "sampler": sampler}
    run = Run(
        config,
        accelerator,
        run_dir,
        data,
        model,
        optimizer,
        scheduler,
        **loaders,
        log=log,
        info=info,
        total_steps=total_steps,
        steps_per_epoch=sampler.steps_per_epoch,
        state=state,
        ema=ema,
        task=task,
        unfreezing=unfreezing,
    )
    announce(run, tracker_note)
    if unfreezing:
        say(f"gradual unfreezing: the attention and classifier train alone, then {unfreezing.describe()}")
    return run


def run_setup(config: Config, accelerator: Accelerator, data: PreparedData, steps_per_epoch: int) -> dict:
    """What a checkpoint must have been made with to be resumed by this run."""
    train = config.train
    return {
        "world_size": accelerator.num_processes,
        "batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "seed": train.seed,
        "precision": accelerator.mixed_precision,  # resolved: fp16's scaler state exists in fp16 runs only
        "train_examples": len(data.train),
        "sampler": config.data.sampler,
        "steps_per_epoch": steps_per_epoch,
        "ema_decay": train.ema_decay,
        "adversarial_epsilon": train.adversarial_epsilon,  # the loss a step minimises depends on them
        "vat_epsilon": train.vat_epsilon,
        "embedding_lr_scale": config.optim.embedding_lr_scale,  # the optimizer's groups depend on it
        "recurrent_lr_scale": config.optim.recurrent_lr_scale,
        **{f"model.{key}": value for key, value in config.model.architecture().items()},
        "vocab_size": data.tokenizer.get_vocab_size(),
        "num_labels": len(data.label_map.names),
    }


def fit(run: Run, preemption: Preemption) -> int:
    """The training loop. Exports best/ and final/; returns the exit code (128 + signal if preempted)."""
    state, total = run.state, run.total_steps
    progress = Progress(total, state.step, run.accelerator.is_main_process)
    guard = FiniteGuard(run)
    validator = Validator(run, guard, progress.note, partial(run.task.export, run, "best"))
    records, epochs = TrainRecords(run), Epochs(run)
    saving = CheckpointPolicy(run.config.checkpoint.save_every_steps, total)
    stop, signum = None, 0
    try:
        run.model.train()
        for loader in epochs:
            for batch in loader:
                if not train_step(run, batch, guard, records):
                    continue  # an accumulation micro-step
                state.step += 1
                progress.step()
                logging = records.due(state.step)
                if logging:
                    guard.check(state.step)
                    progress.show(records.write(state.step))
                if validator.due(state.step):
                    with records.paused():
                        stop = Stop.EARLY_STOPPING if validator(state.step) else None
                signum = preemption.requested(run.accelerator, agree=logging)  # processes agree when logging
                if signum and (stop is not None or state.step >= total):
                    signum = 0  # finishing anyway: the end of training (or early stopping) wins
                stop = Stop.SIGNAL if signum else stop
                if saving.after_step(state.step, signalled=bool(signum)):
                    with records.paused():
                        save(run, guard, progress)
                if stop or state.step >= total:
                    break
            else:  # the epoch ran to its end
                epochs.end()
                with records.paused():
                    if validator.last_step != state.step and validator(state.step):
                        stop = Stop.EARLY_STOPPING
                    if saving.at_epoch_end(state.step):
                        save(run, guard, progress)
                if stop is None:
                    continue
                break
            if stop is not Stop.SIGNAL and validator.last_step != state.step:
                validator(state.step)  # the last step, or early stopping, validated
            break
    finally:  # also when a check stops the run: the bar must not print after its error
        progress.close()
    if stop is Stop.SIGNAL:
        return stopped_by_signal(run, signum)
    return finish(run, guard, validator.metrics, stop)


def stopped_by_signal(run: Run, signum: int) -> int:
    """After the checkpoint a signal asked for: requeue the SLURM job on its time-limit warning
    (SIGUSR1; SIGTERM, from scancel or preemption, does not), say how to resume, exit 128 + signal."""
    requeued = Preemption.requeue() if signum == signal.SIGUSR1 and run.accelerator.is_main_process else None
    line = f"stopped by signal {signal.Signals(signum).name} at step {run.state.step}; resume with --resume auto"
    say(line + (f" ({requeued})" if requeued else ""))
    leave_together(run.accelerator)
    return 128 + signum


def finish(run: Run, guard: FiniteGuard, metrics: dict, stop: Stop | None) -> int:
    """The end of training: final/, run_info.json's results and the weight digests, the plots."""
    state, config = run.state, run.config
    guard.check(state.step, weights=True)
    digests = gather_object([state_digest(run.weights())])
    if run.accelerator.is_main_process:
        if config.checkpoint.save_final:
            run.task.export(run, "final", state.step, metrics)
        run.task.after_training(run)
        run.info |= {"final_step": state.step, "final_metrics": metrics, "best_metric": config.checkpoint.best_metric}
        run.info |= {"best_metrics": state.best_metrics, "best_step": state.best_step, "weight_digests": digests}
        run.info |= {"stopped_early": stop is Stop.EARLY_STOPPING, "train_seconds": round(time.time() - run.started, 1)}
        if run.accelerator.device.type == "cuda":
            run.info["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(run.accelerator.device) / 2**20)
        write_json(run.run_dir / "run_info.json", run.info)
        if config.logging.plots:
            draw_plots(run.run_dir)
    best, metric = state.best_metrics, config.checkpoint.best_metric
    other = "".join(f"{key} {best[key]:.4f}, " for key in ("loss", "accuracy") if key != metric and key in best)
    say(
        f"done in {time.time() - run.started:.0f}s: best validation {metric} {best[metric]:.4f} "
        f"({other}step {state.best_step}) saved to {run.run_dir / 'best'}"
    )
    leave_together(run.accelerator)
    return 0


def leave_together(accelerator: Accelerator) -> None:
    """No process exits before the main one has written the run (or requeued the job): after a
    signal every process exits non-zero, and the first to go gets the others stopped (by torchrun,
    and by SLURM's --kill-on-bad-exit across nodes), main process included."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
