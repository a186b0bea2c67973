"""The top-level config, presets and command-line overrides.

Precedence: dataclass defaults < preset or YAML file (``--config``) < ``--section.key=value``.
Merging and type conversion go through OmegaConf structured configs; each module's
``__post_init__`` checks values. Any problem is a one-line ``UserError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from trainer.data.config import DataConfig
from trainer.data.tokenizer import TokenizerConfig
from trainer.errors import (
    MAX_COUNT,
    MAX_SEED,
    UserError,
    check_choice,
    check_given,
    check_kind,
    check_range,
    write_text,
)
from trainer.models.language import PretrainConfig
from trainer.models.sentiment import ModelConfig
from trainer.training.checkpoint import CheckpointConfig
from trainer.training.optim import OptimConfig
from trainer.training.tracking import LoggingConfig

PRESETS_DIR = Path(__file__).parent / "presets"
PRECISIONS = ("no", "fp16", "bf16", "auto")
VAT_TEXTS = ("auto", "unlabeled", "training")
MAX_BATCH = 1 << 20  # examples per micro-step


@dataclass
class TrainConfig:
    output_dir: str | None = field(default=None, metadata={"help": "run folder (default runs/<preset>-<date>-<time>)"})
    overwrite: bool = field(default=False, metadata={"help": "allow writing into a non-empty run folder"})
    epochs: int = field(default=5, metadata={"help": "passes over the training data"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "examples per process per micro-step"})
    eval_batch_size: int | None = field(default=None, metadata={"help": "validation batch size (default 2x)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per optimizer step; when set, gradient_accumulation_steps is derived from it "
            "(global / (batch_size x processes)), so a run keeps it, and resumes, on any process count"
        },
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "no, fp16, bf16, or auto: bf16 where the hardware runs it natively (a GPU with bf16, a CPU "
            "with AVX512-BF16/AMX), fp16 on older GPUs, else no; the accelerate config's mixed_precision is not used"
        },
    )
    seed: int = field(default=42, metadata={"help": "seed of weights, dropout and batch order"})
    eval_every_steps: int = field(default=0, metadata={"help": "also validate every N optimizer steps (0 = off)"})
    log_every_steps: int = field(default=10, metadata={"help": "log training metrics every N optimizer steps"})
    cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    tf32: bool = field(
        default=True,
        metadata={
            "help": "on a GPU, float32 matrix products and cuDNN's layers in TF32 (Ampere and newer: several "
            "times faster, 10-bit mantissa); false keeps full float32"
        },
    )
    process_timeout_minutes: float = field(
        default=60.0,
        metadata={
            "help": "how long a process waits for the others at a collective step (the main process preparing a "
            "large corpus, a slow checkpoint) before the run fails; NCCL's own default is 10"
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "validate and export an exponential moving average of the weights, updated every optimizer "
            "step with this decay (e.g. 0.999; 0 = off: the trained weights themselves)"
        },
    )
    class_weights: str = field(
        default="none",
        metadata={
            "help": "weigh each example's training loss by its class: none, balanced (inverse frequency in the "
            "training split) or one weight per class, in label order (1,9)"
        },
    )
    adversarial_epsilon: float = field(
        default=0.0,
        metadata={
            "help": "adversarial training: add the loss on embeddings moved by this L2 norm per sequence along "
            "the loss gradient (Miyato et al. 2017; about 2x the compute per step; 0 = off)"
        },
    )
    vat_epsilon: float = field(
        default=0.0,
        metadata={
            "help": "virtual adversarial training: add the divergence between the predictions on each text and on "
            "its embeddings moved by this L2 norm per sequence where they change the predictions most (Miyato et "
            "al. 2017), on the texts train.vat_texts names; 0 = off"
        },
    )
    vat_texts: str = field(
        default="auto",
        metadata={
            "help": "the texts of virtual adversarial training: unlabeled (as many texts of --data.unlabeled_files "
            "as a batch holds, at each step; off without them), training (the training batch itself) or auto "
            "(unlabeled where given, else training)"
        },
    )

    def __post_init__(self) -> None:
        if self.mixed_precision == "False":  # `mixed_precision: no` unquoted in a YAML file
            self.mixed_precision = "no"
        check_choice("train.mixed_precision", self.mixed_precision, PRECISIONS)
        check_choice("train.vat_texts", self.vat_texts, VAT_TEXTS)
        for key in ("epochs", "gradient_accumulation_steps", "log_every_steps"):
            check_range(f"train.{key}", getattr(self, key), 1, MAX_COUNT)
        check_range("train.batch_size", self.batch_size, 1, MAX_BATCH)
        for key, high in (("max_steps", MAX_COUNT), ("eval_batch_size", MAX_BATCH), ("global_batch_size", MAX_COUNT)):
            if getattr(self, key) is not None:
                check_range(f"train.{key}", getattr(self, key), 1, high)
        check_range("train.eval_every_steps", self.eval_every_steps, 0, MAX_COUNT)
        check_range("train.seed", self.seed, 0, MAX_SEED)
        check_given("train.output_dir", self.output_dir, "a folder, or null for runs/<preset>-<date>-<time>")
        check_range("train.process_timeout_minutes", self.process_timeout_minutes, 0.01, 7 * 24 * 60.0)
        check_range("train.ema_decay", self.ema_decay, 0.0, 0.999999)
        check_range("train.adversarial_epsilon", self.adversarial_epsilon, 0.0)
        check_range("train.vat_epsilon", self.vat_epsilon, 0.0)
        self.class_weights = str(self.class_weights).strip()
        if self.class_weights not in ("none", "balanced"):
            try:
                weights = [float(w) for w in self.class_weights.split(",")]
            except ValueError:
                weights = []
            if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
                raise UserError(
                    f"train.class_weights={self.class_weights} is not none, balanced or a list of weights, one per "
                    "class (e.g. 1,9): non-negative numbers, not all zero"
                )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # trainer.pretrain, and a classifier's stage

    def __post_init__(self) -> None:
        _check_integers(self, "")
        if self.data.sampler == "balanced" and self.train.class_weights == "balanced":
            raise UserError(
                "data.sampler=balanced already draws every class equally often, and train.class_weights=balanced "
                "would weigh the rare classes up a second time: use one of the two"
            )


def _check_integers(section: object, prefix: str) -> None:
    """Every integer setting within int64, whatever its section checks: beyond it, torch, numpy and
    the tokenizers fail with an OverflowError instead of naming the key."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_integers(value, f"{prefix}{f.name}.")
        elif isinstance(value, int) and not isinstance(value, bool):
            check_range(f"{prefix}{f.name}", value, -(2**63), 2**63 - 1)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_preset(name_or_path: str) -> Path:
    path = Path(name_or_path)
    give = f"a preset name ({', '.join(preset_names())}) or a YAML config file"
    check_kind(path, "file", give, "--config")
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        raise UserError(f"--config {path} is not a YAML file (.yaml or .yml); give {give}")
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"config file {path} does not exist")
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise UserError(f"unknown preset {name_or_path!r}; choose one of {', '.join(preset_names())} or a .yaml file")
    return preset


def _field_type(key: str) -> object | None:
    """The declared type of a dotted key, or None if the key does not exist."""
    cls: object = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _valid_keys(prefix: str) -> list[str]:
    cls = _field_type(prefix) if prefix else Config
    if not dataclasses.is_dataclass(cls):
        return []
    return [f.name for f in dataclasses.fields(cls)]


def _unknown_key(full_key: str) -> UserError:
    section, _, name = full_key.rpartition(".")
    while section and _field_type(section) is None:  # an unknown section: complain about it instead
        section, _, name = section.rpartition(".")
    valid = _valid_keys(section)
    where = f"in {section}" if section else "sections"
    guess = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {(section + '.' if section else '') + guess[0]}?)" if guess else ""
    return UserError(f"unknown config key {full_key!r}{hint}; valid {where}: {', '.join(valid)}")


def _is_str_type(tp: object) -> bool:
    return tp is str or str in typing.get_args(tp)


def _is_list_type(tp: object) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))


def parse_overrides(args: list[str]) -> list[str]:
    """``--a.b=v`` / ``--a.b v`` -> OmegaConf dotlist entries ``a.b=v``."""
    dotlist, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key=value (see --help)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise UserError(f"{arg} needs a value: {arg}=VALUE")
            value, i = args[i + 1], i + 1
        tp = _field_type(key)
        if tp is None:
            raise _unknown_key(key)
        if _is_list_type(tp) and not value.startswith("[") and value != "null":
            value = "[" + ",".join(v.strip() for v in value.split(",")) + "]"
        elif _is_str_type(tp) and value != "null" and not value.startswith(("'", '"')):
            value = "'" + value.replace("'", "''") + "'"  # YAML would read no/yes/on/off as booleans
        dotlist.append(f"{key}={value}")
        i += 1
    return dotlist


def _from_dotlist(dotlist: list[str]) -> DictConfig:
    """The overrides as a config; a value YAML cannot read (an unclosed quote or bracket) names its key."""
    for entry in dotlist:
        try:
            OmegaConf.from_dotlist([entry])
        except (yaml.YAMLError, OmegaConfBaseException) as exc:
            key, _, value = entry.partition("=")
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"--{key}={value} cannot be read ({problem}); close its quotes and brackets") from exc
    return OmegaConf.from_dotlist(dotlist)


def _merge(base, other, source: str):
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as exc:
        raise _unknown_key(exc.full_key) from exc
    except ValidationError as exc:
        expected = _field_type(exc.full_key)
        name = getattr(expected, "__name__", str(expected))
        raise UserError(f"{exc.full_key}: {exc.msg.splitlines()[0]} (expected {name}; from {source})") from exc
    except OmegaConfBaseException as exc:
        raise UserError(f"invalid config from {source}: {str(exc).splitlines()[0]}") from exc


def read_yaml(path: Path) -> DictConfig:
    """A config file as a mapping of sections; syntax errors name the line, column and problem."""
    try:
        loaded = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path} ({exc}); check the file") from exc
    except yaml.MarkedYAMLError as exc:  # syntax errors, a key given twice
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: {exc.problem or exc.context} (invalid YAML); fix the file") from exc
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}; fix the file") from exc
    if not isinstance(loaded, DictConfig):
        raise UserError(f"{path} holds a list; a config file is a mapping of sections (data:, model:, train:, ...)")
    sections = _valid_keys("")
    for key, value in OmegaConf.to_container(loaded, resolve=False).items():
        if key in sections and not isinstance(value, dict) and value is not None:
            raise UserError(
                f"{path}: section {key!r} must be a mapping of its keys (like '{key}:' then indented "
                f"'key: value' lines), not {value!r}"
            )
    return loaded


def load_config(preset: str | None, overrides: list[str]) -> Config:
    """defaults < preset or file < overrides; returns a checked ``Config``."""
    merged = OmegaConf.structured(Config)
    if preset:
        path = resolve_preset(preset)
        merged = _merge(merged, read_yaml(path), str(path))
    merged = _merge(merged, _from_dotlist(parse_overrides(overrides)), "the command line")
    try:
        return OmegaConf.to_object(merged)
    except UserError:
        raise
    except OmegaConfBaseException as exc:
        raise UserError(f"invalid config: {str(exc).splitlines()[0]}") from exc


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_reference() -> str:
    """Every key with its default and help text, for --help and the README."""
    lines = []

    def walk(cls, prefix: str) -> None:
        instance = cls()
        for f in dataclasses.fields(cls):
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), f"{prefix}{f.name}.")
            else:
                plain = isinstance(value, str) and value.isprintable() and value.strip() == value and value
                default = value if plain else json.dumps(value, separators=(",", ":"))  # "\n" as YAML reads it
                lines.append(f"  --{prefix}{f.name}={default}".ljust(44) + f" {f.metadata.get('help', '')}")

    for f in dataclasses.fields(Config):
        lines.append(f"{f.name}:")
        walk(f.default_factory, f"{f.name}.")
    return "\n".join(lines)


REFERENCE_BEGIN = "<!-- the configuration reference: python -m trainer.config docs/configuration.md writes it -->"
REFERENCE_END = "<!-- end of the configuration reference -->"


def with_reference(markdown: str) -> str:
    """``markdown`` with the text between ``REFERENCE_BEGIN`` and ``REFERENCE_END`` replaced by
    ``config_reference()`` in a code block."""
    head, begin, rest = markdown.partition(REFERENCE_BEGIN)
    _, end, tail = rest.partition(REFERENCE_END)
    if not (begin and end):
        raise UserError(f"no {REFERENCE_BEGIN} ... {REFERENCE_END} block to write the reference into")
    return f"{head}{begin}\n```\n{config_reference()}\n```\n{end}{tail}"


if __name__ == "__main__":  # python -m trainer.config FILE.md: rewrite FILE's reference block
    import sys

    target = Path(sys.argv[1])
    write_text(target, with_reference(target.read_text(encoding="utf-8")))
