from pathlib import Path

import pytest
import yaml

from trainer.config import config_reference, load_config, preset_names, resolve_preset, with_reference
from trainer.errors import UserError


def test_precedence_defaults_then_preset_then_command_line():
    defaults = load_config(None, [])
    assert defaults.model.hidden_dim == 64 and defaults.optim.lr == 3e-3
    preset = load_config("tiny", [])
    assert preset.model.hidden_dim == 16 and preset.train.epochs == 2
    assert preset.optim.max_grad_norm == 5.0  # untouched by the preset: still the default
    both = load_config("tiny", ["--model.hidden_dim=40", "--train.epochs", "3"])
    assert both.model.hidden_dim == 40 and both.train.epochs == 3
    assert both.model.embedding_dim == 16  # from the preset


def test_yaml_file_and_typed_values(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": {"cell": "gru"}, "optim": {"lr": 0.01}}))
    config = load_config(str(path), ["--data.train_files=a.csv,b.csv", "--model.bidirectional=true"])
    assert config.model.cell == "gru" and config.optim.lr == 0.01
    assert config.data.train_files == ["a.csv", "b.csv"]
    assert config.model.bidirectional is True
    assert load_config(None, ["--data.max_train_examples=null"]).data.max_train_examples is None


def test_every_preset_loads():
    assert {"default", "tiny", "imdb", "sst2"} <= set(preset_names())
    for name in preset_names():
        load_config(name, [])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.hiden_dim=3"], r"unknown config key 'model.hiden_dim' \(did you mean model.hidden_dim\?\).*cell"),
        (["--modle.cell=gru"], r"unknown config key 'modle.cell'.*valid sections: data, tokenizer, model"),
        (["--model.cell=transformer"], r"model.cell='transformer' is not valid; choose one of 'lstm', 'gru', 'rnn'"),
        (["--train.mixed_precision=fp8"], r"choose one of 'no', 'fp16', 'bf16'"),
        (["--model.hidden_dim=big"], r"model.hidden_dim: .*'big'.*expected int"),
        (["--optim.lr=-1"], r"optim.lr=-1.0 is out of range"),
        (["--logging.tracker=mlflow"], r"choose one of 'wandb', 'tensorboard', 'none'"),
        (["--checkpoint.best_metric=speed"], r"checkpoint.best_metric='speed' is not valid"),
        (["hidden_dim=3"], r"unexpected argument 'hidden_dim=3'"),
        (["--train.epochs"], r"--train.epochs needs a value"),
        (["--train.vat_texts=all"], r"train.vat_texts='all' is not valid; choose one of 'auto', 'unlabeled'"),
    ],
)
def test_bad_overrides_name_the_key_and_the_choices(args, message):
    with pytest.raises(UserError, match=message):
        load_config("tiny", args)


def test_the_imdb_recipe_takes_virtual_adversarial_training_only_where_unlabeled_texts_are_given():
    from trainer.training.task import Classification

    def vat(*args):
        return Classification().configure(load_config("imdb", list(args))).train.vat_epsilon

    assert vat() == 0.0 and vat("--data.unlabeled_files=u.csv") == 5.0
    assert vat("--train.vat_texts=auto") == vat("--train.vat_texts=training") == 5.0  # on the batch itself


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  layers: 3\n")
    with pytest.raises(UserError, match=r"unknown config key 'model.layers'.*num_layers"):
        load_config(str(path), [])


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UserError, match=r"unknown preset 'imbd'; choose one of .*imdb"):
        resolve_preset("imbd")


def test_reference_lists_every_section():
    reference = config_reference()
    for key in ("--data.text_column", "--tokenizer.vocab_size", "--model.cell", "--optim.max_grad_norm=5.0"):
        assert key in reference


def test_yaml_booleans_do_not_swallow_string_values(tmp_path):
    assert load_config("tiny", ["--train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config("tiny", ["--logging.run_name=yes"]).logging.run_name == "yes"
    assert load_config("tiny", ["--logging.run_name=null"]).logging.run_name is None
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(str(path), []).train.mixed_precision == "no"


def test_a_global_batch_size_sets_the_accumulation_for_the_process_count():
    from trainer.config import TrainConfig
    from trainer.training.train import apply_global_batch

    for processes, accumulation in ((1, 4), (2, 2), (4, 1)):
        train = TrainConfig(batch_size=16, global_batch_size=64, gradient_accumulation_steps=7)
        apply_global_batch(train, processes)
        assert train.gradient_accumulation_steps == accumulation
    wrong = r"global_batch_size=64 is not a multiple of batch_size 16 x 3 process\(es\) = 48; choose a number of"
    with pytest.raises(UserError, match=wrong):
        apply_global_batch(TrainConfig(batch_size=16, global_batch_size=64), 3)
    with pytest.raises(UserError, match=r"choose a --train.batch_size that divides 32, or another global batch size"):
        apply_global_batch(TrainConfig(batch_size=24, global_batch_size=64), 2)
    untouched = TrainConfig(batch_size=16, gradient_accumulation_steps=3)
    apply_global_batch(untouched, 2)
    assert untouched.gradient_accumulation_steps == 3


def test_the_configuration_reference_in_the_docs_is_up_to_date():
    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    text = docs.read_text(encoding="utf-8")
    assert with_reference(text) == text, "stale: run python -m trainer.config docs/configuration.md"
    assert "--data.num_proc=null" in text


def test_a_bare_run_uses_the_config_classes_defaults():
    """One set of defaults: what --help and docs/configuration.md show is what a run without
    --config gets (the default preset only names the built-in data, which is the default too)."""
    assert load_config("default", []) == load_config(None, [])
    assert load_config("default", []).train.mixed_precision == "auto"


def _settings(kind: type, cls: object = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config whose type is ``kind`` (or ``kind | None``)."""
    import dataclasses
    import typing

    from trainer.config import Config

    cls = cls or Config
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _settings(kind, tp, f"{prefix}{f.name}.")
        elif tp is kind or set(typing.get_args(tp)) == {kind, type(None)}:
            keys.append(f"{prefix}{f.name}")
    return keys


BIG = "12345678901234567890123"  # 23 digits: beyond int64, where torch and numpy overflow


@pytest.mark.parametrize("key", _settings(int))
def test_every_integer_setting_refuses_a_number_no_library_can_hold(key):
    with pytest.raises(UserError, match=rf"^{key}={BIG} .*(out of range|needs)"):
        load_config("tiny", [f"--{key}={BIG}"])


@pytest.mark.parametrize("key", _settings(float))
def test_every_number_setting_refuses_nan(key):
    with pytest.raises(UserError, match=rf"^{key}=nan is not a finite number"):
        load_config("tiny", [f"--{key}=nan"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data.group_column=label"], r"data.group_column='label' is the label column; give the column"),
        (["--data.group_column=text"], r"data.group_column='text' is a text column"),
        (["--data.label_column=text"], r"data.label_column='text' is also a text column"),
        (["--data.text_column=title,title"], r"data.text_column='title,title' has an empty or repeated name"),
        (["--optim.betas=[2,0.5]"], r"optim.betas\[0\]=2.0 is out of range; it must be in \[0.0, 1.0\)"),
        (["--optim.betas=[0.9,1]"], r"optim.betas\[1\]=1.0 is out of range"),
        (["--optim.eps=-1"], r"optim.eps=-1.0 is out of range; it must be in \(0.0, 1.0\]"),
        (["--optim.eps=0"], r"optim.eps=0.0 is out of range"),
        (["--optim.weight_decay=1000"], r"optim.weight_decay=1000.0 x optim.lr=0.003 is 1 or more"),
        (["--model.hidden_dim=100000"], r"model.hidden_dim=100000 is out of range; it must be in \[1, 65536\]"),
        (["--model.num_layers=65"], r"model.num_layers=65 is out of range"),
        (["--tokenizer.vocab_size=1000000000"], r"tokenizer.vocab_size=1000000000 is out of range"),
        (["--train.batch_size=10000000"], r"train.batch_size=10000000 is out of range"),
        (["--data.max_length=10000000"], r"data.max_length=10000000 is out of range"),
        (["--data.num_workers=100000"], r"data.num_workers=100000 is out of range; it must be in \[0, 256\]"),
        (["--data.pad_to_multiple_of=65"], r"data.pad_to_multiple_of=65 is out of range; it must be in \[1, 64\]"),
        (["--train.seed=-1"], r"train.seed=-1 is out of range; it must be in \[0, 4294967295\]"),
        (["--train.seed=4294967296"], r"train.seed=4294967296 is out of range"),
        (["--data.split_seed=-1"], r"data.split_seed=-1 is out of range"),
        (["--data.cv_fold=3"], r"data.cv_fold=3 needs data.cv_folds"),
        (
            ["--data.train_files=a.csv", "--data.validation_files=b.csv", "--data.cv_folds=3"],
            r"data.cv_folds validates on a fold of the training data; give no data.validation_files",
        ),
        (["--data.train_files=[]"], r"data.train_files=\[\] names no file"),
        (["--data.name="], r"data.name='' is empty; give 'builtin' or a Hub dataset name"),
        (["--train.output_dir="], r"train.output_dir='' is empty"),
        (["--data.cache_dir= "], r"data.cache_dir=' ' is empty"),
        (["--checkpoint.resume="], r"checkpoint.resume='' is empty; give none, auto or a checkpoint folder"),
        (["--checkpoint.license=My License"], r"checkpoint.license='My License' is not a Hub license id"),
        (["--logging.project=team/run"], r"logging.project='team/run' must be at most 128 characters, none of them"),
        (["--model.cell='gru"], r"--model.cell='gru cannot be read \(.*\); close its quotes and brackets"),
    ],
)
def test_values_out_of_their_range_or_contradicting_others_name_the_key(args, message):
    with pytest.raises(UserError, match=message):
        load_config("tiny", args)


def test_a_23_digit_size_in_a_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(f"model:\n  hidden_dim: {BIG}\n")
    with pytest.raises(UserError, match=rf"model.hidden_dim={BIG} is out of range; it must be in \[1, 65536\]"):
        load_config(str(path), [])
