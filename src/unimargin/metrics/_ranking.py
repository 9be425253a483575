"""Exact ranking statistics shared by the metrics: AUC (Mann–Whitney), ROC, EER, TAR@FAR.

All functions take two 1-D tensors of finite scores, ``pos`` (should score high) and
``neg`` (should score low), and work by sorting, so they are exact, O((P+Q) log(P+Q)), and
treat ties the standard way (a tied positive/negative pair counts one half in the AUC; tied
scores form a single ROC point).
"""

from __future__ import annotations

import math

import torch


def orderable_int64(x: torch.Tensor) -> torch.Tensor:
    """int64 keys with the same order (and ties) as the float64 values ``x``.

    Sorting these integers is ~3x faster than sorting the floats. IEEE bit patterns of
    non-negative floats already sort as integers; negative ones sort reversed, so their
    magnitude bits are flipped. −0.0 is first turned into +0.0 so that the two zeros tie.
    """
    bits = (x.to(torch.float64) + 0.0).view(torch.int64)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(s_pos > s_neg) + ½·P(s_pos = s_neg) (Mann–Whitney U / (P·Q)), exactly.

    Equivalent to the average-rank formula: for every positive count the negatives strictly
    below it plus half of those equal to it (two binary searches in the sorted negatives).
    Counts are accumulated in int64, so the result is exact up to the final division.
    """
    if pos.numel() == 0 or neg.numel() == 0:
        raise ValueError(
            f"AUC needs at least one positive and one negative score, got {pos.numel()} "
            f"positive(s) and {neg.numel()} negative(s)"
        )
    neg_sorted = torch.sort(neg.reshape(-1)).values
    pos = pos.reshape(-1).to(neg_sorted.dtype)
    below = torch.searchsorted(neg_sorted, pos, right=False)
    below_or_equal = torch.searchsorted(neg_sorted, pos, right=True)
    # 2·U is an integer: 2·#below + #equal.
    twice_u = int((2 * below + (below_or_equal - below)).sum())
    return twice_u / (2.0 * pos.numel() * neg.numel())


def roc_counts(pos: torch.Tensor, neg: torch.Tensor):
    """(tp, fp, thresholds): int64 counts accepted at each distinct score (descending),
    with a leading (0, 0) at threshold +inf. See :func:`roc`."""
    values = torch.cat([pos.reshape(-1), neg.reshape(-1).to(pos.dtype)])
    is_pos = torch.cat([
        torch.ones(pos.numel(), dtype=torch.long),
        torch.zeros(neg.numel(), dtype=torch.long),
    ])
    order = torch.sort(orderable_int64(values), descending=True, stable=True).indices
    values = values.index_select(0, order)
    is_pos = is_pos.index_select(0, order)
    distinct, counts = torch.unique_consecutive(values, return_counts=True)
    group_end = torch.cumsum(counts, 0) - 1  # last index of each tie group
    tp = torch.cumsum(is_pos, 0).index_select(0, group_end)
    fp = (group_end + 1) - tp
    zero = torch.zeros(1, dtype=torch.long)
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), distinct.to(torch.float64)])
    return torch.cat([zero, tp]), torch.cat([zero, fp]), thresholds


def auc_from_counts(tp: torch.Tensor, fp: torch.Tensor) -> float:
    """Exact AUC (= :func:`auc`) from :func:`roc_counts`, without another sort.

    Each ROC step accepts a tie group: its ``Δfp`` negatives lie below the ``tp`` positives
    accepted earlier and tie with its ``Δtp`` positives, so 2U = Σ Δfp·(2·tp_before + Δtp).
    """
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC needs at least one positive and one negative score, got {n_pos} "
            f"positive(s) and {n_neg} negative(s)"
        )
    d_tp, d_fp = tp.diff(), fp.diff()
    twice_u = int((d_fp * (2 * tp[:-1] + d_tp)).sum())
    return twice_u / (2.0 * n_pos * n_neg)


def roc(pos: torch.Tensor, neg: torch.Tensor):
    """Exact ROC for the rule "accept iff score >= thr", one point per distinct score.

    Returns ``(fpr, tpr, thresholds)`` (float64), starting at (0, 0) with threshold +inf
    and ending at (1, 1) at the lowest score, like ``sklearn.metrics.roc_curve`` with
    ``drop_intermediate=False``.
    """
    tp, fp, thresholds = roc_counts(pos, neg)
    tpr = tp.to(torch.float64) / max(pos.numel(), 1)
    fpr = fp.to(torch.float64) / max(neg.numel(), 1)
    return fpr, tpr, thresholds


def eer(fpr: torch.Tensor, tpr: torch.Tensor) -> float:
    """Equal error rate: the FPR where the linearly interpolated ROC meets FNR = 1 − TPR.

    The ROC starts at FPR − FNR = −1 and ends at +1, so a first point with FPR >= FNR
    exists; between it and the previous point the crossing is found by linear
    interpolation (the usual ``brentq(1 − x − interp(x))`` definition, in closed form).
    """
    fnr = 1.0 - tpr
    diff = fpr - fnr
    idx = int(torch.nonzero(diff >= 0)[0, 0])
    if idx == 0:
        return float(fpr[0])
    a, b = idx - 1, idx
    da, db = float(diff[a]), float(diff[b])
    frac = -da / (db - da)  # da < 0 <= db
    return float(fpr[a] + frac * (fpr[b] - fpr[a]))


def tar_at_far(fpr: torch.Tensor, tpr: torch.Tensor, far: float, n_neg: int):
    """Largest TPR among ROC points with FPR <= far; None when n_neg·far < 1.

    With fewer than 1/far impostors the only FPR <= far is 0, so the figure would not
    measure that operating point at all; None says so instead of a misleading number.
    """
    if n_neg * far < 1.0:
        return None
    ok = fpr <= far + 1e-15
    return float(tpr.masked_select(ok).max())


def best_accuracy(pos: torch.Tensor, neg: torch.Tensor):
    """Best accuracy of "accept iff score > t" over all t, and the t achieving it.

    Candidates are the midpoints between consecutive distinct scores plus one point below
    the lowest and above the highest score (min − 1, max + 1). Among equal accuracies the
    highest threshold (the first in descending order) is kept.
    """
    tp, fp, thr = roc_counts(pos, neg)
    return best_accuracy_from_counts(tp, fp, thr, pos.numel(), neg.numel())


def best_accuracy_from_counts(tp, fp, thr, n_pos: int, n_neg: int):
    """:func:`best_accuracy` from the output of :func:`roc_counts` (no second sort)."""
    correct = tp + (n_neg - fp)  # exact integers, so argmax ties are real ties
    i = int(torch.argmax(correct))
    acc = int(correct[i]) / (n_pos + n_neg)
    distinct = thr[1:]
    if i == 0:
        t = float(distinct[0]) + 1.0
    elif i == distinct.numel():
        t = float(distinct[-1]) - 1.0
    else:
        t = 0.5 * (float(distinct[i - 1]) + float(distinct[i]))
    return acc, t
