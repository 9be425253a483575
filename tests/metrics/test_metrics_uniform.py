import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from metrics_reference import (brute_class_wise, brute_uniform, pos_neg_loop, uni_count)
from unimargin.metrics import positive_negative, separability_auc, uniform_accuracy


def _tied_data(seed, n_max=40, k_max=5, levels=5):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, n_max + 1, (1,), generator=g))
    k = int(torch.randint(2, k_max + 1, (1,), generator=g))
    # many ties, negative and positive values (the sort keys treat signs differently)
    scores = torch.randint(0, levels, (n, k), generator=g).float() - levels // 2
    labels = torch.randint(0, k, (n,), generator=g)
    return scores, labels


def _check_against_brute(scores, labels, threshold=None):
    k = scores.shape[1]
    res = uniform_accuracy(scores, labels, threshold)
    p, n = pos_neg_loop(scores.numpy(), labels.tolist())
    count = len(p)
    best, t_star = brute_uniform(p, n)
    cw_total, cw_thr = brute_class_wise(p, n, labels.numpy(), k)
    assert res.n == count
    assert res.sw == np.mean(p > n)
    assert res.uni == best / count
    assert res.threshold == t_star
    assert uni_count(p, n, res.threshold) == best          # t* really achieves Uni
    assert res.cw == cw_total / count
    assert res.class_thresholds == cw_thr
    assert res.sw >= res.cw >= res.uni
    return res, p, n


@pytest.mark.parametrize("seed", range(150))
def test_matches_brute_force_on_tied_scores(seed):
    scores, labels = _tied_data(seed)
    _check_against_brute(scores, labels)


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force_continuous(seed):
    g = torch.Generator().manual_seed(1000 + seed)
    scores = torch.randn(60, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    scores[torch.arange(60), labels] += 1.5
    _check_against_brute(scores, labels)


def test_single_sample_right_and_wrong():
    res, _, _ = _check_against_brute(torch.tensor([[3.0, 1.0]]), torch.tensor([0]))
    assert (res.sw, res.cw, res.uni, res.threshold) == (1.0, 1.0, 1.0, 2.0)
    assert res.class_thresholds == [2.0, None]
    res, _, _ = _check_against_brute(torch.tensor([[3.0, 1.0]]), torch.tensor([1]))
    assert (res.sw, res.cw, res.uni) == (0.0, 0.0, 0.0)
    assert res.threshold == 0.0                      # documented: min(p, n) − 1
    assert res.class_thresholds == [None, None]


def test_all_wrong_and_all_right():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (30, 3), generator=g).float()
    labels = scores.argmin(1)
    scores[torch.arange(30), labels] -= 1               # strictly below some other class
    res, p, n = _check_against_brute(scores, labels)
    assert res.uni == 0.0 and res.sw == 0.0 and res.cw == 0.0
    assert res.threshold == float(min(p.min(), n.min()) - 1)
    scores = torch.zeros(30, 3)
    labels = torch.randint(0, 3, (30,), generator=g)
    scores[torch.arange(30), labels] = 5.0              # every interval (0, 5)
    res, _, _ = _check_against_brute(scores, labels)
    assert res.sw == res.cw == res.uni == 1.0 and res.threshold == 2.5


def test_equal_endpoints_do_not_overlap():
    # intervals (0, 1) and (1, 2) share the point 1 but are open: at most one is satisfied
    scores = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    res = uniform_accuracy(scores, torch.tensor([0, 0]))
    assert res.uni == 0.5 and res.threshold == 0.5    # lowest optimal range (0, 1)
    assert res.cw == 0.5


def test_lowest_optimal_range_is_chosen():
    # two disjoint optimal ranges (0,1) and (5,6) with count 1 each: the lower one wins
    scores = torch.tensor([[1.0, 0.0], [6.0, 5.0]])
    res = uniform_accuracy(scores, torch.tensor([0, 0]))
    assert res.threshold == 0.5 and res.class_thresholds == [0.5, None]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(2, 6), st.integers(0, 2**31 - 1), st.integers(2, 8))
def test_sw_ge_cw_ge_uni(n, k, seed, levels):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n, k), generator=g).float()
    labels = torch.randint(0, k, (n,), generator=g)
    res = uniform_accuracy(scores, labels)
    assert 1.0 >= res.sw >= res.cw >= res.uni >= 0.0
    # ties count wrong, so SW never exceeds argmax accuracy (which may win a tie)
    assert round(res.sw * n) <= int((scores.argmax(1) == labels).sum())


@pytest.mark.parametrize("seed", range(10))
def test_threshold_fields(seed):
    scores, labels = _tied_data(seed + 500, n_max=30)
    p, n = pos_neg_loop(scores.numpy(), labels.tolist())
    for t in (-0.5, 0.5, 1.5, 2.25, 9.0):
        res = uniform_accuracy(scores, labels, threshold=torch.tensor(t))
        assert res.threshold_given == t
        assert res.uni_at_threshold == uni_count(p, n, t) / len(p)
        assert res.uni_loss == pytest.approx(res.uni - res.uni_at_threshold, abs=0)
        assert res.uni_loss >= 0
        assert res.threshold_distance == abs(t - res.threshold)
        spread = np.median(p) - np.median(n)
        if spread > 0:
            assert res.threshold_distance_rel == pytest.approx(abs(t - res.threshold) / spread)
        else:
            assert res.threshold_distance_rel is None
    assert uniform_accuracy(scores, labels).uni_at_threshold is None


def test_positive_negative_matches_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (9000, 7), generator=g).float()   # > one row block, ties
    labels = torch.randint(0, 7, (9000,), generator=g)
    p, n = positive_negative(scores, labels)
    rp, rn = pos_neg_loop(scores.numpy(), labels.tolist())
    assert np.array_equal(p.numpy(), rp) and np.array_equal(n.numpy(), rn)


@pytest.mark.parametrize("seed", range(10))
def test_separability_auc_matches_sklearn(seed):
    scores, labels = _tied_data(seed + 900, n_max=50)
    is_pos = torch.zeros_like(scores, dtype=torch.bool)
    is_pos[torch.arange(len(labels)), labels] = True
    ref = roc_auc_score(is_pos.flatten().numpy(), scores.flatten().numpy())
    assert separability_auc(scores, labels) == pytest.approx(ref, abs=1e-12)


def test_separability_perfect_when_unified_threshold_exists():
    scores = torch.tensor([[5.0, 1.0, 0.0], [2.0, 6.0, 1.5], [0.0, 0.0, 4.0]])
    assert separability_auc(scores, torch.tensor([0, 1, 2])) == 1.0
    # SW = 1 but a positive (4.0 → 2.0 row) below a negative of another row → AUC < 1
    scores[2] = torch.tensor([0.0, 0.0, 1.8])
    assert separability_auc(scores, torch.tensor([0, 1, 2])) < 1.0


def test_orderable_keys_sort_like_floats():
    from unimargin.metrics._ranking import orderable_int64 as _orderable_int64
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(500, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        -300, 300, (500,), generator=g), torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0, -0.0])])
    x = x[torch.randperm(x.numel(), generator=g)]
    ref = torch.sort(x, stable=True).indices
    assert torch.equal(torch.sort(_orderable_int64(x), stable=True).indices, ref)


def test_negative_zero_ties_positive_zero():
    # interval (−1, −0.0) and (+0.0, 1): −0.0 == +0.0, open intervals, so never both
    scores = torch.tensor([[-0.0, -1.0], [1.0, 0.0]])
    res = uniform_accuracy(scores, torch.tensor([0, 0]))
    assert res.uni == 0.5 and res.threshold == -0.5


def _sklearn_separability(scores, labels):
    is_pos = torch.zeros_like(scores, dtype=torch.bool)
    is_pos[torch.arange(len(labels)), labels] = True
    return roc_auc_score(is_pos.flatten().numpy(), scores.flatten().to(torch.float64).numpy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("k", [2, 3, 17])
def test_separability_auc_ties_dtypes_vs_sklearn(dtype, k):
    g = torch.Generator().manual_seed(k)
    n = 400
    # few distinct values (heavy ties across and within rows), negative values and both zeros
    scores = (torch.randint(-3, 4, (n, k), generator=g).to(dtype) * 0.5)
    scores[::7, 0] = -0.0
    labels = torch.randint(0, k, (n,), generator=g)
    assert separability_auc(scores, labels) == pytest.approx(
        _sklearn_separability(scores, labels), abs=1e-12)


def test_separability_auc_edge_cases():
    # all scores equal: every pair ties -> 0.5
    assert separability_auc(torch.zeros(5, 4), torch.tensor([0, 1, 2, 3, 0])) == 0.5
    # one sample: one positive vs K-1 negatives of the same row
    s = torch.tensor([[0.3, 1.0, -2.0]])
    assert separability_auc(s, torch.tensor([0])) == pytest.approx(
        _sklearn_separability(s, torch.tensor([0])))
    assert separability_auc(s, torch.tensor([1])) == 1.0
    assert separability_auc(s, torch.tensor([2])) == 0.0
    # −0.0 and +0.0 tie (a sign-bit comparison would order them)
    s = torch.tensor([[-0.0, 0.0], [0.0, -0.0]])
    assert separability_auc(s, torch.tensor([0, 0])) == 0.5


def test_separability_auc_does_not_modify_scores():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(50, 6, generator=g)
    before = s.clone()
    separability_auc(s, torch.randint(0, 6, (50,), generator=g))
    assert torch.equal(s, before)
