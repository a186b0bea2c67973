"""Real 2-process runs through ``accelerate launch`` on the CPU (a gloo process group)."""

import shutil
import sys
from pathlib import Path

import pytest
from conftest import read_json, read_jsonl, run_cli

pytestmark = pytest.mark.slow
AUDIT = Path(__file__).parent / "audit"


def accelerate_launch(num_processes: int) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [
        accelerate,
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
        "0",
    ]


def test_two_processes_form_one_group_and_end_with_identical_weights(tmp_path):
    audit = tmp_path / "audit"
    audit.mkdir()
    env = {
        "PYTHONPATH": f"{AUDIT}:{Path(__file__).parents[1]}",
        "AUDIT_PATH": str(tmp_path / "runs"),
        "AUDIT_DIR": str(audit),
    }
    result = run_cli(
        ["--config", "tiny", "--logging.tracker=wandb"], cwd=tmp_path, env=env, launcher=accelerate_launch(2)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # No --train.output_dir: both ranks agree on one timestamped folder.
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("tiny-")
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["global_batch_size"] == 64
    digests = info["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]

    # The same number of optimizer steps as one process with the per-process batch: each rank sees half.
    assert info["steps_per_epoch"] == 9 and info["final_step"] == 18
    assert info["final_metrics"]["n"] == info["data"]["validation_examples"] == 60

    # Only rank 0 wrote into the run folder; rank 1 wrote nothing at all.
    rank0 = (audit / "rank-0.txt").read_text().splitlines()
    rank1 = (audit / "rank-1.txt").read_text().splitlines()
    assert any("metrics.jsonl" in line for line in rank0) and any("best" in line for line in rank0)
    assert rank1 == []
    # One W&B run, one line of progress output per step record.
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert result.stdout.count("run folder ") == 1 and result.stdout.count(": validation loss") == 2
    assert len([r for r in read_jsonl(run / "metrics.jsonl") if "eval/loss" in r]) == 2
