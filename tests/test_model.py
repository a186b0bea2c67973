import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from trainer.models.sentiment import (
    ModelConfig,
    SentimentRNN,
    class_probabilities,
    classification_loss,
    reverse_within_length,
)


def build(cell="lstm", bidirectional=True, num_layers=2, num_labels=2, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(
        cell=cell, embedding_dim=16, hidden_dim=24, num_layers=num_layers, bidirectional=bidirectional, dropout=0.3
    )
    return SentimentRNN(config, vocab_size=50, num_labels=num_labels).eval()


def test_reverse_within_length_keeps_padding_in_place():
    x = torch.arange(2 * 5).view(2, 5, 1).float()
    out = reverse_within_length(x, torch.tensor([3, 5]))
    assert out[0, :, 0].tolist() == [2, 1, 0, 3, 4]
    assert out[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    assert torch.equal(reverse_within_length(out, torch.tensor([3, 5])), x)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_does_not_depend_on_batch_padding(cell, bidirectional):
    model = build(cell, bidirectional)
    short = torch.randint(2, 50, (7,))
    alone = model(short.unsqueeze(0), torch.tensor([7]))
    batch = torch.zeros(2, 120, dtype=torch.long)  # a much longer neighbour: 113 padding steps
    batch[0, :7] = short
    batch[1] = torch.randint(2, 50, (120,))
    together = model(batch, torch.tensor([7, 120]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)


def test_attention_sums_to_one_on_real_tokens_and_is_zero_on_padding():
    model = build()
    ids = torch.randint(2, 50, (3, 10))
    lengths = torch.tensor([10, 4, 1])
    ids[1, 4:] = 0
    ids[2, 1:] = 0
    _, weights = model(ids, lengths, return_attention=True)
    assert weights.shape == (3, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    mask = torch.arange(10) < lengths.unsqueeze(1)
    assert torch.all(weights[~mask] == 0)
    assert torch.all(weights[mask] > 0)


def test_logits_shapes_and_losses():
    binary = build(num_labels=2)
    three = build(num_labels=3)
    ids, lengths = torch.randint(2, 50, (4, 6)), torch.full((4,), 6)
    assert binary(ids, lengths).shape == (4, 1)
    assert three(ids, lengths).shape == (4, 3)
    probs = class_probabilities(binary(ids, lengths))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    labels = torch.tensor([0, 1, 1, 0])
    assert classification_loss(binary(ids, lengths), labels).ndim == 0
    assert classification_loss(three(ids, lengths), torch.tensor([0, 1, 2, 0]), reduction="none").shape == (4,)


def test_bf16_autocast_is_finite_and_close_to_fp32():
    model = build()
    ids, lengths = torch.randint(2, 50, (4, 30)), torch.tensor([30, 12, 5, 1])
    reference = model(ids, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, weights = model(ids, lengths, return_attention=True)
    assert torch.isfinite(logits).all() and weights.dtype == torch.float32
    torch.testing.assert_close(logits.float(), reference, atol=0.05, rtol=0.05)
    loss = classification_loss(logits, torch.tensor([0, 1, 0, 1]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.slow  # starts a process
def test_model_imports_no_training_stack():
    code = "import sys, trainer.models.sentiment; "
    code += "print(sorted(m for m in ('accelerate', 'datasets', 'wandb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_word_vectors_initialise_the_embedding_rows_they_cover(tmp_path):
    from tokenizers import Tokenizer, models

    from trainer.errors import UserError
    from trainer.models.vectors import initialise_embedding, load_word_vectors

    tokenizer = Tokenizer(
        models.WordLevel({"[PAD]": 0, "[UNK]": 1, "film": 2, "great": 3, "dull": 4}, unk_token="[UNK]")
    )
    path = tmp_path / "vectors.txt"  # word2vec text format: a header, then word and 3 numbers
    path.write_text("4 3\nfilm 0.1 0.2 0.3\nother 1 1 1\ngreat -1 0 1\n[PAD] 9 9 9\n", encoding="utf-8")
    vectors, stats = load_word_vectors(path, tokenizer, 3)
    assert stats == {"path": str(path), "vectors_in_file": 4, "vocabulary": 4, "found": 2, "coverage": 0.5}
    embedding = torch.nn.Embedding(5, 3, padding_idx=0)
    before = embedding.weight.detach().clone()
    initialise_embedding(embedding, vectors)
    assert torch.equal(embedding.weight[2], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(embedding.weight[3], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(embedding.weight[[0, 1, 4]], before[[0, 1, 4]])  # padding stays zero, others random
    with pytest.raises(
        UserError, match=r"3-dimensional vectors and model\.embedding_dim is 4; set --model\.embedding_dim=3"
    ):
        load_word_vectors(path, tokenizer, 4)
    with pytest.raises(UserError, match="does not exist"):
        load_word_vectors(tmp_path / "absent.txt", tokenizer, 3)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 1 2 3\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_word_vectors(tmp_path / "latin1.txt", tokenizer, 3)


def test_embedding_dropout_drops_a_word_at_every_position_and_only_in_training():
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.0, embedding_dropout=0.5)
    model = SentimentRNN(config, vocab_size=40, num_labels=2).train()
    ids = torch.arange(1, 40).repeat(3).view(3, 39)  # every word three times, once per row
    plain = model.embedding(ids)
    out = model.embed(ids)
    kept = (out != 0).any(-1)  # (3, 39)
    assert torch.equal(kept, kept[:1].expand_as(kept)), "a word must be kept or dropped in every row alike"
    assert 5 < int((~kept[0]).sum()) < 34, "about half the words are dropped"
    torch.testing.assert_close(out[kept], 2 * plain[kept])  # the kept ones are scaled by 1 / (1 - p)
    assert torch.equal(model.eval().embed(ids), plain)


def test_locked_dropout_shares_one_mask_across_time_steps():
    torch.manual_seed(0)
    config = ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.5, locked_dropout=True)
    model = SentimentRNN(config, vocab_size=40, num_labels=2).train()
    out = model.sequence_dropout(torch.ones(4, 30, 64))
    assert torch.equal(out, out[:, :1].expand_as(out)), "the same units are dropped at every step"
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert not torch.equal(out[0], out[1]), "each sequence draws its own mask"
    unlocked = SentimentRNN(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1, dropout=0.5), 40, 2).train()
    assert not torch.equal(*unlocked.sequence_dropout(torch.ones(1, 2, 64))[0]), "default dropout varies by step"


def test_weight_drop_masks_the_recurrent_matrix_once_per_batch_and_only_in_training():
    config = ModelConfig(embedding_dim=8, hidden_dim=16, num_layers=1, dropout=0.0, weight_drop=0.5)
    model = SentimentRNN(config, vocab_size=40, num_labels=2).train()
    rnn, x = model.layers[0][0], torch.randn(3, 12, 8)
    torch.manual_seed(1)
    out = model.recur(rnn, x)
    torch.manual_seed(1)  # the same draw, by hand: one mask on weight_hh for the whole batch
    dropped = F.dropout(rnn.weight_hh_l0.detach(), 0.5)
    assert 0.3 < (dropped == 0).float().mean() < 0.7
    by_hand = copy.deepcopy(rnn)
    with torch.no_grad():
        by_hand.weight_hh_l0.copy_(dropped)
    torch.testing.assert_close(out, by_hand(x)[0])
    plain = rnn(x)[0]
    torch.testing.assert_close(out[:, 0], plain[:, 0])  # the first step has no recurrent input
    assert not torch.allclose(out[:, 1:], plain[:, 1:])
    out.sum().backward()
    assert torch.equal(rnn.weight_hh_l0.grad == 0, dropped == 0), "dropped weights get no gradient"
    assert (rnn.weight_ih_l0.grad != 0).all(), "input weights are not dropped"
    assert torch.equal(model.eval().recur(rnn, x), plain)


def test_no_forward_pass_moves_the_recurrent_weights(monkeypatch):
    """cuDNN (emulated: tests/faults) puts a layer's weights into a new buffer at each
    flatten_parameters(): one between the two forwards of an adversarial step would change weights
    that the first one's backward still needs ("modified by an inplace operation")."""
    from faults.sitecustomize import flatten_as_cudnn

    monkeypatch.setattr(torch.nn.RNNBase, "flatten_parameters", flatten_as_cudnn)
    model = SentimentRNN(ModelConfig(num_layers=2), vocab_size=50, num_labels=2)
    layer = model.layers[0][0]
    assert len({w.untyped_storage().data_ptr() for w in layer.parameters()}) == 1, "held as cuDNN holds them"
    pointers, calls = [w.data_ptr() for w in model.parameters()], flatten_as_cudnn.calls
    ids, lengths = torch.randint(1, 50, (4, 9)), torch.tensor([9, 7, 3, 1])
    clean = model(ids, lengths).sum()
    perturbed = model(ids, lengths, embeddings=model.embed(ids).detach() + 0.01).sum()
    (clean + perturbed).backward()
    assert flatten_as_cudnn.calls == calls and [w.data_ptr() for w in model.parameters()] == pointers


def test_the_recurrent_layers_precision_is_decided_for_the_device():
    from trainer.models.sentiment import autocast_precision, recurrent_dtype

    assert recurrent_dtype("cuda", "bf16") == torch.float32, "cuDNN's autocast would give float16, unscaled"
    assert recurrent_dtype("cuda", "fp16") == torch.float16 and recurrent_dtype("cuda", "no") == torch.float32
    assert recurrent_dtype("cpu", "bf16") == torch.bfloat16
    model = SentimentRNN(ModelConfig(), vocab_size=50, num_labels=2)
    seen = []
    model.layers[0][0].register_forward_hook(lambda module, args, out: seen.append(out[0].dtype))
    assert autocast_precision("cpu") == "no"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_precision("cpu") == "bf16"
        model(torch.randint(1, 50, (2, 5)), torch.tensor([5, 3]))
    assert seen == [recurrent_dtype("cpu", "bf16")], "what the run records is what runs"
