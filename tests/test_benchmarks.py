"""The benchmark scripts that CI cannot run for real still run: the GPU check on the CPU."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow  # starts a process
def test_the_gpu_check_runs_every_stage_on_the_cpu_and_writes_each_as_it_ends(tmp_path):
    """benchmarks/gpu.sh --tiny: the GPU machine's command, on the CPU at a tiny size, so it cannot rot.

    Batches moved to the device count as on an accelerator (tests/faults EMULATE_DEVICE): what CUDA
    refuses, such as lengths on the GPU given to pack_padded_sequence, fails here too."""
    out, marker = tmp_path / "check", tmp_path / "marker"
    env = {**os.environ, "PYTHON": sys.executable, "CARRY": str(tmp_path / "no-carry")}
    env |= {"PYTHONPATH": f"{REPO / 'tests' / 'faults'}:{REPO}", "EMULATE_DEVICE": "1", "FAULT_MARKER": str(marker)}
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu.sh"), "--tiny", str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench_gpu.py --out" in marker.read_text()  # the emulation was on where the batches are moved
    stages = {r["stage"]: r for r in map(json.loads, (out / "stages.jsonl").read_text().splitlines())}
    assert list(stages) == ["env", "bench", "train-no", "train-bf16", "resume", "syncs", "predict", "evaluate"]
    assert all(r["ok"] for r in stages.values()), [r for r in stages.values() if not r["ok"]]
    assert stages["train-bf16"]["recurrent_dtype"] == "torch.bfloat16" and stages["train-no"]["tokens_per_s"] > 0
    assert stages["resume"]["bit_exact"] and stages["resume"]["resumed_from"].endswith("step-00000008")
    assert stages["syncs"]["syncs_per_steady_step"] == 0 and stages["syncs"]["steady_steps"] >= 10
    assert stages["evaluate"]["accuracy"] >= 0 and len(stages["predict"]["predictions"]) == 2
    bench = stages["bench"]  # bench_gpu.py's result, also in bench.json
    check = bench["correctness"]
    assert check["passed"] and check["float32_max_abs_diff"] == 0.0
    assert check["padding_invariance_max_abs_diff"] < 1e-5
    runs = bench["tiny"]
    for name in ("ours_fp32", "ours_bf16", "reference_fp32", "packed_fp32"):
        assert runs[name]["tokens_per_s"] > 0 and runs[name]["tflops"] > 0
    # 2 layers, bidirectional, E = H = 16: 3 x 2 x 8 x 16 x ((16 + 16) + (32 + 16)) FLOPs per token
    assert runs["training_flops_per_token"] == 3 * 2 * 8 * 16 * (32 + 48)
    assert bench["trainer_run"]["steps"] == 20 and bench["trainer_run"]["device"] == "cpu"


@pytest.mark.slow  # starts a process
def test_gpu_script_refuses_a_machine_without_a_gpu(tmp_path):
    fake = tmp_path / "nvidia-smi"  # what nvidia-smi does where there is no GPU
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(
        [str(REPO / "benchmarks" / "gpu.sh"), str(tmp_path / "r.json")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow  # starts a process
def test_accuracy_script_reports_the_model_asked_for_over_seeds(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "accuracy.py"),
        "--no-bow",
        "--seeds",
        "1,2",
        "--report",
        "final",
        "--",
        "--config",
        "tiny",
        "--train.epochs=3",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    runs = result["runs"]
    assert [r["seed"] for r in runs] == [1, 2] and result["reported_model"] == "final"
    assert runs[0]["final_accuracy"] != runs[1]["final_accuracy"] or runs[0]["best_step"] != runs[1]["best_step"]
    assert result["accuracy_mean"] == round((runs[0]["final_accuracy"] + runs[1]["final_accuracy"]) / 2, 4)
    assert result["accuracy_mean"] == result["final_accuracy_mean"]


@pytest.mark.slow  # starts a process
def test_accuracy_script_trains_every_seed_on_every_fold_and_scores_their_ensemble(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    # Seed 1 twice: each fold's ensemble is of two copies of one model, so it must score exactly as
    # the trainer scored that model on the held-out fold (the same fold, labels and predictions).
    # --folds 0,2: only those two of the three folds run.
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "accuracy.py"),
        "--no-bow",
        "--cv-folds",
        "3",
        "--folds",
        "0,2",
        "--seeds",
        "1,1",
        "--ensemble",
        "--",
        "--config",
        "tiny",
        "--train.epochs=1",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    folds = [["--data.cv_folds=3", f"--data.cv_fold={k}"] for k in (0, 2)]
    assert [r["args"] for r in result["runs"]] == [folds[0], folds[0], folds[1], folds[1]]
    assert [e["args"] for e in result["ensembles"]] == folds
    for ensemble, runs in zip(result["ensembles"], (result["runs"][:2], result["runs"][2:]), strict=True):
        assert runs[0]["final_accuracy"] == runs[1]["final_accuracy"]
        assert ensemble["accuracy"] == pytest.approx(runs[0]["final_accuracy"])
        assert ensemble["train_seconds"] == pytest.approx(runs[0]["train_seconds"] + runs[1]["train_seconds"])
    assert result["ensemble_accuracy_mean"] == round(sum(e["accuracy"] for e in result["ensembles"]) / 2, 4)
    alone = subprocess.run([*command[:8], "1", *command[9:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert alone.returncode == 2 and "--ensemble needs two or more --seeds" in alone.stderr  # nothing to average
    beyond = subprocess.run([*command[:6], "0,3", *command[7:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert beyond.returncode == 2 and "--folds 0,3: give folds 0 to K-1 of --cv-folds K" in beyond.stderr


@pytest.mark.slow  # starts a process
def test_accuracy_script_repeats_the_runs_on_every_split_seed_from_a_language_model_of_each(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    script = str(REPO / "benchmarks" / "accuracy.py")
    command = [sys.executable, script, "--no-bow", "--seeds", "1", "--split-seeds", "1,2", "--report", "final"]
    command += ["--pretrain", "--pretrain-args=--pretrain.epochs=1"]
    done = subprocess.run(
        [*command, "--", "--config", "tiny", "--train.epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    runs = result["runs"]
    assert [r["args"] for r in runs] == [["--data.split_seed=1"], ["--data.split_seed=2"]]
    assert runs[0]["pretrain_loss"] != runs[1]["pretrain_loss"], "one language model per split"
    assert result["pretrain_seconds_median"] > 0 and all(r["pretrain_step"] > 0 for r in runs)
    cache = tmp_path / "cache" / "sentiment-trainer" / "overlap"
    assert len(list(cache.glob("*.json"))) == 2, "two validation splits were prepared"
