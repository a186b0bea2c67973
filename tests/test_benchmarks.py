"""The benchmark scripts that CI cannot run for real still run: the GPU check on the CPU, and every
script's ``--tiny`` mode (seconds on generated data), so that a change that breaks one fails here."""

import ast
import gzip
import hashlib
import json
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, review_rows, write_csv


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
    assert runs[0]["final_loss"] != runs[1]["final_loss"]  # two seeds, two models (tiny's accuracies may tie)
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


BENCHMARKS = REPO / "benchmarks"


def check_accuracy(r: dict) -> None:
    assert [run["seed"] for run in r["runs"]] == [1] and r["reported_model"] == "best"
    assert 0 <= r["accuracy_mean"] <= 1 and r["train_seconds_median"] > 0
    assert 0 < r["tfidf_lr_bigram_accuracy"] <= 1 and r["validation_examples"] == [60]


def check_bench_data(r: dict) -> None:
    assert r["reviews"] == 600 and r["text_mb"] > 0 and r["trainer_start_cached_s"] > 0
    assert r["plain_python"]["tokenize_mb_per_s"] > 0 and r["tokenize_speedup"] > 0
    for side in ("ours_1_thread", "ours_all_cores"):
        assert r[side]["tokenize_mb_per_s"] > 0 and r[side]["cold_total_s"] > 0 and r[side]["cached_total_s"] > 0


def check_bench_gpu(r: dict) -> None:
    assert r["correctness"]["passed"] and r["data"] == "random ids, IMDB-like lengths"
    for name in ("ours_fp32", "ours_bf16", "reference_fp32", "packed_fp32"):
        assert r["tiny"][name]["tokens_per_s"] > 0 and r["tiny"][name]["steps_per_s"] > 0
    assert r["trainer_run"]["steps"] == 20 and r["trainer_run"]["device"] == "cpu"


def check_bench_predict(r: dict) -> None:
    assert {"eager fp32", "onnx fp32", "onnx int8"} <= set(r["runtimes"]) and r["mean_tokens_per_review"] > 0
    for row in r["runtimes"].values():
        assert row["reviews_per_s_batch_1"] > 0 and row["reviews_per_s_batch_32"] > 0 and row["size_mb"] > 0
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] and 0 <= row["accuracy"] <= 1


def check_bench_scale(r: dict) -> None:
    size = r["sizes"]["400"]
    assert size["reviews"] == 400 and size["prepare"]["rows"] == 360 and size["cached_prepare"]["cache_hit"]
    for stage in ("load_parquet", "load_csv", "tokenizer_training", "tokenize_1_thread", "tokenize_num_proc"):
        assert size[stage]["seconds"] > 0, stage
    for run in ("train_1_process", "train_2_process_cold"):
        assert size[run]["start_s"] > 0 and size[run]["steps_per_s"] > 0, run
    assert len(r["cold_2_process_peaks"]["400"]) == 3 and r["peak_rss_mb"]["400"] > 0  # launcher and 2 ranks
    assert set(r["growth"].values()) == {1.0} and "cold_start_2_process" in r["growth"]  # one size


def check_bench_shapes(r: dict) -> None:
    assert list(r["variants"]) == ["m1b0", "m8b8"] and r["examples"] == 500
    for variant in r["variants"].values():
        assert variant["step_ms"]["epoch_1"] > 0 and variant["step_ms"]["epoch_2"] > 0
        assert 0 < variant["padding_efficiency"] <= 1 and variant["new_widths_per_epoch"][0] > 0


def check_bench_step(r: dict) -> None:
    variants = ["trainer", "fixed_padding", "reference_model", "packed", "zero_grad_keep", "adamw_fused"]
    variants += ["adamw_for_loop", "one_thread", "bf16_autocast", "accelerate"]
    assert list(r["variants"]) == variants and r["config"]["max_length"] == 64
    assert all(v["tokens_per_s"] > 0 and v["speed_vs_trainer"] > 0 for v in r["variants"].values())
    assert r["collate"]["0_workers_s_per_batch"] > 0 and r["lstm_output_dtype_under_bf16_autocast"].startswith("torch.")


def check_bench_train(r: dict) -> None:
    for side in ("ours", "baseline"):
        assert r[side]["tokens_per_s"] > 0 and 0 < r[side]["padding_efficiency"] <= 1, side
        assert 0 <= r[side]["final_val_accuracy"] <= 1 and r[side]["peak_rss_mb"] > 0, side
    assert r["tokens_per_s_speedup"] > 0


def check_bow_baseline(r: dict) -> None:
    assert r["preset"] == "tiny" and (r["train_examples"], r["validation_examples"]) == (540, 60)
    assert 0 < r["tfidf_lr_unigram_accuracy"] <= 1 and 0 < r["tfidf_lr_bigram_accuracy"] <= 1


def check_imbalance(r: dict) -> None:
    split, run = r["split"], r["results"]["balanced"]
    assert 0 < split["train_minority"] < split["train_examples"] / 5 and split["validation_examples"] > 0
    assert set(run["recall"]) == {"negative", "positive"} and 0 <= run["balanced_accuracy"] <= 1
    assert run["class_weights"]["positive"] > run["class_weights"]["negative"] > 0  # the minority weighs more


def check_reference_baseline(r: dict) -> None:
    assert r["preset"] == "tiny" and r["steps"] > 0 and r["tokens_per_s"] > 0 and r["examples_per_s"] > 0
    assert 0 < r["padding_efficiency"] <= 1 and 0 <= r["final_val_accuracy"] <= 1


def check_scaling(r: dict) -> None:
    assert r["tokens_per_s_1_process"] > 0 and r["tokens_per_s_2_processes"] > 0 and r["efficiency"] > 0
    assert [len(r["runs"][k]) for k in ("1", "2")] == [1, 1]


def check_stress_resume(r: dict) -> None:
    assert r["final_weights_equal"] and r["kills_survived"] in (0, 1)  # 0: the run ended before its kill
    assert r["uninterrupted_seconds"] > 0 and r["checkpoints_lost"] >= 0


# Every script in benchmarks/ but the shared bench_cli.py and gpu_check.py (gpu.sh --tiny, above):
# its --tiny run's report, from --out, is checked by its function. Costliest first: they start in this order.
TINY_CHECKS = {
    "bench_scale": check_bench_scale,
    "stress_resume": check_stress_resume,
    "scaling": check_scaling,
    "bench_train": check_bench_train,
    "bench_data": check_bench_data,
    "bench_shapes": check_bench_shapes,
    "bench_step": check_bench_step,
    "bench_predict": check_bench_predict,
    "bench_gpu": check_bench_gpu,
    "accuracy": check_accuracy,
    "imbalance": check_imbalance,
    "reference_baseline": check_reference_baseline,
    "bow_baseline": check_bow_baseline,
}


def run_tiny(script: str, folder: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """``benchmarks/<script>.py --tiny --out folder/report.json`` in ``folder``, caches there too."""
    out = folder / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env |= {"XDG_CACHE_HOME": str(folder / "cache"), "HF_DATASETS_CACHE": str(folder / "cache" / "hf")}
    env |= {"OMP_NUM_THREADS": "1", "NETRC": str(folder / "no-netrc"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--tiny", "--out", str(out)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600), out


@pytest.fixture(scope="module")
def tiny_runs(request, tmp_path_factory) -> dict:
    """The --tiny runs of the selected tests, started together two at a time (most of each is a
    process starting up on one core; 2 cores run two), costliest first: script -> future."""
    wanted = {
        item.callspec.params["script"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_every_benchmark_runs_end_to_end_in_tiny_mode"
    }
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {s: pool.submit(run_tiny, s, tmp_path_factory.mktemp(s)) for s in TINY_CHECKS if s in wanted}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("script", sorted(TINY_CHECKS))
def test_every_benchmark_runs_end_to_end_in_tiny_mode(script, tiny_runs):
    """``--tiny`` runs the whole script on generated data, and ``--out`` holds the report it printed last."""
    done, out = tiny_runs[script].result()
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    if script != "bench_gpu":  # it prints a summary last; its file is the report (and tested above too)
        assert json.loads(done.stdout.splitlines()[-1]) == report
    TINY_CHECKS[script](report)


def test_every_benchmark_script_has_a_tiny_mode_and_a_check():
    """A new script in benchmarks/ needs a --tiny mode, said in its docstring, and a check above."""
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"bench_cli", "gpu_check"}
    assert scripts == set(TINY_CHECKS)
    for script in scripts:
        docstring = ast.get_docstring(ast.parse((BENCHMARKS / f"{script}.py").read_text()))
        assert "--tiny" in docstring, f"{script}.py: say what --tiny does in its docstring"


def test_the_imdb_preset_validates_on_whole_movies_only_where_a_csv_has_them(tmp_path):
    """bench_cli.imdb_group_overrides: the benchmarks' imdb preset on a CSV without movie ids carves at random."""
    sys.path.insert(0, str(BENCHMARKS))
    from bench_cli import imdb_group_overrides, tiny_reviews_csv

    plain = write_csv(tmp_path / "plain.csv", review_rows(20))
    assert imdb_group_overrides(plain) == ["--data.group_column=null"]
    movies = tiny_reviews_csv(tmp_path / "movies.csv", rows=20)
    assert imdb_group_overrides(movies) == []
    packed = tmp_path / "movies.tsv.gz"
    packed.write_bytes(gzip.compress(b"text\tlabel\tmovie_id\nfine\t1\ttt1\n"))
    assert imdb_group_overrides(packed) == []


def benchmark_bad_input(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Bad input to the benchmarks: (command, what the one error line says)."""
    existing = tmp_path / "result.json"
    existing.write_text('{"kept": true}\n')
    no_movies = write_csv(tmp_path / "no_movies.csv", review_rows(20))
    return {
        "existing --out": (["bow_baseline.py", "--tiny", "--out", str(existing)], "exists; choose another --out"),
        "missing --data": (["bench_step.py", "--data", str(tmp_path / "nope.csv")], "nope.csv not found; pass --data"),
        "no movie ids": (["imbalance.py", "--data", str(no_movies)], "has no movie_id column (found: text, label)"),
        "unknown variant": (["imbalance.py", "--tiny", "--variants", "none,both"], "--variants: both is not one of"),
        "no model": (["bench_predict.py"], "give a model folder (runs/<run>/best), or --tiny"),
        "no scikit-learn": (["accuracy.py", "--tiny"], 'scikit-learn: pip install -e ".[bench]", or pass --no-bow'),
    }


@pytest.mark.parametrize(
    "case", ["existing --out", "missing --data", "no movie ids", "unknown variant", "no model", "no scikit-learn"]
)
def test_benchmarks_refuse_bad_input_in_one_line_before_any_work(tmp_path, case, monkeypatch, capsys):
    """Each script as ``python benchmarks/SCRIPT.py ...`` runs it (its __main__), in this process."""
    command, message = benchmark_bad_input(tmp_path)[case]
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    if case == "no scikit-learn":
        monkeypatch.setitem(sys.modules, "sklearn", None)  # as where it is not installed: its import fails
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / command[0]), *command[1:]])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(BENCHMARKS / command[0]), run_name="__main__")
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert message in lines[0] and captured.out == ""
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests} == digests  # nothing changed
    assert set(tmp_path.iterdir()) == set(digests)  # nothing written
