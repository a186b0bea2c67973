"""The run folder: choosing it, refusing to train into what it should not, what the run writes
first (run_info.json, config.yaml, the tokenizer), and where a resume starts."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import Accelerator
from tokenizers import Tokenizer

from trainer.config import Config, to_yaml
from trainer.data.tokenizer import save_tokenizer
from trainer.errors import UserError, check_writable_dir, inside, write_text
from trainer.hardware import cpu_info, gpu_info
from trainer.models.sentiment import recurrent_dtype
from trainer.plot import read_metrics
from trainer.training.checkpoint import CHECKPOINTS_DIR, find_resume_checkpoint
from trainer.training.collective import from_main, main_decides, say
from trainer.training.preemption import slurm_job

if TYPE_CHECKING:
    from trainer.training.run import Run


def resolve_run_dir(config: Config, preset: str) -> Path:
    """The run folder, the same on every process; refuses a non-empty one without --overwrite."""
    name = config.train.output_dir
    if name is None:
        name = f"runs/{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name = from_main(name)  # processes may start in different seconds
    run_dir = Path(name)

    def check() -> None:
        check_writable_dir(run_dir, "--train.output_dir")
        problem = run_dir_problem(run_dir, config)
        if problem:
            raise UserError(problem)
        if run_dir.is_dir():  # held from now on; a missing folder is locked when the run makes it
            lock_run_folder(run_dir)

    main_decides(check)
    return run_dir


def run_dir_problem(run_dir: Path, config: Config) -> str | None:
    """Why the run may not write into ``run_dir``, or None.

    An empty or missing folder is always fine. A folder of other files (no run_info.json, which
    every run writes first) is never trained into, whatever the options: ``--overwrite`` replaces a
    run, never files this trainer did not write. A run folder needs ``--resume`` or ``--overwrite``.
    """
    if not run_dir.is_dir() or not any(p.name != LOCK_NAME and not is_stage(p) for p in run_dir.iterdir()):
        return None
    if not (run_dir / "run_info.json").is_file():
        return (
            f"{run_dir} holds files but no run of this trainer (no run_info.json); a run never writes into a "
            "folder of other files (--overwrite replaces a run, not them): choose another --train.output_dir"
        )
    if problem := input_in_the_way(run_dir, config):
        return problem
    if config.train.overwrite:
        return None
    if config.checkpoint.resume == "none":
        return (
            f"run folder {run_dir} is not empty; resume it with --resume auto, pass --overwrite to "
            "start over in it, or choose another --train.output_dir"
        )
    return None


STAGE_DIR = "pretrain"  # a classifier run's pre-training stage (trainer.training.stage)


def is_stage(path: Path) -> bool:
    """Whether ``path`` is a run folder's pre-training stage (``trainer.training.stage``): its
    ``pretrain/``, empty or a language model's run folder. The classifier's run starts beside it."""
    if path.name != STAGE_DIR or not path.is_dir():
        return False
    if not any(p.name != LOCK_NAME for p in path.iterdir()):
        return True
    return read_run_info(path).get("task") == "language-model"


RUN_OUTPUTS = ("best", "final", CHECKPOINTS_DIR, "metrics.jsonl", "run_info.json", "config.yaml", "tokenizer.json")


def input_in_the_way(run_dir: Path, config: Config) -> str | None:
    """An input of the run (data, tokenizer, a model to start from) that lies in what the run
    rewrites or removes in ``run_dir`` (its best/, final/, checkpoints, logs): refused, or the run
    would destroy what it reads."""
    data, model = config.data, config.model
    inputs = [("--data.train_files", p) for p in data.train_files or []]
    inputs += [("--data.validation_files", p) for p in data.validation_files or []]
    inputs += [("--data.unlabeled_files", p) for p in data.unlabeled_files or []]
    inputs += [("--tokenizer.path", config.tokenizer.path), ("--model.init_from", model.init_from)]
    inputs += [("--model.pretrained_embeddings", model.pretrained_embeddings)]
    for option, path in inputs:
        for name in RUN_OUTPUTS:
            if path and os.path.exists(path) and inside(path, run_dir / name):
                return (
                    f"{option}={path} lies in {run_dir / name}, which this run rewrites; copy it elsewhere, or "
                    "choose another --train.output_dir"
                )
    return None


LOCK_NAME = ".trainer.lock"
_LOCKS: dict[str, object] = {}  # run folder -> its open lock file, held until the process ends


def lock_run_folder(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock (made with the folder where missing) until this process ends, however
    it ends: a second training into the same folder, on this machine or on another one sharing it,
    stops instead of interleaving its files with this one's."""
    import fcntl

    key = os.path.realpath(run_dir)
    if key in _LOCKS:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK_NAME, "a")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(
            f"another training is writing into {run_dir} (it holds {run_dir / LOCK_NAME}); wait for it to end, "
            "or choose another --train.output_dir"
        ) from None
    _LOCKS[key] = lock


def read_run_info(run_dir: Path) -> dict:
    """The run's run_info.json, or {} where there is none or it is unreadable (a run killed while writing it)."""
    try:
        info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def choose_checkpoint(config: Config, run_dir: Path, report) -> str | None:
    """The checkpoint to resume from, or None; a ``UserError`` where the run must not go on."""
    mode, overwrite = config.checkpoint.resume, config.train.overwrite
    if mode == "auto" and not overwrite and "final_step" in read_run_info(run_dir):
        raise UserError(
            f"run {run_dir} has already finished: nothing to resume. Choose another --train.output_dir, "
            "or pass --overwrite to start over in it"
        )
    path = find_resume_checkpoint(run_dir, mode, report)
    if path is None and mode == "auto":
        has_outputs = any((run_dir / name).exists() for name in ("best", "final", CHECKPOINTS_DIR))
        if has_outputs and not overwrite:
            raise UserError(
                f"run folder {run_dir} holds results but no intact checkpoint to resume from; pass --overwrite "
                "to start over in it, or choose another --train.output_dir"
            )
        report(f"no checkpoint to resume from in {run_dir / CHECKPOINTS_DIR}: starting from scratch")
    return str(path) if path else None


def start_run_folder(run_dir: Path, info: dict, config: Config, tokenizer: Tokenizer, resumed_step: int | None):
    """What a run writes first (main process): run_info.json, which makes the folder this run's
    (``--resume auto`` may continue it), config.yaml and the tokenizer. A resumed run drops what the
    interrupted one logged after its checkpoint; a new one removes an earlier run's outputs (with
    ``--overwrite``): nothing stale may pass for this run's.

    A folder missing or empty when the run began is locked now, and must still be empty: another
    training may have started in it meanwhile."""
    was_locked = os.path.realpath(run_dir) in _LOCKS
    lock_run_folder(run_dir)
    if not was_locked and any(p.name != LOCK_NAME and not is_stage(p) for p in run_dir.iterdir()):
        raise UserError(
            f"another training wrote into {run_dir} while this one prepared its data; choose another --train.output_dir"
        )
    if resumed_step is not None:
        truncate_metrics(run_dir / "metrics.jsonl", resumed_step)
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for stale in ("best", "final", CHECKPOINTS_DIR):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    write_json(run_dir / "run_info.json", info)
    write_text(run_dir / "config.yaml", to_yaml(config))
    save_tokenizer(tokenizer, run_dir / "tokenizer.json")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run logs the later ones again)."""
    if path.is_file():
        kept = [record for record in read_metrics(path) if record["step"] <= step]
        write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def write_json(path: Path, obj: dict) -> None:
    """Atomically: a kill or a full disk while writing leaves the previous file."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def run_info(config: Config, accelerator: Accelerator, data_stats: dict, precision_reason: str) -> dict:
    """What run_info.json says about the run: processes, device, precision and why, the CPU, the
    global batch, versions, the commit and the command, the data's statistics."""
    import accelerate
    import datasets
    import tokenizers
    import torch

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
        "recurrent_dtype": str(recurrent_dtype(accelerator.device.type, accelerator.mixed_precision)),
        "tf32": config.train.tf32 and accelerator.device.type == "cuda",
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
    if gpu := gpu_info(accelerator.device):
        place["gpu"] = gpu
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


def announce(run: Run, tracker_note: str | None) -> None:
    """The set-up in a few lines: the data, the run, the tracker, a validation overlap."""
    data, accelerator = run.data, run.accelerator
    cached = "from cache" if data.stats["train_tokens_cache_hit"] else "tokenised"
    dropped = sum(v for k, v in data.stats.items() if k.endswith("_dropped_empty"))
    say(
        f"data: {len(data.train)} train / {len(data.validation)} validation examples "
        f"({data.stats['load_seconds']:.1f}s to load, {cached} in {data.stats['tokenize_seconds']:.1f}s)"
        + (f"; dropped {dropped} rows with an empty text or label" if dropped else "")
    )
    say(
        f"run folder {run.run_dir} | {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"precision {accelerator.mixed_precision} | {len(data.label_map.names)} labels, "
        f"vocabulary {data.tokenizer.get_vocab_size()} | {run.info['num_parameters']:,} parameters | "
        f"{run.total_steps} steps"
    )
    if tracker_note:
        say(tracker_note)
    if shared := data.stats["validation_rows_in_train"]:
        say(overlap_warning(run.config, shared, len(data.validation)))
    if missing := data.stats.get("validation_classes_missing"):
        say(
            f"warning: the validation split has no rows of class {', '.join(map(repr, missing))}, so its accuracy "
            "and F1 say nothing about it and the best checkpoint is chosen without it; give validation data with "
            "every class (--data.validation_files), or more rows of it"
        )


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
