"""End-to-end runs of ``python -m trainer`` on one process, and every bad input."""

import itertools
import json

import pytest
import torch
import wandb_records
import yaml
from accelerate import Accelerator
from conftest import REPO, evaluate_export, read_json, read_jsonl, review_rows, run_cli, write_csv

from trainer.cli import main
from trainer.models.sentiment import ModelConfig, SentimentRNN, classification_loss
from trainer.training.loss import training_loss
from trainer.training.optim import OptimConfig, build_optimizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_accelerator_state")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run with W&B (offline: no API key) that several tests inspect."""
    work = tmp_path_factory.mktemp("work")
    cache = tmp_path_factory.mktemp("cache")
    result = run_cli(
        [
            "--config",
            "tiny",
            "--logging.tracker=wandb",
            "--train.output_dir=run",
            "--train.eval_every_steps=10",
            f"--data.cache_dir={cache}",
        ],
        cwd=work,
        env={"WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": str(work / "none")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "run", result, cache


def test_run_folder_layout(tiny_run):
    run, result, _ = tiny_run
    for name in ("config.yaml", "run_info.json", "metrics.jsonl", "tokenizer.json", "plots/loss.png"):
        assert (run / name).is_file(), name
    for export in ("best", "final"):
        assert sorted(p.name for p in (run / export).iterdir()) == [
            "README.md",
            "config.json",
            "model.safetensors",
            "tokenizer.json",
        ]
        meta = read_json(run / export / "config.json")
        assert meta["id2label"] == {"0": "negative", "1": "positive"}
    info = read_json(run / "run_info.json")
    assert info["world_size"] == 1 and info["final_step"] == info["total_steps"] == 34
    assert info["versions"]["torch"] == torch.__version__
    precision = {"no": "torch.float32", "bf16": "torch.bfloat16"}[info["mixed_precision"]]  # on a CPU
    assert info["recurrent_dtype"] == precision and info["tf32"] is False and "gpu" not in info["processes"][0]
    assert "W&B: no API key found, logging offline" in result.stdout


def test_resolved_config_is_written(tiny_run):
    run, _, cache = tiny_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["hidden_dim"] == 16  # preset
    assert saved["train"]["eval_every_steps"] == 10  # command line
    assert saved["optim"]["max_grad_norm"] == 5.0  # default
    assert saved["data"]["cache_dir"] == str(cache)


def test_metrics_log_has_training_and_validation_records(tiny_run):
    run, _, _ = tiny_run
    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 34]
    assert [r["step"] for r in evals] == [10, 17, 20, 30, 34]  # every 10 steps and each epoch end
    assert all(r["train/tokens_per_s"] > 0 and r["train/lr"] > 0 for r in train)
    assert all(set(r) >= {"eval/loss", "eval/f1", "eval/precision", "eval/recall", "eval/roc_auc"} for r in evals)


def test_best_model_is_the_lowest_validation_loss_and_reloads(tiny_run):
    run, _, _ = tiny_run
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/loss" in r]
    best = min(evals, key=lambda r: r["eval/loss"])
    meta = read_json(run / "best" / "config.json")
    assert meta["step"] == best["step"]

    # The exported model, reloaded on its own, reproduces its validation metrics.
    metrics = evaluate_export(run / "best", run)
    assert metrics["accuracy"] == pytest.approx(best["eval/accuracy"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(best["eval/loss"], abs=1e-5)


def test_wandb_offline_run_holds_config_and_metrics(tiny_run):
    run, _, _ = tiny_run
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "exactly one W&B run per job"
    (run_file,) = runs[0].glob("run-*.wandb")
    config = wandb_records.config(run_file)
    assert config["model.hidden_dim"] == 16 and config["data.train_files"] is None
    rows = wandb_records.history(run_file)
    logged = read_jsonl(run / "metrics.jsonl")
    assert sorted({row["_step"] for row in rows}) == sorted({r["step"] for r in logged})
    assert rows[-1]["eval/accuracy"] == pytest.approx(logged[-1]["eval/accuracy"])


def test_a_run_never_writes_into_a_non_empty_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert main(["--config", "tiny", f"--train.output_dir={run}"]) == 2
    assert "holds files but no run of this trainer" in capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "mine"
    # --overwrite replaces a run, never a folder of other files
    assert main(["--config", "tiny", f"--train.output_dir={run}", "--overwrite", "--train.max_steps=2"]) == 2
    assert "holds files but no run of this trainer" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "mine"


def bad_run(tmp_path, capsys, *args) -> str:
    code = main(["--config", "tiny", f"--train.output_dir={tmp_path / 'run'}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "run").exists(), "nothing is written for bad input"
    return lines[0]


def test_missing_file(tmp_path, capsys):
    err = bad_run(tmp_path, capsys, f"--data.train_files={tmp_path}/nope.csv")
    assert "nope.csv does not exist" in err


def test_missing_column_lists_the_columns_found(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", review_rows(20), header=("review", "label"))
    err = bad_run(tmp_path, capsys, f"--data.train_files={path}")
    assert "no column 'text'; columns found: review, label (set --data.text_column)" in err


def test_unknown_label_in_validation(tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", [(t, "pos" if y else "neg") for t, y in review_rows(30)])
    val = write_csv(tmp_path / "v.csv", [("fine film", "pos"), ("so so", "mixed")])
    err = bad_run(tmp_path, capsys, f"--data.train_files={train}", f"--data.validation_files={val}")
    assert "unknown label 'mixed' in the validation split; the training split has: negative, positive" in err


def test_single_class_training_set(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", [(t, 1) for t, _ in review_rows(30)])
    assert "single class ('positive')" in bad_run(tmp_path, capsys, f"--data.train_files={path}")


def test_empty_dataset(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", [("", 1), ("  ", 0)])
    assert "no usable rows" in bad_run(tmp_path, capsys, f"--data.train_files={path}")


def test_undecodable_file(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\n" + "très bien,1\nmauvais,0\n".encode("latin-1") * 20)
    assert "is not valid UTF-8 text" in bad_run(tmp_path, capsys, f"--data.train_files={path}")


def test_unknown_format(tmp_path, capsys):
    path = tmp_path / "t.xlsx"
    path.write_text("x")
    assert "cannot tell the format" in bad_run(tmp_path, capsys, f"--data.train_files={path}")


def test_bad_input_exits_2_without_traceback_in_a_real_process(tmp_path):
    for args, env, expected in [
        (["--model.hiden_dim=3"], {}, "did you mean model.hidden_dim"),
        (["--data.name=stanfordnlp/imdb"], {"HF_HUB_OFFLINE": "1"}, "could not load 'stanfordnlp/imdb'"),
    ]:
        result = run_cli(["--config", "tiny", *args], cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    debug = run_cli(["--config", "tiny", "--model.hiden_dim=3", "--debug"], cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert not (tmp_path / "runs").exists()


def easy_csv(path, n=800):
    """One sentiment word among neutral ones: any working trainer learns it in seconds."""
    import random

    from trainer.data.corpus import NEGATIVE, NEUTRAL, POSITIVE

    rng = random.Random(0)
    rows = []
    for i in range(n):
        words = rng.choice(NEUTRAL).split()
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if i % 2 else NEGATIVE))
        rows.append((" ".join(words), i % 2))
    return write_csv(path, rows)


def test_training_learns(tmp_path):
    path = easy_csv(tmp_path / "easy.csv")
    args = ["--optim.lr=1e-2", "--model.hidden_dim=32", "--model.embedding_dim=32", "--train.epochs=5"]
    assert (
        main(["--config", "tiny", f"--data.train_files={path}", f"--train.output_dir={tmp_path / 'run'}", *args]) == 0
    )
    info = read_json(tmp_path / "run" / "run_info.json")
    assert info["best_metrics"]["accuracy"] >= 0.9
    first = read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]["train/loss"]
    assert info["best_metrics"]["loss"] < first - 0.3


def test_accumulation_bf16_and_schedule_follow_optimizer_steps(tmp_path):
    run = tmp_path / "run"
    args = ["--train.gradient_accumulation_steps=2", "--train.mixed_precision=bf16", "--optim.warmup_steps=3"]
    assert main(["--config", "tiny", f"--train.output_dir={run}", "--train.log_every_steps=1", *args]) == 0
    info = read_json(run / "run_info.json")
    # 540 examples in global batches of 64: 8 full steps, then 28 examples as 2 batches of 14 -> 9 steps.
    assert info["steps_per_epoch"] == 9 and info["total_steps"] == info["final_step"] == 18
    assert info["global_batch_size"] == 64 and info["mixed_precision"] == "bf16"
    lrs = [r["train/lr"] for r in read_jsonl(run / "metrics.jsonl") if "train/lr" in r]
    assert len(lrs) == 18
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(3e-3)  # warm-up over 3 optimizer steps, then decay
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] < 1e-8


def test_lr_scales_move_the_embedding_and_the_recurrent_layers_that_much_faster_or_slower():
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1), vocab_size=20, num_labels=2)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, embedding_lr_scale=10, recurrent_lr_scale=0.25))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(1, 20, (4, 6))
    classification_loss(model(ids, torch.full((4,), 6)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    # Adam's first step moves each weight with a gradient by its group's learning rate (the attention's
    # last bias has none, up to rounding: softmax ignores a shift).
    moved = {
        name: (p.detach() - before[name]).abs().max().item()
        for name, p in model.named_parameters()
        if p.grad.abs().max() > 1e-6
    }
    assert moved.pop("embedding.weight") == pytest.approx(1e-2, rel=1e-3)
    recurrent = [moved.pop(name) for name in list(moved) if name.startswith("layers.")]
    assert len(recurrent) == 8 and all(step == pytest.approx(2.5e-4, rel=1e-3) for step in recurrent)
    assert moved and all(step == pytest.approx(1e-3, rel=1e-3) for step in moved.values())


def test_gradual_unfreezing_lets_each_layer_join_from_the_top_an_epoch_apart(tmp_path):
    from safetensors.torch import load_file

    common = ["--config", "tiny", "--model.num_layers=2", "--model.bidirectional=false"]
    start = tmp_path / "start"  # the weights the run starts from: one step at learning rate 0
    assert main([*common, f"--train.output_dir={start}", "--train.max_steps=1", "--optim.lr=0"]) == 0
    run = tmp_path / "run"
    args = ["--optim.gradual_unfreezing=1", "--train.epochs=4", "--checkpoint.keep_last=3"]
    assert main([*common, f"--train.output_dir={run}", *args]) == 0
    epoch = read_json(run / "run_info.json")["steps_per_epoch"]
    assert read_json(run / "run_info.json")["gradual_unfreezing"] == {
        "layers.1": epoch,
        "layers.0": 2 * epoch,
        "embedding": 3 * epoch,
    }
    initial = load_file(str(start / "final" / "model.safetensors"))
    after = [load_file(str(run / "checkpoints" / f"step-{n * epoch:08d}" / "model.safetensors")) for n in (1, 2, 3)]
    after.append(load_file(str(run / "final" / "model.safetensors")))

    def moved(weights: dict, prefix: str) -> list[bool]:
        names = [name for name in initial if name.startswith(prefix)]
        assert names
        return [not torch.equal(weights[name], initial[name]) for name in names]

    # After epochs 1-4: which layers have moved from where they started.
    for n, joined in enumerate([(), ("layers.1",), ("layers.1", "layers.0"), ("layers.1", "layers.0", "embedding")]):
        for prefix in ("layers.1", "layers.0", "embedding"):
            assert all(moved(after[n], prefix)) if prefix in joined else not any(moved(after[n], prefix)), (n, prefix)
        assert all(moved(after[n], "classifier."))
    assert read_json(start / "run_info.json")["gradual_unfreezing"] is None


def test_tensorboard_tracker_writes_events(tmp_path):
    run = tmp_path / "run"
    assert main(["--config", "tiny", f"--train.output_dir={run}", "--logging.tracker=tensorboard"]) == 0
    assert list(run.rglob("events.out.tfevents.*"))


def test_header_only_file(tmp_path, capsys):
    path = write_csv(tmp_path / "t.csv", [])
    assert "holds no rows" in bad_run(tmp_path, capsys, f"--data.train_files={path}")


def test_validation_files_without_train_files(tmp_path, capsys):
    path = write_csv(tmp_path / "v.csv", review_rows(10))
    assert "needs data.train_files" in bad_run(tmp_path, capsys, f"--data.validation_files={path}")


def test_roc_auc_as_best_metric_needs_two_classes(tmp_path, capsys):
    rows = [(t, ["bad", "meh", "good"][i % 3]) for i, (t, _) in enumerate(review_rows(60))]
    path = write_csv(tmp_path / "t.csv", rows)
    err = bad_run(tmp_path, capsys, f"--data.train_files={path}", "--checkpoint.best_metric=roc_auc")
    assert "needs two classes; the data has 3" in err


CPUS = {
    "AMD EPYC": "fpu avx2 avx512f avx512_bf16 avx512_vnni",  # native bf16
    "Intel(R) Xeon(R) CPU @ 2.80GHz": "fpu avx2 avx512f avx512_vnni",  # AVX512 but bf16 only emulated
    "Intel(R) Xeon(R) Platinum 8480+": "fpu avx2 avx512f amx_bf16 amx_tile",  # AMX
}


@pytest.mark.parametrize("model", list(CPUS))
def test_auto_precision_is_bf16_only_on_a_cpu_that_runs_it_natively(tmp_path, monkeypatch, model):
    from trainer import hardware

    monkeypatch.setattr(hardware, "_proc_cpuinfo", lambda: {"model name": model, "flags": CPUS[model]})
    hardware.cpu_info.cache_clear()
    run = tmp_path / "run"
    args = ["--config", "tiny", f"--train.output_dir={run}", "--train.mixed_precision=auto", "--train.max_steps=2"]
    try:
        assert main([*args, "--train.cpu=true", "--logging.tracker=none"]) == 0
    finally:
        hardware.cpu_info.cache_clear()
    info = read_json(run / "run_info.json")
    native = "bf16" in CPUS[model]
    assert info["mixed_precision"] == ("bf16" if native else "no")
    assert info["mixed_precision_requested"] == "auto"
    assert info["cpu"]["model"] == model and info["cpu"]["native_bf16"] is native
    assert info["cpu"]["flags"]["avx512f"] and info["cpu"]["flags"]["avx512_bf16"] is ("avx512_bf16" in CPUS[model])
    reason = info["mixed_precision_reason"]
    assert ("runs bf16 natively" in reason) if native else ("neither AVX512-BF16 nor AMX" in reason)


def test_a_word_vector_file_of_the_wrong_size_is_a_one_line_error(tmp_path, capsys):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("film 0.1 0.2 0.3\n")
    err = bad_run(tmp_path, capsys, f"--model.pretrained_embeddings={vectors}")
    assert "3-dimensional vectors and model.embedding_dim is 16; set --model.embedding_dim=3" in err


def test_adversarial_loss_adds_the_loss_at_embeddings_moved_uphill_by_epsilon():
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.0), 30, 2)
    batch = {"input_ids": torch.randint(1, 30, (4, 6)), "lengths": torch.tensor([6, 3, 5, 1])}
    batch["labels"] = torch.tensor([0, 1, 1, 0])
    accelerator = Accelerator(cpu=True)
    clean = training_loss(model, batch, accelerator, 0.0)
    total = training_loss(model, batch, accelerator, 0.5)
    assert all(p.grad is None for p in model.parameters()), "finding the perturbation leaves .grad alone"

    embeddings = model.embed(batch["input_ids"]).detach().requires_grad_()
    by_hand = classification_loss(model(batch["input_ids"], batch["lengths"], embeddings=embeddings), batch["labels"])
    (gradient,) = torch.autograd.grad(by_hand, embeddings)
    norms = gradient.flatten(1).norm(dim=1).view(-1, 1, 1)
    moved = embeddings.detach() + 0.5 * gradient / norms  # each sequence moved 0.5 in L2
    adversarial = classification_loss(model(batch["input_ids"], batch["lengths"], embeddings=moved), batch["labels"])
    torch.testing.assert_close(total, clean + adversarial)
    assert adversarial > clean, "the perturbation goes uphill"
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_virtual_adversarial_loss_moves_the_embeddings_where_the_predictions_change_most():
    from trainer.models.sentiment import class_log_probabilities as log_probabilities
    from trainer.training.loss import kl_divergence, per_sequence_unit, virtual_adversarial_loss

    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.0), 30, 2).eval()
    input_ids, lengths = torch.randint(1, 30, (6, 7)), torch.tensor([7, 3, 5, 1, 7, 2])
    accelerator = Accelerator(cpu=True)
    assert virtual_adversarial_loss(model, input_ids, lengths, 0.0, accelerator).item() == pytest.approx(0, abs=1e-7)
    found = virtual_adversarial_loss(model, input_ids, lengths, 2.0, accelerator)
    assert all(p.grad is None for p in model.parameters()), "finding the direction leaves .grad alone"

    clean = log_probabilities(model(input_ids, lengths)).detach()
    embeddings = model.embed(input_ids).detach()
    padding = (torch.arange(7) >= lengths.unsqueeze(1)).unsqueeze(-1)
    for _ in range(5):  # the power iteration beats random directions of the same norm (on real tokens)
        random = 2.0 * per_sequence_unit(torch.randn_like(embeddings).masked_fill(padding, 0))
        moved = log_probabilities(model(input_ids, lengths, embeddings=embeddings + random))
        assert found > kl_divergence(clean, moved)
    found.backward()  # no label anywhere: the divergence alone trains the model
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unlabeled_batches_are_drawn_the_same_for_a_step_whatever_came_before():
    import datasets

    from trainer.data.batching import PaddingCollator, RandomBatches

    texts = datasets.Dataset.from_dict({"input_ids": [[i + 1] * (i % 5 + 1) for i in range(50)]})
    batches = RandomBatches(texts, 8, PaddingCollator(0), seed=3, rank=0)
    first = batches.draw(7)
    for step in (1, 2, 9):
        batches.draw(step)
    again = RandomBatches(texts, 8, PaddingCollator(0), seed=3, rank=0).draw(7)
    assert torch.equal(first["input_ids"], again["input_ids"]) and torch.equal(first["lengths"], again["lengths"])
    assert first["input_ids"].shape[0] == 8 and (first["lengths"] >= 1).all()
    cut = batches.draw(7, width=2)  # the heads of the same texts, as wide as a training batch beside them
    assert cut["input_ids"].shape[1] == 2 and torch.equal(cut["input_ids"], first["input_ids"][:, :2])
    other = [RandomBatches(texts, 8, PaddingCollator(0), seed=3, rank=1).draw(7), batches.draw(7, 1), batches.draw(8)]
    assert all(not torch.equal(first["input_ids"][:, :1], o["input_ids"][:, :1]) for o in other)


def test_sigterm_outranks_the_time_limit_warning_and_only_the_warning_requeues(monkeypatch):
    import os
    import signal
    from types import SimpleNamespace

    from trainer.training.preemption import Preemption, slurm_job

    preemption = Preemption()
    preemption.install()
    try:
        alone = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
        assert preemption.requested(alone) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.requested(alone) == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)  # a later warning does not undo a cancel
        assert preemption.requested(alone) == signal.SIGTERM
    finally:
        preemption.uninstall()
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert slurm_job() == "41"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job() == "41_3", "an array task by its own name: the bare id names the whole array"


@pytest.mark.slow  # trains in processes
@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("trainer", ["--train.ema_decay=0.9", "--train.adversarial_epsilon=0.5", "--train.class_weights=balanced"]),
        ("trainer.pretrain", ["--pretrain.samples=64", "--pretrain.max_steps=12"]),
    ],
    ids=["classifier", "language-model"],
)
def test_a_steady_step_never_waits_for_the_device(tmp_path, module, args):
    """On a GPU, reading a value on the host (item, bool, nonzero, a boolean mask, ...) stalls the
    step. tests/faults counts such calls of the trainer's code between optimizer steps (COUNT_SYNCS):
    none but at the logging steps (5 and 10), the first step and the end."""
    from test_checkpoint import FAULTS

    counts = tmp_path / "syncs.json"
    env = {"PYTHONPATH": f"{FAULTS}:{REPO}", "COUNT_SYNCS": str(counts), "OMP_NUM_THREADS": "1"}
    common = ["--config", "tiny", "--logging.tracker=none", "--train.max_steps=12", "--train.log_every_steps=5"]
    done = run_cli([*common, f"--train.output_dir={tmp_path / 'run'}", *args], tmp_path, env=env, module=module)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = json.loads(counts.read_text())  # steps[k]: from optimizer step k to k + 1
    assert len(steps) == 13 and steps[-1], "the end (export, checks) reads values: the counting works"
    assert any("guard.py" in sync for sync in steps[5]) and any("loop.py" in sync for sync in steps[10])
    steady = {k: steps[k] for k in range(2, 12) if k not in (5, 10)}
    assert steady == {k: [] for k in steady}


@pytest.mark.slow  # trains in processes
def test_virtual_adversarial_training_on_unlabeled_texts_resumes_exactly_and_runs_on_two_processes(tmp_path):
    import signal

    from test_checkpoint import faults
    from test_distributed import launcher

    unlabeled = write_csv(tmp_path / "more.csv", [(f"an unlabeled review number {i}", "") for i in range(40)])
    common = ["--config", "tiny", "--checkpoint.save_every_steps=4", "--train.max_steps=12", "--model.dropout=0"]
    common += ["--train.vat_epsilon=1", f"--data.unlabeled_files={unlabeled}"]
    env = {"OMP_NUM_THREADS": "1"}

    def train(out, *args, expect=0, **kwargs):
        done = run_cli([*common, f"--train.output_dir={out}", *args], tmp_path, **kwargs)
        assert done.returncode == expect, done.stderr[-3000:]
        return read_json(tmp_path / out / "run_info.json")

    straight = train("straight", env=env)
    assert straight["data"]["unlabeled_examples"] == 40
    train("killed", env=env | faults(FAULT_AT_STEP=7, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    resumed = train("killed", "--resume", "auto", env=env)
    assert resumed["resumed_from"].endswith("step-00000004")
    assert resumed["weight_digests"] == straight["weight_digests"], "bit for bit the uninterrupted run"
    plain = train("plain", "--train.vat_epsilon=0", env=env)
    assert plain["weight_digests"] != straight["weight_digests"], "the divergence term changes the training"
    batch = train("batch", "--train.vat_texts=training", env=env)  # on the training batch, not on the texts given
    assert "unlabeled_examples" not in batch["data"]
    assert batch["weight_digests"] not in (straight["weight_digests"], plain["weight_digests"])

    two = train("two", "--train.batch_size=16", env=env, launcher=launcher(2))
    assert two["world_size"] == 2 and len(set(two["weight_digests"])) == 1, "the same weights on both processes"
