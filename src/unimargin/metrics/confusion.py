"""Per-class accuracy and the confusion matrix (issue 12; predictions of SPEC §3.1 / §2.9).

- :func:`predictions`: the top class of every sample, ties counted wrong as in SPEC §3.1
  (a true class tied with another class is predicted as that other class), so the
  per-class accuracies average (sample-weighted) to SW.
- :func:`confusion_matrix`: counts C[true, predicted], with one extra last column for
  rejected samples (prediction −1, SPEC §2.9).
- :func:`per_class_accuracy`: C[c, c] / (samples of class c); rejected samples are wrong.
- :func:`worst_confused_pairs`: the k largest off-diagonal counts (true ≠ predicted,
  rejections excluded).
- :class:`ConfusionMatrix`: the stateful twin (update per batch, exact under DDP: counts
  are summed over processes).
"""

from __future__ import annotations

import torch

from .. import distributed as dist_utils
from ._checks import as_tensor, check_labels, check_matrix

REJECTED = -1


def predictions(scores, labels) -> torch.Tensor:
    """(N,) predicted class: argmax_k S[i, k], except that a tie between the true class and
    the best other class is predicted as that other class (SW counts ties wrong, §3.1)."""
    scores = check_matrix(scores, "scores", min_cols=2)
    labels = check_labels(labels, scores.shape[0], scores.shape[1])
    if scores.shape[0] == 0:
        return torch.empty(0, dtype=torch.long)
    p = scores.gather(1, labels[:, None]).squeeze(1)
    others = scores.scatter(1, labels[:, None], float("-inf"))
    n, best_other = others.max(1)
    return torch.where(p > n, labels, best_other)


def _check_preds(preds, n: int, num_classes: int) -> torch.Tensor:
    p = as_tensor(preds, "preds")
    if p.dim() != 1 or p.shape[0] != n:
        raise ValueError(f"preds must be 1-D of length {n} (one per label), got shape {tuple(p.shape)}")
    if p.dtype.is_floating_point or p.dtype == torch.bool or p.is_complex():
        raise ValueError(f"preds must hold integer class indices, got dtype {p.dtype}")
    p = p.long()
    if p.numel() and (int(p.min()) < REJECTED or int(p.max()) >= num_classes):
        raise ValueError(f"preds must be in [0, {num_classes}) or {REJECTED} (rejected), got values "
                         f"in [{int(p.min())}, {int(p.max())}]")
    return p


def confusion_matrix(labels, preds, num_classes: int) -> torch.Tensor:
    """(K, K + 1) int64 counts: C[c, j] = #{i : y_i = c, ŷ_i = j} for j < K, and
    C[c, K] = #{i : y_i = c, ŷ_i = −1} (rejected). One bincount, no loop."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = as_tensor(labels, "labels")
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {tuple(y.shape)}")
    y = check_labels(y, y.shape[0], num_classes)
    p = _check_preds(preds, y.shape[0], num_classes)
    col = torch.where(p == REJECTED, num_classes, p)
    flat = torch.bincount(y * (num_classes + 1) + col, minlength=num_classes * (num_classes + 1))
    return flat.reshape(num_classes, num_classes + 1)


def _check_cm(cm) -> torch.Tensor:
    cm = as_tensor(cm, "cm")
    if cm.dim() != 2 or cm.shape[1] not in (cm.shape[0], cm.shape[0] + 1) or cm.shape[0] < 1:
        raise ValueError(f"cm must be (K, K) or (K, K + 1) (last column = rejected), got shape "
                         f"{tuple(cm.shape)}")
    if cm.dtype.is_floating_point or cm.is_complex() or (cm.numel() and int(cm.min()) < 0):
        raise ValueError("cm must hold non-negative integer counts")
    return cm.long()


def per_class_accuracy(cm) -> list[float | None]:
    """Accuracy of each class, C[c, c] / Σ_j C[c, j] (rejections count as wrong); None for a
    class without samples. Higher is better."""
    cm = _check_cm(cm)
    total = cm.sum(1)
    acc = cm.diagonal().double() / total.clamp_min(1).double()
    return [None if int(t) == 0 else float(a) for a, t in zip(acc, total)]


def worst_confused_pairs(cm, k: int = 5) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal counts as (true class, predicted class, count), count
    descending, then by (true, predicted); only counts > 0; rejections are not pairs."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    cm = _check_cm(cm)
    K = cm.shape[0]
    off = cm[:, :K].clone()
    off.fill_diagonal_(0)
    flat = off.reshape(-1)
    # stable sort on -count keeps (true, predicted) row-major order among equal counts
    order = torch.sort(-flat, stable=True).indices[:k]
    return [(int(i) // K, int(i) % K, int(flat[i])) for i in order if int(flat[i]) > 0]


def per_class_summary(labels, preds, num_classes: int, k: int = 5) -> dict:
    """The nested ``per_class`` entry of an evaluation: ``accuracy`` (K entries),
    ``confusion`` (K × (K + 1) nested lists, last column rejected) and ``worst_confused``
    (list of [true, predicted, count])."""
    cm = confusion_matrix(labels, preds, num_classes)
    return {
        "accuracy": per_class_accuracy(cm),
        "confusion": cm.tolist(),
        "worst_confused": [list(t) for t in worst_confused_pairs(cm, k)],
    }


class ConfusionMatrix:
    """Accumulating :func:`confusion_matrix`: ``update(labels, preds)`` per batch (empty
    batches allowed), ``compute()`` sums the counts over processes under torch.distributed
    (a collective: call it on every process), ``reset()``."""

    def __init__(self, num_classes: int):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._counts = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.long)

    def update(self, labels, preds) -> None:
        self._counts += confusion_matrix(labels, preds, self.num_classes)

    def compute(self) -> torch.Tensor:
        counts = self._counts.clone()
        if dist_utils.is_distributed():
            counts = dist_utils.all_reduce_sum(counts)
        return counts


__all__ = ["REJECTED", "predictions", "confusion_matrix", "per_class_accuracy",
           "worst_confused_pairs", "per_class_summary", "ConfusionMatrix"]
