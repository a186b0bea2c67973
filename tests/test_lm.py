"""Language-model pre-training (``train.objective=lm``) and fine-tuning from it (``model.init_from``)."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO, read_json, run_cli
from safetensors.torch import load_file

from trainer.lm import LanguageModel, cutoffs_for, frequency_order, lm_loss, load_encoder
from trainer.model import ModelConfig, SentimentRNN


def language_model(vocab: int = 40, hidden: int = 16, bidirectional: bool = True, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(embedding_dim=16, hidden_dim=hidden, num_layers=1, bidirectional=bidirectional, dropout=0.0)
    encoder = SentimentRNN(config, vocab, 2)
    return LanguageModel(encoder, frequency_order(torch.arange(vocab), vocab))


def test_frequency_order_ranks_the_most_frequent_token_first():
    rank = frequency_order(torch.tensor([3, 3, 3, 1, 1, 2]), 5)
    assert rank.tolist() == [3, 1, 2, 0, 4]  # token 3 first, then 1, then 2; unseen 0 and 4 last (stable)


def test_cutoffs_leave_every_cluster_a_projection():
    assert cutoffs_for(20000, 128) == [2000, 10000]
    assert cutoffs_for(40, 8) == [10]  # 8 // 16 = 0 dimensions: the second cluster is dropped
    assert cutoffs_for(2, 16) == []


def test_padding_is_neither_read_nor_predicted():
    lm = language_model().eval()
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 0, 0, 0]])
    lengths = torch.tensor([4, 3])
    nll, tokens = lm(ids, lengths)
    assert tokens.tolist() == [6, 4]  # (length - 1) predictions per direction
    longer = torch.cat([ids, torch.full((2, 3), 0)], dim=1)
    longer[1, 5] = 17  # garbage in the padding
    nll_longer, _ = lm(longer, lengths)
    torch.testing.assert_close(nll_longer, nll, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_random_tokens_cannot_be_predicted_while_a_pattern_can(bidirectional):
    """A language model that saw the token it predicts would drive the held-out loss on uniformly
    random tokens far below log(V); a correct one cannot, yet learns a deterministic sequence."""
    vocab, rows, steps = 24, 32, 12
    generator = torch.Generator().manual_seed(0)

    def random_ids():
        return torch.randint(2, vocab, (rows, steps), generator=generator)

    def pattern_ids():  # each token is the previous one + 1 (mod the 22 real tokens)
        start = torch.randint(0, vocab - 2, (rows, 1), generator=generator)
        return (torch.arange(steps).unsqueeze(0) + start) % (vocab - 2) + 2

    lengths = torch.full((rows,), steps)
    held_out = {}
    for name, make in (("random", random_ids), ("pattern", pattern_ids)):
        lm = language_model(vocab, bidirectional=bidirectional)
        optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
        for _ in range(150):
            loss = lm_loss(*lm(make(), lengths))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            held_out[name] = lm_loss(*lm.eval()(make(), lengths)).item()
    uniform = math.log(vocab - 2)
    assert held_out["random"] > 0.95 * uniform, held_out
    assert held_out["pattern"] < 0.4 * uniform, held_out  # the tiny tail projections cap it


def test_every_parameter_gets_a_gradient_even_without_rare_targets():
    lm = language_model(vocab=40, hidden=16)
    ids = torch.tensor([[2, 3, 2, 3]])  # frequent tokens only: no target in the tail clusters
    lm_loss(*lm(ids, torch.tensor([4]))).backward()
    assert all(p.grad is not None for p in lm.parameters())


def test_a_bidirectional_stack_cannot_be_pretrained():
    config = ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=2, bidirectional=True)
    with pytest.raises(Exception, match=r"model\.num_layers=1"):
        LanguageModel(SentimentRNN(config, 30, 2), torch.arange(30))


def test_pretrain_then_fine_tune(tmp_path):
    pre = tmp_path / "pre"
    args = ["--config", "tiny", "--train.objective=lm", f"--train.output_dir={pre}", "--train.epochs=6"]
    result = run_cli([*args, "--optim.lr=1e-2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = read_json(pre / "best" / "config.json")
    assert meta["architecture"] == "LanguageModel" and "id2label" not in meta
    assert meta["metrics"]["perplexity"] == pytest.approx(math.exp(meta["metrics"]["loss"]))
    # The language model learnt: validation perplexity far under the vocabulary size (263).
    assert meta["metrics"]["perplexity"] < 0.3 * meta["vocab_size"], meta["metrics"]
    assert "Pre-trained encoder" in (pre / "best" / "README.md").read_text()
    # A pre-trained encoder is not a classifier: predict refuses it in one line.
    predict = subprocess.run([sys.executable, "-m", "trainer.predict", "--model", str(pre / "best"), "fine"],
                             cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO)})  # fmt: skip
    assert predict.returncode == 2 and "--model.init_from=" in predict.stderr
    assert "Traceback" not in predict.stderr

    run = tmp_path / "ft"
    args = ["--config", "tiny", f"--model.init_from={pre / 'best'}", f"--train.output_dir={run}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    info = read_json(run / "run_info.json")
    assert info["init_from"]["tensors"] == 9  # embedding + 2 directions x 4 LSTM tensors
    # The fine-tuned classifier uses the encoder's tokenizer, byte for byte.
    assert (run / "tokenizer.json").read_text() == (pre / "best" / "tokenizer.json").read_text()


def test_load_encoder_copies_embedding_and_rnn_only(tmp_path):
    pre = tmp_path / "pre"
    result = run_cli(["--config", "tiny", "--train.objective=lm", f"--train.output_dir={pre}", "--train.max_steps=2"],
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    saved = load_file(str(pre / "best" / "model.safetensors"))
    meta = read_json(pre / "best" / "config.json")
    torch.manual_seed(1)
    model = SentimentRNN(ModelConfig(**meta["model"]), meta["vocab_size"], 2)
    attention = model.attention[0].weight.clone()
    load_encoder(model, pre / "best")
    state = model.state_dict()
    for key, value in saved.items():
        if key.startswith(("embedding.", "layers.")):
            assert torch.equal(state[key], value), key
    assert torch.equal(model.attention[0].weight, attention)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.hidden_dim=32"], "model.hidden_dim=32 (pre-trained: 16)"),
        (["--tokenizer.path=elsewhere.json"], "is not the tokenizer of model.init_from"),
        (["--train.objective=lm"], "drop it for train.objective=lm"),
    ],
)
def test_fine_tuning_refuses_a_mismatch(tmp_path, args, message):
    pre = tmp_path / "pre"
    result = run_cli(["--config", "tiny", "--train.objective=lm", f"--train.output_dir={pre}", "--train.max_steps=2"],
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(["--config", "tiny", f"--model.init_from={pre / 'best'}", *args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_init_from_a_classifier_or_nothing_is_refused(tmp_path):
    run = tmp_path / "cls"
    result = run_cli(["--config", "tiny", f"--train.output_dir={run}", "--train.max_steps=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for folder, message in ((run / "best", "holds a SentimentRNN model"), (tmp_path / "none", "is not a pre-trained")):
        result = run_cli(["--config", "tiny", f"--model.init_from={folder}"], cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run_cli(["--config", "tiny", "--train.objective=lm", "--checkpoint.best_metric=accuracy"], cwd=tmp_path)
    assert result.returncode == 2 and "selected by its loss" in result.stderr
