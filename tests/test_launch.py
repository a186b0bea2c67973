"""The accelerate configs and launch scripts users start from."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO, free_port, read_json, start, wait_all

CONFIGS = REPO / "accelerate_configs"


def test_every_accelerate_config_loads_with_accelerates_own_loader():
    expected = {
        "cpu.yaml": {"distributed_type": "NO", "use_cpu": True, "num_processes": 1, "mixed_precision": "no"},
        "cpu_multi.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_machines": 1},
        "gpu.yaml": {"distributed_type": "NO", "num_processes": 1, "gpu_ids": "0", "mixed_precision": "bf16"},
        "multi_gpu.yaml": {"distributed_type": "MULTI_GPU", "num_processes": 8, "mixed_precision": "bf16"},
        "multi_node.yaml": {"distributed_type": "MULTI_GPU", "num_machines": 4, "num_processes": 32,
                            "rdzv_backend": "c10d", "machine_rank": 0},
    }  # fmt: skip
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, fields in expected.items():
        config = load_config_from_file(str(CONFIGS / name)).to_dict()
        for key, value in fields.items():
            actual = config[key].value if hasattr(config[key], "value") else config[key]
            assert actual == value, f"{name}: {key}={actual!r}, expected {value!r}"


def test_launch_scripts_are_valid_bash():
    for script in ("setup.sh", "train.sh", "test.sh", "slurm.sbatch", "sweep_trial.sh"):
        subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True)
    sbatch = (REPO / "launch" / "slurm.sbatch").read_text()
    for line in ("#SBATCH --nodes=", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=",
                 "scontrol show hostnames", "--machine_rank \"$SLURM_NODEID\"", "--rdzv_backend c10d"):  # fmt: skip
        assert line in sbatch


def slurm_stand_ins(tmp_path: Path) -> dict:
    """srun/scontrol stand-ins on PATH, and the environment SLURM would give the batch script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # scancel --signal=TERM: the job steps get SIGTERM (here: the srun stand-in, which passes it on).
    (bin_dir / "scancel").write_text('#!/usr/bin/env bash\nkill -TERM "$(cat "$SRUN_PID_FILE")"\n')
    # scontrol: two "nodes" that are this host; a requeue (which asks slurmctld: it takes a while)
    # is recorded in a file.
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = requeue ]; then sleep 3; echo "$2" >> "$REQUEUE_LOG"; exit 0; fi\n'
        "printf 'localhost\\nlocalhost\\n'\n"
    )
    # srun: one copy of the command per node, each with its own SLURM_NODEID, as SLURM would, and
    # SIGTERM passed on to them. The head node starts first: here both "nodes" are this host, and
    # only one may own the rendezvous port. --kill-on-bad-exit=1: the first task to exit non-zero
    # gets the others terminated.
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nshift  # --kill-on-bad-exit=1\necho $$ > "$SRUN_PID_FILE"\npids=()\n'
        "trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM\n"
        'for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@" & pids+=($!); sleep 3; done\n'
        "status=0\n"
        "while ((${#pids[@]})); do\n"
        '  done_pid=""; wait -n -p done_pid "${pids[@]}"; rc=$?\n'
        '  [ -n "$done_pid" ] || continue  # the TERM trap interrupted the wait\n'
        '  left=(); for p in "${pids[@]}"; do [ "$p" = "$done_pid" ] || left+=("$p"); done; pids=("${left[@]}")\n'
        '  if ((rc)); then status=$rc; ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null; fi\n'
        "done\n"
        "exit $status\n"
    )
    for tool in ("srun", "scontrol", "scancel"):
        (bin_dir / tool).chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "VENV": sys.prefix,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "LOGLEVEL": "INFO",  # the launchers log their rendezvous and exit barrier, for a failure report
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "GPUS_PER_NODE": "1",
        "HEAD_PORT": str(free_port()),
        "REQUEUE_LOG": str(tmp_path / "requeued"),
        "SRUN_PID_FILE": str(tmp_path / "srun.pid"),
    }


def test_a_failing_launcher_stops_the_others_at_once(tmp_path):
    """wait_all, which the multi-node tests use: a failure ends the wait and reports every process."""
    started = time.monotonic()
    # The failing one waits until the other has written its line: the report must carry both.
    procs = [start(["bash", "-c", "echo waiting >&2; touch ready; sleep 60"], tmp_path, dict(os.environ)),
             start(["bash", "-c", "until [ -e ready ]; do sleep 0.05; done; echo broken >&2; exit 3"],
                   tmp_path, dict(os.environ))]  # fmt: skip
    with pytest.raises(pytest.fail.Exception) as failure:
        wait_all(procs, timeout=60)
    assert time.monotonic() - started < 10
    assert [p.returncode for p in procs] == [-signal.SIGTERM, 3]
    message = str(failure.value)
    assert "a process failed" in message and "(stopped) ---\nwaiting" in message and "(exit 3) ---\nbroken" in message


@pytest.mark.slow
def test_slurm_script_runs_two_nodes_with_stand_in_srun_and_scontrol(tmp_path):
    """The batch script end to end, with srun/scontrol replaced by local stand-ins on loopback."""
    run = tmp_path / "run"
    args = ["--config", "tiny", "--train.mixed_precision=no", "--logging.tracker=none", f"--train.output_dir={run}"]
    job = start(["bash", str(REPO / "launch" / "slurm.sbatch"), *args], tmp_path, slurm_stand_ins(tmp_path))
    ((out, err),) = wait_all([job], timeout=300)
    assert job.returncode == 0, err[-3000:]
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["weight_digests"][0] == info["weight_digests"][1]
    assert out.count("run folder ") == 1


@pytest.mark.slow
def test_slurm_time_limit_signal_checkpoints_requeues_and_the_next_job_resumes(tmp_path):
    env = {**slurm_stand_ins(tmp_path), "SLURM_JOB_ID": "4242"}
    run = tmp_path / "run"
    args = ["--config", "tiny", "--train.mixed_precision=no", "--logging.tracker=none", f"--train.output_dir={run}"]
    command = ["bash", str(REPO / "launch" / "slurm.sbatch"), *args]
    job = start([*command, "--train.epochs=300"], tmp_path, env)
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline and job.poll() is None, "training did not start"
        time.sleep(0.5)
    job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
    ((out, err),) = wait_all([job], timeout=120)
    assert "stopped by signal SIGTERM" in out, err[-3000:]
    assert (tmp_path / "requeued").read_text().split() == ["4242"]
    assert list((run / "checkpoints").iterdir())
    # The requeued job: the same command, which resumes. On a real cluster it runs on fresh nodes;
    # here on the same host, so on a fresh port: the killed job's rendezvous may still hold the old one.
    env["HEAD_PORT"] = str(free_port())
    job = start([*command, "--train.epochs=2"], tmp_path, env)
    ((out, err),) = wait_all([job], timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert "resumed from" in out
    assert read_json(run / "run_info.json")["world_size"] == 2


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


def test_sweep_trial_trains_through_train_sh_into_a_folder_per_wandb_run(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(REPO / "launch" / "sweep_trial.sh", tmp_path / "launch")
    stand_in = tmp_path / "launch" / "train.sh"  # prints the arguments it would train with
    stand_in.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "WANDB_RUN_ID": "abc123", "SWEEP_ARGS": "--data.train_files=my.csv --train.epochs=2"}
    done = subprocess.run(["bash", str(tmp_path / "launch" / "sweep_trial.sh"), "--optim.lr=0.002"], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.splitlines() == [
        "--config", "imdb", "--data.train_files=my.csv", "--train.epochs=2", "--logging.tracker=wandb",
        f"--train.output_dir={tmp_path}/runs/sweep-abc123", "--optim.lr=0.002",
    ]  # fmt: skip
