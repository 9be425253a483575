import math

import numpy as np
import pytest
import torch

from unimargin.metrics import centroid_margins, feature_geometry


class FakeLinearHead:
    """Minimal stand-in exposing the Head.linear_decision() contract."""

    def __init__(self, weight, bias):
        self.weight, self.bias = weight, bias

    def linear_decision(self):
        return self.weight, self.bias


class FakeNormalizedHead:
    def linear_decision(self):
        return None


def _geometry_loop(f, y):
    """Per-class Python/numpy reference for SPEC §3.6."""
    f, y = f.numpy().astype(np.float64), y.numpy()
    classes = sorted(set(y.tolist()))
    mu = {c: f[y == c].mean(0) for c in classes}
    dists = [np.linalg.norm(f[i] - mu[y[i]]) for i in range(len(y))]
    coss = [f[i] @ mu[y[i]] / (np.linalg.norm(f[i]) * np.linalg.norm(mu[y[i]])) for i in range(len(y))]
    pair_d, pair_a = [], []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ma, mb = mu[classes[a]], mu[classes[b]]
            pair_d.append(np.linalg.norm(ma - mb))
            c = ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb))
            pair_a.append(math.degrees(math.acos(max(-1.0, min(1.0, c)))))
    radii = [np.percentile([np.linalg.norm(f[i] - mu[c]) for i in range(len(y)) if y[i] == c], 95)
             for c in classes]
    return {
        "intra_class_distance": np.mean(dists),
        "intra_class_cosine": np.mean(coss),
        "inter_class_distance_min": min(pair_d),
        "inter_class_distance_mean": np.mean(pair_d),
        "inter_class_angle_min": min(pair_a),
        "inter_class_angle_mean": np.mean(pair_a),
        "compactness_ratio": np.mean(dists) / np.mean(pair_d),
        "uniformity": np.std(radii) / np.mean(radii),
    }


def _margins_loop(f, y, w, b):
    f, y, w, b = (t.numpy().astype(np.float64) for t in (f, y, w, b))
    out = []
    for c in range(w.shape[0]):
        if not (y == c).any():
            out.append(float("nan"))
            continue
        mu = f[y == c].mean(0)
        out.append(min(((w[c] - w[j]) @ mu + b[c] - b[j]) / np.linalg.norm(w[c] - w[j])
                       for j in range(w.shape[0]) if j != c))
    return np.array(out)


def _clustered(seed, n=90, k=5, d=4, spread=1.0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * scale
    y = torch.randint(0, k, (n,), generator=g)
    return means[y] + spread * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("seed", range(6))
def test_geometry_matches_loop(seed):
    f, y = _clustered(seed)
    y[y == 4] = 3                                   # a missing class id is skipped
    got = feature_geometry(f, y)
    ref = _geometry_loop(f, y)
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("seed", range(6))
def test_centroid_margin_matches_pair_loop(seed):
    f, y = _clustered(seed, k=6)
    g = torch.Generator().manual_seed(seed + 100)
    w = torch.randn(7, 4, generator=g)             # class 6 has no samples
    b = torch.randn(7, generator=g)
    ref = _margins_loop(f, y, w, b)
    got = centroid_margins(f, y, w, b).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)     # NaN == NaN here
    geo = feature_geometry(f, y, head=FakeLinearHead(w, b))
    present = ref[~np.isnan(ref)]
    assert geo["centroid_margin_min"] == pytest.approx(present.min(), rel=1e-10)
    assert geo["centroid_margin_mean"] == pytest.approx(present.mean(), rel=1e-10)
    np.testing.assert_allclose(centroid_margins(f, y, w).numpy(),
                               _margins_loop(f, y, w, torch.zeros(7)), rtol=1e-10)


def test_centroid_margin_only_for_linear_heads():
    f, y = _clustered(0)
    assert "centroid_margin_min" not in feature_geometry(f, y, head=FakeNormalizedHead())
    assert "centroid_margin_min" not in feature_geometry(f, y)


def test_uniformity_zero_for_equal_radii():
    # two classes, each a symmetric cross of radius 1 around its mean: equal radii
    cross = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    f = torch.cat([cross + torch.tensor([5.0, 0]), cross + torch.tensor([0, 5.0])])
    y = torch.tensor([0] * 4 + [1] * 4)
    geo = feature_geometry(f, y)
    assert geo["uniformity"] == 0.0
    assert geo["intra_class_distance"] == pytest.approx(1.0)
    assert geo["inter_class_angle_min"] == pytest.approx(90.0)
