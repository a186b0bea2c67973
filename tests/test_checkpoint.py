"""Checkpoints: exact resume after a kill, atomic saves, corruption, preemption, early stopping, safety."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import REPO, evaluate_export, read_json, read_jsonl, run_cli, weight_difference
from safetensors.torch import load_file
from test_distributed import launcher

from trainer.inference.folder import sha256_file
from trainer.training.checkpoint import MANIFEST_NAME

pytestmark = pytest.mark.slow
FAULTS = Path(__file__).parent / "faults"
# 34 optimizer steps (2 epochs of 17), a full checkpoint every 4 steps and at each epoch end.
COMMON = ["--config", "tiny", "--logging.tracker=none", "--checkpoint.save_every_steps=4"]


def train(run: Path, *args: str, env: dict | None = None, expect: int = 0, launch=None):
    # One thread everywhere: float results depend on the thread count (module fixtures run before
    # the per-test environment is set).
    env = {"OMP_NUM_THREADS": "1", **(env or {})}
    result = run_cli([*COMMON, f"--train.output_dir={run}", *args], cwd=run.parent, env=env, launcher=launch)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def faults(**env) -> dict:
    return {"PYTHONPATH": f"{FAULTS}:{REPO}", "FAULT_RANK": "0", **{k: str(v) for k, v in env.items()}}


def digest(run: Path) -> str:
    digests = read_json(run / "run_info.json")["weight_digests"]
    assert len(set(digests)) == 1
    return digests[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resumed one must reproduce."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(run)
    return run


@pytest.fixture(scope="module")
def killed_at_11(tmp_path_factory):
    """The reference run killed at step 11, with checkpoints at steps 4 and 8; tests resume copies."""
    run = tmp_path_factory.mktemp("killed11") / "run"
    train(run, env=faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    return run


def steps_logged(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]


def test_killed_and_resumed_run_ends_bit_for_bit_equal(reference, tmp_path, killed_at_11):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004", "step-00000008"]
    result = train(run, "--resume", "auto")
    assert "resumed from" in result.stdout and "step-00000008" in result.stdout
    assert digest(run) == digest(reference)
    assert steps_logged(run) == steps_logged(reference), "each step logged once"
    assert read_json(run / "run_info.json")["final_metrics"] == read_json(reference / "run_info.json")["final_metrics"]


def test_a_checkpoint_past_the_runs_last_step_is_refused(tmp_path, killed_at_11):
    """Resumed with --train.max_steps below the checkpoint's step, a run would train on past its end
    and call that done: refused in one line, the run folder left as it was."""
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    before = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*"))
    result = train(run, "--resume", "auto", "--train.max_steps=6", expect=2)
    assert "checkpoint " in result.stderr and "is at step 8, past this run's last step 6" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*")) == before


def test_weights_held_as_cudnn_holds_them_are_saved_whole_and_resume_bit_for_bit(reference, tmp_path):
    """On a GPU every recurrent layer keeps its weights as views into one cuDNN buffer (emulated
    here): a checkpoint must still hold each of them, or no GPU run could resume."""
    run, gpu_like = tmp_path / "run", {"PYTHONPATH": f"{FAULTS}:{REPO}", "EMULATE_CUDNN_WEIGHTS": "1"}
    killed = train(run, env={**faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), **gpu_like}, expect=-signal.SIGKILL)
    assert "emulating cuDNN: recurrent weights are views into one buffer" in killed.stderr
    saved = load_file(run / "checkpoints/step-00000008/model.safetensors")
    assert sorted(saved) == sorted(load_file(reference / "checkpoints/step-00000032/model.safetensors"))
    resumed = train(run, "--resume", "auto", env=gpu_like)
    assert "emulating cuDNN" in resumed.stderr and "resumed from" in resumed.stdout
    assert digest(run) == digest(reference)


def test_weight_average_is_validated_exported_and_resumed_exactly(reference, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, "--train.ema_decay=0.9")
    # Training itself is unchanged (the same weights at the last checkpoint as without averaging);
    # what is validated and exported is the average, which differs from the trained weights.
    last = "checkpoints/step-00000032/model.safetensors"
    assert (straight / last).read_bytes() == (reference / last).read_bytes()
    assert digest(straight) != digest(reference)
    info = read_json(straight / "run_info.json")
    assert info["final_metrics"] != read_json(reference / "run_info.json")["final_metrics"]
    alone = evaluate_export(straight / "final", straight)
    assert alone["accuracy"] == info["final_metrics"]["accuracy"]
    assert alone["loss"] == pytest.approx(info["final_metrics"]["loss"], abs=1e-6)
    assert "exponential moving average of the trained ones (decay 0.9)" in (straight / "final/README.md").read_text()
    assert "moving average" not in (reference / "final/README.md").read_text()
    # The average is part of the checkpoint: a killed and resumed run ends with the same one.
    train(resumed, "--train.ema_decay=0.9", env=faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    assert (resumed / "checkpoints/step-00000008/custom_checkpoint_0.pkl").is_file()
    train(resumed, "--train.ema_decay=0.9", "--resume", "auto")
    assert digest(resumed) == digest(straight)
    # Resuming with another decay (or none) would mix two averages: refused.
    result = train(straight, "--resume", str(straight / "checkpoints/step-00000032"), expect=2)
    assert "was made with another setup (ema_decay 0.9 -> 0.0)" in result.stderr


def test_kill_during_a_save_keeps_the_previous_checkpoint(reference, tmp_path):
    run = tmp_path / "run"
    train(run, env=faults(FAULT_KILL_IN_SAVE=3), expect=-signal.SIGKILL)  # the save of step 12
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".tmp-step-00000012", "step-00000004", "step-00000008"]
    train(run, "--resume", "auto")
    assert digest(run) == digest(reference)


def test_a_corrupted_checkpoint_is_reported_and_the_previous_one_used(reference, tmp_path, killed_at_11):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    weights = run / "checkpoints" / "step-00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    result = train(run, "--resume", "auto")
    lines = [line for line in result.stdout.splitlines() if "step-00000008" in line and "saved" not in line]
    assert len(lines) == 1 and "is corrupted: model.safetensors has 100 bytes" in lines[0]
    assert "resumed from" in result.stdout and "step-00000004" in result.stdout
    assert digest(run) == digest(reference)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    run = tmp_path / "run"
    train(run, "--train.max_steps=5", "--checkpoint.save_every_steps=4")
    checkpoint = run / "checkpoints" / "step-00000004"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (checkpoint / "optimizer.bin").write_bytes(pickle.dumps({"state": Payload()}))
    manifest = json.loads((checkpoint / MANIFEST_NAME).read_text())
    file = checkpoint / "optimizer.bin"
    manifest["optimizer.bin"] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
    (checkpoint / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = train(run, "--resume", str(checkpoint), expect=2)
    assert "refusing checkpoint" in result.stderr and "optimizer.bin" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the pickle was never executed"


def test_early_stopping_stops_and_its_patience_survives_resume(tmp_path):
    # lr 0: validation never improves after the first evaluation (step 2).
    args = [
        "--optim.lr=0",
        "--train.eval_every_steps=2",
        "--checkpoint.early_stopping_patience=3",
        "--checkpoint.save_every_steps=2",
    ]
    straight = tmp_path / "straight"
    train(straight, *args)
    info = read_json(straight / "run_info.json")
    assert info["stopped_early"] and info["final_step"] == 8 and info["best_step"] == 2
    resumed = tmp_path / "resumed"
    train(resumed, *args, env=faults(FAULT_AT_STEP=7, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    train(resumed, *args, "--resume", "auto")
    info = read_json(resumed / "run_info.json")
    assert info["stopped_early"] and info["final_step"] == 8


def test_two_processes_resume_to_the_same_final_metrics(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(straight, launch=launcher(2))
    env = faults(FAULT_AT_STEP=7, FAULT_KIND="kill")
    env["FAULT_RANK"] = "1"
    result = run_cli([*COMMON, f"--train.output_dir={resumed}"], cwd=tmp_path, env=env, launcher=launcher(2))
    assert result.returncode != 0
    train(resumed, "--resume", "auto", launch=launcher(2))
    a, b = read_json(straight / "run_info.json"), read_json(resumed / "run_info.json")
    assert a["world_size"] == b["world_size"] == 2 and b["resumed_from"].endswith("step-00000004")
    assert b["final_metrics"] == pytest.approx(a["final_metrics"], abs=1e-6)


def test_sigterm_stops_a_two_process_job_with_a_checkpoint_to_resume(tmp_path):
    run = tmp_path / "run"
    command = [
        *launcher(2),
        "-m",
        "trainer",
        *COMMON,
        f"--train.output_dir={run}",
        "--train.epochs=200",
        "--checkpoint.save_every_steps=0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or len(steps_logged(run)) < 3:
        assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    stopped_in = time.monotonic() - sent
    assert proc.returncode != 0 and stopped_in < 60, f"{stopped_in:.0f}s"
    assert "stopped by signal SIGTERM" in out, err[-2000:]
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    step = int(checkpoint.name.split("-")[1])
    assert f"stopped by signal SIGTERM at step {step};" in out  # saved at the step it stopped
    result = train(run, "--resume", "auto", "--train.epochs=3", launch=launcher(2))
    assert f"at step {step}" in result.stdout
    assert read_json(run / "run_info.json")["world_size"] == 2


def test_a_resumed_run_keeps_logging_to_the_same_wandb_run(tmp_path):
    run = tmp_path / "run"
    no_key = {"WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": str(tmp_path / "none")}
    train(
        run,
        "--logging.tracker=wandb",
        env={**faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), **no_key},
        expect=-signal.SIGKILL,
    )
    saved = json.loads((run / "checkpoints" / "step-00000008" / "train_state.json").read_text())
    train(run, "--logging.tracker=wandb", "--resume", "auto", env=no_key)
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and saved["tracker_run_id"]
    assert all(r.name.endswith(f"-{saved['tracker_run_id']}") for r in runs), [r.name for r in runs]


def test_auto_resume_never_redoes_a_finished_run(tmp_path):
    run = tmp_path / "run"
    train(run, "--train.max_steps=5", "--checkpoint.save_every_steps=2")
    before = (run / "final" / "model.safetensors").read_bytes()
    result = train(run, "--train.max_steps=5", "--resume", "auto", expect=2)
    assert "has already finished: nothing to resume" in result.stderr
    assert (run / "final" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("--optim.embedding_lr_scale=3", "embedding_lr_scale 1.0 -> 3.0"),
        ("--model.hidden_dim=24", "model.hidden_dim 16 -> 24"),
        ("--train.vat_epsilon=2", "vat_epsilon 0.0 -> 2.0"),  # another loss from the step it resumes at
        ("--data.sampler=balanced", "sampler random -> balanced"),  # before its other steps per epoch
    ],
)
def test_resuming_with_another_setup_is_refused(tmp_path, killed_at_11, change, named):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    result = train(run, "--resume", "auto", change, expect=2)
    assert f"was made with another setup ({named}); resume with the same one" in result.stderr


def test_resuming_in_another_precision_is_refused_with_the_flag_that_keeps_it(tmp_path, killed_at_11):
    # A bf16 run requeued on fp16 GPUs would look for a gradient scaler state it never saved.
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    saved = read_json(killed_at_11 / "run_info.json")["mixed_precision"]
    other = "no" if saved == "bf16" else "bf16"
    result = train(run, "--resume", "auto", f"--train.mixed_precision={other}", expect=2)
    assert f"(precision {saved} -> {other}); resume with the same one (--train.mixed_precision={saved})" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_resuming_with_another_global_batch_is_refused_with_the_flags_that_keep_it(tmp_path, killed_at_11):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    result = train(run, "--resume", "auto", "--train.batch_size=16", expect=2)
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {run}/checkpoints/step-00000008 was saved with a global batch of 32 (batch size 32 x 1 "
        "process(es) x 1 accumulation step(s)); this run's is 16 (16 x 1 x 1): resume with "
        "--train.gradient_accumulation_steps=2 or --train.batch_size=32 (or --train.global_batch_size=32, which "
        "derives the accumulation)"
    )


def test_a_resume_may_split_the_same_global_batch_otherwise_and_ends_where_the_run_would_have(tmp_path):
    """One process, batch 32, resumed as batch 16 x 2 accumulation steps: the same examples at every
    step, so the end matches the uninterrupted run but for the order of float additions (no dropout:
    its masks depend on the batch shapes)."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    train(reference, "--model.dropout=0")
    train(run, "--model.dropout=0", env=faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    split = ["--train.batch_size=16", "--train.gradient_accumulation_steps=2"]
    result = train(run, "--model.dropout=0", "--resume", "auto", *split)
    assert (
        "at step 8 (epoch 0); saved with 1 process(es) x batch size 32 x 1 accumulation step(s), continuing with "
        "1 process(es) x batch size 16 x 2 accumulation step(s)" in result.stdout
    )
    info = read_json(run / "run_info.json")
    assert info["final_step"] == read_json(reference / "run_info.json")["final_step"] == 34
    assert info["global_batch_size"] == 32
    assert 0 < weight_difference(run, reference) < 1e-5


def checkpoint_files(run: Path) -> dict[str, bytes]:
    root = run / "checkpoints"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_way_of_choosing_a_run_folder_trains_into_a_folder_of_other_files(tmp_path, killed_at_11):
    run = tmp_path / "mine"
    run.mkdir()
    files = {"config.yaml": "model: {}\n", "metrics.jsonl": '{"step": 1}\n', "notes.txt": "my notes"}
    for name, text in files.items():
        (run / name).write_text(text)
    checkpoint = str(killed_at_11 / "checkpoints" / "step-00000004")
    for way in (["--resume", "auto"], ["--resume", "none"], ["--overwrite"], ["--resume", checkpoint, "--overwrite"]):
        result = train(run, *way, expect=2)
        assert "holds files but no run of this trainer (no run_info.json)" in result.stderr, way
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert {p.name: p.read_text() for p in run.iterdir()} == files, way
    # A run folder may be started over (--overwrite), but not while the run reads from it.
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".trainer.lock"}
    result = train(run, "--overwrite", f"--tokenizer.path={run / 'tokenizer.json'}", expect=2)
    assert f"--tokenizer.path={run / 'tokenizer.json'} lies in" in result.stderr, result.stderr
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".trainer.lock"}


def test_two_trainings_started_into_one_folder_do_not_mix_their_files(tmp_path):
    """Both start while the folder is empty; the one that writes first holds it (a lock in the
    folder, released when it ends however it ends); the other stops in one line."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trainer", *COMMON, f"--train.output_dir={run}", "--train.epochs=1"]
    runs = [subprocess.Popen([*command, f"--train.seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    (winner,) = [seed for seed, (code, _) in zip((1, 2), results, strict=True) if code == 0]
    (error,) = [err for code, err in results if code == 2]
    assert "another training" in error and "--train.output_dir" in error and len(error.strip().splitlines()) == 1
    assert f"--train.seed={winner}" in " ".join(read_json(run / "run_info.json")["command"])
    assert f"seed: {winner}" in (run / "config.yaml").read_text()
    # Ended, it holds the folder no more: resuming it is up to the user again.
    result = train(run, "--resume", "auto", "--train.epochs=1", expect=2)
    assert "has already finished" in result.stderr


def test_a_copied_run_folder_resumes_from_its_newest_checkpoint(reference, tmp_path, killed_at_11):
    copy = tmp_path / "copy"
    shutil.copytree(killed_at_11, copy)
    # As cp -r leaves them: modification times of the copy, in the order it copied (here: step 8 first).
    now = time.time()
    for age, name in ((100, "step-00000008"), (0, "step-00000004")):
        for path in (copy / "checkpoints" / name).rglob("*"):
            os.utime(path, (now - age, now - age))
    result = train(copy, "--resume", "auto")
    assert "resumed from" in result.stdout and "step-00000008 at step 8" in result.stdout
    assert digest(copy) == digest(reference)


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = train(run, env=faults(FAULT_AT_STEP=6, FAULT_KIND="nan"), expect=2)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: training diverged by step 8") and "Traceback" not in result.stderr
    assert "step-00000004" in lines[-1] and "Lower --optim.lr" in lines[-1]
    saved = checkpoint_files(run)
    assert sorted({name.split("/")[0] for name in saved}) == ["step-00000004"], "nothing saved after step 4"
    assert not (run / "final").exists() and "final_step" not in read_json(run / "run_info.json")
    result = train(run, "--resume", "auto")  # without the fault it goes on from the good checkpoint
    assert "step-00000004 at step 4" in result.stdout and read_json(run / "run_info.json")["final_step"] == 34


def test_with_every_checkpoint_corrupted_resume_refuses_without_claiming_a_fresh_start(tmp_path, killed_at_11):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    for name in ("step-00000004", "step-00000008"):
        weights = run / "checkpoints" / name / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    before = checkpoint_files(run)
    result = train(run, "--resume", "auto", expect=2)
    assert "holds results but no intact checkpoint to resume from" in result.stderr
    assert "starting from scratch" not in result.stdout + result.stderr
    assert checkpoint_files(run) == before


def test_a_metrics_line_cut_by_a_kill_does_not_stop_resume_or_plots(tmp_path, killed_at_11):
    run = tmp_path / "run"
    shutil.copytree(killed_at_11, run)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "train/lo')  # a record cut mid-write
    done = subprocess.run(
        [sys.executable, "-m", "trainer.plot", str(run)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0 and (run / "plots" / "loss.png").is_file(), done.stderr
    train(run, "--resume", "auto")
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r][-1] == 34


def test_ctrl_c_stops_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "trainer", *COMMON, f"--train.output_dir={run}", "--train.epochs=200"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # A shell's background job (`pytest ... &`) starts with SIGINT ignored, and Python then keeps
    # it ignored: give the run the default disposition a terminal's Ctrl-C meets.
    default_sigint = partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, preexec_fn=default_sigint, **pipes)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints").is_dir() or not any((run / "checkpoints").glob("step-*")):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was saved"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and "with --resume auto" in last and str(run) in last, err
    assert "Traceback" not in err


def test_checkpoints_are_ordered_by_save_sequence_and_older_ones_by_completion(tmp_path):
    from trainer.training.checkpoint import list_checkpoints

    root = tmp_path / "checkpoints"
    now = time.time()
    # Two checkpoints from before the save sequence, the higher step completed first (a resumed
    # run's abandoned continuation), then two with a sequence whose steps run backwards.
    saves = [("step-00000200", None, now - 30), ("step-00000150", None, now - 20)]
    saves += [("step-00000400", 1, now), ("step-00000300", 2, now - 50)]
    for name, sequence, completed in saves:
        folder = root / name
        folder.mkdir(parents=True)
        state = {"step": int(name[5:])} | ({"save_sequence": sequence} if sequence else {})
        (folder / "train_state.json").write_text(json.dumps(state))
        (folder / MANIFEST_NAME).write_text("{}")
        os.utime(folder / MANIFEST_NAME, (completed, completed))
    expected = ["step-00000200", "step-00000150", "step-00000400", "step-00000300"]
    assert [p.name for p in list_checkpoints(root)] == expected
