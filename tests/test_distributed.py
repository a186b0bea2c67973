"""Real multi-process runs through ``accelerate launch`` on the CPU (a gloo process group).

Every test asserts the world size it expects: on a CPU machine a launcher misconfiguration shows
up as several independent single-process runs, not as an error.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, evaluate_export, free_port, read_json, read_jsonl, run_cli, start, wait_all

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"


def launcher(num_processes: int, *extra: str) -> list[str]:
    port = str(free_port())
    return [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        port,
        *extra,
    ]


def launch(args: list[str], cwd: Path, num_processes: int = 2, env: dict | None = None, timeout: int = 300):
    result = run_cli(["--config", "tiny", *args], cwd=cwd, env=env, launcher=launcher(num_processes), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_form_one_group_and_end_with_identical_weights(tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    env = {
        "PYTHONPATH": f"{TESTS / 'audit'}:{REPO}",
        "AUDIT_PATH": str(tmp_path / "runs"),
        "AUDIT_DIR": str(audit),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    # 60 validation examples in batches of 7: 9 batches, which 2 processes cannot split evenly.
    result = launch(["--logging.tracker=wandb", "--train.eval_batch_size=7"], tmp_path, env=env)
    # No --train.output_dir: both ranks agree on one timestamped folder.
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-")
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["global_batch_size"] == 64
    digests = info["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # Each process takes half of each global batch: 9 optimizer steps per epoch instead of 17.
    assert info["steps_per_epoch"] == 9 and info["final_step"] == 18

    # Tokenised once: the main process did the work, the other one read the cache.
    per_rank = info["data_per_rank"]
    assert [r["train_tokens_cache_hit"] for r in per_rank] == [False, True]
    assert [r["tokenizer_source"] for r in per_rank] == ["trained", "main process"]

    # Validation over both processes gives exactly the single-process metrics of the same model.
    final = info["final_metrics"]
    assert final["n"] == info["data"]["validation_examples"] == 60
    alone = evaluate_export(run / "final", run)
    assert alone["n"] == 60 and alone["accuracy"] == final["accuracy"]
    for key in ("loss", "f1", "roc_auc"):
        assert alone[key] == pytest.approx(final[key], abs=1e-6)

    # Only rank 0 wrote into the run folder, except each rank's own part of a checkpoint (its RNG
    # states) inside the checkpoint's temporary folder.
    rank0 = (audit / "rank-0.txt").read_text().splitlines()
    rank1 = (audit / "rank-1.txt").read_text().splitlines()
    assert any("metrics.jsonl" in line for line in rank0) and any("best" in line for line in rank0)
    assert rank1 and all("/checkpoints/.tmp-step-" in line for line in rank1), rank1
    # One W&B run, and each line of output once.
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert result.stdout.count("run folder ") == 1 and result.stdout.count(": validation loss") == 2


def test_every_example_once_per_epoch_across_processes_and_reproducible(tmp_path):
    outputs = []
    for attempt in range(2):
        out = tmp_path / f"seen-{attempt}.json"
        command = [*launcher(2), str(TESTS / "scripts" / "shard_check.py"), str(out)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(json.loads(out.read_text()))
    first, second = outputs
    assert first["world_size"] == 2
    for epoch in first["epochs"]:
        seen = [i for rank in epoch for i in rank["seen"]]
        assert sorted(seen) == list(range(203)), "each example exactly once across the processes"
        assert len(epoch[0]["seen"]) > 0 and len(epoch[1]["seen"]) > 0
    assert first["epochs"][0] != first["epochs"][1], "a new order each epoch"
    assert first == second, "the same order from the same seed"


@pytest.mark.parametrize(
    "options",
    [[], ["--train.ema_decay=0.8", "--train.adversarial_epsilon=1", "--data.sampler=balanced"]],
    ids=["weights", "moving-average-adversarial-balanced-sampler"],
)
def test_one_process_with_batch_b_matches_two_with_b_over_2(tmp_path, options):
    common = ["--model.dropout=0", "--train.epochs=2", "--logging.tracker=none", "--optim.lr=1e-2", *options]
    one = tmp_path / "one"
    run_cli(["--config", "tiny", *common, "--train.batch_size=32", f"--train.output_dir={one}"], cwd=tmp_path)
    launch([*common, "--train.batch_size=16", f"--train.output_dir={tmp_path / 'two'}"], tmp_path)
    a, b = read_json(one / "run_info.json"), read_json(tmp_path / "two" / "run_info.json")
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert a["global_batch_size"] == b["global_batch_size"] == 32
    assert a["final_step"] == b["final_step"]
    # Same examples per step, same seed; only float summation order (and the last, uneven step) differ.
    assert b["final_metrics"]["loss"] == pytest.approx(a["final_metrics"]["loss"], abs=2e-3)
    assert b["final_metrics"]["accuracy"] == pytest.approx(a["final_metrics"]["accuracy"], abs=1 / 60 + 1e-9)
    assert len(set(b["weight_digests"])) == 1, "every process ends with the same (averaged) weights"
    assert a["examples_per_epoch"] == b["examples_per_epoch"]  # the balanced draw: smaller than the split
    # The balanced draw takes as many of each class as the rarest has (the tiny split, carved
    # stratified, is balanced already: then all of them); without it, every example once.
    assert a["examples_per_epoch"] <= a["data"]["train_examples"]
    if "--data.sampler=balanced" not in options:
        assert a["examples_per_epoch"] == a["data"]["train_examples"]


def test_schedule_steps_once_per_optimizer_step_with_processes_and_accumulation(tmp_path):
    run = tmp_path / "run"
    args = [
        "--train.batch_size=8",
        "--train.gradient_accumulation_steps=2",
        "--optim.warmup_steps=2",
        "--train.log_every_steps=1",
        "--logging.tracker=none",
        f"--train.output_dir={run}",
    ]
    launch(args, tmp_path)
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2 and info["global_batch_size"] == 8 * 2 * 2
    # 540 examples / 16 per round = 34 batches per process per epoch -> 17 optimizer steps.
    assert info["steps_per_epoch"] == 17 and info["total_steps"] == info["final_step"] == 34
    lrs = [r["train/lr"] for r in read_jsonl(run / "metrics.jsonl") if "train/lr" in r]
    assert len(lrs) == 34 and lrs[1] == pytest.approx(3e-3) and lrs[-1] < 1e-8
    assert all(a > b for a, b in itertools.pairwise(lrs[1:]))


def test_a_failing_rank_stops_every_process_with_its_message(tmp_path):
    env = {"PYTHONPATH": f"{TESTS / 'faults'}:{REPO}", "FAULT_RANK": "1", "FAULT_AT_STEP": "5"}
    started = time.monotonic()
    result = run_cli(
        ["--config", "tiny", "--train.epochs=50", "--logging.tracker=none", f"--train.output_dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        env=env,
        launcher=launcher(2),
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 120, f"took {elapsed:.0f}s to stop"
    assert "RuntimeError: injected fault on rank 1" in result.stderr
    assert read_json(tmp_path / "r" / "run_info.json")["world_size"] == 2


def test_the_others_wait_for_the_main_process_as_long_as_the_timeout_says(tmp_path):
    """The main process prepares the data while the others wait at a collective step, for at most
    --train.process_timeout_minutes (NCCL's own limit, 10 minutes, is shorter than a large corpus
    takes): past it, one line that names the setting; within it, the run trains."""
    env = {"PYTHONPATH": f"{TESTS / 'faults'}:{REPO}", "FAULT_RANK": "0", "FAULT_SLOW_PREPARE": "8"}
    common = ["--config", "tiny", "--train.epochs=1", "--logging.tracker=none"]
    out = tmp_path / "short"
    short = run_cli(
        [*common, "--train.process_timeout_minutes=0.05", f"--train.output_dir={out}"],  # 3 s
        cwd=tmp_path, env=env, launcher=launcher(2), timeout=240,
    )  # fmt: skip
    assert short.returncode != 0
    assert "[rank 1] error: this process waited for the others at a collective step longer than" in short.stderr
    assert "--train.process_timeout_minutes" in short.stderr
    # The main process, which the other's exit cut off, says so in one line (before the launcher stops it).
    assert "[rank0]: Traceback" not in short.stderr and "[rank1]: Traceback" not in short.stderr
    assert not out.exists()  # nothing was made: the main process stopped before the run folder
    out = tmp_path / "long"
    launch([*common[2:], "--train.process_timeout_minutes=0.5", f"--train.output_dir={out}"], tmp_path, env=env)
    assert read_json(out / "run_info.json")["world_size"] == 2


def test_a_config_error_is_reported_once(tmp_path):
    result = run_cli(["--config", "tiny", "--model.hiden_dim=3"], cwd=tmp_path, launcher=launcher(2))
    assert result.returncode != 0
    assert result.stderr.count("error: unknown config key 'model.hiden_dim'") == 1


def test_two_nodes_on_one_machine(tmp_path):
    port = free_port()
    run = tmp_path / "run"
    procs = []
    for rank in (0, 1):
        command = [
            ACCELERATE,
            "launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--num_processes",
            "2",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "trainer",
            "--config",
            "tiny",
            "--logging.tracker=none",
            f"--train.output_dir={run}",
        ]
        # LOGLEVEL=INFO: the launchers log their rendezvous and exit barrier, for a failure report.
        procs.append(start(command, tmp_path, {**os.environ, "PYTHONPATH": str(REPO), "LOGLEVEL": "INFO"}))
    outputs = wait_all(procs, timeout=300)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2
    assert info["weight_digests"][0] == info["weight_digests"][1]
    assert "run folder" in outputs[0][0] and "run folder" not in outputs[1][0]


def test_word_vectors_read_by_the_main_process_reach_every_process(tmp_path):
    vectors = tmp_path / "vectors.txt"
    words = ["film", "movie", "great", "boring", "acting", "plot"]
    vectors.write_text(
        "".join(
            f"{w} " + " ".join(str((i + 1) * 0.01 * (k + 1)) for k in range(16)) + "\n" for i, w in enumerate(words)
        )
    )
    run = tmp_path / "run"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    launch(
        [f"--train.output_dir={run}", f"--model.pretrained_embeddings={vectors}", "--train.max_steps=3"],
        tmp_path,
        env=env,
    )
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2
    stats = info["pretrained_embeddings"]
    assert stats["vectors_in_file"] == 6 and 4 <= stats["found"] <= 6, stats
    digests = info["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
