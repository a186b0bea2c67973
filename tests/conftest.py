from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


@pytest.fixture
def fresh_accelerator_state():
    """In-process runs: each ``main()`` starts from a clean Accelerate state, as a new process would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


# What tests/faults/sitecustomize.py reads to inject a fault:
FAULT_VARIABLES = {"FAULT_AT_STEP", "FAULT_KILL_IN_SAVE", "FAULT_SLOW_PREPARE", "FAULT_SLOW_STEP"}


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict | None = None,
    launcher: list[str] | None = None,
    timeout=300,
    module="trainer",
):
    """Run the trainer (or ``module``: trainer.pretrain) in a fresh process; returns the CompletedProcess."""
    command = (launcher or [sys.executable]) + ["-m", module, *args]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if FAULT_VARIABLES.intersection(env or {}):
        assert_fault_fired(result.stderr)
    return result


def assert_fault_fired(output: str) -> None:
    """A run given a fault (tests/faults) must show that it fired, or the test proves nothing."""
    assert "injected fault: " in output, (
        "the injected fault never fired (tests/faults hooks trainer.training.loop.optimizer_step, the data's "
        "loading and checkpoint renames): "
        f"the run did not fail where the test meant it to\n{output[-2000:]}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """A launcher in its own process group, its output in files (a pipe nobody reads can block it)."""
    out, err = (tempfile.TemporaryFile("w+", encoding="utf-8") for _ in range(2))  # noqa: SIM115 (closed by wait_all)
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
    proc.outputs = (out, err)
    return proc


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """(stdout, stderr) of processes from start(), once all have exited.

    When one fails, or the timeout passes, the others are stopped with everything they started,
    and the test fails with the end of each one's stderr: a launcher waiting for a peer that is
    gone would otherwise sit out its own timeouts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes or any(codes):
            break
        time.sleep(0.2)
    stopped = [p for p in procs if p.poll() is None]
    why = "a process failed" if any(p.returncode for p in procs) else f"still running after {timeout}s"
    for p in stopped:  # SIGTERM first: a launcher then stops its workers (in sessions of their own)
        os.killpg(p.pid, signal.SIGTERM)
    for p in stopped:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    outputs = []
    for p in procs:
        for f in p.outputs:
            f.seek(0)
        outputs.append(tuple(f.read() for f in p.outputs))
        for f in p.outputs:
            f.close()
    if stopped:
        ends = ["stopped" if p in stopped else f"exit {p.returncode}" for p in procs]
        tails = "\n".join(
            f"--- process {i} ({end}) ---\n{err[-2500:]}"
            for i, (end, (_, err)) in enumerate(zip(ends, outputs, strict=True))
        )
        pytest.fail(f"{why}:\n{tails}")
    return outputs


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# The attention scores' bias: softmax ignores a shift of every score, so its gradient is float noise,
# which Adam turns into steps of about the learning rate. It changes no prediction.
SHIFT_INVARIANT = {"attention.2.bias"}


def weight_difference(run: Path, other: Path) -> float:
    """The largest difference between two runs' final weights (but for SHIFT_INVARIANT), after
    checking that their final validation losses agree to 1e-6."""
    from safetensors.torch import load_file

    ours, theirs = (load_file(r / "final" / "model.safetensors") for r in (run, other))
    assert ours.keys() == theirs.keys()
    losses = [read_json(r / "run_info.json")["final_metrics"]["loss"] for r in (run, other)]
    assert abs(losses[0] - losses[1]) < 1e-6, losses
    return max(float((ours[k] - theirs[k]).abs().max()) for k in ours if k not in SHIFT_INVARIANT)


def write_csv(path: Path, rows: list[tuple], header=("text", "label")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def evaluate_export(model_dir: Path, run_dir: Path) -> dict:
    """Single-process validation metrics of an exported model on its run's own validation split."""
    import torch

    from trainer.config import load_config
    from trainer.data import build_dataloaders, prepare_data
    from trainer.inference.folder import load_exported
    from trainer.metrics import classification_metrics
    from trainer.models.sentiment import class_probabilities, classification_loss

    config = load_config(str(run_dir / "config.yaml"), [])
    data = prepare_data(config.data, config.tokenizer)
    model, tokenizer, _ = load_exported(model_dir)
    assert tokenizer.to_str() == data.tokenizer.to_str()
    _, loader = build_dataloaders(data, config.data, batch_size=16, eval_batch_size=64)
    probs, labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["input_ids"], batch["lengths"])
            probs.append(class_probabilities(logits))
            labels.append(batch["labels"])
            losses.append(classification_loss(logits, batch["labels"], reduction="none"))
    return classification_metrics(torch.cat(probs), torch.cat(labels), torch.cat(losses))


def review_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Small labelled rows from the built-in generator."""
    from trainer.data.corpus import CorpusConfig, generate_corpus

    corpus = generate_corpus(CorpusConfig(num_examples=n, seed=seed))
    return list(zip(corpus["text"], corpus["label"], strict=True))
