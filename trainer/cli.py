"""Train a sentiment classifier: ``python -m trainer [--config PRESET|FILE] [--section.key=value ...]``.

    # CPU or one GPU (built-in data, the `default` preset)
    accelerate launch -m trainer
    # IMDB from the Hugging Face Hub, 8 GPUs, bf16
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 -m trainer --config imdb
    # local files
    accelerate launch -m trainer --data.train_files=train.csv.gz --data.validation_files=val.csv
    # several CPU processes (a real gloo process group)
    accelerate launch --config_file accelerate_configs/cpu_multi.yaml --num_processes 2 -m trainer
    # pre-train on the training and unlabeled texts, then fine-tune (the imdb preset's pretrain.stage)
    accelerate launch -m trainer --config imdb --data.train_files=train.csv.gz --data.unlabeled_files=unsup.csv.gz
    # 4 nodes x 8 GPUs under SLURM
    sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sbatch --config imdb --train.output_dir=/shared/runs/imdb

Flags: --config NAME|PATH, --resume auto|PATH|none, --overwrite, --debug (tracebacks),
--help (every config key).
"""

from __future__ import annotations

import os
import sys

from trainer.config import config_reference, load_config, preset_names
from trainer.errors import UserError, exit_for, flush_stdout
from trainer.training import stage
from trainer.training.checkpoint import CHECKPOINTS_DIR, list_checkpoints
from trainer.training.collective import collective_failure, report
from trainer.training.preemption import Preemption
from trainer.training.run import Run, Task
from trainer.training.task import Classification, LanguageModelling
from trainer.training.train import fit, setup

DEFAULT_PRESET = "default"


def parse_cli(argv: list[str], usage: str | None = None) -> tuple[str, list[str], bool, bool]:
    """(preset, overrides, overwrite, debug); --help prints ``usage`` (this module's) and the reference, and exits."""
    preset, overrides, overwrite, debug = DEFAULT_PRESET, [], False, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(usage or __doc__)
            print(f"Presets: {', '.join(preset_names())}\n\nConfig keys (--section.key=value):")
            print(config_reference())
            flush_stdout()  # here, where a full disk or a closed pipe is one line, not at exit
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


def interrupted(run: Run | None, output_dir: str | None = None) -> str:
    """What Ctrl-C leaves behind, and how to go on from it (``output_dir``: the command's, where
    ``run`` is its pre-training stage)."""
    if run is None:
        return "interrupted before training started; nothing was trained"
    saved = list_checkpoints(run.run_dir / CHECKPOINTS_DIR)
    if not saved:
        return f"interrupted at step {run.state.step}, before the first checkpoint; start again to train"
    command = f"--resume auto --train.output_dir={output_dir or run.run_dir}"
    return f"interrupted at step {run.state.step}; resume from {saved[-1]} with {command}"


def main(argv: list[str] | None = None, task: Task | None = None, usage: str | None = None) -> int:
    """The command line of ``python -m trainer`` (a classifier), and of ``trainer.pretrain`` with its ``task``."""
    argv = sys.argv[1:] if argv is None else argv
    task = task or Classification()
    debug = "--debug" in argv
    runs: list[Run] = []  # the runs of this command, one per stage
    output_dir = None
    # From the start: a signal during setup (data preparation can take a while) is not lost; the
    # run stops after its first step.
    preemption = Preemption()
    preemption.install()
    try:
        try:
            preset, overrides, overwrite, debug = parse_cli(argv, usage)
            config = task.configure(load_config(preset, overrides))
        except UserError as exc:
            exc.on_every_rank = True  # every process parses the same command line
            raise
        config.train.overwrite = config.train.overwrite or overwrite
        stages = [(config, task)]
        if isinstance(task, Classification) and stage.wanted(config):
            first = stage.plan(config, preset)  # config now starts from the stage's language model
            output_dir = config.train.output_dir
            if first is not None:
                stages.insert(0, (first, LanguageModelling()))
        for stage_config, stage_task in stages:
            runs.append(setup(stage_config, preset, stage_task))
            code = fit(runs[-1], preemption)
            if code:  # stopped by a signal: --resume auto goes on from this stage
                return code
        return 0
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # the launcher's rank: no process group is needed to know it
            print(interrupted(runs[-1] if runs else None, output_dir), file=sys.stderr)
        return 130
    except Exception as exc:
        return exit_for(collective_failure(exc) or exc, debug, report)
    finally:
        preemption.uninstall()


if __name__ == "__main__":
    sys.exit(main())
