"""Slow, obviously-correct references for the metric tests (Python loops, numpy)."""

from __future__ import annotations

import numpy as np


def pos_neg_loop(scores, labels):
    s = np.asarray(scores, dtype=np.float64)
    p, n = [], []
    for i, y in enumerate(labels):
        p.append(s[i, y])
        n.append(max(s[i, k] for k in range(s.shape[1]) if k != y))
    return np.array(p), np.array(n)


def _candidates(endpoints):
    """All midpoints between consecutive distinct endpoints plus one point outside each end."""
    v = np.unique(np.asarray(endpoints, dtype=np.float64))
    if v.size == 0:
        return np.array([])
    mids = [0.5 * (a + b) for a, b in zip(v[:-1], v[1:])]
    return np.array([v[0] - 1.0, *mids, v[-1] + 1.0])


def uni_count(p, n, t):
    return sum(1 for a, b in zip(p, n) if b < t < a)


def brute_uniform(p, n):
    """(max count, lowest maximising t). Scans every candidate threshold.

    Max over all endpoints' candidates (independent check of the count); t* from the
    endpoints of correct samples only (SPEC §3.2 sweeps the correct samples' intervals);
    no correct sample: t* = min(all p, n) − 1.
    """
    p, n = np.asarray(p, float), np.asarray(n, float)
    best = max(uni_count(p, n, t) for t in _candidates(np.concatenate([p, n])))
    ok = p > n
    if not ok.any():
        return 0, float(min(p.min(), n.min()) - 1.0)
    for t in _candidates(np.concatenate([p[ok], n[ok]])):   # ascending
        if uni_count(p, n, t) == best:
            return best, float(t)
    raise AssertionError("no candidate reaches the maximum")


def brute_class_wise(p, n, labels, num_classes):
    total, thresholds = 0, []
    labels = np.asarray(labels)
    for c in range(num_classes):
        m = labels == c
        if not m.any() or not (p[m] > n[m]).any():
            thresholds.append(None)
            continue
        cnt, t = brute_uniform(p[m], n[m])
        total += cnt
        thresholds.append(t)
    return total, thresholds


def brute_best_accuracy(pos, neg):
    """Best accuracy of 'accept iff s > t' scanning all candidates, highest t among ties."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    best, best_t = -1.0, None
    for t in _candidates(np.concatenate([pos, neg]))[::-1]:
        acc = ((pos > t).sum() + (neg <= t).sum()) / (pos.size + neg.size)
        if acc > best:
            best, best_t = acc, float(t)
    return best, best_t
