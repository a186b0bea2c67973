"""Shipping a trained model: Hub model cards, loading from the Hub's cache, push's refusals,
ONNX export (parity with eager PyTorch), int8, and the CLIs on an ONNX folder."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import REPO, free_port, review_rows, write_csv

from trainer.data.tokenizer import pad_batch
from trainer.export import main as export_main
from trainer.inference import load_model
from trainer.inference.folder import load_exported
from trainer.predict import main as predict_main
from trainer.push import main as push_main

pytestmark = pytest.mark.slow

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run (fresh process) with a license for its cards, and its best/ as ONNX, float32 and int8."""
    work = tmp_path_factory.mktemp("shipped")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(work / "cache")}
    args = ["--config", "tiny", f"--train.output_dir={work}/run", "--checkpoint.license=mit"]
    command = [sys.executable, "-m", "trainer", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for extra in ([], ["--quantize", "int8"]):
        done = cli("export", ["--model", str(work / "run" / "best"), *extra], work)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr.startswith("wrote ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return work / "run"


def cli(module: str, args: list[str], cwd: Path, env: dict | None = None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", f"trainer.{module}", *args]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def one_line_error(done, message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


TEXTS = [
    "great",
    "An absolute joy: the acting, the score and the story are wonderful from start to finish. " * 6,
    "Dull.",
    "boring, predictable and far too long, with a plot that goes nowhere " * 12,
    "fine",
]


# the model card


def test_the_model_card_is_hub_metadata_with_the_validation_results(trained):
    from huggingface_hub import ModelCard

    meta = json.loads((trained / "best" / "config.json").read_text())
    card = ModelCard.load(trained / "best" / "README.md")
    data = card.data
    assert data.library_name == "sentiment-trainer" and data.pipeline_tag == "text-classification"
    assert data.license == "mit" and {"sentiment-analysis", "lstm"} <= set(data.tags)
    results = {result.metric_type: result for result in data.eval_results}
    assert {"accuracy", "f1", "roc_auc"} <= set(results)
    assert results["accuracy"].metric_value == round(meta["metrics"]["accuracy"], 4)
    assert results["accuracy"].task_type == "text-classification" and results["accuracy"].dataset_split == "validation"
    assert "# Sentiment classifier" in card.text and "python -m trainer.push" in card.text
    onnx_card = ModelCard.load(trained / "best-onnx-int8" / "README.md")
    assert {"onnx", "int8"} <= set(onnx_card.data.tags) and "## ONNX" in onnx_card.text
    assert onnx_card.data.eval_results[0].metric_value == data.eval_results[0].metric_value


# the Hub: its cache, offline, and push


def hub_cache(root: Path, repo: str, model_dir: Path, commit: str = COMMIT, refs=("main",)) -> Path:
    """``model_dir`` laid out as huggingface_hub caches a download: blobs named by their hash,
    snapshots/<commit>/ of links to them, refs/<branch or tag> holding the commit."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo_dir / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def test_a_hub_repo_id_loads_from_the_cache_offline_at_a_branch_tag_or_commit(trained, tmp_path):
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/tiny-sentiment", trained / "best", refs=("main", "v1"))
    hub_cache(cache, "someone/tiny-sentiment-onnx", trained / "best-onnx")
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    local = cli("predict", ["--model", str(trained / "best"), "--json", *TEXTS], tmp_path)
    assert local.returncode == 0, local.stderr
    for extra in ([], ["--revision", "v1"], ["--revision", COMMIT]):
        done = cli("predict", ["--model", "someone/tiny-sentiment", *extra, "--json", *TEXTS], tmp_path, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == local.stdout
    done = cli("predict", ["--model", "someone/tiny-sentiment-onnx", "--json", *TEXTS], tmp_path, env)
    assert [json.loads(line)["label"] for line in done.stdout.splitlines()] == [
        json.loads(line)["label"] for line in local.stdout.splitlines()
    ]
    data = write_csv(tmp_path / "test.csv", review_rows(40, seed=3))
    by_id = cli("evaluate", ["--model", "someone/tiny-sentiment", "--data", str(data), "--json"], tmp_path, env)
    by_path = cli("evaluate", ["--model", str(trained / "best"), "--data", str(data), "--json"], tmp_path)
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout)["accuracy"] == json.loads(by_path.stdout)["accuracy"]


def test_hub_errors_name_the_cause_and_the_fix(trained, tmp_path):
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/tiny-sentiment", trained / "best")
    offline = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = cli("predict", ["--model", "someone/not-downloaded", "x"], tmp_path, offline)
    one_line_error(done, "not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in done.stderr and str(cache) in done.stderr
    done = cli("predict", ["--model", "someone/tiny-sentiment", "--revision", "v2", "x"], tmp_path, offline)
    one_line_error(done, "(revision v2) is not a local folder")
    # Online, but the Hub cannot be reached (a closed local port): the cause, and HF_HUB_OFFLINE as a way out.
    unreachable = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    done = cli("evaluate", ["--model", "someone/tiny-sentiment", "--data", "x.csv"], tmp_path, unreachable)
    one_line_error(done, "could not be reached")
    assert "HF_HUB_OFFLINE=1" in done.stderr
    done = cli("predict", ["--model", str(trained / "best"), "--revision", "main", "x"], tmp_path, offline)
    one_line_error(done, "is a local folder")
    # A path that is no repo id (three parts) is a missing folder, and never looked up on the Hub.
    done = cli("predict", ["--model", "runs/nothing/best", "x"], tmp_path, unreachable)
    one_line_error(done, "model folder runs/nothing/best does not exist")


def test_push_refuses_what_is_not_a_complete_export_before_touching_the_network(trained, tmp_path, capsys):
    # A token, and a Hub that cannot be reached: every refusal below comes before any request.
    env = {"HF_TOKEN": "hf_test", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(trained / "best", no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    no_card = tmp_path / "no-card"
    shutil.copytree(trained / "best", no_card)
    (no_card / "README.md").unlink()
    half_written = tmp_path / "half"
    shutil.copytree(trained / "best", half_written)
    with (half_written / "model.safetensors").open("r+b") as f:
        f.truncate(100)
    cases = {
        no_tokenizer: "missing tokenizer.json",
        no_card: "has no model card",
        half_written: "does not match the checksum",
        trained: "is a run folder, not a model folder",
        tmp_path / "absent": "is not a local folder",
    }
    model = str(trained / "best")
    cases[trained / "best"] = "is not a Hub repo id"
    for folder, message in cases.items():  # in this process: these come before huggingface_hub is asked anything
        repo = "not a repo" if folder == trained / "best" else "someone/x"
        assert push_main(["--model", str(folder), "--repo", repo]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    one_line_error(cli("push", ["--model", model, "--repo", "someone/x"], tmp_path, offline), "unset it to push")
    no_token = {**env, "HF_TOKEN": ""}
    one_line_error(cli("push", ["--model", model, "--repo", "someone/x"], tmp_path, no_token), "no Hugging Face token")
    # A complete export gets as far as the network, and says it could not reach it.
    one_line_error(cli("push", ["--model", model, "--repo", "someone/x"], tmp_path, env), "could not be reached")


# ONNX


def logits_of(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One padded batch of ``texts`` through a loaded model's network: (logits, attention, lengths)."""
    ids, lengths = pad_batch([e.ids for e in model.encode(texts)], model.pad_id)
    with torch.inference_mode():
        logits, attention = model.model(ids, lengths, return_attention=True)
    return logits, attention, lengths


def test_onnx_matches_eager_pytorch_on_texts_of_very_different_lengths_in_one_batch(trained):
    eager, onnx_model = load_model(trained / "best"), load_model(trained / "best-onnx")
    lengths = [len(e.ids) for e in eager.encode(TEXTS)]
    assert min(lengths) <= 2 and max(lengths) == eager.max_length  # one word to truncated, in one batch
    expected, expected_attention, _ = logits_of(eager, TEXTS)
    logits, attention, _ = logits_of(onnx_model, TEXTS)
    assert (logits - expected).abs().max() < 1e-4
    assert (attention - expected_attention).abs().max() < 1e-4
    assert [p.label for p in onnx_model.predict(TEXTS)] == [p.label for p in eager.predict(TEXTS)]
    # Padding invariance holds in the graph: each text alone gives its logits in the batch.
    for i, text in enumerate(TEXTS):
        alone, alone_attention, _ = logits_of(onnx_model, [text])
        assert (alone - logits[i]).abs().max() < 1e-5
        assert (alone_attention[0] - attention[i, : lengths[i]]).abs().max() < 1e-5
        assert attention[i, lengths[i] :].abs().sum() == 0  # padding gets no attention
    meta = json.loads((trained / "best-onnx" / "config.json").read_text())
    assert meta["format"] == "onnx" and meta["quantization"] is None
    assert meta["onnx_float32_max_abs_logit_difference"] < 1e-4
    graph = onnx.load(str(trained / "best-onnx" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "lengths"]
    assert [o.name for o in graph.output] == ["logits", "attention"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "length"], ["batch"]]


@pytest.mark.parametrize(
    "architecture",
    [
        {"cell": "gru", "num_layers": 2},
        {"cell": "rnn", "num_layers": 2},
        {"cell": "lstm", "num_layers": 3, "bidirectional": False},
    ],
)
def test_every_cell_and_stack_exports_with_the_same_outputs(architecture, tmp_path):
    from trainer.inference.onnx import OnnxClassifier, export_onnx
    from trainer.models.sentiment import ModelConfig, SentimentRNN

    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(embedding_dim=16, hidden_dim=8, **architecture), 300, 3).eval()
    export_onnx(model, tmp_path / "model.onnx")
    lengths = torch.tensor([40, 1, 7, 0, 33])  # an empty text reads one padding step, as in eager
    ids = torch.randint(1, 300, (5, 40))
    ids[torch.arange(40).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    with torch.inference_mode():
        expected, expected_attention = model(ids, lengths, return_attention=True)
    logits, attention = OnnxClassifier(tmp_path / "model.onnx")(ids, lengths, return_attention=True)
    assert logits.shape == (5, 3)
    assert (logits - expected).abs().max() < 1e-4 and (attention - expected_attention).abs().max() < 1e-4


def test_int8_quantises_the_weights_and_keeps_the_predictions(trained):
    fp32, int8 = trained / "best-onnx", trained / "best-onnx-int8"
    graph = onnx.load(str(int8 / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "DynamicQuantizeLSTM" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    # The weight matrices (embedding, LSTM, linear) are stored in 8 bits; biases and scales stay float.
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    sizes = {t.name: (torch.Size(t.dims).numel(), t.data_type in eight_bit) for t in graph.initializer}
    assert "model.embedding.weight_quantized" in sizes and sizes["model.embedding.weight_quantized"][1]
    assert sum(n for n, small in sizes.values() if not small) < 0.05 * sum(n for n, _ in sizes.values())
    assert (int8 / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size
    texts = [text for text, _ in review_rows(200, seed=11)]
    reference, quantised = load_model(fp32).probabilities(texts), load_model(int8).probabilities(texts)
    agree = (reference.argmax(1) == quantised.argmax(1)).float().mean()
    assert agree >= 0.97 and (reference - quantised).abs().mean() < 0.02
    assert json.loads((int8 / "config.json").read_text())["quantization"] == "int8"


def test_the_clis_run_an_onnx_folder_like_an_eager_one(trained, tmp_path, capsys):
    data = write_csv(tmp_path / "test.csv", review_rows(60, seed=4))
    results = {}
    for name in ("best", "best-onnx"):
        done = cli("evaluate", ["--model", str(trained / name), "--data", str(data), "--json"], tmp_path)
        assert done.returncode == 0, done.stderr
        results[name] = json.loads(done.stdout)
    assert results["best"]["accuracy"] == results["best-onnx"]["accuracy"]
    assert abs(results["best"]["loss"] - results["best-onnx"]["loss"]) < 1e-5
    html = tmp_path / "attention.html"
    done = cli("predict", ["--model", str(trained / "best-onnx"), "--explain", "--html", str(html), "great"], tmp_path)
    assert done.returncode == 0 and "most attended" in done.stdout and html.stat().st_size > 0, done.stderr
    model, _, meta = load_exported(trained / "best-onnx-int8")
    assert type(model).__name__ == "OnnxClassifier" and meta["format"] == "onnx"
    # Refusals: an existing output, an ONNX folder as the source, a GPU for onnxruntime's CPU provider.
    refusals = {
        (export_main, "--model", str(trained / "best")): "already exists; give another --output, or --overwrite",
        (export_main, "--model", str(trained / "best-onnx"), "--output", str(tmp_path / "again")): "already an ONNX",
        (predict_main, "--model", str(trained / "best-onnx"), "--device", "cuda", "great"): "runs on the CPU",
    }
    for (main, *args), message in refusals.items():
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"num_labels": 3, "id2label": {"0": "negative", "1": "neutral", "2": "positive"}},
            "the graph gives 1 output(s), num_labels=3 needs 3",
        ),
        ({"vocab_size": 100_000}, "the graph cannot read token 99999 (vocab_size=100000)"),
    ],
    ids=["three-labels-for-a-two-label-graph", "larger-vocabulary"],
)
def test_an_onnx_folder_whose_config_json_was_edited_is_refused_before_predicting(trained, tmp_path, edit, message):
    folder = tmp_path / "edited-onnx"
    shutil.copytree(trained / "best-onnx-int8", folder)
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, **edit}))
    done = cli("predict", ["--model", str(folder), "great"], tmp_path)
    one_line_error(done, f"{folder}/config.json does not describe {folder}/model.onnx: {message}")
    assert done.stdout == "" and done.stderr.strip().endswith("export the model again"), done.stderr


def tree(folder: Path) -> dict:
    """Every file under ``folder`` and its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_overwrite_replaces_outputs_never_inputs_or_other_files(trained, tmp_path, capsys):
    """--overwrite is consent to replace what the command wrote before, not the model it reads, a
    folder holding that model, the data, or a folder of the user's files."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    model, data = run / "best", write_csv(tmp_path / "reviews.csv", review_rows(20, seed=2))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    before = tree(tmp_path)
    refusals = {
        (export_main, "--model", str(model), "--output", str(run), "--overwrite"): "holds the model",
        (export_main, "--model", str(model), "--output", str(model / "onnx")): "lies in the model folder",
        (export_main, "--model", str(model), "--output", str(mine), "--overwrite"): "holds files an export does not",
        (predict_main, "--model", str(model), "--html", str(model / "README.md"), "--overwrite", "good"): "reads",
        (predict_main, "--model", str(model), "--file", str(data), "--html", str(data), "--overwrite"): "reads",
        (predict_main, "--model", str(model), "--html", str(mine), "--overwrite", "good"): "is a folder",
    }
    for (main, *args), message in refusals.items():
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    done = cli("evaluate", ["--model", str(model), "--data", str(data), "--plot", str(data), "--overwrite"], tmp_path)
    assert done.returncode == 2 and "which this command reads" in done.stderr, done.stderr
    assert tree(tmp_path) == before, "nothing read was changed, nothing written"
    # What an export wrote, it may replace.
    assert export_main(["--model", str(model), "--output", str(run / "best-onnx"), "--overwrite"]) == 0
    assert tree(model) == {k[len("run/best/") :]: v for k, v in before.items() if k.startswith("run/best/")}


def test_the_prediction_benchmark_compares_every_runtime_on_the_runs_validation_split(trained, tmp_path):
    from trainer.hardware import cpu_info

    command = [sys.executable, str(REPO / "benchmarks" / "bench_predict.py"), str(trained / "best")]
    args = ["--reviews", "60", "--single", "5", "--repeats", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    runtimes = report["runtimes"]
    expected = {"eager fp32", "onnx fp32", "onnx int8"} | ({"eager bf16"} if cpu_info()["native_bf16"] else set())
    assert set(runtimes) == expected and "60 reviews of the validation split" in report["texts"]
    assert runtimes["onnx fp32"]["accuracy"] == runtimes["eager fp32"]["accuracy"]
    assert runtimes["onnx int8"]["size_ratio"] < 1 and runtimes["eager fp32"]["speedup_batch_32"] == 1.0
    for row in runtimes.values():
        assert row["reviews_per_s_batch_32"] > 0 and row["latency_ms_p99"] >= row["latency_ms_p50"] > 0
