"""Rejection scores (SPEC §2.9) against slow per-sample / per-class loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unimargin.metrics.rejection import (REJECTION_SCORES, class_means, needs_features,
                                         rejection_score, rejection_score_unchecked)


def _data(seed=0, n=37, k=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 3, torch.randn(n, d, generator=g),
            torch.arange(n) % k)


def test_class_means_matches_loop():
    _, f, y = _data()
    mu = class_means(f, y, 5)
    for c in range(5):
        rows = [f[i].double() for i in range(len(y)) if y[i] == c]
        ref = sum(rows) / len(rows)
        assert torch.allclose(mu[c], ref, atol=1e-12)
    assert mu.dtype == torch.float64 and mu.shape == (5, 4)


def test_class_means_empty_class_raises():
    _, f, y = _data()
    with pytest.raises(ValueError, match=r"class\(es\) \[5\]"):
        class_means(f, y, 6)


def test_class_means_bad_labels():
    _, f, y = _data()
    with pytest.raises(ValueError, match="labels"):
        class_means(f, y[:-1], 5)
    with pytest.raises(ValueError, match="labels must lie"):
        class_means(f, y + 1, 5)


def test_max_score_and_energy_match_loops():
    s, _, _ = _data()
    ms = rejection_score("max_score", s)
    en = rejection_score("energy", s)
    for i in range(s.shape[0]):
        row = [float(v) for v in s[i]]
        assert ms[i].item() == pytest.approx(max(row), abs=1e-12)
        assert en[i].item() == pytest.approx(math.log(sum(math.exp(v) for v in row)), abs=1e-9)
    # energy is a smooth maximum: max <= energy <= max + log K
    assert bool((en >= ms).all()) and bool((en <= ms + math.log(s.shape[1]) + 1e-12).all())


def test_centroid_cosine_matches_loop():
    _, f, y = _data()
    mu = class_means(f, y, 5)
    r = rejection_score("centroid_cosine", features=f, class_means=mu)
    fn, mn = f.double().numpy(), mu.numpy()
    for i in range(len(fn)):
        cosines = [float(fn[i] @ mn[k] / (np.linalg.norm(fn[i]) * np.linalg.norm(mn[k])))
                   for k in range(len(mn))]
        assert r[i].item() == pytest.approx(max(cosines), abs=1e-12)
    assert bool((r.abs() <= 1 + 1e-12).all())


def test_centroid_cosine_zero_feature_is_zero_not_nan():
    mu = torch.eye(3)
    r = rejection_score("centroid_cosine", features=torch.zeros(2, 3), class_means=mu)
    assert torch.equal(r, torch.zeros(2, dtype=torch.float64))


def test_unchecked_core_keeps_dtype_and_agrees():
    s, f, y = _data()
    mu = class_means(f, y, 5)
    for name in REJECTION_SCORES:
        checked = rejection_score(name, s, f, mu)
        fast = rejection_score_unchecked(name, s.float(), f.float(), mu.float())
        assert fast.dtype == torch.float32
        assert torch.allclose(fast.double(), checked, atol=1e-5)


def test_empty_batch():
    for name in REJECTION_SCORES:
        out = rejection_score(name, torch.zeros(0, 3), torch.zeros(0, 2), torch.ones(3, 2))
        assert out.shape == (0,)


def test_bad_inputs():
    s, f, y = _data()
    with pytest.raises(ValueError, match="rejection_score must be one of"):
        rejection_score("mahalanobis", s)
    with pytest.raises(ValueError, match="needs features and class_means"):
        rejection_score("centroid_cosine", s)
    with pytest.raises(ValueError, match="needs scores"):
        rejection_score("energy", features=f)
    with pytest.raises(ValueError, match="width"):
        rejection_score("centroid_cosine", features=f, class_means=torch.ones(5, 3))
    bad = s.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        rejection_score("max_score", bad)
    assert needs_features("centroid_cosine") and not needs_features("energy")


# ---------------------------------------------------------------- thresholds and figures
def _brute_candidates(values):
    v = sorted({float(x) for x in values if math.isfinite(float(x))})
    return [v[0] - 1] + [(a + b) / 2 for a, b in zip(v, v[1:])] + [v[-1] + 1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 1.0])
def test_rate_thresholds_match_brute_force(seed, rate):
    from unimargin.metrics.rejection import (threshold_for_accept_rate,
                                             threshold_for_reject_rate)

    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-4, 5, (41,), generator=g).double() / 2  # many ties
    cand = _brute_candidates(v.tolist())
    n = len(v)
    reject_ok = [t for t in cand if sum(float(x) <= t for x in v) / n <= rate]
    accept_ok = [t for t in cand if sum(float(x) >= t for x in v) / n <= rate]
    assert threshold_for_reject_rate(v, rate) == pytest.approx(max(reject_ok))
    assert threshold_for_accept_rate(v, rate) == pytest.approx(min(accept_ok))


def test_reject_rate_threshold_with_minus_infinity_can_be_unreachable():
    from unimargin.metrics.rejection import threshold_for_reject_rate

    v = torch.tensor([float("-inf")] * 3 + [1.0, 2.0], dtype=torch.float64)
    assert threshold_for_reject_rate(v, 0.5) is None
    assert threshold_for_reject_rate(v, 0.6) == pytest.approx(0.0)  # min - 1
    with pytest.raises(ValueError, match="rate"):
        threshold_for_reject_rate(v, 1.5)


@pytest.mark.parametrize("seed", range(3))
def test_rejection_metrics_match_sklearn_and_a_loop(seed):
    from sklearn.metrics import roc_auc_score

    from unimargin.metrics.rejection import rejection_metrics

    g = torch.Generator().manual_seed(seed)
    kr = torch.randint(0, 6, (50,), generator=g).double()      # ties across known/unknown
    ur = torch.randint(-2, 4, (23,), generator=g).double()
    correct = torch.rand(50, generator=g) < 0.7
    t = 1.5
    out = rejection_metrics(kr, correct, ur, t)
    ref_auc = roc_auc_score([1] * 50 + [0] * 23, torch.cat([kr, ur]).numpy())
    assert out["auroc"] == pytest.approx(ref_auc, abs=1e-12)
    hits = sum(1 for r, c in zip(kr.tolist(), correct.tolist()) if r > t and c)
    hits += sum(1 for r in ur.tolist() if r <= t)
    assert out["open_set_accuracy"] == pytest.approx(hits / 73)
    assert out["known_accept_rate"] == pytest.approx(sum(r > t for r in kr.tolist()) / 50)
    assert out["unknown_reject_rate"] == pytest.approx(sum(r <= t for r in ur.tolist()) / 23)
    free = rejection_metrics(kr, correct, ur, None)
    assert free["auroc"] == out["auroc"] and free["open_set_accuracy"] is None


def test_rejection_metrics_bad_inputs():
    from unimargin.metrics.rejection import rejection_metrics

    kr, ur = torch.randn(5), torch.randn(3)
    with pytest.raises(ValueError, match="known_correct"):
        rejection_metrics(kr, torch.ones(4, dtype=torch.bool), ur, 0.0)
    with pytest.raises(ValueError, match="known_correct"):
        rejection_metrics(kr, torch.ones(5), ur, 0.0)
    with pytest.raises(ValueError, match="unknown_r is empty"):
        rejection_metrics(kr, torch.ones(5, dtype=torch.bool), torch.zeros(0), 0.0)
    with pytest.raises(ValueError, match="threshold must be finite"):
        rejection_metrics(kr, torch.ones(5, dtype=torch.bool), ur, float("nan"))


def test_max_score_rejection_is_open_set_rejection():
    """One home: verification.open_set_rejection is rejection_metrics on max_score."""
    from unimargin.metrics import open_set_rejection
    from unimargin.metrics.rejection import rejection_metrics

    s, _, y = _data(seed=4)
    us = torch.randn(12, 5) * 3
    ref = open_set_rejection(s, y, us, 0.7)
    p = s.gather(1, y[:, None])[:, 0]
    rest = s.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    out = rejection_metrics(s.amax(dim=1), p > rest, us.amax(dim=1), 0.7)
    assert out == ref


def test_energy_is_defined_for_softmax_heads_only():
    from unimargin import build_head
    from unimargin.metrics.rejection import check_score_for_head, score_defined

    for name in ("softmax", "center", "lmdl", "normface", "cosface", "arcface"):
        head = build_head(name, 3, 4)
        assert head.softmax_scores and score_defined("energy", head)
    for name in ("bce-u", "bce-d"):
        head = build_head(name, 3, 4)
        assert not head.softmax_scores and not score_defined("energy", head)
        assert score_defined("centroid_cosine", head) and score_defined("max_score", head)
        with pytest.raises(ValueError, match="softmax cross-entropy only"):
            check_score_for_head("energy", head)


def test_rate_thresholds_meet_the_rate_exactly():
    """60 of 6000 is exactly 0.01: allowed (a 1 − fraction computation rounds it above)."""
    from unimargin.metrics.rejection import (threshold_for_accept_rate,
                                             threshold_for_reject_rate)

    v = torch.arange(6000, dtype=torch.float64)
    t = threshold_for_accept_rate(v, 0.01)
    assert int((v >= t).sum()) == 60 and t == 5939.5
    t = threshold_for_reject_rate(v, 0.05)
    assert int((v <= t).sum()) == 300 and t == 299.5
