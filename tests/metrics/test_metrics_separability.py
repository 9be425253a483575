"""separability_auc (SPEC §3.5): the compiled rank kernel, the numpy sort and a brute-force
O(N · NK) loop give the identical number; the kernel's paths (in-place, range buffers, long
buckets, threads, ties) and the fallback (disabled, UNIMARGIN_CPU_KERNEL=0) are all exercised."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from unimargin._native import rank_kernel
from unimargin.metrics import SeparabilityAUC, separability_auc
from unimargin.metrics.uniform import _separability_numpy, _separability_unchecked

needs_kernel = pytest.mark.skipif(rank_kernel.load() is None, reason="rank kernel not built")


def _brute(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Every positive against every negative, ½ per tie, as an exact fraction (float64
    comparisons: float16/32 values are exact there; −0.0 == +0.0 as floats)."""
    s = scores.to(torch.float64).tolist()
    y = labels.tolist()
    pos = [row[c] for row, c in zip(s, y)]
    neg = [v for row, c in zip(s, y) for j, v in enumerate(row) if j != c]
    twice = sum(2 * (p > q) + (p == q) for p in pos for q in neg)
    return float(Fraction(twice, 2 * len(pos) * len(neg)))


def _kernel(scores, labels, threads=1):
    with_kernel = _separability_unchecked(scores, labels)
    n, k = scores.shape
    values = (scores if scores.dtype in (torch.float32, torch.float64) else scores.double()).numpy()
    pos = np.sort(values[np.arange(n), labels.numpy()] + values.dtype.type(0.0))
    direct = (rank_kernel.count(values, pos, threads) - n * n) / (2.0 * n * (n * (k - 1)))
    assert direct == with_kernel
    return direct


def _cases():
    g = torch.Generator().manual_seed(0)
    out = {}
    out["random"] = torch.randn(23, 7, generator=g)
    out["ties"] = torch.round(torch.randn(31, 5, generator=g) * 2) / 2
    out["zeros"] = torch.tensor([[0.0, -0.0, 1.0], [-0.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-0.0, 2.0, -0.0]])
    out["all_equal"] = torch.full((9, 4), 0.25)
    out["k2"] = torch.randn(17, 2, generator=g)
    out["n1"] = torch.randn(1, 6, generator=g)
    # one bucket holding many positives: a far outlier stretches the range
    cluster = torch.randn(40, 3, generator=g) * 1e-3
    cluster[0, 0] = 1e6
    out["one_bucket"] = cluster
    # negatives far outside the positives' range on both sides
    wide = torch.randn(19, 5, generator=g)
    wide[:, 1] = 1e30
    wide[:, 2] = -1e30
    out["outside"] = wide
    out["denormal"] = torch.tensor([[1e-40, -1e-40, 0.0], [0.0, 1e-45, -1e-45], [-0.0, 1e-40, 1e-39]])
    return out


def _labels(scores, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, scores.shape[1], (scores.shape[0],), generator=g)
    return labels


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(_cases()))
def test_kernel_equals_numpy_equals_brute_force(case, dtype):
    scores = _cases()[case]
    if dtype in (torch.float16, torch.bfloat16) and case in ("outside", "one_bucket", "denormal"):
        scores = scores.clamp(-6e4, 6e4)
    scores = scores.to(dtype)
    labels = _labels(scores)
    ref = _brute(scores, labels)
    assert _separability_numpy(scores, labels) == ref
    assert _kernel(scores, labels) == ref
    assert separability_auc(scores, labels) == ref


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rounded", [False, True])
def test_range_buffer_path_and_threads(monkeypatch, dtype, threads, rounded):
    """Forced range buffers (L2_BYTES = 0) with tiny to single ranges, buffers of one staging
    line (every line ranked at once) up to buffers never filled, N·K not a multiple of 16 or
    of the buffer; threads split the scores at uneven points. Equal to the numpy sort exactly."""
    g = torch.Generator().manual_seed(7)
    n, k = 3001, 13
    scores = torch.randn(n, k, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    scores[torch.arange(n), labels] += 1.0
    if rounded:
        scores = torch.round(scores * 20) / 20          # heavy ties: the c[] path
    ref = _separability_numpy(scores, labels)
    monkeypatch.setattr(rank_kernel, "L2_BYTES", 0)
    for ranges in (1 << 30, 64, 2):                      # rshift 1 (tiny ranges) .. one range
        for buffer_bytes in (64, 4096, 1 << 17):         # 1 line, several lines, never full
            monkeypatch.setattr(rank_kernel, "RANGES", ranges)
            monkeypatch.setattr(rank_kernel, "BUFFER_BYTES", buffer_bytes)
            assert _kernel(scores, labels, threads) == ref
    monkeypatch.setattr(rank_kernel, "L2_BYTES", 1 << 40)  # in place
    assert _kernel(scores, labels, threads) == ref


@needs_kernel
def test_long_buckets_are_searched(monkeypatch):
    """Most positives in one bucket (> LANES distinct values): the binary-search path."""
    g = torch.Generator().manual_seed(3)
    n, k = 500, 4
    scores = torch.randn(n, k, generator=g) * 1e-3
    labels = torch.randint(0, k, (n,), generator=g)
    scores[0, labels[0]] = 1e3                            # stretches the range
    scores[1, (labels[1] + 1) % k] = 5e-4                 # a negative inside the crowded bucket
    ref = _separability_numpy(scores, labels)
    assert _kernel(scores, labels) == ref
    monkeypatch.setattr(rank_kernel, "L2_BYTES", 0)
    monkeypatch.setattr(rank_kernel, "RANGES", 1 << 12)
    monkeypatch.setattr(rank_kernel, "BUFFER_BYTES", 128)
    assert _kernel(scores, labels, 2) == ref
    small = scores[:40]
    assert _kernel(small, labels[:40]) == _brute(small, labels[:40])


@needs_kernel
@needs_kernel
@pytest.mark.parametrize("buckets_per_value", [1, 4, 64])
def test_bucket_density_and_pmax_in_a_buffer(monkeypatch, buckets_per_value):
    """Scores equal to the largest positive (bucket nb + 1, kept by the scatter) and just
    above/below the positives' range, through the range buffers at several bucket densities;
    the portable (non-vector) tails run on N·K not a multiple of 16."""
    g = torch.Generator().manual_seed(11)
    n, k = 777, 9
    scores = torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    top = scores[torch.arange(n), labels].max()
    scores[5, (labels[5] + 1) % k] = top                      # a negative tied with pmax
    scores[6, (labels[6] + 2) % k] = torch.nextafter(top, torch.tensor(10.0, dtype=torch.float64))
    monkeypatch.setattr(rank_kernel, "L2_BYTES", 0)
    monkeypatch.setattr(rank_kernel, "BUCKETS_PER_VALUE", buckets_per_value)
    monkeypatch.setattr(rank_kernel, "BUFFER_BYTES", 256)
    for dtype in (torch.float32, torch.float64):
        s = scores.to(dtype)
        assert _kernel(s, labels) == _separability_numpy(s, labels) == _brute(s, labels)


def test_non_contiguous_scores():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(9, 31, generator=g).T            # (31, 9), strided
    labels = _labels(scores)
    assert separability_auc(scores, labels) == _brute(scores, labels)


def test_disabled_context_uses_numpy(monkeypatch):
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(40, 6, generator=g)
    labels = _labels(scores)

    def boom(*args, **kwargs):
        raise AssertionError("kernel called inside disabled()")

    monkeypatch.setattr(rank_kernel, "count", boom)
    with rank_kernel.disabled():
        assert separability_auc(scores, labels) == _brute(scores, labels)


def test_environment_switch_disables_kernel(monkeypatch):
    g = torch.Generator().manual_seed(6)
    scores = torch.round(torch.randn(30, 5, generator=g))
    labels = _labels(scores)
    monkeypatch.setenv("UNIMARGIN_CPU_KERNEL", "0")
    rank_kernel.reset()
    try:
        assert rank_kernel.load() is None
        assert "UNIMARGIN_CPU_KERNEL" in rank_kernel.status()
        assert separability_auc(scores, labels) == _brute(scores, labels)
    finally:
        monkeypatch.delenv("UNIMARGIN_CPU_KERNEL")
        rank_kernel.reset()


def test_stateful_meter_equals_function():
    g = torch.Generator().manual_seed(8)
    scores = torch.round(torch.randn(300, 7, generator=g) * 4) / 4
    labels = _labels(scores)
    meter = SeparabilityAUC()
    for chunk in range(0, 300, 70):
        meter.update(scores[chunk:chunk + 70], labels[chunk:chunk + 70])
    assert meter.compute() == separability_auc(scores, labels) == _separability_numpy(scores, labels)


def test_float32_kernel_does_not_convert_scores(monkeypatch):
    """float32 scores are ranked as float32 (no float64 copy of the N·K matrix)."""
    seen = {}
    real = rank_kernel.count

    def spy(values, positives, threads=None):
        seen["dtype"] = values.dtype
        return real(values, positives, threads)

    monkeypatch.setattr(rank_kernel, "count", spy)
    scores = torch.randn(20, 4)
    separability_auc(scores, _labels(scores))
    if rank_kernel.load() is not None:
        assert seen["dtype"] == np.float32
