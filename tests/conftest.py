from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Every test gets its own cache and never talks to W&B servers."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "hf-datasets"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(cache / "no-netrc"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def run_cli(args: list[str], cwd: Path, env: dict | None = None, launcher: list[str] | None = None, timeout=300):
    """Run the trainer in a fresh process; returns the CompletedProcess."""
    command = (launcher or [sys.executable]) + ["-m", "trainer", *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_csv(path: Path, rows: list[tuple], header=("text", "label")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def review_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Small labelled rows from the built-in generator."""
    from trainer.corpus import CorpusConfig, generate_corpus

    corpus = generate_corpus(CorpusConfig(num_examples=n, seed=seed))
    return list(zip(corpus["text"], corpus["label"], strict=True))
