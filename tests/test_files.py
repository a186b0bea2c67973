"""Full disks, closed streams and files of the wrong kind: one line, exit code 2, nothing half-written.

A full disk is a real one: a small tmpfs mounted for the test (CI runs as root; without the right
to mount, the tests skip) and filled to leave a chosen amount of space. Standard output that
cannot be written is /dev/full. Every file the user gave is checked unchanged by checksum.
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, read_json, review_rows, run_cli, write_csv

from trainer.errors import UserError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerator_state")]

TINY = ["--config", "tiny", "--logging.tracker=none"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.decode().strip()}): it takes root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, free_kib: int) -> Path:
    """Leave ``free_kib`` KiB free on ``disk``; returns the filler, to remove for space again."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:  # full a little sooner than counted: as wanted
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - free_kib * 1024))
    return filler


def checksums(*paths: Path) -> dict:
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a command that failed (training's progress bars may stand before it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if "error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and lines[-1].startswith("error: "), result.stderr[-3000:]
    return errors[0]


def assert_nothing_half_written(folder: Path) -> None:
    """No temporary left, and whatever is there is complete: models load (their checksums match),
    checkpoints pass their manifest, JSON files parse, metrics.jsonl is whole lines."""
    from trainer.inference.folder import load_exported
    from trainer.training.checkpoint import check_checkpoint, list_checkpoints

    leftovers = [p for p in folder.rglob("*") if ".tmp" in p.name or ".old" in p.name or p.name.startswith("tmp")]
    assert not leftovers, leftovers
    for name in ("best", "final"):
        if (folder / name).exists():
            load_exported(folder / name)
    assert all(check_checkpoint(path) is None for path in list_checkpoints(folder / "checkpoints"))
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())
    if (folder / "metrics.jsonl").exists():
        text = (folder / "metrics.jsonl").read_text()
        assert text == "" or text.endswith("\n")
        [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (a fresh process) whose exported model the tests below use."""
    work = tmp_path_factory.mktemp("trained")
    done = run_cli([*TINY, f"--train.output_dir={work}/run"], work, env={"XDG_CACHE_HOME": str(work / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "run"


# Full disks


@pytest.mark.parametrize(
    ("free_kib", "names"),
    [(0, "/run/run_info.json"), (32, "/run/best"), (160, "/run/checkpoints/step-")],
    ids=["run-start", "model-export", "checkpoint"],
)
def test_a_full_disk_while_training_is_one_line_and_leaves_nothing_half_written(small_disk, tmp_path, free_kib, names):
    filler = fill(small_disk, free_kib)
    args = [*TINY, "--train.max_steps=40", f"--train.output_dir={small_disk / 'run'}"]
    line = error_line(run_cli([*args, f"--data.cache_dir={tmp_path / 'cache'}"], tmp_path))
    assert f"cannot use {small_disk}{names}" in line and "No space left on device" in line, line
    assert_nothing_half_written(small_disk / "run")
    if free_kib:  # given space, the same run starts over in the folder and finishes
        filler.unlink()
        again = run_cli([*args, f"--data.cache_dir={tmp_path / 'cache'}", "--overwrite"], tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert read_json(small_disk / "run" / "run_info.json")["final_step"] == 40


def test_a_full_disk_while_caching_tokens_leaves_no_cache_entry_to_read_back(small_disk, tmp_path):
    filler = fill(small_disk, 12)  # the tokenizer and the overlap count fit; the tokenised split does not
    cache = small_disk / "cache"
    args = [*TINY, "--train.max_steps=2", f"--train.output_dir={tmp_path / 'run'}", f"--data.cache_dir={cache}"]
    line = error_line(run_cli(args, tmp_path))
    assert f"cannot use {cache}/tokenized/" in line and "-train.arrow: No space left on device" in line, line
    assert not any((cache / "tokenized").iterdir()), "neither a cache file nor a temporary one is left"
    assert not (tmp_path / "run").exists()
    filler.unlink()
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    info = read_json(tmp_path / "run" / "run_info.json")["data"]
    assert info["train_tokens_cache_hit"] is False and info["tokenizer_source"] == "cache"
    assert_nothing_half_written(cache)


def test_a_full_disk_under_export_predict_and_evaluate_outputs(small_disk, trained, tmp_path):
    data = write_csv(tmp_path / "test.csv", review_rows(20, seed=3))
    model = trained / "best"
    planted = checksums(data, model)
    fill(small_disk, 0)
    commands = [
        ("export", ["--model", str(model), "--output", str(small_disk / "onnx")], small_disk / "onnx"),
        ("predict", ["--model", str(model), "--html", str(small_disk / "page.html"), "A fine film."], None),
        ("evaluate", ["--model", str(model), "--data", str(data), "--plot", str(small_disk / "cm.png")], None),
        ("evaluate", ["--model", str(model), "--data", str(data), "--errors=3", f"--errors-out={small_disk}/e"], None),
    ]
    for module, args, named in commands:
        line = error_line(run_cli(args, tmp_path, module=f"trainer.{module}"))
        assert "No space left on device; the disk is full" in line and str(small_disk) in line, line
        if named:
            assert f"cannot use {named}:" in line
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler"], "nothing half-written is left"
    assert checksums(data, model) == planted


def test_standard_output_that_cannot_be_written_is_one_line(trained, tmp_path):
    data = write_csv(tmp_path / "test.csv", review_rows(20, seed=3))
    model = str(trained / "best")
    commands = [
        ["trainer.evaluate", "--model", model, "--data", str(data), "--json"],
        ["trainer.evaluate", "--model", model, "--data", str(data)],
        ["trainer.predict", "--model", model, "A fine film.", "Dull."],
        ["trainer.predict", "--model", model, "--json", "A fine film."],
        ["trainer.plot", str(trained), "--out", str(tmp_path / "plots")],
        ["trainer", "--help"],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    expected = "error: cannot write to standard output: No space left on device; free space on its disk, or redirect"
    for module, *args in commands:
        with open("/dev/full", "w") as full:
            command = [sys.executable, "-m", module, *args]
            result = subprocess.run(command, cwd=tmp_path, env=env, stdout=full, stderr=subprocess.PIPE, text=True)
        assert error_line(result) == f"{expected} it elsewhere", (module, args)


# Files of the wrong kind


def bad_run(capsys, tmp_path, *args, main=None) -> str:
    """The one error line of an in-process command that must refuse its input (default: training)."""
    from trainer.cli import main as train

    code = (main or train)(list(args) if main else [*TINY, f"--train.output_dir={tmp_path / 'run'}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()
    return err


def jsonl(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_text("\n".join(lines) + end, encoding="utf-8")
    return path


def records(n: int = 60) -> list[str]:
    return [json.dumps({"text": text, "label": label}) for text, label in review_rows(n)]


@pytest.mark.parametrize(
    ("line_55", "why"),
    [
        ('{"text": "fine", "label": 1', "(Expecting ',' delimiter)"),
        ("[1, 2]", "(an array)"),
        ("5", "(a number)"),
        ('"a text"', "(a string)"),
        ('{"text": "fine", "label": 1}}', "(Extra data)"),
        ('{"text": "fine", "label": 1, "label": 0}', "(key 'label' is given twice)"),
    ],
    ids=["invalid-json", "array", "number", "string", "extra-brace", "key-twice"],
)
def test_every_broken_jsonl_line_is_named_by_file_and_line(tmp_path, capsys, line_55, why):
    lines = records()
    lines[54] = line_55
    data = jsonl(tmp_path / "train.jsonl", lines)
    planted = checksums(data)
    line = bad_run(capsys, tmp_path, f"--data.train_files={data}")
    assert f"train.jsonl:55: not a JSON object {why}" in line, line
    assert checksums(data) == planted


def test_jsonl_first_and_last_lines(tmp_path, capsys):
    lines = records()
    first = jsonl(tmp_path / "first.jsonl", ["[1, 2]", *lines[1:]])
    assert "first.jsonl:1: not a JSON object (an array)" in bad_run(capsys, tmp_path, f"--data.train_files={first}")
    cut = jsonl(tmp_path / "cut.jsonl", [*lines[:-1], lines[-1][:30]], end="")  # a copy that stopped short
    line = bad_run(capsys, tmp_path, f"--data.train_files={cut}")
    assert (
        "cut.jsonl:60: not a JSON object (Unterminated string" in line and "the file ends in the middle of it" in line
    )


def test_blank_and_null_jsonl_lines_are_read_as_json_lines_readers_do(tmp_path):
    from trainer.data import load_labelled

    lines = records()
    path = jsonl(tmp_path / "t.jsonl", [*lines[:10], "", "   ", "null", *lines[10:]])
    ds, dropped = load_labelled(str(path))
    assert (len(ds), dropped) == (60, 1)  # blank lines skipped; null: a row with neither text nor label


@pytest.fixture
def planted(tmp_path):
    """A data file, a folder, a model-like folder and a device, each to be given where another kind is expected."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data\n")
    data = write_csv(tmp_path / "data.csv", review_rows(40))
    return {"FILE": str(data), "DIR": str(folder), "DEVICE": "/dev/null"}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--config=DIR", "--config DIR is a folder, not a file; give a preset name ("),
        ("--config=FILE", "--config FILE is not a YAML file (.yaml or .yml); give a preset name ("),
        ("--tokenizer.path=DIR", "tokenizer file DIR is a folder, not a file; give a tokenizer.json"),
        ("--model.init_from=FILE", "--model.init_from FILE is a file, not a folder; give the best/ or final/"),
        ("--model.pretrained_embeddings=DIR", "word-vector file DIR is a folder, not a file; give a GloVe/word2vec"),
        ("--resume=FILE", "checkpoint FILE is a file, not a folder; give a checkpoint folder"),
        ("--data.train_files=DEVICE", "data file DEVICE is a device or a pipe, not a file; give a csv, tsv, json"),
        ("--data.validation_files=DEVICE", "data file DEVICE is a device or a pipe, not a file; give a csv, tsv"),
    ],
)
def test_training_paths_of_the_wrong_kind_say_what_they_are(tmp_path, capsys, planted, arg, message):
    before = checksums(Path(planted["FILE"]), Path(planted["DIR"]))
    for name, path in planted.items():
        arg, message = arg.replace(name, path), message.replace(name, path)
    extra = [f"--data.train_files={planted['FILE']}"] if "validation_files" in arg else []
    if "pretrained_embeddings" in arg:
        extra = ["--model.embedding_dim=16"]
    assert message in bad_run(capsys, tmp_path, *extra, *arg.split("=", 1) if arg.startswith("--resume") else [arg])
    assert checksums(Path(planted["FILE"]), Path(planted["DIR"])) == before


def test_a_model_folder_given_as_the_tokenizer_names_its_tokenizer_json(tmp_path, capsys, trained):
    line = bad_run(capsys, tmp_path, f"--tokenizer.path={trained / 'best'}")
    assert f"is a folder; give the tokenizer.json in it, {trained / 'best' / 'tokenizer.json'}" in line


def test_model_and_file_options_of_the_wrong_kind_say_what_they_are(tmp_path, capsys, planted, trained):
    from trainer import evaluate, export, plot, predict, push

    model, data, folder = str(trained / "best"), planted["FILE"], planted["DIR"]
    before = checksums(Path(data), Path(folder), trained)
    not_a_model = "is a file, not a folder; give an exported model folder such as runs/<run>/best"
    cases = [
        (predict.main, ["--model", data, "a text"], f"--model {data} {not_a_model}"),
        (evaluate.main, ["--model", data, "--data", data], f"--model {data} {not_a_model}"),
        (export.main, ["--model", data], f"--model {data} {not_a_model}"),
        (push.main, ["--model", data, "--repo", "user/name"], f"--model {data} {not_a_model}"),
        (
            predict.main,
            ["--model", f"{model}/model.safetensors", "a text"],
            f"is a file of a model folder; give the folder, {model}",
        ),
        (
            evaluate.main,
            ["--model", model, "--data", folder],
            f"data file {folder} is a folder, not a file; give a csv",
        ),
        (predict.main, ["--model", model, "--file", folder], f"--file {folder} is a folder, not a file; give a .txt"),
        (plot.main, [data], f"run folder {data} is a file, not a folder; give a run folder"),
        (plot.main, [str(trained), "--out", data], f"--out {data} is a file, not a folder; give a folder"),
    ]
    for main, args, message in cases:
        assert message in bad_run(capsys, tmp_path, *args, main=main), (main.__module__, args)
    assert checksums(Path(data), Path(folder), trained) == before


# Compressed files and types within columns


def test_zst_data_files_read_and_a_missing_codec_names_its_package(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    from trainer.data import load_labelled

    csv = write_csv(tmp_path / "data.csv", review_rows(30))
    packed = tmp_path / "data.csv.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(csv.read_bytes()))
    ds, dropped = load_labelled(str(packed))
    assert (len(ds), dropped) == (30, 0)
    # The same file where zstandard is not installed (hidden from the import system).
    code = "import sys; sys.modules['zstandard'] = None; from trainer.cli import main; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*TINY, f"--data.train_files={packed}", f"--train.output_dir={tmp_path / 'run'}"]
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    line = error_line(result)
    assert f"{packed} is zst-compressed, and reading it needs the zstandard package (pip install zstandard)" in line


def formats(tmp_path: Path) -> dict[str, Path]:
    """The same 60 rows in each format, 2 with a missing label and 2 without a usable text, as each
    format has them: an empty CSV cell; a JSON null, NaN, a number or a list; a parquet null or NaN."""
    rows = review_rows(60)
    texts, labels = [t for t, _ in rows], [float(y) for _, y in rows]
    csv_rows = [(t, int(y)) for t, y in zip(texts, labels, strict=True)]
    for i in (3, 9):
        csv_rows[i] = (texts[i], "")
    for i in (4, 7):
        csv_rows[i] = ("", int(labels[i]))
    json_rows = [{"text": t, "label": int(y)} for t, y in zip(texts, labels, strict=True)]
    json_rows[3]["label"], json_rows[9]["label"] = None, float("nan")
    json_rows[4]["text"], json_rows[7]["text"] = 5, ["a", "list"]
    parquet_texts = list(texts)
    parquet_texts[4] = parquet_texts[7] = None
    parquet_labels = list(labels)
    parquet_labels[3] = parquet_labels[9] = float("nan")
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": parquet_texts, "label": parquet_labels}), parquet)
    return {
        "csv": write_csv(tmp_path / "data.csv", csv_rows),
        "jsonl": jsonl(tmp_path / "data.jsonl", [json.dumps(r) for r in json_rows]),
        "parquet": parquet,
    }


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_missing_labels_and_texts_that_are_not_text_are_dropped_and_counted_alike(tmp_path, capsys, kind):
    from trainer.cli import main
    from trainer.data import load_labelled

    path = formats(tmp_path)[kind]
    ds, dropped = load_labelled(str(path))
    assert (len(ds), dropped) == (56, 4)
    assert all(isinstance(t, str) for t in ds["text"])
    run = tmp_path / "run"
    assert main([*TINY, "--train.max_steps=1", f"--data.train_files={path}", f"--train.output_dir={run}"]) == 0
    assert "dropped 4 rows with an empty text or label" in capsys.readouterr().out
    assert read_json(run / "run_info.json")["data"]["train_dropped_empty"] == 4


def test_a_jsonl_text_column_mostly_of_numbers_is_refused(tmp_path, capsys):
    rows = [{"text": t if i % 3 == 0 else i, "label": y} for i, (t, y) in enumerate(review_rows(60))]
    data = jsonl(tmp_path / "n.jsonl", [json.dumps(r) for r in rows])
    line = bad_run(capsys, tmp_path, f"--data.train_files={data}")
    assert "the text column 'text' holds numbers in 40 of its 60 values, not text; set --data.text_column" in line


def test_write_error_names_the_file_a_library_failed_to_write(tmp_path):
    from trainer.errors import as_user_error, write_error

    error = write_error(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "m")
    assert (
        str(as_user_error(error))
        == "cannot use m: No space left on device; the disk is full; free space or choose another path"
    )
    assert write_error(UserError("bad input"), tmp_path) is None
    assert write_error(KeyError("a bug"), tmp_path / "x") is None  # this disk has space: nothing says why
