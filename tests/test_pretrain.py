"""Language-model pre-training (``python -m trainer.pretrain``) and classifiers started from it."""

import pytest
import torch
from conftest import read_json, run_cli, write_csv
from safetensors.torch import load_file

from trainer.errors import UserError
from trainer.models.language import LanguageModel, PretrainConfig
from trainer.models.sentiment import ModelConfig


def tiny_lm(vocab=50, hidden=16, tie=True, samples=20, counts=None, **model):
    config = ModelConfig(embedding_dim=16, hidden_dim=hidden, dropout=0.0, **model)
    counts = torch.arange(vocab).flip(0) + 1 if counts is None else counts  # Zipf-like: low ids frequent
    return LanguageModel(config, vocab, 0, PretrainConfig(samples=samples, tie_embeddings=tie), counts)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("output", [{}, {"tie": False}, {"hidden": 24}], ids=["tied", "untied", "projected"])
def test_no_direction_sees_the_token_it_predicts(bidirectional, output):
    # Exactly, by the gradients: each state handed to the output layer depends on the tokens its
    # direction has read (non-zero gradient) and on nothing else: not its target, not what lies
    # beyond it, not the other sequence of the batch, nor padding.
    torch.manual_seed(0)
    model = tiny_lm(bidirectional=bidirectional, **output).eval()
    lengths = torch.tensor([7, 4])
    ids = torch.randint(1, 50, (2, 7))
    ids[1, 4:] = 0
    embedded, handed = [], []
    model.embedding.register_forward_hook(lambda module, args, out: embedded.append(out))
    model.output.register_forward_hook(lambda module, args, out: handed.append(args))
    model(ids, lengths)
    (inputs_embedded,) = embedded
    # Every (sequence, p) is handed over, row b * 6 + p; those with p + 1 < length are scored.
    pairs = [(b, p) for b in range(2) for p in range(int(lengths[b]) - 1)]
    assert len(handed) == (2 if bidirectional else 1)
    for direction, (states, targets) in enumerate(handed):
        assert len(states) == 2 * 6
        for b, p in pairs:
            row, target = b * 6 + p, p + 1 if direction == 0 else p
            assert targets[row] == ids[b, target]
            read = range(p + 1) if direction == 0 else range(p + 1, int(lengths[b]))
            (gradient,) = torch.autograd.grad(states[row].sum(), inputs_embedded, retain_graph=True)
            seen = {(bb, t) for bb in range(2) for t in range(7) if gradient[bb, t].abs().sum() > 0}
            assert seen == {(b, t) for t in read}, (direction, b, p)


def test_the_loss_of_a_sequence_does_not_depend_on_its_padding():
    torch.manual_seed(1)
    model = tiny_lm().eval()
    ids = torch.randint(1, 50, (3, 9))
    lengths = torch.tensor([9, 5, 2])
    ids[1, 5:], ids[2, 2:] = 0, 0
    sums, tokens = model(ids, lengths)
    padded = torch.cat([ids, torch.zeros(3, 7, dtype=torch.long)], 1)
    sums_padded, tokens_padded = model(padded, lengths)
    assert torch.allclose(sums, sums_padded, atol=1e-5) and torch.equal(tokens, tokens_padded)
    assert tokens.tolist() == [16.0, 8.0, 2.0]  # (length - 1) targets per direction
    alone, _ = model(ids[2:, :2], lengths[2:])
    assert torch.allclose(alone, sums[2:], atol=1e-5), "the batch's other rows change nothing"


def test_a_token_never_seen_in_training_gets_a_finite_loss():
    counts = torch.zeros(50)
    counts[1:10] = 100  # the training split's words; 40 and 41 only occur in validation
    for mode in ("train", "eval"):
        model = tiny_lm(counts=counts).train(mode == "train")
        sums, tokens = model(torch.tensor([[5, 40, 41, 5]]), torch.tensor([4]))
        assert torch.isfinite(sums).all() and tokens.item() == 6


def test_a_stacked_bidirectional_encoder_is_refused():
    with pytest.raises(UserError, match=r"needs model\.num_layers=1 with a bidirectional encoder"):
        tiny_lm(num_layers=2, bidirectional=True)
    tiny_lm(num_layers=2, bidirectional=False)  # one direction may stack


@pytest.mark.slow  # trains two models in processes
def test_pretraining_exports_a_language_model_that_starts_a_classifier(tmp_path):
    common = ["--config", "tiny", f"--data.cache_dir={tmp_path / 'cache'}"]
    init = f"--model.init_from={tmp_path / 'lm' / 'best'}"
    unlabeled = write_csv(tmp_path / "more.csv", [(f"an unlabeled review number {i}", "") for i in range(40)])
    lm = run_cli(
        [*common, "--train.output_dir=lm", f"--data.unlabeled_files={unlabeled}", "--pretrain.samples=64"],
        cwd=tmp_path,
        module="trainer.pretrain",
    )
    assert lm.returncode == 0, lm.stderr[-3000:]
    info = read_json(tmp_path / "lm" / "run_info.json")
    assert info["task"] == "language-model" and info["final_step"] == info["total_steps"]
    assert info["data"]["unlabeled_examples"] == 40
    assert info["data"]["language_model_examples"] == info["data"]["train_examples"] + 40
    meta = read_json(tmp_path / "lm" / "best" / "config.json")
    assert meta["architecture"] == "LanguageModel" and meta["num_labels"] == 0
    assert meta["metrics"]["tokens"] > 1000
    records = [r for r in map(eval_record, (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()) if r]
    assert records[-1]["eval/loss"] < records[0]["eval/loss"], "the validation loss falls"
    assert "validation loss" in lm.stdout and "tokens" in lm.stdout

    classifier = run_cli(
        # one step that changes nothing: the weights as loaded
        [*common, "--train.output_dir=clf", init, "--train.max_steps=1", "--optim.lr=0"],
        cwd=tmp_path,
    )
    assert classifier.returncode == 0, classifier.stderr[-3000:]
    assert "embedding and recurrent layers:" in classifier.stdout
    lm_weights = load_file(str(tmp_path / "lm" / "best" / "model.safetensors"))
    clf_weights = load_file(str(tmp_path / "clf" / "final" / "model.safetensors"))
    encoder = [k for k in lm_weights if k.startswith(("embedding.", "layers."))]
    assert encoder and all(torch.equal(lm_weights[k], clf_weights[k]) for k in encoder)
    assert (tmp_path / "clf" / "tokenizer.json").read_text() == (
        tmp_path / "lm" / "best" / "tokenizer.json"
    ).read_text()

    wrong = run_cli(
        [*common, "--train.output_dir=wrong", init, "--model.hidden_dim=32"],
        cwd=tmp_path,
    )
    assert wrong.returncode == 2 and "was trained with hidden_dim 16 (this run: 32)" in wrong.stderr
    assert "--model.hidden_dim=16" in wrong.stderr and "Traceback" not in wrong.stderr
    folder = run_cli(["--config", "tiny", "--train.output_dir=f", f"--model.init_from={tmp_path / 'lm'}"], tmp_path)
    assert folder.returncode == 2 and "is a run folder; give" in folder.stderr
    scored = run_cli(
        ["--model", str(tmp_path / "lm" / "best"), "--data", str(unlabeled)], tmp_path, module="trainer.evaluate"
    )
    assert scored.returncode == 2 and "is a language model" in scored.stderr and "--model.init_from=" in scored.stderr


def eval_record(line: str) -> dict | None:
    import json

    record = json.loads(line)
    return record if "eval/loss" in record else None


@pytest.mark.slow  # trains in processes
def test_pretraining_resumes_exactly_after_a_kill_and_runs_on_two_processes(tmp_path):
    import signal

    from test_checkpoint import faults
    from test_distributed import launcher

    common = ["--config", "tiny", "--checkpoint.save_every_steps=4", "--pretrain.samples=64"]
    env = {"OMP_NUM_THREADS": "1"}

    def pretrain(out, *args, expect=0, **kwargs):
        done = run_cli([*common, f"--train.output_dir={out}", *args], tmp_path, module="trainer.pretrain", **kwargs)
        assert done.returncode == expect, done.stderr[-3000:]
        return read_json(tmp_path / out / "run_info.json")

    straight = pretrain("straight", env=env)
    pretrain("killed", env=env | faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    resumed = pretrain("killed", "--resume", "auto", env=env)
    assert resumed["resumed_from"].endswith("step-00000008")
    assert resumed["weight_digests"] == straight["weight_digests"], "bit for bit the uninterrupted run"
    assert resumed["final_metrics"] == straight["final_metrics"]

    two = pretrain("two", "--train.batch_size=16", env=env, launcher=launcher(2))
    assert two["world_size"] == 2 and two["global_batch_size"] == straight["global_batch_size"] == 32
    assert len(set(two["weight_digests"])) == 1, "both processes end with the same weights"
    # The same examples per step; each process averages its own tokens, so the losses differ a little.
    assert two["final_metrics"]["loss"] == pytest.approx(straight["final_metrics"]["loss"], rel=0.02)


@pytest.mark.slow  # trains in processes
def test_one_command_pretrains_then_fine_tunes_and_resumes_either_stage(tmp_path):
    import json
    import signal

    import yaml
    from test_checkpoint import faults

    unlabeled = write_csv(tmp_path / "more.csv", [(f"an unlabeled review number {i}", "") for i in range(40)])
    common = ["--config", "tiny", "--train.output_dir=out", "--checkpoint.save_every_steps=4", "--pretrain.samples=64"]
    common += ["--pretrain.stage=unlabeled", f"--data.unlabeled_files={unlabeled}", "--pretrain.max_steps=12"]
    common += ["--optim.gradual_unfreezing=1"]  # the classifier's: the language model trains every layer
    env = {"OMP_NUM_THREADS": "1"}
    out, stage = tmp_path / "out", tmp_path / "out" / "pretrain"

    def train(*args, expect=0, **kwargs):
        done = run_cli([*common, *args], tmp_path, **kwargs)
        assert done.returncode == expect, done.stderr[-3000:]
        return done

    # Killed in the language model's step 11: its checkpoint of step 8, no classifier yet.
    train(env=env | faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    assert max(p.name for p in (stage / "checkpoints").iterdir()) == "step-00000008"
    assert not (out / "run_info.json").exists()
    # Resumed: the language model goes on from step 8 to 12 (4 steps), then the classifier is killed
    # in its step 7 (the process's optimizer step 11), after its checkpoint of step 4.
    resumed = train("--resume", "auto", env=env | faults(FAULT_AT_STEP=11, FAULT_KIND="kill"), expect=-signal.SIGKILL)
    lm = read_json(stage / "run_info.json")
    assert lm["task"] == "language-model" and lm["resumed_from"].endswith("step-00000008") and lm["final_step"] == 12
    assert lm["data"]["unlabeled_examples"] == 40 and (stage / "best" / "model.safetensors").is_file()
    assert "the language model first" in resumed.stdout
    # Resumed again: the finished stage is reused, the classifier goes on from its step 4 to the end.
    done = train("--resume", "auto", env=env)
    assert "has finished; the classifier starts from" in done.stdout
    info = read_json(out / "run_info.json")
    assert info["task"] == "classification" and info["resumed_from"].endswith("step-00000004")
    assert info["final_step"] == info["total_steps"] and (out / "best" / "config.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["init_from"] == "out/pretrain/best"
    assert yaml.safe_load((stage / "config.yaml").read_text())["optim"]["gradual_unfreezing"] == 0
    assert info["gradual_unfreezing"] == {"layers.0": info["steps_per_epoch"], "embedding": 2 * info["steps_per_epoch"]}
    assert read_json(stage / "run_info.json")["final_step"] == 12, "the stage was not run again"

    scored = run_cli(
        ["--model", "out/best", "--data", str(unlabeled_with_labels(tmp_path)), "--json"],
        tmp_path,
        module="trainer.evaluate",
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert 0 <= json.loads(scored.stdout)["accuracy"] <= 1

    again = train("--resume", "auto", expect=2)
    assert "has already finished" in again.stderr and "Traceback" not in again.stderr
    changed = train("--resume", "auto", "--data.max_length=32", expect=2)
    assert "pre-trained with other settings: data.max_length 64 (this run: 32)" in changed.stderr
    # A folder of other files is refused before anything is pre-trained.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused = train("--train.output_dir=mine", expect=2)
    assert "holds files but no run" in refused.stderr and sorted(p.name for p in (tmp_path / "mine").iterdir()) == [
        "notes.txt"
    ]
    # Without unlabeled texts, pretrain.stage=unlabeled trains the classifier alone.
    alone = run_cli(
        ["--config", "tiny", "--train.output_dir=alone", "--pretrain.stage=unlabeled", "--train.max_steps=2"], tmp_path
    )
    assert alone.returncode == 0 and not (tmp_path / "alone" / "pretrain").exists(), alone.stderr[-3000:]


def unlabeled_with_labels(tmp_path):
    return write_csv(tmp_path / "scored.csv", [("a good film", 1), ("a bad film", 0)] * 5)
