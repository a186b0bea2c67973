"""The accelerate configs and launch scripts users start from."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from conftest import REPO, read_json

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
    for script in ("setup.sh", "train.sh", "test.sh", "slurm.sbatch"):
        subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True)
    sbatch = (REPO / "launch" / "slurm.sbatch").read_text()
    for line in ("#SBATCH --nodes=", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=",
                 "scontrol show hostnames", "--machine_rank \"$SLURM_NODEID\"", "--rdzv_backend c10d"):  # fmt: skip
        assert line in sbatch


@pytest.mark.slow
def test_slurm_script_runs_two_nodes_with_stand_in_srun_and_scontrol(tmp_path):
    """The batch script end to end, with srun/scontrol replaced by local stand-ins on loopback."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'localhost\\nlocalhost\\n'\n")
    # srun: one copy of the command per node, each with its own SLURM_NODEID, as SLURM would. The
    # head node starts first: here both "nodes" are this host, and only one may own the rendezvous port.
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\nshift  # --kill-on-bad-exit=1\npids=()\n"
        'for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@" & pids+=($!); sleep 3; done\n'
        'status=0; for p in "${pids[@]}"; do wait "$p" || status=1; done; exit $status\n'
    )
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "VENV": sys.prefix,
        "PYTHONPATH": str(REPO),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_NNODES": "2",
        "GPUS_PER_NODE": "1",
        "HEAD_PORT": str(29600 + os.getpid() % 300),
    }
    run = tmp_path / "run"
    args = ["--config", "tiny", "--train.mixed_precision=no", "--logging.tracker=none", f"--train.output_dir={run}"]
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm.sbatch"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 2 and info["distributed_type"] == "MULTI_CPU"
    assert info["weight_digests"][0] == info["weight_digests"][1]
    assert result.stdout.count("run folder ") == 1
