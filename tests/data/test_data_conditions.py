"""Long-tailed subsets and symmetric label noise (issue 15) against per-class references."""

import math

import numpy as np
import pytest
import torch

from unimargin.data.conditions import long_tail_counts, long_tail_indices, symmetric_label_noise


@pytest.mark.parametrize("rho", [1.0, 0.1, 0.01])
def test_long_tail_exact_counts_per_class(rho):
    y = np.repeat(np.arange(10), 600)
    idx = long_tail_indices(y, rho, seed=0)
    got = np.bincount(y[idx], minlength=10)
    ref = [min(600, max(1, math.floor(600 * rho ** (c / 9) + 1e-9))) for c in range(10)]  # slow per-class formula
    assert got.tolist() == ref and got[0] == 600 and got[9] == max(1, round(600 * rho))
    assert np.all(np.diff(idx) > 0) and len(np.unique(idx)) == len(idx)


def test_long_tail_is_seeded_and_caps_small_classes():
    y = np.concatenate([np.repeat(0, 100), np.repeat(1, 5), np.repeat(2, 100)])
    a, b, c = (long_tail_indices(torch.from_numpy(y), 0.1, s) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a]).tolist() == [100, 5, 10]  # class 1 has fewer than its quota of 31
    assert long_tail_counts([7, 7], 0.5).tolist() == [7, 3]


@pytest.mark.parametrize("rho", [0, -1, 1.5, True, "a"])
def test_long_tail_bad_rho(rho):
    with pytest.raises(ValueError, match="imbalance must be a ratio in"):
        long_tail_indices([0, 1, 1], rho, 0)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_label_noise_rate_within_binomial_bounds_and_never_same_class(p):
    n, k = 20000, 10
    y = torch.arange(n) % k
    noisy = symmetric_label_noise(y, p, k, seed=1)
    assert isinstance(noisy, torch.Tensor) and noisy.dtype == torch.int64 and noisy.shape == y.shape
    flipped = noisy != y
    sd = math.sqrt(n * p * (1 - p))
    assert abs(int(flipped.sum()) - n * p) <= 5 * sd + 1e-9  # 5 sigma
    assert ((noisy >= 0) & (noisy < k)).all()
    if 0 < p:
        # the new class is uniform over the K-1 others: each (old, new) pair ~ n p / (K (K-1))
        pairs = torch.bincount(y[flipped] * k + noisy[flipped], minlength=k * k).view(k, k)
        assert torch.all(pairs.diagonal() == 0)
        off = pairs[~torch.eye(k, dtype=torch.bool)].double()
        expect = n * p / (k * (k - 1))
        assert (off - expect).abs().max() <= 5 * math.sqrt(expect) + 1


def test_label_noise_seeded_numpy_in_numpy_out_and_errors():
    y = np.arange(100) % 3
    a, b = symmetric_label_noise(y, 0.3, 3, 5), symmetric_label_noise(y, 0.3, 3, 5)
    assert isinstance(a, np.ndarray) and np.array_equal(a, b) and not np.array_equal(a, symmetric_label_noise(y, 0.3, 3, 6))
    assert np.array_equal(symmetric_label_noise(y, 0.0, 3, 0), y)
    with pytest.raises(ValueError, match="label_noise must be a probability"):
        symmetric_label_noise(y, 1.5, 3, 0)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        symmetric_label_noise(y, 0.1, 1, 0)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
        symmetric_label_noise(y, 0.1, 2, 0)
    with pytest.raises(ValueError, match="non-negative integer labels"):
        symmetric_label_noise(np.array([0.5, 1.0]), 0.1, 2, 0)
