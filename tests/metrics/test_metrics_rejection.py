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
