"""Bad input of every kind: one line that names the problem and the fix, exit code 2, nothing written.

One parametrised test per class of input: config files, numbers, data files, paths. Cases that
need a file the user cannot read or a folder they cannot write run in a subprocess without root's
permission override (``setpriv``), since CI runs as root.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, review_rows, write_csv

from trainer.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerator_state")]


def bad_run(tmp_path, capsys, *args) -> str:
    """The one error line of an in-process run that must refuse its input and write nothing."""
    code = main(["--config", "tiny", f"--train.output_dir={tmp_path / 'run'}", "--logging.tracker=none", *args])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "run").exists(), "nothing is written for bad input"
    return lines[0]


def without_permission_override() -> list[str]:
    """A command prefix under which file permissions apply, even to root (CI runs as root)."""
    if os.geteuid() != 0:
        return [sys.executable]
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable]


def run_unprivileged(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [*without_permission_override(), "-m", "trainer", "--config", "tiny", "--logging.tracker=none", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: 5\n", "section 'model' must be a mapping of its keys"),
        ("- data\n- model\n", "holds a list; a config file is a mapping of sections"),
        ("model:\n  hidden_dim: 8\n    dropout: 0.1\n", "bad.yaml:3:12: mapping values are not allowed"),
        ("model:\n  hidden_dim: 8\n  hidden_dim: 9\n", "bad.yaml:3:3: found duplicate key hidden_dim"),
        ("model:\n  hidden_dim: [8\n", "bad.yaml:3:1: "),
        ("train: ???\n", "section 'train' must be a mapping of its keys"),
        (f"model:\n  hidden_dim: {'9' * 23}\n", f"model.hidden_dim={'9' * 23} is out of range; it must be in [1, "),
    ],
    ids=[
        "section-not-a-mapping",
        "top-level-list",
        "syntax",
        "duplicate-key",
        "unclosed-list",
        "missing-value",
        "23-digit-size",
    ],
)
def test_config_files(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert message in bad_run(tmp_path, capsys, "--config", str(path))


@pytest.mark.parametrize(
    "arg", ["--optim.lr=inf", "--optim.lr=nan", "--optim.lr=-inf", "--train.ema_decay=nan", "--model.dropout=nan"]
)
def test_non_finite_numbers(tmp_path, capsys, arg):
    key, value = arg[2:].split("=")
    assert f"{key}={float(value)!r} is not a finite number" in bad_run(tmp_path, capsys, arg)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data.group_column=label"], "data.group_column='label' is the label column; give the column that says"),
        (["--optim.betas=[2,0.5]"], "optim.betas[0]=2.0 is out of range; it must be in [0.0, 1.0)"),
        (["--optim.eps=-1"], "optim.eps=-1.0 is out of range; it must be in (0.0, 1.0]"),
        (
            ["--model.embedding_dim=65536", "--model.hidden_dim=65536", "--model.num_layers=64"],
            "GiB in float32, more than the ",
        ),
    ],
    ids=["label-column-as-groups", "betas", "negative-eps", "model-larger-than-memory"],
)
def test_values_that_cannot_train(tmp_path, capsys, args, message):
    line = bad_run(tmp_path, capsys, *args)
    assert message in line
    assert args[0].split("=")[0][2:] in line  # the key


def _jsonl(path, records: list, broken_line: int | None = None):
    lines = [json.dumps(r) for r in records]
    if broken_line:
        lines[broken_line - 1] = lines[broken_line - 1][:-1]  # the closing brace lost
    path.write_text("\n".join(lines) + "\n")
    return path


SEMICOLONS = "seem separated by ';', not commas (see its header); use --data.csv_delimiter=';'"


def data_cases(tmp_path) -> dict[str, tuple[list[str], str]]:
    rows = review_rows(60)
    records = [{"text": t, "label": y} for t, y in rows]
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text("text;label\n" + "".join(f"{t.replace(';', ' ')};{y}\n" for t, y in rows))
    plain = tmp_path / "plain.csv"  # no comma anywhere: read as one column
    plain.write_text("text;label\n" + "".join(f"{t.replace(';', ' ').replace(',', ' ')};{y}\n" for t, y in rows))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"text,label\n" + "très bien,1\nmauvais,0\n".encode("latin-1") * 20)
    folder = tmp_path / "shards"
    folder.mkdir()
    awkward = tmp_path / "awkward.jsonl"  # a BOM, and U+2028 (valid inside a JSON string) on line 2
    lines = [json.dumps(r, ensure_ascii=False) for r in records[:5]]
    lines[1] = json.dumps({"text": "a line\u2028separator", "label": 1}, ensure_ascii=False)
    lines[2] = lines[2][:-1]
    awkward.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return {
        "jsonl-bom-and-line-separator": ([awkward], "awkward.jsonl:3: not a JSON object"),
        "malformed-jsonl-line": (
            [_jsonl(tmp_path / "t.jsonl", records, broken_line=55)],
            "t.jsonl:55: not a JSON object",
        ),
        "semicolon-csv": ([semicolons], SEMICOLONS),
        "semicolon-csv-no-commas": ([plain], SEMICOLONS),
        "numeric-text-column": (
            [write_csv(tmp_path / "n.csv", [(i, i % 2) for i in range(60)])],
            "the text column 'text' holds int64 values, not text; set --data.text_column",
        ),
        "list-text-column": (
            [_jsonl(tmp_path / "l.jsonl", [{"text": t.split(), "label": y} for t, y in rows])],
            "values, not text; set --data.text_column",
        ),
        "empty-label-column": (
            [write_csv(tmp_path / "e.csv", [(t, "") for t, _ in rows])],
            "60 of 60 rows have an empty label (column 'label')",
        ),
        "folder-without-data-files": (
            [folder],
            "holds no csv, tsv, json, jsonl or parquet file; check --data.train_files",
        ),
        "latin-1-csv": ([latin1], "is not valid UTF-8 text"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed-jsonl-line",
        "jsonl-bom-and-line-separator",
        "semicolon-csv",
        "semicolon-csv-no-commas",
        "numeric-text-column",
        "list-text-column",
        "empty-label-column",
        "folder-without-data-files",
        "latin-1-csv",
    ],
)
def test_data_files(tmp_path, capsys, case):
    files, message = data_cases(tmp_path)[case]
    err = bad_run(tmp_path, capsys, f"--data.train_files={','.join(map(str, files))}")
    assert message in err


def test_a_semicolon_csv_trains_with_the_delimiter_the_error_names(tmp_path, capsys):
    files, _ = data_cases(tmp_path)["semicolon-csv"]
    run = tmp_path / "ok"
    args = ["--config", "tiny", f"--data.train_files={files[0]}", "--data.csv_delimiter=;", "--train.max_steps=2"]
    assert main([*args, f"--train.output_dir={run}", "--logging.tracker=none"]) == 0
    assert json.loads((run / "run_info.json").read_text())["data"]["train_examples"] == 54


def test_rows_shared_by_train_and_validation_are_counted_in_a_warning(tmp_path, capsys):
    rows = review_rows(60)
    train = write_csv(tmp_path / "train.csv", rows)
    validation = write_csv(tmp_path / "val.csv", rows[:10] + review_rows(10, seed=99))
    run = tmp_path / "run"
    common = ["--config", "tiny", "--train.max_steps=1", "--logging.tracker=none", f"--data.train_files={train}"]
    assert main([*common, f"--data.validation_files={validation}", f"--train.output_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "warning: 10 of 20 validation rows (50.0%) have the exact text of a training row" in out
    assert "the same file" not in out
    assert json.loads((run / "run_info.json").read_text())["data"]["validation_rows_in_train"] == 10
    assert main([*common, f"--data.validation_files={train}", f"--train.output_dir={tmp_path / 'same'}"]) == 0
    out = capsys.readouterr().out
    assert "warning: 60 of 60 validation rows (100.0%)" in out
    assert "the same file is given in --data.train_files and --data.validation_files" in out


def test_paths_that_cannot_be_written(tmp_path, capsys):
    a_file = write_csv(tmp_path / "a.csv", review_rows(20))
    cases = [
        (f"--train.output_dir={a_file}/run", f"{a_file} is a file, not a folder; choose another --train.output_dir"),
        ("--train.output_dir=/proc/sentiment-run", "--train.output_dir=/proc/sentiment-run cannot be written"),
        (f"--data.cache_dir={a_file}", f"{a_file} is a file, not a folder; choose another --data.cache_dir"),
    ]
    for arg, message in cases:
        code = main(["--config", "tiny", "--logging.tracker=none", arg])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert a_file.is_file() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("what", ["unreadable-data-file", "read-only-run-folder", "read-only-cache-folder"])
def test_permissions_are_one_line_errors(tmp_path, what):
    data = write_csv(tmp_path / "data.csv", review_rows(40))
    locked = tmp_path / "locked"
    locked.mkdir()
    args = {
        "unreadable-data-file": [f"--data.train_files={data}", f"--train.output_dir={tmp_path / 'run'}"],
        "read-only-run-folder": [f"--train.output_dir={locked / 'run'}"],
        "read-only-cache-folder": [f"--data.cache_dir={locked / 'cache'}", f"--train.output_dir={tmp_path / 'run'}"],
    }[what]
    data.chmod(0o000 if what == "unreadable-data-file" else 0o644)
    locked.chmod(0o555)
    try:
        line = one_error_line(run_unprivileged(args, tmp_path))
    finally:
        data.chmod(0o644)
        locked.chmod(0o755)
    expected = {
        "unreadable-data-file": f"cannot read data file {data} (Permission denied)",
        "read-only-run-folder": "--train.output_dir=" + str(locked / "run") + " cannot be written (Permission denied)",
        "read-only-cache-folder": "--data.cache_dir="
        + str(locked / "cache")
        + " cannot be written (Permission denied)",
    }[what]
    assert expected in line
    assert not (tmp_path / "run").exists() and not any(locked.iterdir())


def test_only_explicit_causes_make_an_error_the_users():
    from trainer.errors import as_user_error

    try:
        raise FileNotFoundError(2, "No such file or directory", "/absent/file.csv")
    except FileNotFoundError as cause:
        wrapped = RuntimeError("could not load")
        wrapped.__cause__ = cause
        error = as_user_error(wrapped)
        assert error is not None and "cannot use /absent/file.csv: No such file or directory" in str(error)
        try:
            raise KeyError("a bug while handling it")  # __context__ only: a bug, it keeps its traceback
        except KeyError as bug:
            assert as_user_error(bug) is None


def test_an_allocation_that_fails_is_one_line_naming_the_sizes_to_lower():
    import torch

    from trainer.errors import as_user_error

    with pytest.raises(RuntimeError) as failed:
        torch.empty(2**60, dtype=torch.uint8)  # an exabyte: no machine has it
    error = as_user_error(failed.value)
    assert error is not None and str(error).startswith("out of memory (DefaultCPUAllocator: can't allocate memory")
    assert "choose smaller sizes (--model.embedding_dim, --model.hidden_dim" in str(error)
