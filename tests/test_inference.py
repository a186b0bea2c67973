"""Using a trained model: evaluate, predict, explain, plots, the model card, and bad input."""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import REPO, read_json, review_rows, run_cli, write_csv
from test_distributed import launcher

from trainer.inference import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (fresh process) whose exports and curves the tests below use."""
    work = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(work / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", "tiny", f"--train.output_dir={work}/run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return work / "run"


def cli(module: str, args: list[str], cwd: Path, stdin: str | None = None, launch: list[str] | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [*(launch or [sys.executable]), "-m", f"trainer.{module}", *args]
    return subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300)


def png_series(path: Path) -> dict:
    """The series names -> point counts stored in a PNG's Description chunk; checks the PNG structure."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, texts, chunks = 8, {}, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in {kind}"
        chunks.append(kind)
        if kind == b"tEXt":
            key, value = body.split(b"\0", 1)
            texts[key.decode()] = value.decode("latin-1")
        position += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    return json.loads(texts["Description"])["series"]


def labelled_csv(path: Path, n: int, seed: int = 5, spelling=None) -> Path:
    rows = review_rows(n, seed=seed)
    if spelling:
        rows = [(text, spelling[label]) for text, label in rows]
    return write_csv(path, rows)


# evaluate


def test_evaluate_on_two_processes_equals_one_process(trained, tmp_path):
    data = labelled_csv(tmp_path / "test.csv", 61)  # 61 rows in batches of 7: uneven across 2 processes
    args = ["--model", str(trained / "best"), "--data", str(data), "--json", "--batch-size", "7"]
    one = cli("evaluate", args, tmp_path)
    two = cli("evaluate", args, tmp_path, launch=launcher(2))
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert len(two.stdout.strip().splitlines()) == 1  # printed once
    single, double = json.loads(one.stdout), json.loads(two.stdout)
    assert single["num_processes"] == 1 and double["num_processes"] == 2
    assert single["n"] == double["n"] == 61
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix"):
        assert single[key] == double[key], key
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-6)
    assert sum(map(sum, single["confusion_matrix"])) == 61
    assert single["accuracy"] == pytest.approx(
        (single["confusion_matrix"][0][0] + single["confusion_matrix"][1][1]) / 61
    )


def test_evaluate_reads_labels_with_the_models_label_map_and_plots_the_confusion_matrix(trained, tmp_path):
    numeric = labelled_csv(tmp_path / "numeric.csv", 40)
    words = labelled_csv(tmp_path / "words.csv", 40, spelling={0: "neg", 1: "Positive"})
    results = []
    for data in (numeric, words):
        done = cli("evaluate", ["--model", str(trained / "best"), "--data", str(data), "--json"], tmp_path)
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "loss", "n"} <= set(results[0])
    plain = cli("evaluate", ["--model", str(trained / "best"), "--data", str(numeric), "--plot", "cm.png"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "accuracy" in plain.stdout and "confusion matrix" in plain.stdout
    assert png_series(tmp_path / "cm.png") == {"confusion_matrix": 4}
    again = cli("evaluate", ["--model", str(trained / "best"), "--data", str(numeric), "--plot", "cm.png"], tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # a user's file is not replaced silently


def test_evaluate_rejects_a_label_the_model_does_not_know(trained, tmp_path):
    data = write_csv(tmp_path / "bad.csv", [("a fine film", 1), ("so so", "mixed")])
    done = cli("evaluate", ["--model", str(trained / "best"), "--data", str(data)], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "unknown label 'mixed'" in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_summary_counts_in_the_singular_and_plural():
    from trainer.evaluate import show

    result = {
        "model": "m",
        "data": "d.csv",
        "n": 3,
        "labels": ["negative", "positive"],
        "accuracy": 0.5,
        "confusion_matrix": [[1, 0], [1, 1]],
        "max_length": 64,
        "skipped_rows": 1,
        "truncated": 2,
    }
    assert (
        show(result).splitlines()[0] == "m on d.csv: 3 examples (1 row without a text or label skipped; "
        "2 texts truncated to 64 tokens)"
    )
    result |= {"skipped_rows": 0, "truncated": 1, "model": ["a", "b"]}
    assert show(result).splitlines()[0] == "the ensemble of a, b on d.csv: 3 examples (1 text truncated to 64 tokens)"


# predict


def test_predict_texts_file_and_stdin_agree_and_json_parses(trained, tmp_path):
    texts = ["the movie is far from boring", "this film was not really great", "an utterly dull film"]
    model = str(trained / "best")
    from_args = cli("predict", ["--model", model, "--json", *texts], tmp_path)
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    write_csv(tmp_path / "t.csv", [(t, "x") for t in texts], header=("review", "other"))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    runs = [
        from_args,
        cli("predict", ["--model", model, "--json", "--file", "t.txt"], tmp_path),
        cli("predict", ["--model", model, "--json", "--file", "t.csv", "--text-column", "review"], tmp_path),
        cli("predict", ["--model", model, "--json", "--file", "t.jsonl"], tmp_path),
        cli("predict", ["--model", model, "--json"], tmp_path, stdin="\n".join(texts) + "\n"),
    ]
    outputs = []
    for done in runs:
        assert done.returncode == 0, done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["text"] for r in records] == texts
        outputs.append([(r["label"], r["probabilities"]) for r in records])
    assert all(out == outputs[0] for out in outputs)
    for label, probabilities in outputs[0]:
        assert set(probabilities) == {"negative", "positive"} and sum(probabilities.values()) == pytest.approx(1)
        assert label == max(probabilities, key=probabilities.get)
    plain = cli("predict", ["--model", model, *texts], tmp_path)
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 3 and "positive" in plain.stdout


def test_predict_empty_and_very_long_texts(trained, tmp_path):
    long_text = " ".join(["the film was great"] * 200)
    done = cli("predict", ["--model", str(trained / "best"), "--json", "", long_text, long_text], tmp_path)
    assert done.returncode == 0, done.stderr
    empty, long1, _ = [json.loads(line) for line in done.stdout.splitlines()]
    assert empty["num_tokens"] == 0 and not empty["truncated"] and empty["label"] in ("negative", "positive")
    assert long1["truncated"] and long1["num_tokens"] == 64  # the tiny preset's max_length
    notes = [line for line in done.stderr.splitlines() if "truncated" in line]
    assert len(notes) == 1 and "2 of 3 texts" in notes[0]  # said once


def test_predict_api_matches_the_cli_and_batches_do_not_change_results(trained):
    model = load_model(trained / "best")
    texts = [text for text, _ in review_rows(50, seed=9)]
    one_by_one = [model.predict([t])[0] for t in texts]
    batched = model.predict(texts, batch_size=16)
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.label == b.label
        for name in a.probabilities:
            assert a.probabilities[name] == pytest.approx(b.probabilities[name], abs=1e-5)
    with pytest.raises(TypeError):
        model.predict("a single string")


def less_sure_copy(model_dir: Path, out: Path) -> Path:
    """Another model: ``model_dir`` with its classifier's logits shrunk and shifted, reading only the
    first 12 tokens (so it orders texts by length unlike the original)."""
    from safetensors.torch import load_file, save_file

    from trainer.inference.folder import sha256_file

    shutil.copytree(model_dir, out)
    weights = load_file(str(out / "model.safetensors"))
    weights["classifier.weight"] = weights["classifier.weight"] * 0.25
    weights["classifier.bias"] = weights["classifier.bias"] + 0.5
    save_file(weights, str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    changed = {"max_length": 12, "weights_sha256": sha256_file(out / "model.safetensors")}  # new weights, on purpose
    (out / "config.json").write_text(json.dumps(config | changed))
    return out


def test_an_ensemble_averages_its_models_probabilities_in_the_api_and_both_clis(trained, tmp_path):
    first, second = trained / "best", less_sure_copy(trained / "best", tmp_path / "other")
    rows = review_rows(60, seed=11)
    texts, labels = [text for text, _ in rows], torch.tensor([label for _, label in rows])
    one, two = load_model(first).probabilities(texts), load_model(second).probabilities(texts)
    assert (one - two).abs().max() > 0.05  # two different models
    assert sum(len(e.ids) > 12 for e in load_model(first).encode(texts)) > 10  # which truncate differently
    ensemble = load_model([first, second])
    average = ensemble.probabilities(texts, batch_size=7)
    assert torch.allclose(average, (one + two) / 2, atol=1e-6)
    assert [p.label for p in ensemble.predict(texts)] == [ensemble.labels[i] for i in average.argmax(1).tolist()]

    data = write_csv(tmp_path / "test.csv", rows)
    models = ["--model", str(first), "--model", str(second)]
    done = cli("evaluate", [*models, "--data", str(data), "--json", "--batch-size", "8"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["model"] == [str(first), str(second)] and result["n"] == 60
    assert result["accuracy"] == pytest.approx((average.argmax(1) == labels).double().mean().item())
    assert result["loss"] == pytest.approx(-average.gather(1, labels[:, None]).log().mean().item(), abs=1e-5)
    predicted = cli("predict", [*models, "--json", *texts[:5]], tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    for line, expected in zip(predicted.stdout.splitlines(), average[:5], strict=True):
        assert list(json.loads(line)["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_an_ensemble_of_models_with_other_labels_or_asked_to_explain_is_refused(trained, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(trained / "best", renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    (renamed / "config.json").write_text(json.dumps(config))
    data = labelled_csv(tmp_path / "test.csv", 10)
    models = ["--model", str(trained / "best"), "--model", str(renamed)]
    cases = [
        ("evaluate", [*models, "--data", str(data)], f"{renamed} has the labels bad, good and {trained / 'best'}"),
        ("predict", [*models, "a text"], f"{renamed} has the labels bad, good and {trained / 'best'}"),
        (
            "predict",
            ["--model", str(trained / "best"), "--model", str(trained / "final"), "--explain", "a text"],
            "give a single --model",
        ),
    ]
    for module, args, message in cases:
        done = cli(module, args, tmp_path)
        assert done.returncode == 2 and message in done.stderr, (module, done.stderr[-2000:])
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    with pytest.raises(TypeError, match="does not explain"):
        load_model([trained / "best", trained / "final"]).explain("a text")


def test_evaluate_and_predict_exit_quietly_when_their_reader_leaves(trained, tmp_path):
    data = labelled_csv(tmp_path / "test.csv", 20)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cases = [
        ["evaluate", "--model", str(trained / "best"), "--data", str(data), "--plot", str(tmp_path / "cm.png")],
        ["predict", "--model", str(trained / "best"), *[f"text {i}" for i in range(2000)]],
    ]
    for args in cases:
        process = subprocess.Popen(
            [sys.executable, "-m", f"trainer.{args[0]}", *args[1:]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        process.stdout.close()  # the reader leaves before the first line (as `| head -0` would)
        stderr = process.stderr.read()
        assert process.wait(timeout=300) == 0, stderr[-2000:]
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr[-2000:]
    assert png_series(tmp_path / "cm.png") == {"confusion_matrix": 4}  # the plot is still drawn


# explain


def test_explain_weights_sum_to_one_over_real_tokens_and_are_zero_on_padding(trained):
    model = load_model(trained / "best")
    texts = ["the acting is superb, but this film was not really great", "dull", "a film"]
    for text, explanation in zip(texts, model.explain_batch(texts), strict=True):
        single = model.explain(text)
        assert explanation.tokens == single.tokens and len(explanation.weights) == len(explanation.tokens) > 0
        assert sum(explanation.weights) == pytest.approx(1, abs=1e-5)
        assert explanation.weights == pytest.approx(single.weights, abs=1e-6)
        for token, (start, end) in zip(explanation.tokens, explanation.spans, strict=True):
            assert text[start:end].lower() == token
    # In a padded batch, padding positions get exactly zero weight.
    encodings = model.encode(texts)
    lengths = torch.tensor([len(e.ids) for e in encodings])
    ids = torch.zeros(len(texts), int(lengths.max()), dtype=torch.long)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
    with torch.no_grad():
        _, weights = model.model(ids, lengths, return_attention=True)
    for row, n in enumerate(lengths.tolist()):
        assert weights[row, n:].abs().sum() == 0 and weights[row, :n].sum().item() == pytest.approx(1, abs=1e-6)


def test_explain_in_the_terminal_and_as_an_html_page(trained, tmp_path):
    model = str(trained / "best")
    texts = ["the acting is superb, but this film was <br /><br />not really great", "a dull & silly film"]
    done = cli("predict", ["--model", model, "--explain", "--color", "always", "--html", "page.html", *texts], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b[48;2;" in done.stdout and done.stdout.count("most attended:") == 2
    page = (tmp_path / "page.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<section>") == 2
    assert page.count('class="t"') == sum(len(e.tokens) for e in load_model(model).explain_batch(texts))
    assert "&amp;" in page and "<br>" in page and "<script" not in page  # escaped, line breaks kept, no JS
    plain = cli("predict", ["--model", model, "--explain", "--color", "never", texts[0]], tmp_path)
    assert "\x1b[" not in plain.stdout and "most attended:" in plain.stdout
    again = cli("predict", ["--model", model, "--html", "page.html", "x"], tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


# plots and the model card


def test_training_writes_plots_and_trainer_plot_redraws_them(trained, tmp_path):
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    evals = sum("eval/loss" in r for r in metrics)
    logs = sum("train/loss" in r for r in metrics)
    expected = {
        "loss.png": {"training": logs, "validation": evals},
        "metrics.png": {"accuracy": evals, "F1": evals, "ROC-AUC": evals},
        "lr.png": {"learning rate": logs},
        "throughput.png": {"training tokens/s": logs},
    }
    for name, series in expected.items():
        assert png_series(trained / "plots" / name) == series
    done = cli("plot", [str(trained), "--out", str(tmp_path / "again")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(expected)
    missing = cli("plot", [str(tmp_path / "nothing")], tmp_path)
    assert missing.returncode == 2 and "metrics.jsonl does not exist" in missing.stderr


def test_every_export_has_a_model_card(trained):
    info = read_json(trained / "run_info.json")
    for name in ("best", "final"):
        card = (trained / name / "README.md").read_text()
        assert "`negative`, `positive`" in card and "python -m trainer.predict --model" in card
        assert "from trainer import load_model" in card and "the built-in generated reviews" in card
        assert "max_length: 64" in card  # the training config
    best_accuracy = info["best_metrics"]["accuracy"]
    assert f"| accuracy | {best_accuracy:.4f} |" in (trained / "best" / "README.md").read_text()


# bad input


def test_bad_model_folders_are_clear_one_line_errors(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained / "best", broken)
    (broken / "tokenizer.json").unlink()
    other = tmp_path / "other"
    shutil.copytree(trained / "best", other)
    # A tokenizer from another training run (other vocabulary): not the one the weights learned.
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[5:7]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    cases = {
        str(tmp_path / "absent"): "does not exist",
        str(broken): "missing tokenizer.json",
        str(other): "is not the tokenizer these weights were trained with",
    }
    for model, message in cases.items():
        for module, extra in (("predict", ["a text"]), ("evaluate", ["--data", "x.csv"])):
            done = cli(module, ["--model", model, *extra], tmp_path)
            assert done.returncode == 2, (module, model)
            assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_bad_input_files_are_clear_one_line_errors(trained, tmp_path):
    model = str(trained / "best")
    (tmp_path / "latin1.txt").write_bytes("a café review\n".encode("latin-1"))
    write_csv(tmp_path / "cols.csv", [("a film", 1)], header=("review", "label"))
    cases = [
        ("predict", ["--file", "latin1.txt"], "is not valid UTF-8"),
        ("predict", ["--file", "cols.csv"], "has no column 'text'; columns found: review, label (set --text-column)"),
        ("predict", ["--file", "absent.csv"], "does not exist"),
        ("evaluate", ["--data", "cols.csv"], "has no column 'text'; columns found: review, label (set --text-column)"),
        ("evaluate", ["--data", "latin1.txt"], "cannot tell the format"),
    ]
    for module, args, message in cases:
        done = cli(module, ["--model", model, *args], tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_run_folder_given_as_model_points_to_its_exports(trained, tmp_path):
    for module, extra in (("predict", ["a text"]), ("evaluate", ["--data", "x.csv"])):
        done = cli(module, ["--model", str(trained), *extra], tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"{trained} is a run folder, not a model folder; give {trained}/best or {trained}/final" in done.stderr


def test_evaluate_names_its_own_option_for_a_missing_file(trained, tmp_path):
    done = cli("evaluate", ["--model", str(trained / "best"), "--data", "absent.csv"], tmp_path)
    assert done.returncode == 2 and "data file absent.csv does not exist; check --data" in done.stderr
    assert "--data.train_files" not in done.stderr


def test_a_damaged_export_is_refused_instead_of_predicting_nan(trained, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "best", damaged)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    (header_size,) = struct.unpack("<Q", bytes(data[:8]))
    start = 8 + header_size  # the tensors, after the header: size and header stay intact
    data[start : start + 50_000] = b"\xff" * min(50_000, len(data) - start)  # 0xffffffff is a float32 nan
    weights.write_bytes(bytes(data))
    done = cli("predict", ["--model", str(damaged), "a wonderful film"], tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert "does not match the checksum in config.json" in done.stderr
    # Without the checksum (an export from before it existed), the nan weights are found all the same.
    meta = json.loads((damaged / "config.json").read_text())
    del meta["weights_sha256"]
    (damaged / "config.json").write_text(json.dumps(meta))
    done = cli("predict", ["--model", str(damaged), "a wonderful film"], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert "holds non-finite (nan or inf) weights" in done.stderr and len(done.stderr.strip().splitlines()) == 1


EDITED_CONFIGS = {
    "three-labels-for-a-two-label-head": (
        lambda meta: meta.update(num_labels=3, id2label={"0": "negative", "1": "neutral", "2": "positive"}),
        "does not describe {folder}/model.safetensors (classifier.weight is 1x",
    ),
    "a-label-more-than-num-labels": (
        lambda meta: meta["id2label"].update({"2": "neutral"}),
        "id2label holds 3 labels, num_labels=2",
    ),
    "the-same-label-twice": (lambda meta: meta["id2label"].update({"1": "negative"}), "must name each label once"),
    "negative-max-length": (lambda meta: meta.update(max_length=-5), "max_length=-5 is out of range"),
    "max-length-not-a-whole-number": (lambda meta: meta.update(max_length="64"), "max_length='64' is not a whole"),
    "wider-hidden-dim": (
        lambda meta: meta["model"].update(hidden_dim=2 * meta["model"]["hidden_dim"]),
        "does not describe {folder}/model.safetensors (layers.0.0.weight_ih_l0 is",
    ),
    "23-digit-hidden-dim": (
        lambda meta: meta["model"].update(hidden_dim=int("9" * 23)),
        f"model.hidden_dim={'9' * 23} is out of range",
    ),
    "larger-vocabulary": (
        lambda meta: meta.update(vocab_size=10**6),
        "does not describe {folder}/model.safetensors (embedding.weight is",
    ),
    "pad-id-of-another-token": (lambda meta: meta.update(pad_id=3), "pad_id=3 is not the tokenizer's padding token"),
    "unknown-truncation": (lambda meta: meta.update(truncation="middle"), "truncation='middle' is not valid"),
    "unknown-model-setting": (lambda meta: meta["model"].update(layers=2), "model.layers is not a model setting"),
}


@pytest.mark.parametrize("case", EDITED_CONFIGS)
def test_a_config_json_edited_after_export_is_refused_before_predicting(trained, tmp_path, case):
    """config.json has no checksum (its labels may be renamed): each value is checked, and against
    the weights' shapes and the tokenizer, before any prediction."""
    folder = tmp_path / "edited"
    shutil.copytree(trained / "best", folder)
    meta = json.loads((folder / "config.json").read_text())
    edit, message = EDITED_CONFIGS[case]
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    done = cli("predict", ["--model", str(folder), "a wonderful film"], tmp_path)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert f"{folder}/config.json" in lines[0] and message.format(folder=folder) in lines[0], lines[0]
    assert lines[0].endswith("export the model again"), lines[0]


@pytest.mark.parametrize("case", ["negative-max-length", "tokenizer-of-fewer-tokens"])
def test_a_folder_edited_after_export_is_refused_as_model_init_from(trained, tmp_path, case):
    folder = tmp_path / "edited"
    shutil.copytree(trained / "best", folder)
    if case == "negative-max-length":
        meta = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**meta, "max_length": -1}))
        message = f"{folder}/config.json: max_length=-1 is out of range"
    else:
        tokenizer = json.loads((folder / "tokenizer.json").read_text())
        vocab = tokenizer["model"]["vocab"]
        for token in sorted(vocab, key=vocab.get)[-5:]:
            del vocab[token]
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
        message = f"{folder}/tokenizer.json has {len(vocab)} tokens, and {folder}/config.json {len(vocab) + 5}"
    run = tmp_path / "run"
    args = ["--config", "tiny", "--logging.tracker=none", f"--train.output_dir={run}", f"--model.init_from={folder}"]
    done = run_cli(args, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert not run.exists()


def test_predict_html_goes_into_a_new_folder_and_an_unwritable_one_fails_before_predicting(trained, tmp_path):
    model = str(trained / "best")
    page = tmp_path / "new" / "folder" / "page.html"
    done = cli("predict", ["--model", model, "--html", str(page), "a wonderful film"], tmp_path)
    assert done.returncode == 0 and page.is_file() and "a wonderful film" in done.stdout, done.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    done = cli("predict", ["--model", model, "--html", str(blocker / "page.html"), "a wonderful film"], tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert "is a file, not a folder" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "mine"
