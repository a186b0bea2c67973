"""``DataConfig``: where the data comes from and how every stage treats it (columns, labels,
splits, groups, tokenising, batching), checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.data import corpus
from trainer.data.tokenizer import MAX_TOKENS, TRUNCATIONS
from trainer.errors import MAX_COUNT, MAX_SEED, UserError, check_choice, check_given, check_range

BUILTIN = "builtin"
FORMATS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
ROWS_PER_PROCESS = 10_000  # data.num_proc=null: a tokenising process for each this many rows
SAMPLERS = ("random", "balanced")
MAX_PROCESSES = 256  # data.num_workers, data.num_proc
MAX_BUCKETS = 1024  # data.length_buckets: widths per doubling of length


@dataclass
class DataConfig:
    name: str = field(
        default=BUILTIN, metadata={"help": "'builtin' (generated corpus) or a Hugging Face Hub dataset name"}
    )
    config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration"})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit)"})
    train_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "local training files (csv, tsv, json, jsonl, parquet; .gz etc. too), globs ('shards/*.parquet') "
            "or folders of them; overrides name"
        },
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "local validation files, globs or folders"}
    )
    unlabeled_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "texts without labels (files, globs or folders; the same text column) that language-model "
            "pre-training reads besides the training split (python -m trainer.pretrain, or a classifier's "
            "pretrain.stage) and virtual adversarial training draws from (train.vat_epsilon, train.vat_texts)"
        },
    )
    train_split: str = field(
        default="train",
        metadata={"help": "split to train on (Hub dataset, or a train_files folder whose file names say splits)"},
    )
    validation_split: str | None = field(
        default="auto",
        metadata={
            "help": "split to validate on (Hub dataset or train_files folder); auto: 'validation' if there is one; "
            "null: carve from train"
        },
    )
    text_column: str = field(
        default="text",
        metadata={"help": "column holding the text; several, comma-separated (title,content), are joined into one"},
    )
    text_separator: str = field(
        default="\n", metadata={"help": "what joins several text columns (a missing or empty one is left out)"}
    )
    csv_delimiter: str | None = field(
        default=None, metadata={"help": "the field separator of csv files (default: ',' for .csv, tab for .tsv)"}
    )
    label_column: str = field(default="label", metadata={"help": "column holding the label"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of train carved out for validation when none is given"}
    )
    split_seed: int = field(default=42, metadata={"help": "seed of the validation carve-out and of the folds"})
    group_column: str | None = field(
        default=None,
        metadata={
            "help": "a column of groups (IMDB: movie_id) that the carved validation split and every "
            "cross-validation fold keep on one side: no group is in both train and validation"
        },
    )
    cv_folds: int = field(
        default=0,
        metadata={
            "help": "k-fold cross-validation: validate on fold cv_fold of k (0 = off; needs no validation split)"
        },
    )
    cv_fold: int = field(default=0, metadata={"help": "which fold (0 .. cv_folds-1) is the validation split"})
    max_length: int = field(default=128, metadata={"help": "truncate texts to this many tokens"})
    truncation: str = field(
        default="head",
        metadata={
            "help": "which tokens of a longer text are kept: head (the first), tail (the last) or head_tail (the "
            "first quarter and the last three quarters of max_length); prediction does the same"
        },
    )
    max_train_examples: int | None = field(default=None, metadata={"help": "use at most this many training rows"})
    max_eval_examples: int | None = field(default=None, metadata={"help": "use at most this many validation rows"})
    group_by_length: bool = field(
        default=True, metadata={"help": "batch texts of similar length together (less padding)"}
    )
    sampler: str = field(
        default="random",
        metadata={
            "help": "random: every training example once per epoch; balanced: each epoch draws as many examples of "
            "every class as the rarest has (a new draw each epoch, each example at most once), so epochs are shorter"
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={"help": "pad batches to a multiple of this many tokens (default: 8 under mixed precision, else 1)"},
    )
    length_buckets: int = field(
        default=8,
        metadata={
            "help": "pad each batch up to one of this many widths per doubling of length (at most 1/N more "
            "tokens; far fewer distinct shapes, each of which costs new kernels on a CPU; 0 = off)"
        },
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    num_proc: int | None = field(
        default=None,
        metadata={
            "help": f"processes that tokenise (datasets.map num_proc); null: one per {ROWS_PER_PROCESS:,} rows, at "
            "most one per core; 1: one process, whose tokenizer uses every core itself"
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where tokenizers and tokenised data are cached (default $XDG_CACHE_HOME/sentiment-trainer)"},
    )
    builtin: corpus.CorpusConfig = field(default_factory=corpus.CorpusConfig)

    def __post_init__(self) -> None:
        check_range("data.validation_fraction", self.validation_fraction, 0.01, 0.9)
        check_range("data.split_seed", self.split_seed, 0, MAX_SEED)
        if self.cv_folds:
            check_range("data.cv_folds", self.cv_folds, 2, MAX_COUNT)
            check_range("data.cv_fold", self.cv_fold, 0, self.cv_folds - 1)
        elif self.cv_fold:
            raise UserError(
                f"data.cv_fold={self.cv_fold} needs data.cv_folds (cross-validation is off); set --data.cv_folds=K"
            )
        if self.validation_files and not self.train_files:
            raise UserError("data.validation_files needs data.train_files too (local files for both splits)")
        if self.validation_files and self.cv_folds:
            raise UserError("data.cv_folds validates on a fold of the training data; give no data.validation_files")
        for key in ("train_files", "validation_files", "unlabeled_files"):
            files = getattr(self, key)
            if files is not None and (not files or not all(str(f).strip() for f in files)):
                raise UserError(f"data.{key}={files} names no file where one is expected; give paths, or null")
        for key, give in (
            ("name", f"{BUILTIN!r} or a Hub dataset name"),
            ("config_name", "a Hub dataset configuration, or null"),
            ("revision", "a branch, tag or commit, or null"),
            ("train_split", "a split name such as train"),
            ("validation_split", "a split name, auto, or null to carve one from train"),
            ("label_column", "the column holding the labels"),
            ("group_column", "a column of groups, or null"),
            ("cache_dir", "a folder, or null for the default"),
        ):
            check_given(f"data.{key}", getattr(self, key), give)
        check_range("data.max_length", self.max_length, 1, MAX_TOKENS)
        check_choice("data.truncation", self.truncation, TRUNCATIONS)
        check_choice("data.sampler", self.sampler, SAMPLERS)
        if self.csv_delimiter is not None and (len(self.csv_delimiter) != 1 or self.csv_delimiter in '"\r\n'):
            raise UserError(
                f"data.csv_delimiter={self.csv_delimiter!r} must be one character other than a quote or a line "
                "break, e.g. ';'"
            )
        check_range("data.num_workers", self.num_workers, 0, MAX_PROCESSES)
        if self.num_proc is not None:
            check_range("data.num_proc", self.num_proc, 1, MAX_PROCESSES)
        self._check_columns()
        check_range("data.length_buckets", self.length_buckets, 0, MAX_BUCKETS)
        if self.pad_to_multiple_of is not None:  # a multiple beyond the longest text pads every batch past it
            check_range("data.pad_to_multiple_of", self.pad_to_multiple_of, 1, self.max_length)
        for key in ("max_train_examples", "max_eval_examples"):
            if getattr(self, key) is not None:
                check_range(f"data.{key}", getattr(self, key), 1, MAX_COUNT)

    def _check_columns(self) -> None:
        """Text, label and group columns: named, and each a different column (the label column read as
        the groups, or as text, would train on nonsense)."""
        texts = self.text_columns
        if not [c for c in texts if c]:
            raise UserError(f"data.text_column={self.text_column!r} names no column; e.g. text, or title,content")
        if not all(texts) or len(set(texts)) < len(texts):
            raise UserError(
                f"data.text_column={self.text_column!r} has an empty or repeated name; give each column once, "
                "e.g. title,content"
            )
        if self.label_column in texts:
            raise UserError(
                f"data.label_column={self.label_column!r} is also a text column (data.text_column="
                f"{self.text_column!r}); the labels must be a column of their own"
            )
        if self.group_column is not None and self.group_column in (self.label_column, *texts):
            which = "the label column" if self.group_column == self.label_column else "a text column"
            raise UserError(
                f"data.group_column={self.group_column!r} is {which}; give the column that says which rows belong "
                "together (IMDB: movie_id), or null"
            )

    def tokens_identity(self) -> list:
        """What decides a split's token ids besides the texts and the tokenizer (a cache key part);
        the default truncation adds nothing, so caches written before it existed stay valid."""
        return [self.max_length] + ([self.truncation] if self.truncation != "head" else [])

    @property
    def text_columns(self) -> list[str]:
        return [c.strip() for c in self.text_column.split(",")]

    @property
    def source(self) -> str:
        return "files" if self.train_files else ("builtin" if self.name == BUILTIN else "hub")
