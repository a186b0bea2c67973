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

from trainer.checkpoint import CHECKPOINTS_DIR, find_resume_checkpoint
from trainer.collective import from_main, main_decides, say
from trainer.config import Config, to_yaml
from trainer.errors import UserError, check_writable_dir
from trainer.hardware import cpu_info, gpu_info
from trainer.model import recurrent_dtype
from trainer.plot import read_metrics
from trainer.preemption import slurm_job
from trainer.tokenizer import save_tokenizer

if TYPE_CHECKING:
    from trainer.train import Run


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

    main_decides(check)
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
    ``--overwrite``): nothing stale may pass for this run's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resumed_step is not None:
        truncate_metrics(run_dir / "metrics.jsonl", resumed_step)
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        for stale in ("best", "final", CHECKPOINTS_DIR):
            shutil.rmtree(run_dir / stale, ignore_errors=True)
    write_json(run_dir / "run_info.json", info)
    (run_dir / "config.yaml").write_text(to_yaml(config), encoding="utf-8")
    save_tokenizer(tokenizer, run_dir / "tokenizer.json")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to ``step`` (a resumed run logs the later ones again)."""
    if path.is_file():
        kept = [record for record in read_metrics(path) if record["step"] <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")


def write_json(path: Path, obj: dict) -> None:
    """Atomically: a kill while writing leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
