"""The accelerate configs and launch scripts users start from."""

import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO, start, wait_all

CONFIGS = REPO / "accelerate_configs"


def test_every_accelerate_config_loads_with_accelerates_own_loader():
    expected = {
        "cpu.yaml": {"distributed_type": "NO", "use_cpu": True, "num_processes": 1, "mixed_precision": "no"},
        "cpu_multi.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_machines": 1},
        "gpu.yaml": {"distributed_type": "NO", "num_processes": 1, "gpu_ids": "0", "mixed_precision": "no"},
        "multi_gpu.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 8, "mixed_precision": "no"},
        "multi_node.yaml": {
            "distributed_type": "MULTI_GPU",
            "num_machines": 4,
            "num_processes": 32,
            "rdzv_backend": "c10d",
            "machine_rank": 0,
        },
    }
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, fields in expected.items():
        config = load_config_from_file(str(CONFIGS / name)).to_dict()
        for key, value in fields.items():
            actual = config[key].value if hasattr(config[key], "value") else config[key]
            assert actual == value, f"{name}: {key}={actual!r}, expected {value!r}"


@pytest.mark.slow  # starts a process
def test_launch_scripts_are_valid_bash():
    for script in ("setup.sh", "train.sh", "test.sh", "slurm.sbatch", "sweep_trial.sh"):
        subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True)


@pytest.mark.slow  # starts a process
def test_a_failing_launcher_stops_the_others_at_once(tmp_path):
    """wait_all, which the multi-node tests use: a failure ends the wait and reports every process."""
    started = time.monotonic()
    # The failing one waits until the other has written its line: the report must carry both.
    procs = [
        start(["bash", "-c", "echo waiting >&2; touch ready; sleep 60"], tmp_path, dict(os.environ)),
        start(
            ["bash", "-c", "until [ -e ready ]; do sleep 0.05; done; echo broken >&2; exit 3"],
            tmp_path,
            dict(os.environ),
        ),
    ]
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_all(procs, timeout=60)
    assert time.monotonic() - started < 10
    assert [p.returncode for p in procs] == [-signal.SIGTERM, 3]
    message = str(failure.value)
    assert "a process failed" in message and "(stopped) ---\nwaiting" in message and "(exit 3) ---\nbroken" in message


def test_sweep_parameters_are_valid_trainer_overrides():
    from trainer.config import load_config

    sweep = yaml.safe_load((REPO / "launch" / "sweep.yaml").read_text())
    assert sweep["command"] == ["bash", "${program}", "${args}"] and (REPO / sweep["program"]).is_file()
    assert sweep["metric"] == {"name": "eval/accuracy", "goal": "maximize"}
    for key, spec in sweep["parameters"].items():
        candidates = spec.get("values") or ([spec["value"]] if "value" in spec else [spec["min"], spec["max"]])
        for value in candidates:
            config = load_config("imdb", [f"--{key}={value}"])  # a bad key or value raises UserError
            section, name = key.split(".")
            assert getattr(getattr(config, section), name) == value


@pytest.mark.slow  # starts a process
def test_sweep_trial_trains_through_train_sh_into_a_folder_per_wandb_run(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(REPO / "launch" / "sweep_trial.sh", tmp_path / "launch")
    stand_in = tmp_path / "launch" / "train.sh"  # prints the arguments it would train with
    stand_in.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "WANDB_RUN_ID": "abc123", "SWEEP_ARGS": "--data.train_files=my.csv --train.epochs=2"}
    done = subprocess.run(
        ["bash", str(tmp_path / "launch" / "sweep_trial.sh"), "--optim.lr=0.002"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "--config",
        "imdb",
        "--data.train_files=my.csv",
        "--train.epochs=2",
        "--logging.tracker=wandb",
        f"--train.output_dir={tmp_path}/runs/sweep-abc123",
        "--optim.lr=0.002",
    ]
