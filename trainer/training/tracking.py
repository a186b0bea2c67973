"""Experiment trackers through Accelerate (W&B, TensorBoard). W&B never prompts for a key."""

from __future__ import annotations

import importlib.util
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import UserError, check_choice, check_given

TRACKERS = ("wandb", "tensorboard", "none")
PROJECT_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")
WANDB_INIT_TIMEOUT_S = 30  # how long W&B may take to start a run online, unless WANDB_INIT_TIMEOUT says


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
        check_given("logging.project", self.project, "a project name")
        check_given("logging.run_name", self.run_name, "a run name, or null for the run folder's name")
        check_given("logging.entity", self.entity, "a W&B team or user, or null")
        # W&B refuses these in a project name; TensorBoard would make folders of them.
        if len(self.project) > 128 or any(c in self.project for c in PROJECT_FORBIDDEN):
            raise UserError(
                f"logging.project={self.project!r} must be at most 128 characters, none of them "
                f"{' '.join(PROJECT_FORBIDDEN)}"
            )
        for tag in self.tags:
            if not str(tag).strip() or len(str(tag)) > 64:  # W&B's limit
                raise UserError(f"logging.tags: {tag!r} is not a tag; each tag is 1 to 64 characters")


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
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(WANDB_INIT_TIMEOUT_S))  # wandb's own default waits 90 s
    kwargs = {"dir": str(run_dir), "name": config.run_name or run_dir.name, "tags": config.tags or None}
    if config.entity:
        kwargs["entity"] = config.entity
    return ["wandb"], {"wandb": kwargs}, note


def start_trackers(accelerator, project: str, hparams: dict, init_kwargs: dict) -> str | None:
    """``accelerator.init_trackers``, and the warning to show where W&B did not start online.

    A training run does not stop for its tracker: where W&B cannot be reached within
    ``WANDB_INIT_TIMEOUT`` seconds (or refuses the run), the run logs offline into its folder instead,
    to upload later with ``wandb sync``; losing hours of training to a tracker's outage is worse.
    """
    try:
        accelerator.init_trackers(project, config=hparams, init_kwargs=init_kwargs)
        return None
    except Exception as exc:
        from wandb.errors import CommError

        if "wandb" not in init_kwargs or not isinstance(exc, CommError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    accelerator.trackers.clear()  # the W&B tracker that did not start; init_trackers makes a new one
    offline = {**init_kwargs, "wandb": {**init_kwargs["wandb"], "mode": "offline"}}
    accelerator.init_trackers(project, config=hparams, init_kwargs=offline)
    folder = Path(accelerator.get_tracker("wandb", unwrap=True).dir).parent
    return (
        f"warning: W&B could not be reached ({reason}); logging offline to {folder} instead: upload it later "
        f"with `wandb sync {folder}` (WANDB_MODE=offline skips the {os.environ.get('WANDB_INIT_TIMEOUT')} s wait)"
    )


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
