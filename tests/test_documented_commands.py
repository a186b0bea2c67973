"""Every command README.md and docs/*.md show runs as written.

The commands are the lines of the fenced ``bash``, ``sh``, ``shell``, ``zsh`` and ``console`` blocks
(a ``$`` prompt dropped, comments and ``#SBATCH`` lines left out, lines ending in a backslash
joined) and the ``$`` lines of blocks without a language (a transcript: a command, then what it
printed). Each runs once, with bash, in a folder that shows the repository (its files linked) and
the files the docs assume a reader has, made from the built-in generator: ``reviews.csv.gz``,
``a.jsonl``, ``amazon/train-*.parquet``, ``test.csv``, ``reviews.txt``, ..., and ``runs/imdb``, a
model of the tiny preset the test trains first (``runs/rt-seed1`` ... are copies of it).

The one change: a command that trains (``launch/train.sh``, ``launch/pretrain.sh``, ``-m trainer``,
``-m trainer.pretrain``) gets ``--train.max_steps=2`` appended, and ``--config tiny`` before that
where it names no preset. W&B is disabled and the Hub is offline. Commands that use a model run in
one folder, in the order the docs show them (an export before the prediction from it); the training
commands each run in a folder of their own beside them, two commands at a time.

A command that needs a GPU, SLURM, the network, ../shared/data or minutes of training is in SKIPPED
with the reason; every other command is run. A new command is therefore run by this test, or listed
in SKIPPED with a reason: the docs cannot grow commands nobody ran.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, review_rows

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = {"bash", "sh", "shell", "zsh", "console"}

GPU = "needs an NVIDIA GPU"
SLURM = "needs a SLURM cluster (tests/test_slurm.py runs one)"
HUB = "downloads a dataset or model from the Hugging Face Hub (the network)"
SHARED = "reads ../shared/data (25,000+ texts: minutes, and absent on a user's machine)"
SUITE = "runs the test suite, this test included"
INSTALL = "installs packages (the network)"
SKIPPED = {
    "./launch/test.sh": SUITE,
    './launch/test.sh -m "not slow"': SUITE,
    "./launch/test.sh -k sampler": SUITE,
    "./launch/test.sh -m slurm -rs": SUITE,
    "DEPS=latest ./launch/test.sh": SUITE + ", after installing the newest releases (the network)",
    "./launch/lock.sh --upgrade": INSTALL,
    'pip install -c launch/requirements.lock -e ".[bench]"': INSTALL,
    "./benchmarks/gpu_carry.sh": INSTALL + " and reads ../shared/data",
    "./benchmarks/gpu.sh gpu_check": GPU,
    "./benchmarks/gpu.sh --tiny /tmp/check": "a minute; tests/test_benchmarks.py runs it",
    "./launch/train.sh --config imdb --data.group_column=null": HUB,
    "./launch/train.sh --config sst2": HUB,
    "./launch/train.sh --config imdb --data.group_column=null --train.output_dir=runs/imdb "
    "--checkpoint.save_every_steps=200": HUB,
    "./launch/train.sh --config imdb --data.group_column=null --train.output_dir=runs/imdb "
    "--checkpoint.save_every_steps=200 --resume auto": HUB,
    "./launch/train.sh --config imdb --data.group_column=null --train.mixed_precision=no": HUB,
    "for k in 1 2 3; do ./launch/train.sh --config rt_polarity --train.seed=$k "
    "--train.output_dir=runs/rt-seed$k; done": HUB,
    "hf download --repo-type dataset fancyzhx/amazon_polarity --local-dir amazon": HUB,
    "python -m trainer.push --model runs/imdb/best --repo you/imdb-sentiment": HUB,
    "python -m trainer.push --model runs/imdb/best --repo you/imdb-sentiment [--private] [--revision BRANCH]": HUB,
    'python -m trainer.predict --model you/imdb-sentiment "A wonderful film."': HUB,
    "python -m trainer.evaluate --model you/imdb-sentiment --revision v1 --data test.csv --json": HUB,
    "wandb sweep launch/sweep.yaml": "creates a sweep on W&B's servers (the network)",
    'SWEEP_ARGS="--data.train_files=my.csv" wandb agent ENTITY/PROJECT/SWEEP_ID': "a W&B sweep (the network)",
    'sbatch --nodes=1 --gpus-per-node=1 --wrap "wandb agent --count 8 ENTITY/PROJECT/SWEEP_ID"': SLURM,
    "accelerate launch --config_file accelerate_configs/gpu.yaml -m trainer --config imdb "
    "--data.group_column=null": GPU,
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 -m trainer "
    "--config imdb --data.group_column=null": GPU,
    "sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sbatch --config imdb --data.group_column=null "
    "--train.output_dir=/shared/runs/imdb-4x8": SLURM,
    "sbatch --nodes=2 --gpus-per-node=8 --partition=gpu launch/slurm.sbatch --config imdb "
    "--data.group_column=null --train.output_dir=/shared/runs/imdb-2x8 --train.global_batch_size=512": SLURM,
    "sbatch --array=0-4 --nodes=1 launch/slurm.sbatch --config imdb --data.group_column=null "
    "--train.seed={task}": SLURM,
    "sbatch --array=0-3 --nodes=1 launch/slurm.sbatch --config sweep/{task}.yaml": SLURM,
    "sbatch --nodes=2-4 launch/slurm.sbatch --config imdb --data.group_column=null "
    "--train.output_dir=/shared/runs/imdb --train.global_batch_size=512": SLURM,
    "tests/scripts/slurm_cluster.sh start /tmp/cluster": SLURM,
    "export SLURM_CONF=/tmp/cluster/slurm.conf": SLURM,
    "sinfo -N": SLURM,
    "sbatch --nodes=2 --gpus-per-node=0 --cpus-per-task=1 launch/slurm.sbatch --config tiny "
    "--train.output_dir=/tmp/runs/two-nodes": SLURM,
    "tests/scripts/slurm_cluster.sh stop /tmp/cluster": SLURM,
    "./launch/train.sh --config imdb --data.train_files=../shared/data/imdb/train.csv.gz": SHARED,
    "./launch/train.sh --config sst2 --data.train_files=../shared/data/sst2/train.csv.gz "
    "--data.validation_files=../shared/data/sst2/validation.csv --data.text_column=text": SHARED,
    "./launch/pretrain.sh --config imdb --data.train_files=../shared/data/imdb/train.csv.gz "
    "--train.output_dir=runs/imdb-lm": SHARED,
    "./launch/train.sh --config imdb --data.train_files=../shared/data/imdb/train.csv.gz "
    "--model.init_from=runs/imdb-lm/best --train.output_dir=runs/imdb-from-lm": SHARED,
    "./launch/train.sh --config imdb --data.train_files=../shared/data/imdb/train.csv.gz "
    "--data.unlabeled_files=../shared/data/imdb/unsup.csv.gz --train.output_dir=runs/imdb-semi": SHARED,
    "python -m trainer.evaluate --model runs/imdb-semi/best --data reviews.csv --json": "scores the model of the "
    "command before it, which reads ../shared/data (tests/test_pretrain.py runs both on small files)",
    "python -m trainer.lr_find --config imdb --data.train_files=../shared/data/imdb/train.csv.gz --out lr.png": SHARED,
    "python -m trainer.lr_find --config imdb --data.train_files=../shared/data/imdb/train.csv.gz "
    "--steps 400 --start 1e-5 --out lr.png": SHARED,
    "python benchmarks/accuracy.py --seeds 1,2,3 -- --config imdb "
    "--data.train_files=../shared/data/imdb/train.csv.gz": SHARED,
    "python benchmarks/accuracy.py --cv-folds 10 -- --config rt_polarity "
    "--data.train_files=../shared/data/rt_polarity/all.csv": SHARED,
    "python benchmarks/accuracy.py --cv-folds 10 --seeds 1,2,3 --ensemble -- --config rt_polarity "
    "--data.train_files=../shared/data/rt_polarity/all.csv": SHARED,
    "python benchmarks/accuracy.py --seeds 1,2,3 --report final -- --config sst2 "
    "--data.train_files=../shared/data/sst2/train.csv.gz --data.validation_files=../shared/data/sst2/validation.csv "
    "--data.text_column=text": SHARED,
    "python benchmarks/accuracy.py --seeds 1,2,3 --report final --no-bow -- --config sst2 "
    "--data.train_files=../shared/data/sst2/train.csv.gz --data.validation_files=../shared/data/sst2/validation.csv "
    "--data.text_column=text": SHARED,
}
# Commands shown for the error they give: (exit code, what stderr says).
FAILING = {"python -m trainer --model.hiden_dim=3": (2, "unknown config key 'model.hiden_dim'")}

TRAINS = re.compile(r"(launch/(train|pretrain)\.sh|-m trainer(\.pretrain)?)(\s|$)")


def without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (outside quotes, after a blank)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_in(text: str) -> list[str]:
    """The shell commands of ``text``'s fenced code blocks, whitespace runs made single spaces: every
    line of a shell block, the ``$`` lines of a console block or of one without a language."""
    commands, language, pending = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence:
            language = fence[1].lower() if language is None else None
            continue
        stripped = line.strip()
        if language is None or language not in {*SHELL_BLOCKS, ""}:
            continue
        if not pending and language in ("console", "") and not stripped.startswith("$ "):
            continue  # what a command printed
        stripped = without_comment(stripped if pending else stripped.removeprefix("$ "))
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
        elif stripped or pending:
            commands.append(" ".join((pending + stripped).split()))
            pending = ""
    return commands


def documented_commands() -> dict[str, list[str]]:
    """Each command, once, in the order the docs show them: the files that show it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for command in commands_in(doc.read_text(encoding="utf-8")):
            found.setdefault(command, []).append(str(doc.relative_to(REPO)))
    return found


def as_run(command: str) -> str:
    """The command as the test runs it: a training one stops after 2 steps (tiny preset by default)."""
    if not TRAINS.search(command):
        return command
    named = re.search(r"--config[\s=]", command)  # a preset (not accelerate's --config_file)
    return command + ("" if named else " --config tiny") + " --train.max_steps=2"


def uses_a_model(command: str) -> bool:
    return bool(re.search(r"--model runs/", command))


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    """SKIPPED lists only commands the docs show, each with a reason; the rest are run below."""
    found = documented_commands()
    assert found, "no command found: the extraction is broken"
    stale = [command for command in SKIPPED if command not in found]
    assert not stale, f"SKIPPED lists commands the docs no longer show: {stale}"
    assert all(reason.strip() for reason in SKIPPED.values())
    assert set(FAILING) <= set(found) - set(SKIPPED)
    run = [command for command in found if command not in SKIPPED]
    assert any(TRAINS.search(c) for c in run) and any(uses_a_model(c) for c in run)


def test_commands_are_read_as_a_shell_reads_them():
    text = """
```bash
./a.sh --x=1   # a comment
#SBATCH --nodes=4   # a directive, a comment to bash
python -m b "a # in quotes" \\
    --y=2
```
```
$ c --json
{"output": 1}
```
```console
$ d
e
```
```python
f()
```
"""
    assert commands_in(text) == ["./a.sh --x=1", 'python -m b "a # in quotes" --y=2', "c --json", "d"]
    assert as_run("./launch/train.sh") == "./launch/train.sh --config tiny --train.max_steps=2"
    assert (
        as_run("python -m trainer --config imdb --x=1") == "python -m trainer --config imdb --x=1 --train.max_steps=2"
    )
    assert as_run("python -m trainer.evaluate --model m") == "python -m trainer.evaluate --model m"


def make_reader_files(folder: Path) -> None:
    """The files the docs' commands name, as a reader would have them (text,label and friends)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rows = review_rows(300, seed=1)

    def write(path: Path, header: list[str], records: list) -> None:
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(records)

    for name in ("imdb_validation.csv", "test.csv", "rt_fold0.csv"):
        write(folder / name, ["text", "label"], rows[:40])
    write(
        folder / "reviews.csv", ["text", "label", "product_id"], [(t, y, f"p{i % 30}") for i, (t, y) in enumerate(rows)]
    )
    write(folder / "reviews.plain.csv", ["text", "label"], rows)
    (folder / "reviews.csv.gz").write_bytes(gzip.compress((folder / "reviews.plain.csv").read_bytes()))
    (folder / "reviews.plain.csv").unlink()
    (folder / "reviews.txt").write_text("\n".join(t for t, _ in rows[:5]) + "\n", encoding="utf-8")
    for name, part in (("a.jsonl", rows[:150]), ("b.jsonl", rows[150:])):
        lines = [json.dumps({"review": t, "stars": 5 if y else 1}) for t, y in part]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "amazon").mkdir()
    for shard, part in enumerate((rows[:150], rows[150:])):
        titles = [" ".join(t.split()[:4]) for t, _ in part]
        table = pa.table({"title": titles, "content": [t for t, _ in part], "label": [y for _, y in part]})
        pq.write_table(table, folder / "amazon" / f"train-{shard:05d}-of-00002.parquet")
    shutil.copy(REPO / "accelerate_configs" / "cpu.yaml", folder / "my_config.yaml")


def repository_view(folder: Path, reader_files: Path) -> Path:
    """``folder`` with links to the repository's files (./launch/train.sh finds its .venv through
    them) and to the reader's files; runs/ and the rest a command writes are its own."""
    folder.mkdir(parents=True)
    for entry in [*REPO.iterdir(), *reader_files.iterdir()]:
        if entry.name not in {".git", "runs", "wandb", ".pytest_cache", ".ruff_cache", "carry"}:
            (folder / entry.name).symlink_to(entry)
    return folder


def run_command(command: str, folder: Path, env: dict, as_documented: bool = True) -> dict:
    """Runs ``command`` (``as_run``'s version of it where ``as_documented``) with bash in ``folder``."""
    line = as_run(command) if as_documented else command
    done = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    return {"command": command, "ran": line, "code": done.returncode, "stderr": done.stderr}


def run_in_order(commands: list[str], folder: Path, env: dict) -> list[dict]:
    """The model the docs use (runs/imdb, and copies named as the ensemble examples name them),
    then ``commands`` one after the other in ``folder``."""
    model = run_command("python -m trainer --config tiny --train.output_dir=runs/imdb", folder, env, False)
    if model["code"] != 0:
        return [model]
    for name in ("rt-seed1", "rt-seed2", "rt-seed3", "rt-fold0-seed1", "rt-fold0-seed2", "rt-fold0-seed3"):
        shutil.copytree(folder / "runs" / "imdb" / "final", folder / "runs" / name / "final")
    return [model] + [run_command(command, folder, env) for command in commands]


@pytest.mark.slow  # starts processes
def test_documented_commands_run_as_written(tmp_path):
    found = documented_commands()
    commands = [command for command in found if command not in SKIPPED]
    reader_files = tmp_path / "reader"
    make_reader_files(reader_files)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "PYTHONPATH"}
    env |= {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WANDB_MODE": "disabled"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with_model = [command for command in commands if uses_a_model(command)]
    alone = [command for command in commands if not uses_a_model(command)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # 2 cores: the model's commands beside the others
        chain = pool.submit(run_in_order, with_model, repository_view(tmp_path / "models", reader_files), env)
        others = [
            pool.submit(run_command, command, repository_view(tmp_path / f"command-{i}", reader_files), env)
            for i, command in enumerate(alone)
        ]
        results = chain.result() + [future.result() for future in others]
    failed = []
    for result in results:
        code, message = FAILING.get(result["command"], (0, ""))
        if result["code"] != code or message not in result["stderr"]:
            where = ", ".join(found.get(result["command"], ["the test's own model"]))
            failed.append(f"{result['ran']} ({where}) exited {result['code']}:\n{result['stderr'][-1500:]}")
    assert not failed, "\n\n".join(failed)
    assert len(results) == len(commands) + 1, "a command of the model's folder did not run"
