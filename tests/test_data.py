import gzip
import hashlib
import json
import os
from collections import Counter

import datasets
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import review_rows, shared_file, write_csv

from trainer.data import (
    DataConfig,
    LengthGroupedBatchSampler,
    PaddingCollator,
    build_dataloaders,
    build_tokenizer,
    clean_splits,
    load_raw_splits,
    prepare_data,
    tokenize_processes,
    tokenize_split,
    tokenizer_sample,
)
from trainer.data.corpus import CorpusConfig, generate_corpus
from trainer.data.tokenizer import PAD_ID, UNK_ID, TokenizerConfig, train_tokenizer
from trainer.errors import UserError


def shard(sampler, num_shards):
    return [list(BatchSamplerShard(sampler, num_shards, rank)) for rank in range(num_shards)]


@pytest.mark.parametrize("n,batch,shards", [(1000, 32, 2), (1001, 32, 2), (65, 32, 2), (97, 8, 3), (33, 16, 2)])
@pytest.mark.parametrize("group", [True, False])
def test_sampler_every_example_exactly_once_across_shards(n, batch, shards, group):
    lengths = [(i * 37) % 101 + 1 for i in range(n)]
    sampler = LengthGroupedBatchSampler(lengths, batch, num_shards=shards, seed=3, group_by_length=group)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        per_rank = shard(sampler, shards)
        assert len({len(batches) for batches in per_rank}) == 1, "every process gets the same number of batches"
        assert all(len(batches) == len(sampler) // shards for batches in per_rank)
        seen = Counter(i for batches in per_rank for batch in batches for i in batch)
        assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
        assert all(batch for batches in per_rank for batch in batches), "no empty batch"


def test_sampler_order_is_reproducible_and_changes_each_epoch():
    lengths = list(range(1, 501))
    a = LengthGroupedBatchSampler(lengths, 16, num_shards=2, seed=7)
    b = LengthGroupedBatchSampler(lengths, 16, num_shards=2, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(LengthGroupedBatchSampler(lengths, 16, num_shards=2, seed=8)) != first


def test_length_grouping_reduces_padding():
    lengths = [int(x) for x in torch.randint(1, 400, (4000,), generator=torch.Generator().manual_seed(0))]

    def padded(group):
        sampler = LengthGroupedBatchSampler(lengths, 32, seed=0, group_by_length=group)
        return sum(len(b) * max(lengths[i] for i in b) for b in sampler)

    assert padded(True) < 0.7 * padded(False)


def test_collate_pads_to_longest_and_to_multiple():
    rows = [{"input_ids": [5, 6, 7], "length": 3, "label": 1}, {"input_ids": [8], "length": 1, "label": 0}]
    batch = PaddingCollator(pad_id=0)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["lengths"].tolist() == [3, 1] and batch["labels"].tolist() == [1, 0]
    assert PaddingCollator(pad_id=0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)


def test_tokenizer_special_ids_and_review_normalisation():
    texts = ["A GREAT film.<br /><br />Truly great!", "An awful, awful movie<br/>really"] * 5
    tokenizer = train_tokenizer(iter([texts]), TokenizerConfig(model="wordpiece", vocab_size=200, min_frequency=1))
    assert tokenizer.token_to_id("[PAD]") == PAD_ID and tokenizer.token_to_id("[UNK]") == UNK_ID
    tokens = tokenizer.encode("A GREAT film.<br /><br />Truly").tokens
    assert tokens == ["a", "great", "film", ".", "truly"]


def test_builtin_corpus_is_deterministic_and_balanced():
    a = generate_corpus(CorpusConfig(num_examples=200, seed=1))
    assert a == generate_corpus(CorpusConfig(num_examples=200, seed=1))
    assert a != generate_corpus(CorpusConfig(num_examples=200, seed=2))
    assert Counter(a["label"]) == {0: 100, 1: 100}


def prepare(tmp_path, **data_kwargs):
    config = DataConfig(cache_dir=str(tmp_path / "cache"), **data_kwargs)
    return prepare_data(config, TokenizerConfig(model="wordlevel", vocab_size=500, min_frequency=1))


def test_second_run_reuses_tokenizer_and_tokenised_cache(tmp_path):
    first = prepare(tmp_path, builtin=CorpusConfig(num_examples=300))
    assert first.stats["tokenizer_source"] == "trained" and not first.stats["train_tokens_cache_hit"]
    second = prepare(tmp_path, builtin=CorpusConfig(num_examples=300))
    assert second.stats["tokenizer_source"] == "cache" and second.stats["train_tokens_cache_hit"]
    assert second.stats["validation_tokens_cache_hit"]
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.train.cache_files == first.train.cache_files
    # Different data -> a different key, no stale reuse.
    third = prepare(tmp_path, builtin=CorpusConfig(num_examples=301))
    assert not third.stats["train_tokens_cache_hit"]


def test_a_file_edited_in_place_with_its_size_and_time_kept_is_read_anew(tmp_path):
    """The caches (datasets' own and ours) are keyed by the files' contents: an edit that keeps the
    size and the modification time (``touch -r``, a copy that keeps times) trains on the new rows."""
    rows = review_rows(80)
    path = write_csv(tmp_path / "train.csv", rows)
    before = os.stat(path)
    first = prepare(tmp_path, train_files=[str(path)], validation_fraction=0.1)
    write_csv(path, [(text, 1 - label) for text, label in rows])  # every label flipped: the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    second = prepare(tmp_path, train_files=[str(path)], validation_fraction=0.1)
    assert not second.stats["train_tokens_cache_hit"]

    def labels(data) -> dict:
        decode = data.tokenizer.decode  # the tokenizer is trained anew on the new training split
        return {decode(x["input_ids"]): x["label"] for split in (data.train, data.validation) for x in split}

    assert {ids: 1 - y for ids, y in labels(first).items()} == labels(second)
    again = prepare(tmp_path, train_files=[str(path)], validation_fraction=0.1)
    assert again.stats["train_tokens_cache_hit"] and labels(again) == labels(second)


def test_local_files_in_every_format_give_the_same_data(tmp_path):
    rows = review_rows(60)
    csv_path = write_csv(tmp_path / "train.csv", rows)
    with gzip.open(tmp_path / "train.csv.gz", "wt", encoding="utf-8") as f:
        f.write(csv_path.read_text())
    with (tmp_path / "train.jsonl").open("w") as f:
        f.writelines(json.dumps({"review": t, "sentiment": "pos" if y else "neg"}) + "\n" for t, y in rows)
    datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [bool(y) for _, y in rows]}).to_parquet(
        str(tmp_path / "train.parquet")
    )
    results = [
        prepare(tmp_path, train_files=[str(tmp_path / "train.csv")]),
        prepare(tmp_path, train_files=[str(tmp_path / "train.csv.gz")]),
        prepare(tmp_path, train_files=[str(tmp_path / "train.jsonl")], text_column="review", label_column="sentiment"),
        prepare(tmp_path, train_files=[str(tmp_path / "train.parquet")]),
    ]
    for result in results:
        assert result.label_map.names == ["negative", "positive"]
        assert result.train["label"] == results[0].train["label"]
        assert result.train["input_ids"] == results[0].train["input_ids"]
        assert len(result.train) + len(result.validation) == 60


def test_empty_and_null_texts_are_dropped_with_a_count(tmp_path):
    rows = [*review_rows(40), ("", 1), ("   ", 0)]
    path = write_csv(tmp_path / "train.csv", rows)
    with path.open("a") as f:
        f.write(",1\nno label here,\n")  # a missing text, a missing label
    data = prepare(tmp_path, train_files=[str(path)])
    assert data.label_map.names == ["negative", "positive"]
    assert data.stats["train_dropped_empty"] == 4
    assert len(data.train) + len(data.validation) == 40


def test_loaders_batch_every_training_example_once(tmp_path):
    data = prepare(tmp_path, builtin=CorpusConfig(num_examples=203))
    config = DataConfig(length_buckets=0)  # each batch padded to its longest row, no wider
    train_loader, eval_loader = build_dataloaders(data, config, batch_size=16, eval_batch_size=32)
    rows = Counter(tuple(ids) for ids in data.train["input_ids"])
    seen = Counter(
        tuple(row[:length].tolist())
        for batch in train_loader
        for row, length in zip(batch["input_ids"], batch["lengths"], strict=True)
    )
    assert seen == rows
    batch = next(iter(eval_loader))
    assert batch["input_ids"].shape[1] == int(batch["lengths"].max())


def test_imdb_from_shared_data_tokenises(tmp_path):
    path = shared_file("imdb", "train.csv.gz")
    data = prepare(tmp_path, train_files=[str(path)], max_train_examples=2000, max_eval_examples=500)
    assert len(data.train) == 2000 and len(data.validation) == 500
    assert set(data.train["label"]) == {0, 1}
    assert max(data.train["length"]) == DataConfig().max_length  # long reviews are cut


def test_the_imdb_preset_validates_on_movies_it_does_not_train_on():
    import csv
    import gzip

    from trainer.config import load_config
    from trainer.data import clean_splits, load_raw_splits

    path = shared_file("imdb", "train.csv.gz")
    config = load_config("imdb", [f"--data.train_files={path}"]).data
    assert config.group_column == "movie_id"
    movies_of = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            movies_of.setdefault(row["text"], set()).add(row["movie_id"])
    # 57 texts are posted under two titles (a series and its episode): only the others name their movie
    movie_of = {text: movies.pop() for text, movies in movies_of.items() if len(movies) == 1}
    splits, _, stats = clean_splits(load_raw_splits(config), config)
    movies = {split: {movie_of[t] for t in ds["text"] if t in movie_of} for split, ds in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert abs(len(splits["validation"]) - 2500) <= 30 and len(splits["train"]) + len(splits["validation"]) == 25000
    assert stats["validation_groups"] >= len(movies["validation"]) > 250  # about 10% of 3,456 movies


def test_a_carved_validation_split_holds_every_class_in_proportion(tmp_path):
    """96 negatives and 4 positives: a random 10% would often hold no positive and validate one
    class alone (accuracy 1.0, F1 0.0, unsaid). The carve is stratified, with groups as groups allow."""
    rows = [(f"review number {i} {'good' if i % 25 == 0 else 'bad'}", int(i % 25 == 0)) for i in range(100)]
    path = write_csv(tmp_path / "skewed.csv", rows)
    for seed in range(5):
        data = prepare(tmp_path, train_files=[str(path)], validation_fraction=0.1, split_seed=seed)
        assert sorted(data.validation["label"]) == [0] * 10 + [1], seed  # 10% of each class, at least one
        assert data.stats["validation_classes_missing"] == []
    # Groups of 5 rows of one class: 18 negative groups and 2 positive ones. 20% of the positives is
    # less than a group, yet one of the two goes to validation, whole.
    grouped = [(f"review {i} {'good' if i >= 90 else 'bad'}", int(i >= 90), f"movie-{i // 5}") for i in range(100)]
    path = write_csv(tmp_path / "grouped.csv", grouped, header=("text", "label", "movie"))
    for seed in range(5):
        options = {"validation_fraction": 0.2, "split_seed": seed, "group_column": "movie"}
        data = prepare(tmp_path, train_files=[str(path)], **options)
        assert Counter(data.validation["label"]) == {0: 20, 1: 5} and data.stats["validation_groups"] == 5, seed


def test_too_few_examples_for_the_processes():
    with pytest.raises(UserError, match="cannot be shared"):
        LengthGroupedBatchSampler([3], 8, num_shards=2)


def test_an_existing_tokenizer_is_used_as_given(tmp_path):
    first = prepare(tmp_path, builtin=CorpusConfig(num_examples=300))
    path = tmp_path / "tok.json"
    path.write_text(first.tokenizer.to_str())
    config = DataConfig(cache_dir=str(tmp_path / "other"), builtin=CorpusConfig(num_examples=300, seed=5))
    given = prepare_data(config, TokenizerConfig(path=str(path), vocab_size=3))
    assert given.tokenizer.to_str() == first.tokenizer.to_str()


def test_one_shard_of_2b_and_two_shards_of_b_see_the_same_examples_per_step():
    lengths = [(i * 53) % 211 + 1 for i in range(1000)]
    one = list(LengthGroupedBatchSampler(lengths, 32, num_shards=1, seed=4))
    two = list(LengthGroupedBatchSampler(lengths, 16, num_shards=2, seed=4))
    assert len(one) == len(two) // 2
    for step, batch in enumerate(one):
        assert sorted(batch) == sorted(two[2 * step] + two[2 * step + 1])


def steps_of(lengths, split, epoch=0, skip_steps=0):
    """The examples of each optimizer step (one list per step, in order) when the global batch is
    split as (batch size, processes, accumulation), as accelerate deals the batches to the
    processes; ``skip_steps`` are skipped first, as a resumed run skips them."""
    batch, processes, accumulation = split
    sampler = LengthGroupedBatchSampler(lengths, batch, processes, seed=5, accumulation=accumulation)
    sampler.set_epoch(epoch)
    per_rank = [batches[skip_steps * accumulation :] for batches in shard(sampler, processes)]
    assert len({len(batches) for batches in per_rank}) == 1 and all(b for batches in per_rank for b in batches)
    micro_steps = len(per_rank[0])
    steps = [
        [i for k in range(start, min(start + accumulation, micro_steps)) for batches in per_rank for i in batches[k]]
        for start in range(0, micro_steps, accumulation)
    ]
    assert len(steps) + skip_steps == sampler.steps_per_epoch
    return steps


SPLITS = [(32, 2, 1), (32, 1, 2), (64, 1, 1), (16, 2, 2), (8, 4, 2), (16, 4, 1)]  # global batch 64 each


@pytest.mark.parametrize("n", [1000, 1024, 1001, 70, 64])
def test_a_step_holds_the_same_examples_however_the_global_batch_is_split(n):
    lengths = [(i * 53) % 211 + 1 for i in range(n)]
    for epoch in range(2):
        reference = steps_of(lengths, SPLITS[0], epoch)
        for split in SPLITS[1:]:
            steps = steps_of(lengths, split, epoch)
            assert [sorted(step) for step in steps] == [sorted(step) for step in reference], split


def test_a_last_step_smaller_than_the_process_count_joins_the_step_before():
    lengths = list(range(1, 66))  # one step of 64, then 1 example: too few for 2 processes
    assert [len(step) for step in steps_of(lengths, (32, 2, 1))] == [65]
    assert [len(step) for step in steps_of(lengths, (32, 1, 2))] == [64, 1]  # one process can take it


@pytest.mark.parametrize("first,second", [((32, 2, 1), (32, 1, 2)), ((32, 1, 2), (32, 2, 1)), ((8, 4, 2), (64, 1, 1))])
def test_a_resume_on_another_split_continues_at_the_next_unseen_example(first, second):
    lengths = [(i * 53) % 211 + 1 for i in range(1000)]  # 15 full steps of 64, then 40 examples
    uninterrupted = steps_of(lengths, first)
    for done in (1, 7, 15):
        before, after = uninterrupted[:done], steps_of(lengths, second, skip_steps=done)
        assert [sorted(s) for s in before + after] == [sorted(s) for s in uninterrupted]
        seen = Counter(i for step in before + after for i in step)
        assert sorted(seen) == list(range(1000)) and set(seen.values()) == {1}, "every example once per epoch"


def test_cross_validation_folds_partition_the_data(tmp_path):
    from trainer.data import clean_splits, load_raw_splits

    path = write_csv(
        tmp_path / "all.csv", [(f"review number {i} " + text, label) for i, (text, label) in enumerate(review_rows(53))]
    )
    held_out = []
    for fold in range(5):
        config = DataConfig(train_files=[str(path)], cv_folds=5, cv_fold=fold)
        splits, _, stats = clean_splits(load_raw_splits(config), config)
        train, validation = set(splits["train"]["text"]), set(splits["validation"]["text"])
        assert not train & validation and len(train | validation) == 53
        assert len(validation) in (10, 11) and stats["validation_fold"] == f"{fold} of 5"
        held_out.append(validation)
    assert set.union(*held_out) == {f"review number {i} " + t for i, (t, _) in enumerate(review_rows(53))}
    assert sum(map(len, held_out)) == 53  # every example is held out exactly once
    again = DataConfig(train_files=[str(path)], cv_folds=5, cv_fold=2)
    assert set(clean_splits(load_raw_splits(again), again)[0]["validation"]["text"]) == held_out[2]
    with pytest.raises(UserError, match="cv_fold=5 is out of range"):
        DataConfig(train_files=[str(path)], cv_folds=5, cv_fold=5)
    with pytest.raises(UserError, match=r"cv_folds validates on a fold of the training data; give no data\.validation"):
        DataConfig(train_files=[str(path)], validation_files=[str(path)], cv_folds=5)


def grouped_csv(path, groups: int = 40, seed: int = 0):
    """Rows in groups of 1 to 9 (``movie_id`` m0, m1, ...), each text naming its row, plus a title column."""
    sizes = [1 + (g * 7 + seed) % 9 for g in range(groups)]
    rows = review_rows(sum(sizes), seed)
    table, i = [], 0
    for g, size in enumerate(sizes):
        for _ in range(size):
            text, label = rows[i]
            table.append((f"row {i} {text}", label, f"m{g}", f"title {i}"))
            i += 1
    return write_csv(path, table, header=("text", "label", "movie_id", "title")), sizes


@pytest.mark.parametrize("text_column", ["text", "title,text"])
def test_a_carved_validation_split_keeps_each_group_on_one_side(tmp_path, text_column):
    from trainer.data import clean_splits, load_raw_splits

    path, sizes = grouped_csv(tmp_path / "grouped.csv")
    group_of = {}
    for g, size in enumerate(sizes):
        for _ in range(size):
            group_of[len(group_of)] = f"m{g}"

    def groups(ds):
        return {group_of[int(t.split("row ")[1].split()[0])] for t in ds["text"]}

    seen = set()
    for seed in (1, 2, 3):
        options = {"group_column": "movie_id", "validation_fraction": 0.2, "split_seed": seed}
        config = DataConfig(train_files=[str(path)], text_column=text_column, **options)
        splits, _, stats = clean_splits(load_raw_splits(config), config)
        train, validation = groups(splits["train"]), groups(splits["validation"])
        assert not train & validation, "no group on both sides"
        assert len(splits["train"]) + len(splits["validation"]) == sum(sizes)
        assert abs(len(splits["validation"]) - 0.2 * sum(sizes)) <= max(sizes) / 2  # the fraction, within half a group
        assert splits["train"].column_names == ["text", "label"]  # the groups do not go on to tokenisation
        assert stats["validation_groups"] == len(validation) and stats["train_groups"] == len(train)
        seen.add(frozenset(validation))
    assert len(seen) == 3, "each split seed carves other groups"
    random = DataConfig(train_files=[str(path)], validation_fraction=0.2, split_seed=1)
    splits, _, _ = clean_splits(load_raw_splits(random), random)
    assert groups(splits["train"]) & groups(splits["validation"]), "without group_column groups straddle the split"


def test_group_folds_partition_the_groups_and_the_rows(tmp_path):
    from trainer.data import clean_splits, load_raw_splits

    path, sizes = grouped_csv(tmp_path / "grouped.csv", groups=60)
    held_out = []
    for fold in range(5):
        config = DataConfig(train_files=[str(path)], group_column="movie_id", cv_folds=5, cv_fold=fold)
        splits, _, stats = clean_splits(load_raw_splits(config), config)
        rows = {t.split()[1] for t in splits["validation"]["text"]}
        assert not rows & {t.split()[1] for t in splits["train"]["text"]}
        assert abs(len(rows) - sum(sizes) / 5) <= max(sizes), "folds within a group's size of an even share"
        assert stats["validation_groups"] + stats["train_groups"] == 60, "no group on both sides"
        held_out.append(rows)
    assert sum(map(len, held_out)) == sum(sizes) and len(set.union(*held_out)) == sum(sizes)


def test_group_column_errors_name_the_column_and_the_fix(tmp_path):
    from trainer.data import clean_splits, load_raw_splits

    path, _ = grouped_csv(tmp_path / "grouped.csv", groups=3)
    missing = DataConfig(train_files=[str(path)], group_column="film")
    with pytest.raises(UserError, match=r"no column 'film'.*--data.group_column, or null to carve at random"):
        clean_splits(load_raw_splits(missing), missing)
    too_few = DataConfig(train_files=[str(path)], group_column="movie_id", cv_folds=5)
    with pytest.raises(UserError, match=r"3 groups of --data\.group_column=movie_id cannot be cut into 5 folds"):
        clean_splits(load_raw_splits(too_few), too_few)
    one = write_csv(tmp_path / "one.csv", [(t, y, "m0") for t, y in review_rows(20)], ("text", "label", "movie_id"))
    single = DataConfig(train_files=[str(one)], group_column="movie_id")
    with pytest.raises(UserError, match="one group holds every row"):
        clean_splits(load_raw_splits(single), single)
    given = DataConfig(train_files=[str(path)], validation_files=[str(path)], group_column="movie_id")
    assert clean_splits(load_raw_splits(given), given)[2]["validation_groups_in_train"] == 3  # counted, not hidden
    blank = write_csv(tmp_path / "blank.csv", [(t, y, " ") for t, y in review_rows(20)], ("text", "label", "movie_id"))
    for cv_folds in (None, 2):  # a carve or folds: nothing would keep rows together, unsaid
        empty = DataConfig(train_files=[str(blank)], group_column="movie_id", cv_folds=cv_folds)
        with pytest.raises(UserError, match=r"--data.group_column=movie_id is empty on every training row"):
            clean_splits(load_raw_splits(empty), empty)


def test_a_validation_split_without_a_class_is_named(tmp_path):
    from trainer.data import clean_splits, load_raw_splits

    rows = review_rows(40)
    train = write_csv(tmp_path / "train.csv", rows)
    negatives = write_csv(tmp_path / "negatives.csv", [(t, y) for t, y in rows if y == 0])
    config = DataConfig(train_files=[str(train)], validation_files=[str(negatives)])
    _, labels, stats = clean_splits(load_raw_splits(config), config)
    assert stats["validation_classes_missing"] == [labels.names[1]]


def test_length_buckets_bound_the_padding_and_the_number_of_shapes():
    from trainer.data.tokenizer import padded_width

    for buckets in (4, 8, 16):
        widths = {n: padded_width(n, 1, buckets) for n in range(1, 2049)}
        assert all(n <= w <= n * (1 + 1 / buckets) for n, w in widths.items())
        assert len(set(widths.values())) <= 2 * buckets + buckets * 11  # per doubling, up to 2048
    assert len({padded_width(n, 1, 8) for n in range(1, 513)}) == 56  # instead of 512 without buckets
    assert {padded_width(n, 8, 8) % 8 for n in range(1, 513)} == {0}
    assert [padded_width(n) for n in (1, 5, 300)] == [1, 5, 300]  # off: the longest row


def write_shards(folder, rows: list[tuple[str, int]], shards: int, columns=("text", "label"), split="train") -> list:
    """``rows`` cut into ``shards`` parquet files, as the Hub ships big datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        part = rows[k::shards]
        path = folder / f"{split}-{k:05d}-of-{shards:05d}.parquet"
        datasets.Dataset.from_dict({c: [r[i] for r in part] for i, c in enumerate(columns)}).to_parquet(str(path))
        paths.append(path)
    return paths


def test_globs_and_folders_of_shards_load_every_file(tmp_path):
    rows = review_rows(300)
    paths = write_shards(tmp_path / "shards", rows, 3)
    (tmp_path / "shards" / "README.md").write_text("not data")
    by_glob = prepare(tmp_path, train_files=[str(tmp_path / "shards" / "*.parquet")], validation_fraction=0.1)
    by_folder = prepare(tmp_path, train_files=[str(tmp_path / "shards")], validation_fraction=0.1)
    by_name = prepare(tmp_path, train_files=[str(p) for p in paths], validation_fraction=0.1)
    for data in (by_glob, by_folder):
        assert data.stats["train_examples"] + data.stats["validation_examples"] == 300
        assert list(data.train["input_ids"]) == list(by_name.train["input_ids"]), "the same rows in the same order"
    assert by_folder.stats["train_tokens_cache_hit"], "a glob, a folder and the file names are the same input"
    write_shards(tmp_path / "shards" / "more", review_rows(30, seed=1), 1)  # a new shard: a new cache key
    grown = prepare(tmp_path, train_files=[str(tmp_path / "shards")], validation_fraction=0.1)
    assert grown.stats["train_examples"] + grown.stats["validation_examples"] == 330
    with pytest.raises(UserError, match=r"no file matches '.*/nothing-\*\.parquet'; check --data.train_files"):
        prepare(tmp_path, train_files=[str(tmp_path / "nothing-*.parquet")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"folder .*/empty holds no csv, tsv, json, jsonl or parquet file"):
        prepare(tmp_path, train_files=[str(tmp_path / "empty")])


def hub_cache_snapshot(root, splits: dict[str, tuple[list, int]], columns=("text", "label")):
    """A dataset as the Hub's cache holds it: ``datasets--org--name/snapshots/<sha>/data/<split>-*``,
    each a symbolic link to a blob named by its hash, and ``refs/main``."""
    repo = root / "datasets--someone--reviews"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    data = repo / "snapshots" / sha / "data"
    (repo / "blobs").mkdir()
    for split, (rows, shards) in splits.items():
        for path in write_shards(data, rows, shards, columns, split):
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            path.rename(blob)
            path.symlink_to(os.path.relpath(blob, path.parent))
    (repo / "snapshots" / sha / "README.md").write_text("---\nlicense: mit\n---\n")
    return repo / "snapshots" / sha


def test_a_hub_snapshot_folder_reads_its_splits_as_the_hub_does(tmp_path):
    train, validation, test = review_rows(200), review_rows(40, seed=1), review_rows(50, seed=2)
    splits = {"train": (train, 3), "validation": (validation, 1), "test": (test, 2)}
    snapshot = hub_cache_snapshot(tmp_path / "hub", splits)
    data = prepare(tmp_path, train_files=[str(snapshot)])
    assert data.stats["train_examples"] == 200 and data.stats["validation_examples"] == 40, "test left out"
    by_glob = prepare(tmp_path, train_files=[str(snapshot / "data" / "train-*.parquet")], validation_fraction=0.1)
    assert by_glob.stats["train_examples"] + by_glob.stats["validation_examples"] == 200
    carved = prepare(tmp_path, train_files=[str(snapshot)], validation_split=None, validation_fraction=0.1)
    assert carved.stats["train_examples"] + carved.stats["validation_examples"] == 200
    on_test = prepare(tmp_path, train_files=[str(snapshot)], validation_split="test")
    assert on_test.stats["validation_examples"] == 50
    given = prepare(tmp_path, train_files=[str(snapshot)], validation_files=[str(snapshot)])
    assert given.stats["validation_examples"] == 40, "a folder as validation_files gives its validation split"
    with pytest.raises(UserError, match=r"--data.train_files has no split 'dev' \(splits found: test, train"):
        prepare(tmp_path, train_files=[str(snapshot)], validation_split="dev")
    with pytest.raises(UserError, match=r"holds the splits train, validation, test \(by its file names\) but no 'all'"):
        prepare(tmp_path, train_files=[str(snapshot)], train_split="all")
    with pytest.raises(UserError, match=r"hf://datasets/x/y/train.parquet is not a local path; .* --data.name"):
        prepare(tmp_path, train_files=["hf://datasets/x/y/train.parquet"])
    plain = tmp_path / "plain"
    plain.mkdir()
    write_csv(plain / "part-1.csv", review_rows(30))  # names that say no split: every file is train
    write_csv(plain / "part-2.csv", review_rows(30, seed=3))
    assert prepare(tmp_path, train_files=[str(plain)], validation_split="validation").stats["validation_examples"] == 6


def test_several_text_columns_are_joined_and_a_missing_one_is_named(tmp_path):
    rows = [
        (title, text, label) for (text, label), title in zip(review_rows(60), ["Great!", None, ""] * 20, strict=True)
    ]
    write_shards(tmp_path / "amazon", rows, 2, columns=("title", "content", "label"))
    files = [str(tmp_path / "amazon")]
    data = prepare(tmp_path, train_files=files, text_column="title,content", max_train_examples=None)
    config = DataConfig(train_files=files, text_column="title, content", text_separator=" | ")
    splits, _, _ = clean_splits(load_raw_splits(config), config)
    joined = sorted([*splits["train"]["text"], *splits["validation"]["text"]])
    expected = sorted((f"{title} | {text}" if title else text) for title, text, _ in rows)
    assert joined == expected, "a missing or empty title leaves the content alone"
    assert data.stats["train_examples"] + data.stats["validation_examples"] == 60
    with pytest.raises(
        UserError, match=r"the train split has no column 'summary'; columns found: title, content, label"
    ):
        prepare(tmp_path, train_files=files, text_column="title,summary")
    with pytest.raises(UserError, match="names no column"):
        DataConfig(text_column=", ")


def test_the_tokenizer_learns_from_a_seeded_sample_of_the_training_texts(tmp_path):
    train = datasets.Dataset.from_dict({"text": [f"word{i} common{i % 7}" for i in range(2000)]})
    config = TokenizerConfig(model="wordlevel", vocab_size=5000, min_frequency=1, train_sample=300, sample_seed=3)
    sample = tokenizer_sample(train, config)
    assert len(sample) == 300 and len(set(sample["text"])) == 300
    again = tokenizer_sample(train, config)
    assert sample["text"] == again["text"], "the same seed, the same sample"
    other = tokenizer_sample(train, TokenizerConfig(train_sample=300, sample_seed=4))
    assert other["text"] != sample["text"]
    first, source = build_tokenizer(train, config, tmp_path / "a", "key")
    second, _ = build_tokenizer(train, config, tmp_path / "b", "key")  # trained again, in another cache
    assert source == "trained" and first.to_str() == second.to_str()
    assert first.get_vocab_size() == 2 + 300 + 7  # specials, the sampled words, every commonN
    everything = TokenizerConfig(model="wordlevel", vocab_size=5000, min_frequency=1, train_sample=10_000)
    whole, _ = build_tokenizer(train, everything, tmp_path / "c", "key")  # a sample larger than the data
    assert whole.get_vocab_size() == 2 + 2000 + 7
    assert TokenizerConfig().train_sample == 200_000


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("n", [1000, 1024, 65, 70])
def test_each_batch_knows_the_examples_of_its_step(n, split):
    """What the loop weighs each batch's loss by: its share of its step's examples."""
    lengths = [(i * 53) % 211 + 1 for i in range(n)]
    batch, processes, accumulation = split
    sampler = LengthGroupedBatchSampler(lengths, batch, processes, seed=5, accumulation=accumulation)
    per_rank = shard(sampler, processes)
    for micro_batch in range(len(per_rank[0])):
        step = micro_batch // accumulation
        in_step = range(step * accumulation, min((step + 1) * accumulation, len(per_rank[0])))
        assert sampler.step_examples(micro_batch) == sum(len(r[k]) for r in per_rank for k in in_step)


@pytest.mark.slow  # starts a process
def test_tokenising_in_processes_gives_the_same_ids_and_any_complete_cache_is_read(tmp_path):
    texts = [f"review {i} was {'good' if i % 3 else 'bad'} " * (1 + i % 9) for i in range(3000)]
    ds = datasets.Dataset.from_dict({"text": texts})
    tokenizer, _ = build_tokenizer(ds, TokenizerConfig(model="wordlevel", min_frequency=1), tmp_path, "key")
    alone, hit = tokenize_split(ds, tokenizer, 12, tmp_path / "one" / "train.arrow", num_proc=1)
    assert not hit
    split, hit = tokenize_split(ds, tokenizer, 12, tmp_path / "three" / "train.arrow", num_proc=3)
    assert not hit and sorted(p.name for p in (tmp_path / "three").iterdir()) == [
        f"train_0000{i}_of_00003.arrow" for i in range(3)
    ]
    assert split["input_ids"] == alone["input_ids"] and split["truncated"] == alone["truncated"]
    again, hit = tokenize_split(ds, tokenizer, 12, tmp_path / "three" / "train.arrow", num_proc=None)
    assert hit and again["input_ids"] == alone["input_ids"], "written by 3 processes, read by a machine choosing 1"
    (tmp_path / "three" / "train_00001_of_00003.arrow").unlink()  # an incomplete set is no cache
    _, hit = tokenize_split(ds, tokenizer, 12, tmp_path / "three" / "train.arrow", num_proc=1)
    assert not hit
    cores = len(os.sched_getaffinity(0))
    assert tokenize_processes(9_999, None) == 1 and tokenize_processes(10**7, None) == cores
    assert tokenize_processes(3, 8) == 3 and tokenize_processes(10**7, 1) == 1
