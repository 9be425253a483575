"""Confusion matrix, per-class accuracy and worst confused pairs vs scikit-learn and loops."""

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from unimargin.metrics import (ConfusionMatrix, confusion_matrix, per_class_accuracy, predictions,
                               uniform_accuracy, worst_confused_pairs)
from unimargin.metrics.confusion import per_class_summary


def _data(seed, n=300, k=6, reject=True):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, y, torch.randint(0, k, (n,), generator=g))
    if reject:
        pred[torch.rand(n, generator=g) < 0.1] = -1
    return y, pred, k


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_matches_sklearn_with_a_rejected_column(seed):
    y, pred, k = _data(seed)
    cm = confusion_matrix(y, pred, k)
    # sklearn with label -1 placed last = our extra "rejected" column
    ref = sk_confusion_matrix(y.numpy(), pred.numpy(), labels=list(range(k)) + [-1])
    assert cm.shape == (k, k + 1) and cm.dtype == torch.long
    assert np.array_equal(cm.numpy(), ref[:k])
    assert int(cm.sum()) == len(y)


def test_classes_without_samples_and_per_class_accuracy_loop():
    y = torch.tensor([0, 0, 0, 2, 2])          # class 1 has no sample
    pred = torch.tensor([0, 2, -1, 2, 2])
    cm = confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[1, 0, 1, 1], [0, 0, 0, 0], [0, 0, 2, 0]]
    acc = per_class_accuracy(cm)
    assert acc[0] == pytest.approx(1 / 3) and acc[1] is None and acc[2] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_per_class_accuracy_matches_loop(seed):
    y, pred, k = _data(seed + 10)
    acc = per_class_accuracy(confusion_matrix(y, pred, k))
    for c in range(k):
        mask = y == c
        assert acc[c] == pytest.approx(float((pred[mask] == c).double().mean()))


def test_worst_confused_pairs_order_and_exclusions():
    cm = torch.tensor([[9, 3, 1, 7],     # last column: rejected, never a pair
                       [3, 8, 0, 0],
                       [0, 5, 2, 0]])
    assert worst_confused_pairs(cm, 3) == [(2, 1, 5), (0, 1, 3), (1, 0, 3)]
    assert worst_confused_pairs(cm, 10) == [(2, 1, 5), (0, 1, 3), (1, 0, 3), (0, 2, 1)]
    assert worst_confused_pairs(torch.eye(3, dtype=torch.long), 5) == []


def test_worst_confused_pairs_match_brute_force():
    y, pred, k = _data(7)
    cm = confusion_matrix(y, pred, k)
    pairs = [(int(cm[i, j]), i, j) for i in range(k) for j in range(k) if i != j and cm[i, j] > 0]
    ref = [(i, j, c) for c, i, j in sorted(pairs, key=lambda t: (-t[0], t[1], t[2]))][:4]
    assert worst_confused_pairs(cm, 4) == ref


def test_predictions_count_ties_wrong_so_per_class_accuracy_averages_to_sw():
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 3, (500, 4), generator=g).float()     # many ties
    y = torch.randint(0, 4, (500,), generator=g)
    pred = predictions(scores, y)
    cm = confusion_matrix(y, pred, 4)
    assert int(cm.diagonal().sum()) / 500 == pytest.approx(uniform_accuracy(scores, y).sw)
    # a prediction is the true class or a class with the maximal score
    top = scores.max(1).values
    assert torch.all((pred == y) | (scores.gather(1, pred[:, None])[:, 0] == top))


def test_stateful_twin_equals_one_shot_over_batches():
    y, pred, k = _data(4)
    meter = ConfusionMatrix(k)
    for start in range(0, len(y), 37):
        meter.update(y[start:start + 37], pred[start:start + 37])
    meter.update(y[:0], pred[:0])                                 # empty batch allowed
    assert torch.equal(meter.compute(), confusion_matrix(y, pred, k))
    meter.reset()
    assert int(meter.compute().sum()) == 0


def test_per_class_summary_is_json_ready():
    import json

    y, pred, k = _data(5)
    out = per_class_summary(y, pred, k, k=3)
    json.dumps(out)
    assert len(out["accuracy"]) == k and len(out["confusion"]) == k and len(out["worst_confused"]) <= 3


@pytest.mark.parametrize("call, match", [
    (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3), "preds must be in"),
    (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -2]), 3), "preds must be in"),
    (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3), "length 2"),
    (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), 3), "integer"),
    (lambda: confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3), "labels must lie"),
    (lambda: confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 0), "num_classes"),
    (lambda: per_class_accuracy(torch.zeros(3, 5, dtype=torch.long)), "cm must be"),
    (lambda: per_class_accuracy(torch.zeros(3, 4)), "integer counts"),
    (lambda: worst_confused_pairs(torch.zeros(3, 4, dtype=torch.long), -1), "k must be"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
