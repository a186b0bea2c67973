"""The pre-training stage of a classifier run (``pretrain.stage``): before the classifier trains,
its encoder is pre-trained as a language model in ``OUTPUT_DIR/pretrain`` (on the training texts
and ``--data.unlabeled_files``), and the classifier starts from ``OUTPUT_DIR/pretrain/best``.

The stage is a run of its own (``python -m trainer.pretrain``'s, with the classifier's config), so
it checkpoints, resumes (``--resume auto`` goes on with whichever stage was interrupted), stops on
signals and logs as any run does. A finished stage is not run again: the classifier starts from
it, unless ``--overwrite`` asks to start over. A finished stage made with other settings (data,
tokenizer, architecture, pre-training) is refused rather than silently reused.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import yaml

from trainer.config import Config, to_yaml
from trainer.errors import UserError, check_writable_dir, inside
from trainer.training.collective import from_main, main_decides, say
from trainer.training.processes import start_processes
from trainer.training.rundir import STAGE_DIR, read_run_info, run_dir_problem
from trainer.training.task import LanguageModelling

# What the language model is made of: a finished stage made with other values of these is not
# reused (a changed architecture is refused by --model.init_from's own check).
STAGE_KEYS = ("data", "tokenizer", "pretrain")
NOT_COMPARED = ("data.validation_files", "pretrain.stage", "pretrain.finetune_lr_scale")


def wanted(config: Config) -> bool:
    """Whether this classifier run pre-trains first: its ``pretrain.stage`` asks for it, and no
    ``--model.init_from`` gives a model to start from already."""
    stage = config.pretrain.stage
    if config.model.init_from or stage == "never":
        return False
    return stage == "always" or bool(config.data.unlabeled_files)


def plan(config: Config, preset: str) -> Config | None:
    """Prepare ``config`` (the classifier's) to start from the stage, and return the stage's own
    config, or None where the stage has finished and is reused. Every process gets the main one's
    decision; the classifier's run folder is checked first, so that a run that would be refused
    is refused before pre-training, not after it."""
    start_processes(config)  # the process group: the run folder is agreed on it
    if config.train.output_dir is None:
        name = f"runs/{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        config.train.output_dir = from_main(name)  # processes may start in different seconds
    run_dir = Path(config.train.output_dir)
    folder = run_dir / STAGE_DIR
    stage = stage_config(config, folder)

    def decide() -> bool:
        check_writable_dir(run_dir, "--train.output_dir")
        if problem := run_dir_problem(run_dir, config):
            raise UserError(problem)
        return finished(folder, stage)

    reuse = main_decides(decide)
    config.model.init_from = str(folder / "best")
    if (scale := config.pretrain.finetune_lr_scale) is not None:  # ULMFiT's discriminative rates
        config.optim.embedding_lr_scale = config.optim.recurrent_lr_scale = scale
    if config.checkpoint.resume not in ("auto", "none") and inside(config.checkpoint.resume, folder):
        config.checkpoint.resume = "none"  # a checkpoint of the stage: the classifier starts afresh
    if reuse:
        say(f"pre-training stage: {folder} has finished; the classifier starts from {folder / 'best'}")
        return None
    say(f"pre-training stage: the language model first, in {folder}; then the classifier, in {run_dir}")
    return stage


def stage_config(config: Config, folder: Path) -> Config:
    """The classifier's config for its language model: the same data (so the same carved
    validation split, which the language model never reads), tokenizer and architecture."""
    stage = LanguageModelling().configure(copy.deepcopy(config))
    stage.train.output_dir = str(folder)
    run_name = config.logging.run_name or folder.parent.resolve().name  # a tracker's name, as the classifier's run
    stage.logging.run_name = f"{run_name}-pretrain"
    resume = config.checkpoint.resume
    if resume not in ("auto", "none") and not inside(resume, folder):
        stage.checkpoint.resume = "none"  # a classifier's checkpoint: the stage must have finished
    return stage


def finished(folder: Path, stage: Config) -> bool:
    """Whether ``folder`` holds a finished language model of ``stage``'s settings, to start from
    (not with ``--overwrite``, which pre-trains again)."""
    info = read_run_info(folder)
    if stage.train.overwrite or "final_step" not in info or not (folder / "best" / "config.json").is_file():
        return False
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise UserError(
            f"{folder} has finished but its config.yaml is missing or unreadable, so its settings are unknown; "
            "pass --overwrite to pre-train again, or choose another --train.output_dir"
        )
    now = yaml.safe_load(to_yaml(stage))  # the same reading as the saved file's
    changed = [key for key in compared_keys(now) if lookup(saved, key) != lookup(now, key)]
    if changed:
        what = ", ".join(f"{key} {lookup(saved, key)!r} (this run: {lookup(now, key)!r})" for key in changed[:3])
        raise UserError(
            f"{folder} holds a language model pre-trained with other settings: {what}; pass --overwrite to "
            "pre-train again, or choose another --train.output_dir"
        )
    return True


def compared_keys(config: dict) -> list[str]:
    """The dotted keys of ``STAGE_KEYS`` in ``config`` (sections expanded), less ``NOT_COMPARED``."""
    keys = []
    for key in STAGE_KEYS:
        value = lookup(config, key)
        keys += [f"{key}.{name}" for name in value] if isinstance(value, dict) else [key]
    return [key for key in keys if key not in NOT_COMPARED]


def lookup(config: dict, key: str) -> object:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config
