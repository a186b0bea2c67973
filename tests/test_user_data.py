"""Data as users have it: class weights and imbalance metrics, truncation modes, gradient norms."""

import itertools
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from accelerate.data_loader import BatchSamplerShard
from conftest import read_json, read_jsonl, review_rows, write_csv

from trainer.cli import main
from trainer.config import Config, TrainConfig
from trainer.data import DataConfig, LengthGroupedBatchSampler, prepare_data
from trainer.data.tokenizer import TokenizerConfig, Truncator, head_tail_sizes, train_tokenizer
from trainer.errors import UserError
from trainer.evaluate import main as evaluate_main
from trainer.inference import load_model
from trainer.metrics import classification_metrics, per_class_report
from trainer.models.sentiment import classification_loss
from trainer.training.loss import class_weights

# metrics under imbalance


def test_balanced_accuracy_and_macro_f1_match_hand_computation():
    # 8 negatives (6 right), 2 positives (1 right): accuracy 0.7, but recall 0.75 and 0.5.
    labels = torch.tensor([0] * 8 + [1] * 2)
    predicted = torch.tensor([0] * 6 + [1] * 2 + [1, 0])
    probabilities = F.one_hot(predicted, 2).float()
    metrics = classification_metrics(probabilities, labels, torch.zeros(10))
    assert metrics["accuracy"] == pytest.approx(0.7)
    assert metrics["balanced_accuracy"] == pytest.approx((6 / 8 + 1 / 2) / 2)
    f1_negative = 2 * (6 / 7) * (6 / 8) / (6 / 7 + 6 / 8)
    f1_positive = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    assert metrics["macro_f1"] == pytest.approx((f1_negative + f1_positive) / 2)
    report = per_class_report(probabilities, labels, ["neg", "pos"])
    assert report["neg"] == pytest.approx({"precision": 6 / 7, "recall": 0.75, "f1": f1_negative, "support": 8})
    assert report["pos"]["support"] == 2 and report["pos"]["recall"] == pytest.approx(0.5)


def test_class_weights_come_from_the_whole_training_split():
    names = ["negative", "positive"]
    assert class_weights("none", [90, 10], names) is None
    assert class_weights("balanced", [90, 10], names) == pytest.approx([100 / 180, 100 / 20])
    assert class_weights("1,9", [90, 10], names) == [1.0, 9.0]
    with pytest.raises(UserError, match="positive has none"):
        class_weights("balanced", [100, 0], names)
    with pytest.raises(UserError, match="3 weights for 2 classes"):
        class_weights("1,2,3", [90, 10], names)
    for bad in ("heavy", "1,-2", "0,0", "1,nan"):
        with pytest.raises(UserError, match="not none, balanced or a list of weights"):
            TrainConfig(class_weights=bad)


def test_weighted_binary_loss_is_bce_with_pos_weight_scaled_by_the_negative_weight():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 1), torch.randint(0, 2, (16,))
    weights = torch.tensor([0.5, 4.5])
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits.squeeze(1), labels.float(), pos_weight=torch.tensor(9.0))
    assert classification_loss(logits, labels, weights=weights) == pytest.approx(expected.item(), rel=1e-6)
    logits3, labels3 = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weights3 = torch.tensor([1.0, 2.0, 3.0])
    per_example = F.cross_entropy(logits3, labels3, reduction="none") * weights3[labels3]
    assert classification_loss(logits3, labels3, weights=weights3) == pytest.approx(per_example.mean().item())


# the class-balanced sampler


def test_the_balanced_sampler_draws_each_class_equally_and_each_example_at_most_once_across_shards():
    labels = [0] * 70 + [1] * 23 + [2] * 11  # the rarest class has 11: 33 examples an epoch
    lengths = [(i * 37) % 101 + 1 for i in range(len(labels))]
    for accumulation in (1, 2):
        sampler = LengthGroupedBatchSampler(lengths, 4, num_shards=2, seed=5, accumulation=accumulation, labels=labels)
        assert sampler.steps_per_epoch == 33 // (8 * accumulation)  # the 1 left over joins the last step
        draws = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            per_rank = [list(BatchSamplerShard(sampler, 2, rank)) for rank in range(2)]
            assert len(per_rank[0]) == len(per_rank[1]) == len(sampler) // 2  # the processes stay in step
            seen = Counter(i for batches in per_rank for batch in batches for i in batch)
            assert set(seen.values()) == {1}, "an example twice in one epoch"
            assert Counter(labels[i] for i in seen) == {0: 11, 1: 11, 2: 11}
            assert set().union(*map(set, per_rank[0])).isdisjoint(set().union(*map(set, per_rank[1])))
            draws.append(set(seen))
        assert draws[0] != draws[1] != draws[2]  # a new draw of the common classes each epoch
        assert all({i for i in d if labels[i] == 2} == set(range(93, 104)) for d in draws)  # the rarest: all
        # A resumed run rebuilds the sampler and sets the epoch: the same batches, in the same order.
        again = LengthGroupedBatchSampler(lengths, 4, num_shards=2, seed=5, accumulation=accumulation, labels=labels)
        again.set_epoch(2)
        assert list(again) == list(sampler)


def test_the_balanced_sampler_is_refused_with_balanced_class_weights_and_tiny_splits():
    with pytest.raises(UserError, match="use one of the two"):
        Config(data=DataConfig(sampler="balanced"), train=TrainConfig(class_weights="balanced"))
    with pytest.raises(UserError, match=r"data\.sampler='uniform' is not valid"):
        DataConfig(sampler="uniform")
    with pytest.raises(UserError, match="2 training examples drawn per epoch cannot be shared among 3 processes"):
        LengthGroupedBatchSampler([5] * 10, 4, num_shards=3, labels=[0] * 9 + [1])


# truncation


def numbered_tokenizer(n: int = 40):
    words = [f"w{i}" for i in range(n)]
    return train_tokenizer(iter([[" ".join(words)]]), TokenizerConfig(model="wordlevel", min_frequency=1)), words


def test_head_tail_and_head_tail_keep_the_right_tokens_with_their_characters():
    tokenizer, words = numbered_tokenizer()
    text = " ".join(words)
    head, tail = head_tail_sizes(8)
    assert (head, tail) == (2, 6)
    kept = {
        mode: Truncator(tokenizer, 8, mode).encode([text, "w3 w4"], offsets=True)
        for mode in ("head", "tail", "head_tail")
    }
    assert kept["head"][0].tokens == words[:8]
    assert kept["tail"][0].tokens == words[-8:]
    assert kept["head_tail"][0].tokens == words[:2] + words[-6:]
    for mode, (long, short) in kept.items():
        assert long.truncated and not short.truncated and short.tokens == ["w3", "w4"], mode
        assert long.ids == [tokenizer.token_to_id(t) for t in long.tokens]
        assert [text[a:b] for a, b in long.offsets] == long.tokens  # spans point into the text
        fast = Truncator(tokenizer, 8, mode).encode([text])[0]
        assert fast.ids == long.ids and fast.truncated  # the fast path (no offsets) keeps the same tokens


def test_each_truncation_tokenises_into_its_own_cache(tmp_path):
    path = write_csv(tmp_path / "train.csv", [(text * 20, label) for text, label in review_rows(60)])
    tokenizer = TokenizerConfig(model="wordlevel", vocab_size=500, min_frequency=1)
    ids = {}
    for mode in ("head", "tail", "head_tail", "head"):
        config = DataConfig(train_files=[str(path)], max_length=16, truncation=mode, cache_dir=str(tmp_path / "c"))
        data = prepare_data(config, tokenizer)
        ids.setdefault(mode, data.train["input_ids"])
        assert data.train["input_ids"] == ids[mode]  # the second head run reads its own cache back
    assert ids["head"] != ids["tail"] != ids["head_tail"] != ids["head"]
    with pytest.raises(UserError, match=r"data\.truncation"):
        DataConfig(truncation="middle")


# a run with all of it


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_skewed_run_with_balanced_weights_head_tail_and_no_clipping(tmp_path, capsys):
    rows = review_rows(600, seed=2)
    negatives = [r for r in rows if r[1] == 0]
    positives = [r for r in rows if r[1] == 1]
    skewed = write_csv(tmp_path / "train.csv", negatives[:180] + positives[:20])  # 90/10
    balanced = write_csv(tmp_path / "validation.csv", negatives[180:230] + positives[20:70])
    run = tmp_path / "run"
    args = ["--config", "tiny", f"--train.output_dir={run}", f"--data.train_files={skewed}"]
    args += [f"--data.validation_files={balanced}", "--train.class_weights=balanced", "--data.truncation=head_tail"]
    args += ["--optim.max_grad_norm=0", "--checkpoint.best_metric=macro_f1", "--train.log_every_steps=1"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()  # the run's own output
    stats = read_json(run / "run_info.json")["data"]
    assert stats["train_label_counts"] == {"negative": 180, "positive": 20}
    assert stats["class_weights"] == pytest.approx({"negative": 200 / 360, "positive": 200 / 40})
    records = read_jsonl(run / "metrics.jsonl")
    norms = [r["train/grad_norm"] for r in records if "train/grad_norm" in r]
    assert norms and all(n > 0 for n in norms)  # measured with clipping off
    validations = [r for r in records if "eval/macro_f1" in r]
    assert validations and all("eval/balanced_accuracy" in r for r in validations)
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["truncation"] == "head_tail" and "macro_f1" in meta["metrics"]
    assert "the first 16 and the last 48 tokens (head_tail)" in (run / "best" / "README.md").read_text()
    model = load_model(run / "best")
    long_text = " ".join(["dull"] * 30 + ["wonderful"] * 100)
    explained = model.explain(long_text)
    assert explained.truncated and explained.num_tokens == 64
    assert explained.tokens[:16] == ["dull"] * 16 and explained.tokens[-48:] == ["wonderful"] * 48

    # Its mistakes on the balanced validation split, and the per-class report.
    out = tmp_path / "mistakes"
    evaluate_args = ["--model", str(run / "best"), "--data", str(balanced), "--errors", "5", "--errors-out", str(out)]
    assert evaluate_main([*evaluate_args, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # The run wrote best/'s 20 surest validation mistakes itself: evaluate's first 5 are its first 5.
    in_run = read_jsonl(run / "mistakes.jsonl")
    assert len(in_run) == min(20, sum(result["confusion_matrix"][i][1 - i] for i in (0, 1)))
    assert read_json(run / "run_info.json")["mistakes"] == {"model": "best", "written": len(in_run)}
    assert (run / "mistakes.html").read_text().count("<section>") == len(in_run)
    first = read_jsonl(out.with_suffix(".jsonl"))
    assert [(m["text"], m["label"]) for m in in_run[:5]] == [(m["text"], m["label"]) for m in first]
    assert [m["probability"] for m in in_run[:5]] == pytest.approx([m["probability"] for m in first], abs=1e-5)
    assert {name: row["support"] for name, row in result["per_class"].items()} == {"negative": 50, "positive": 50}
    assert result["per_class"]["positive"]["recall"] == pytest.approx(result["confusion_matrix"][1][1] / 50)
    mistakes = read_jsonl(tmp_path / "mistakes.jsonl")
    wrong = sum(result["confusion_matrix"][i][1 - i] for i in (0, 1))
    assert len(mistakes) == min(5, wrong) and "mistakes.html" in captured.err
    assert all(m["label"] != m["predicted"] for m in mistakes)
    assert [m["probability"] for m in mistakes] == sorted((m["probability"] for m in mistakes), reverse=True)
    for m in mistakes:  # the loss of a wrong prediction is -log(1 - p) for two classes
        assert m["loss"] == pytest.approx(-math.log(1 - m["probability"]), rel=1e-3, abs=1e-4)
    page = (tmp_path / "mistakes.html").read_text()
    assert page.count("<section>") == len(mistakes) and page.count("true label:") == len(mistakes)
    assert f"<h1>The {len(mistakes)} most confident mistakes of {run / 'best'} on validation.csv</h1>" in page
    assert evaluate_main(evaluate_args) == 2  # never over the user's files without --overwrite
    assert "exists; choose another --errors-out or pass --overwrite" in capsys.readouterr().err
    assert evaluate_main([*evaluate_args, "--overwrite"]) == 0
    assert "precision" in capsys.readouterr().out  # the per-class table in the terminal
    nested = tmp_path / "new" / "folder" / "errors"  # a missing folder is made, not an error after the work
    assert evaluate_main([*evaluate_args[:-1], str(nested)]) == 0
    assert read_jsonl(nested.with_suffix(".jsonl")) == read_jsonl(out.with_suffix(".jsonl"))


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_run_with_the_balanced_sampler_sees_as_many_of_each_class_per_epoch(tmp_path, capsys):
    rows = review_rows(600, seed=2)
    skewed = [r for r in rows if r[1] == 0][:180] + [r for r in rows if r[1] == 1][:20]
    run = tmp_path / "run"
    args = [
        "--config",
        "tiny",
        f"--train.output_dir={run}",
        f"--data.train_files={write_csv(tmp_path / 't.csv', skewed)}",
    ]
    args += ["--data.validation_split=null", "--data.validation_fraction=0.1", "--data.sampler=balanced"]
    assert main([*args, "--checkpoint.mistakes=0"]) == 0, capsys.readouterr().err
    info = read_json(run / "run_info.json")
    positives = info["data"]["train_label_counts"]["positive"]  # about 18 of the 20 after the carve
    assert info["examples_per_epoch"] == 2 * positives and info["steps_per_epoch"] == math.ceil(2 * positives / 32)
    assert info["total_steps"] == 2 * info["steps_per_epoch"]
    assert not (run / "mistakes.jsonl").exists()  # --checkpoint.mistakes=0


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_the_logged_gradient_norm_is_taken_before_clipping(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", "tiny", f"--train.output_dir={run}", "--optim.max_grad_norm=1e-6", "--train.max_steps=5"]
    assert main([*args, "--train.log_every_steps=1"]) == 0, capsys.readouterr().err
    norms = [r["train/grad_norm"] for r in read_jsonl(run / "metrics.jsonl") if "train/grad_norm" in r]
    assert len(norms) == 5 and min(norms) > 1e-3  # far above the clipping threshold


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_the_lr_range_test_sweeps_plots_and_suggests_without_touching_any_run(tmp_path, monkeypatch, capsys):
    from trainer.lr_find import main as lr_find_main

    monkeypatch.chdir(tmp_path)
    args = ["--config", "tiny", "--steps", "40", "--start", "1e-5", "--end", "10", "--json"]
    assert lr_find_main([*args, f"--data.cache_dir={tmp_path / 'cache'}"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    lrs = result["lr"]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in itertools.pairwise(lrs))
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert max(ratios) == pytest.approx(min(ratios))  # geometric
    assert lrs[0] < result["suggested_lr"] <= result["min_loss_lr"] and "suggested lr" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "lr_find.png"]  # no run folder
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lr_find_main(args) == 2 and "lr_find.png exists" in capsys.readouterr().err
