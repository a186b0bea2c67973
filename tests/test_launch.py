"""The accelerate configs and launch scripts users start from."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO, start, wait_all
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

CONFIGS = REPO / "accelerate_configs"


def test_every_accelerate_config_loads_with_accelerates_own_loader():
    expected = {
        "cpu.yaml": {"distributed_type": "NO", "use_cpu": True, "num_processes": 1, "mixed_precision": "no"},
        "cpu_multi.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_machines": 1},
        "gpu.yaml": {"distributed_type": "NO", "num_processes": 1, "gpu_ids": "all", "mixed_precision": "no"},
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
    for script in ("setup.sh", "lock.sh", "train.sh", "test.sh", "slurm.sbatch", "sweep_trial.sh"):
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


def locked_versions() -> dict[str, Version]:
    lines = (REPO / "launch" / "requirements.lock").read_text().splitlines()
    pins = [re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line) for line in lines]
    return {canonicalize_name(m[1]): Version(m[2]) for m in pins if m}


def project_requirements(extras: set[str] | None = None) -> list[Requirement]:
    """The project's own requirements with these extras (all of them: None), as pyproject.toml states them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + [r for e in extras or optional for r in optional[e]]]


def test_the_lock_satisfies_every_range_of_pyproject():
    locked = locked_versions()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in launch/requirements.lock: run ./launch/lock.sh"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"lock {name}=={locked[name]}"
    assert locked[canonicalize_name("torch")].local == "cpu", "the lock names torch's CPU build"


@pytest.mark.skipif(os.environ.get("DEPS") != "locked", reason="only in a venv of launch/setup.sh with DEPS=locked")
def test_the_environment_has_the_locked_versions():
    """What launch/setup.sh installed is what the lock says: every package the project and its dev
    extra need, followed through their own requirements, at its locked version."""
    locked, seen, todo = locked_versions(), set(), project_requirements({"dev"})
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        installed = Version(metadata.version(name))
        assert name in locked, f"{name} {installed} is installed but not locked: run ./launch/lock.sh"
        if name == "torch":  # PyPI's CUDA build on a GPU machine, the CPU build elsewhere
            assert installed.public == locked[name].public, f"torch {installed}, locked {locked[name]}"
        else:
            assert installed == locked[name], f"{name} {installed} is installed, the lock says {locked[name]}"
        todo += [Requirement(r) for r in metadata.requires(name) or []]
    assert {"torch", "accelerate", "datasets", "tokenizers", "wandb", "pytest"} <= seen


def fake_nvidia_smi(folder, gpus: int) -> dict:
    """An environment whose PATH finds an nvidia-smi that lists ``gpus`` GPUs."""
    (folder / "nvidia-smi").write_text(
        "#!/bin/sh\n" + "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})"\n' for i in range(gpus))
    )
    (folder / "nvidia-smi").chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


@pytest.mark.slow  # starts a process
@pytest.mark.skipif(not list(Path(sys.prefix).glob(".installed-*")), reason="needs a venv made by launch/setup.sh")
def test_setup_refuses_a_gpu_machine_whose_torch_cannot_use_the_gpus(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    env = {**fake_nvidia_smi(tmp_path, 2), "VENV": sys.prefix, "DEPS": os.environ.get("DEPS", "locked")}
    command = ["bash", "-c", f"source {REPO}/launch/setup.sh ''"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"2 NVIDIA GPU(s) visible but the torch in {sys.prefix} cannot use them" in done.stderr
    assert done.stderr.count("\n") == 1, "one line"
    done = subprocess.run(command, env={**env, "ALLOW_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow  # starts processes
@pytest.mark.skipif(not list(Path(sys.prefix).glob(".installed-*")), reason="needs a venv made by launch/setup.sh")
def test_train_sh_starts_one_process_per_gpu_the_job_may_use(tmp_path):
    """A job given GPUs 3 and 5 of 8 trains on those two, and accelerate keeps CUDA_VISIBLE_DEVICES."""
    env = {**fake_nvidia_smi(tmp_path, 8), "VENV": sys.prefix, "ALLOW_CPU": "1", "DRY_RUN": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("ACCELERATE_CONFIG", None)

    def command(**visible) -> str:
        done = subprocess.run(
            ["bash", str(REPO / "launch" / "train.sh"), "--config", "tiny"],
            env={**env, **visible},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    configs = REPO / "accelerate_configs"
    assert (
        command()
        == f"accelerate launch --config_file {configs}/multi_gpu.yaml --num_processes 8 -m trainer --config tiny"
    )
    assert "multi_gpu.yaml --num_processes 2 " in command(CUDA_VISIBLE_DEVICES="3,5")
    uuids = "GPU-8f2a1b3c-0000-1111-2222-333344445555,GPU-9e1d2c3b-0000-1111-2222-333344445555"
    assert "multi_gpu.yaml --num_processes 2 " in command(CUDA_VISIBLE_DEVICES=uuids)
    assert f"{configs}/gpu.yaml -m trainer" in command(CUDA_VISIBLE_DEVICES="3")
    assert "multi_gpu.yaml --num_processes 1 " in command(CUDA_VISIBLE_DEVICES="3,5", NUM_PROCESSES="1")
    for none in ("", "-1", "NoDevFiles", "-1,0"):
        assert f"{configs}/cpu.yaml " in command(CUDA_VISIBLE_DEVICES=none), none
    gpu_ids = yaml.safe_load((configs / "gpu.yaml").read_text())["gpu_ids"]
    assert gpu_ids == "all", "any other value makes accelerate overwrite CUDA_VISIBLE_DEVICES"
