"""Experiment trackers through Accelerate (W&B, TensorBoard). W&B never prompts for a key."""

from __future__ import annotations

import importlib.util
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserError, check_choice

TRACKERS = ("wandb", "tensorboard", "none")


@dataclass
class LoggingConfig:
    tracker: str = field(default="wandb", metadata={"help": "wandb, tensorboard or none"})
    project: str = field(default="sentiment-trainer", metadata={"help": "W&B project / TensorBoard run group"})
    run_name: str | None = field(default=None, metadata={"help": "tracker run name (default: run folder name)"})
    entity: str | None = field(default=None, metadata={"help": "W&B entity (team or user)"})
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B tags"})
    plots: bool = field(default=True, metadata={"help": "draw PNG curves into <run>/plots at the end of training"})

    def __post_init__(self) -> None:
        check_choice("logging.tracker", self.tracker, TRACKERS)


def wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` stores it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("//")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def tracker_resume_kwargs(init_kwargs: dict, run_id: str | None) -> dict:
    """Keep logging to the interrupted run's W&B run."""
    if "wandb" in init_kwargs and run_id:
        return {**init_kwargs, "wandb": {**init_kwargs["wandb"], "id": run_id, "resume": "allow"}}
    return init_kwargs


def tracker_setup(config: LoggingConfig, run_dir: Path) -> tuple[list[str], dict, str | None]:
    """(log_with, init_kwargs, note) for ``Accelerator`` / ``init_trackers``.

    With no W&B credentials and no explicit ``WANDB_MODE``, W&B runs offline into
    ``<run_dir>/wandb`` (sync later with ``wandb sync``) instead of prompting.
    """
    if config.tracker == "none":
        return [], {}, None
    if config.tracker == "tensorboard":
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("logging.tracker=tensorboard needs the tensorboard package: pip install tensorboard")
        return ["tensorboard"], {}, None
    note = None
    if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"
        note = f"W&B: no API key found, logging offline to {run_dir / 'wandb'} (upload later with `wandb sync`)"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    kwargs = {"dir": str(run_dir), "name": config.run_name or run_dir.name, "tags": config.tags or None}
    if config.entity:
        kwargs["entity"] = config.entity
    return ["wandb"], {"wandb": kwargs}, note


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
