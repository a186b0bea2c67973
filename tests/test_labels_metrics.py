import math

import pytest
import torch

from trainer.data.labels import LabelMap
from trainer.errors import UserError
from trainer.metrics import classification_metrics, roc_auc


@pytest.mark.parametrize(
    "values,names,ids",
    [
        ([0, 1, 1, 0], ["negative", "positive"], [0, 1, 1, 0]),
        ([True, False], ["negative", "positive"], [1, 0]),
        (["pos", "neg", "pos"], ["negative", "positive"], [1, 0, 1]),
        (["Positive", "NEGATIVE "], ["negative", "positive"], [1, 0]),
        (["positive", "neutral", "negative"], ["negative", "neutral", "positive"], [2, 1, 0]),
        ([-1, 1], ["negative", "positive"], [0, 1]),
        ([5, 1, 3, 2, 4], ["1", "2", "3", "4", "5"], [4, 0, 2, 1, 3]),
        ([0.0, 1.0], ["negative", "positive"], [0, 1]),
        (["sports", "business", "world"], ["business", "sports", "world"], [1, 0, 2]),
    ],
)
def test_labels_normalise_to_contiguous_ids(values, names, ids):
    label_map = LabelMap.infer(values)
    assert label_map.names == names
    assert [label_map.encode(v) for v in values] == ids


def test_same_meaning_maps_to_same_id_whatever_the_training_type():
    label_map = LabelMap.infer(["pos", "neg"])
    assert label_map.encode("positive") == label_map.encode("POS") == label_map.encode(True) == label_map.encode(1) == 1
    assert label_map.encode(0) == label_map.encode("-1") == 0
    assert LabelMap.infer([0, 1]).encode("1") == LabelMap.infer([0, 1]).encode("pos") == 1
    assert LabelMap.infer([True, False]).encode(0) == 0


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


def test_macro_averages_skip_classes_that_never_occur():
    labels = torch.tensor([0, 1, 0, 1])
    probs = torch.eye(3)[labels]  # perfect predictions; class 2 occurs nowhere
    m = classification_metrics(probs, labels, torch.zeros(4))
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(1.0)
