"""Training checkpoints: full state, atomic, resumable.

A checkpoint ``checkpoints/step-00000100/`` holds what ``Accelerator.save_state`` writes (model
weights as safetensors, each tensor whole even where cuDNN keeps them as views of one buffer;
optimizer, scheduler, gradient scaler, every rank's RNG states) plus our ``train_state.json`` and
a ``manifest.json`` of every file's size and SHA-256. It is written into a temporary folder and
renamed into place once every rank's part is there, so a kill during a save leaves the previous
checkpoint as it was. On resume each file is checked against the manifest, and the pickled ones
are loaded with ``weights_only`` (plain tensors and containers) before Accelerate sees them: a
checkpoint that would run code when unpickled is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from accelerate.utils import load as accelerate_load

from trainer.errors import MAX_COUNT, UserError, check_choice, check_given, check_kind, check_range, write_error
from trainer.inference.folder import sha256_file
from trainer.metrics import METRIC_MODES

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "train_state.json"
MANIFEST_NAME = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")  # as the Hub spells them: apache-2.0, cc-by-nc-4.0, other


@dataclass
class CheckpointConfig:
    best_metric: str = field(
        default="loss", metadata={"help": "validation metric that picks best/: loss, accuracy, f1, roc_auc, ..."}
    )
    save_best: bool = field(default=True, metadata={"help": "export the best model to best/"})
    save_final: bool = field(default=True, metadata={"help": "export the last model to final/"})
    save_every_steps: int = field(
        default=0, metadata={"help": "also save a full checkpoint every N optimizer steps (0 = epoch ends only)"}
    )
    keep_last: int = field(default=2, metadata={"help": "full checkpoints kept, besides the best one"})
    resume: str = field(
        default="none", metadata={"help": "none, auto (newest complete checkpoint in the run folder) or a path"}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "the exported models' license, as a Hub license id (apache-2.0, mit, ...): in their cards"},
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "stop after N validations without improvement (0 = never)"}
    )
    mistakes: int = field(
        default=20,
        metadata={
            "help": "at the end of training, the N validation examples the exported model (best/, else final/) "
            "got wrong most confidently: mistakes.jsonl and mistakes.html in the run folder (0 = none)"
        },
    )

    def __post_init__(self) -> None:
        check_choice("checkpoint.best_metric", self.best_metric, METRIC_MODES)
        check_range("checkpoint.save_every_steps", self.save_every_steps, 0, MAX_COUNT)
        check_range("checkpoint.keep_last", self.keep_last, 1, MAX_COUNT)
        check_range("checkpoint.early_stopping_patience", self.early_stopping_patience, 0, MAX_COUNT)
        check_range("checkpoint.mistakes", self.mistakes, 0, MAX_COUNT)
        check_given("checkpoint.resume", self.resume, "none, auto or a checkpoint folder")
        if self.license is not None and not LICENSE_ID.fullmatch(self.license):
            raise UserError(
                f"checkpoint.license={self.license!r} is not a Hub license id; give one such as apache-2.0, mit, "
                "cc-by-4.0 or other (lowercase, no spaces), or null"
            )


@dataclass
class TrainState:
    """Where training stands; saved as JSON in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    batches_in_epoch: int = 0  # this process's batches of that epoch already consumed
    best_metrics: dict | None = None  # validation metrics of the best model so far
    best_step: int | None = None
    evals_without_improvement: int = 0
    tracker_run_id: str | None = None  # the W&B run to keep logging to
    # What the data position means: a resume with other values would skip the wrong examples.
    setup: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(accelerator, run_dir: Path, state: TrainState, keep_last: int) -> Path:
    """Save the full training state atomically; call on every process. Returns the folder."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / step_dir_name(state.step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(give_views_their_own_storage)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)  # every rank writes its RNG states
    except Exception as exc:
        abandon_save(exc, tmp, final, accelerator.is_main_process)
    finally:
        hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        saved = {**state.state_dict(), "save_sequence": next_save_sequence(root)}
        try:
            (tmp / STATE_NAME).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
            # The manifest goes last: a folder without one was not finished.
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        except Exception as exc:
            abandon_save(exc, tmp, final, is_main=True)
        old = root / f".old-{final.name}"
        if final.exists():  # the same step saved again (an epoch end right after a step save)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)  # out of the way, not deleted, until the new one is in place
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        prune_checkpoints(root, keep_last, state.best_step)
    accelerator.wait_for_everyone()
    return final


def abandon_save(exc: Exception, tmp: Path, final: Path, is_main: bool) -> NoReturn:
    """A save that failed (a full disk): its temporary folder is removed, so that the previous
    checkpoint stays the newest and the space is given back, and a file-system error is raised
    naming the checkpoint (``write_error``: one line)."""
    error = write_error(exc, final)  # while the disk is still full
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if error is None:
        raise exc
    raise error from exc


def give_views_their_own_storage(models, weights: list[dict], output_dir: str) -> None:
    """Copy the tensors of a state dict that share their memory with others, before it is saved.

    On a GPU, cuDNN holds all of a recurrent layer's weights as views into one buffer. safetensors
    cannot store tensors that share memory, so accelerate would keep one of them and silently drop
    the rest: a checkpoint missing most recurrent weights, which no resume could load.
    """
    import torch

    for state in weights:
        storages = Counter(t.untyped_storage().data_ptr() for t in state.values() if isinstance(t, torch.Tensor))
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor) and storages[tensor.untyped_storage().data_ptr()] > 1:
                state[name] = tensor.clone()


def load_weights_in_place(models: list, input_dir: str) -> None:
    """Load the models' weights by copying into the tensors they have (accelerate's load pre-hook,
    which then leaves them out of its own loading).

    safetensors' ``load_model``, which accelerate would use, refuses a model whose weights share
    memory, as cuDNN's recurrent layers do on a GPU; replacing their memory instead would undo
    cuDNN's layout and, under DDP, detach them from its gradient hooks.
    """
    from safetensors.torch import load_file

    for index, model in enumerate(models):
        name = f"model{f'_{index}' if index else ''}.safetensors"
        model.load_state_dict(load_file(Path(input_dir) / name))  # strict: every tensor, each shape
    models.clear()


def save_sequence(path: Path) -> int:
    """The order in which checkpoint ``path`` was saved among the run's checkpoints (0: unknown).

    Saved in its train_state.json, so copies (``cp -r``, rsync without ``-t``) keep it, where
    file modification times would not.
    """
    try:
        value = json.loads((path / STATE_NAME).read_text(encoding="utf-8")).get("save_sequence", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def next_save_sequence(root: Path) -> int:
    return 1 + max((save_sequence(path) for path in list_checkpoints(root)), default=0)


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders, oldest first in the order they were saved.

    Save order, not step number: after resuming from an older checkpoint, the new saves are the
    current ones, even where folders of higher steps remain from the abandoned continuation.
    """
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]

    def order(path: Path) -> tuple[int, float, str]:
        # Checkpoints from before the save sequence (0) come first, among themselves by completion time.
        sequence = save_sequence(path)
        manifest = path / MANIFEST_NAME
        completed = manifest.stat().st_mtime if not sequence and manifest.is_file() else 0.0
        return (sequence, completed, path.name)

    return sorted(folders, key=order)


def prune_checkpoints(root: Path, keep_last: int, best_step: int | None) -> None:
    keep = {p.name for p in list_checkpoints(root)[-keep_last:]}
    if best_step is not None:
        keep.add(step_dir_name(best_step))
    for path in list_checkpoints(root):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def check_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return "incomplete (no manifest)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable manifest"
    well_formed = isinstance(manifest, dict) and all(
        isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
        for v in manifest.values()
    )
    if not well_formed:
        return "malformed manifest"
    required = {STATE_NAME, "model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    if not required <= set(manifest):
        return f"incomplete (manifest lacks {', '.join(sorted(required - set(manifest)))})"
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, {expected['bytes']} expected"
        if sha256_file(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def refuse_unsafe_pickles(path: Path) -> None:
    """Load every pickled file with weights_only first: one that needs arbitrary code is refused."""
    for file in sorted(path.glob("*")):
        if file.suffix in (".bin", ".pkl", ".pt"):
            try:
                accelerate_load(file, map_location="cpu")
            except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
                raise UserError(
                    f"refusing checkpoint {path}: {file.name} holds pickled objects other than tensors and plain "
                    "data, which could run code when loaded; it was not loaded (use a checkpoint you trust)"
                ) from exc


def find_resume_checkpoint(run_dir: Path, resume: str, report) -> Path | None:
    """The checkpoint to resume from: ``auto`` takes the newest intact one, reporting skipped ones
    (None if there is none)."""
    if resume == "none":
        return None
    if resume != "auto":
        path = Path(resume)
        check_kind(path, "folder", "a checkpoint folder (checkpoints/step-...), auto or none", "checkpoint")
        if not path.is_dir():
            raise UserError(f"checkpoint {path} does not exist; give a checkpoint folder, auto or none")
        problem = check_checkpoint(path)
        if problem:
            raise UserError(f"checkpoint {path} cannot be used: {problem}")
        return path
    for path in reversed(list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR)):
        problem = check_checkpoint(path)
        if problem is None:
            return path
        report(
            f"checkpoint {path} is {problem if problem.startswith('incomplete') else 'corrupted: ' + problem}; "
            "trying the one before"
        )
    return None


# How the global batch is split: a checkpoint may resume with another split of the same global batch.
SPLIT_KEYS = ("world_size", "batch_size", "gradient_accumulation_steps")


def global_batch_problem(path: Path, saved: dict, current: dict) -> str | None:
    """Why a checkpoint saved with ``saved`` (its setup) cannot go on with ``current``'s split, or None.

    The examples of every step depend on the global batch only (batch size x processes x
    accumulation), so any split of the same global batch continues exactly where the run stopped.
    """
    n, b, a = (saved[k] for k in SPLIT_KEYS)
    n2, b2, a2 = (current[k] for k in SPLIT_KEYS)
    old, new = b * n * a, b2 * n2 * a2
    if old == new:
        return None
    fixes = []
    if old % (b2 * n2) == 0:
        fixes.append(f"--train.gradient_accumulation_steps={old // (b2 * n2)}")
    if old % (n2 * a2) == 0:
        fixes.append(f"--train.batch_size={old // (n2 * a2)}")
    keep = (
        f"resume with {' or '.join(fixes)} (or --train.global_batch_size={old}, which derives the accumulation)"
        if fixes
        else f"resume on a number of processes that divides {old}"
    )
    return (
        f"checkpoint {path} was saved with a global batch of {old} (batch size {b} x {n} process(es) x {a} "
        f"accumulation step(s)); this run's is {new} ({b2} x {n2} x {a2}): {keep}"
    )


def load_checkpoint(accelerator, path: Path, state: TrainState) -> dict:
    """Restore everything ``save_checkpoint`` saved; call on every process. Returns the checkpoint's setup.

    ``state.setup`` must hold the current run's setup: a checkpoint made with another one is refused,
    except for the split of the global batch over processes and accumulation steps, which may change
    while the global batch stays. Processes the checkpoint had no RNG state for (it was saved on
    fewer) get theirs from the seed, the step and their index.
    """
    saved = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    saved.pop("save_sequence", None)
    # Checkpoints older than train.ema_decay, the lr scales, data.sampler or the adversarial losses'
    # epsilons were made without them.
    older = {
        "ema_decay": 0.0,
        "embedding_lr_scale": 1.0,
        "recurrent_lr_scale": 1.0,
        "task": "classification",
        "sampler": "random",
        "precision": state.setup.get("precision"),  # not recorded then: taken to be this run's
        "adversarial_epsilon": state.setup.get("adversarial_epsilon"),  # nor these: the same
        "vat_epsilon": state.setup.get("vat_epsilon"),
    }
    saved_setup = {**older, **saved.get("setup", {})}
    if "steps_per_epoch" not in saved_setup:  # older checkpoints: the same split was required
        saved_setup["steps_per_epoch"] = state.setup.get("steps_per_epoch")
    derived = (*SPLIT_KEYS, "steps_per_epoch")  # the split of the global batch, and what follows from it
    changed = {
        k: (v, state.setup.get(k)) for k, v in saved_setup.items() if k not in derived and state.setup.get(k) != v
    }
    if changed:
        what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        flag = f" (--train.mixed_precision={changed['precision'][0]})" if "precision" in changed else ""
        raise UserError(
            f"checkpoint {path} was made with another setup ({what}); resume with the same one{flag}",
            on_every_rank=True,
        )
    problem = global_batch_problem(path, saved_setup, state.setup)
    if not problem and saved_setup["steps_per_epoch"] != state.setup.get("steps_per_epoch"):
        problem = (
            f"checkpoint {path} was saved with {saved_setup['steps_per_epoch']} steps per epoch and this run has "
            f"{state.setup.get('steps_per_epoch')}: the examples left over after the last full global batch are "
            f"fewer than one of the two runs' processes, so they join the step before in one run only; resume on "
            f"{saved_setup['world_size']} process(es)"
        )
    if problem:
        raise UserError(problem, on_every_rank=True)
    saved_processes = saved_setup["world_size"]
    has_rng = (path / f"random_states_{accelerator.process_index}.pkl").is_file()
    if not has_rng and accelerator.process_index < saved_processes:
        raise UserError(f"checkpoint {path} has no RNG state for process {accelerator.process_index}")
    refuse_unsafe_pickles(path)
    hook = accelerator.register_load_state_pre_hook(load_weights_in_place)
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError) as exc:  # tensors of other shapes, missing keys
        first = " ".join(str(exc).split())[:200]
        raise UserError(
            f"checkpoint {path} does not fit this model ({first}); resume with the settings it was made with"
        ) from exc
    finally:
        hook.remove()
    if not has_rng:  # a process the checkpoint did not have
        seed_everything(saved_setup["seed"] + 1_000_003 * saved["step"] + accelerator.process_index)
    # Saved at an optimizer step: the accumulation counter starts a new step, whatever it was.
    accelerator.step = 0
    current = state.setup
    state.load_state_dict(saved)
    state.setup = current
    # The data position in this run's micro-batches per process: steps done x accumulation. The
    # epoch's last step may have had fewer micro-batches than the accumulation: it counts whole.
    steps_in_epoch = -(-saved["batches_in_epoch"] // saved_setup["gradient_accumulation_steps"])
    state.batches_in_epoch = steps_in_epoch * current["gradient_accumulation_steps"]
    return saved_setup


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (``accelerate.utils.set_seed`` on the default device)."""
    from accelerate.utils import set_seed

    set_seed(seed % 2**32)
