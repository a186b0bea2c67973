import math

import pytest
import torch

from trainer.errors import UserError
from trainer.labels import LabelMap
from trainer.metrics import classification_metrics, roc_auc


@pytest.mark.parametrize(
    "values,names",
    [
        ([0, 1, 1, 0], ["negative", "positive"]),
        ([True, False], ["negative", "positive"]),
        (["pos", "neg", "pos"], ["negative", "positive"]),
        (["Positive", "NEGATIVE "], ["negative", "positive"]),
        (["positive", "neutral", "negative"], ["negative", "neutral", "positive"]),
        ([-1, 1], ["negative", "positive"]),
        ([1, 2, 3, 4, 5], ["1", "2", "3", "4", "5"]),
        ([0.0, 1.0], ["negative", "positive"]),
        (["sports", "business", "world"], ["business", "sports", "world"]),
    ],
)
def test_labels_normalise_to_contiguous_ids(values, names):
    label_map = LabelMap.infer(values)
    assert label_map.names == names
    ids = [label_map.encode(v) for v in values]
    assert [label_map.names[i] for i in ids] == [label_map.names[label_map.encode(v)] for v in values]
    assert set(ids) <= set(range(len(names)))


def test_same_meaning_maps_to_same_id():
    label_map = LabelMap.infer(["pos", "neg"])
    assert label_map.encode("positive") == label_map.encode("POS") == label_map.encode(True) == 1
    assert LabelMap.infer([0, 1]).encode("1") == 1


def test_unknown_label_names_the_known_ones():
    label_map = LabelMap.infer(["pos", "neg"])
    with pytest.raises(UserError, match=r"unknown label 'meh' in the validation split.*negative, positive"):
        label_map.encode("meh", "validation")


def test_fractional_labels_are_refused():
    with pytest.raises(UserError, match="not a class"):
        LabelMap.infer([0.5, 1.0])


def test_binary_metrics_match_hand_computation():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    positive = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.2, 0.7])
    probs = torch.stack([1 - positive, positive], 1)
    m = classification_metrics(probs, labels, torch.full((8,), 0.5))
    # predicted positive: 0.9 0.8 0.6 0.7 -> TP=3, FP=1, FN=1, TN=3
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # Pairs (pos, neg) ranked correctly: 15 of 16 (0.4 < 0.6 is the only miss).
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["loss"] == pytest.approx(0.5) and m["n"] == 8


def test_roc_auc_counts_ties_half_and_handles_one_class():
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_multiclass_metrics_are_macro_averages():
    labels = torch.tensor([0, 1, 2, 2])
    probs = torch.eye(3)[torch.tensor([0, 1, 1, 2])]
    m = classification_metrics(probs, labels, torch.zeros(4))
    assert m["accuracy"] == pytest.approx(0.75)
    # precision: 1, 1/2, 1 ; recall: 1, 1, 1/2
    assert m["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert "roc_auc" not in m
