"""Statistics of the report against scipy (independent reference) and brute force."""

import itertools
import math

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

from unimargin.report.stats import (
    holm_adjust,
    paired_t_test,
    regularized_incomplete_beta,
    sign_flip_p_value,
    student_t_cdf,
    student_t_ppf,
    student_t_two_sided_p,
    summarize,
    t_interval,
)


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (1.0, 3.0), (2.5, 0.5), (10.0, 7.0), (0.1, 40.0), (150.0, 0.5)])
def test_incomplete_beta_matches_scipy(a, b):
    for x in np.linspace(0.0, 1.0, 41):
        assert regularized_incomplete_beta(a, b, float(x)) == pytest.approx(
            float(scipy_special.betainc(a, b, x)), rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 19, 100])
def test_student_t_cdf_matches_scipy(df):
    for t in [-40.0, -6.0, -2.1, -1.0, -0.3, 0.0, 0.2, 1.0, 2.776, 5.0, 60.0]:
        assert student_t_cdf(t, df) == pytest.approx(float(scipy_stats.t.cdf(t, df)), rel=1e-9, abs=1e-14)
        assert student_t_two_sided_p(t, df) == pytest.approx(
            float(2 * scipy_stats.t.sf(abs(t), df)), rel=1e-9, abs=1e-14)


def test_paired_t_test_matches_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    for n in [2, 3, 5, 8, 20]:
        a = rng.normal(0.8, 0.05, size=n)
        b = a - rng.normal(0.01, 0.02, size=n)
        result = paired_t_test(a, b)
        reference = scipy_stats.ttest_rel(a, b)
        assert result.t_statistic == pytest.approx(float(reference.statistic), rel=1e-10)
        assert result.t_p_value == pytest.approx(float(reference.pvalue), rel=1e-9)
        assert result.df == n - 1
        assert result.mean_difference == pytest.approx(float(np.mean(a - b)))
        assert result.std_difference == pytest.approx(float(np.std(a - b, ddof=1)))


def _brute_force_sign_flip(d):
    observed = abs(sum(d))
    count = 0
    for signs in itertools.product([1, -1], repeat=len(d)):
        if abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12:
            count += 1
    return count / 2 ** len(d)


def test_sign_flip_matches_brute_force_and_scipy_permutation_test():
    rng = np.random.default_rng(7)
    for n in [1, 2, 3, 5, 9]:
        d = rng.normal(0.3, 1.0, size=n)
        p = sign_flip_p_value(d)
        assert p == pytest.approx(_brute_force_sign_flip(d.tolist()))
        if n >= 2:
            reference = scipy_stats.permutation_test(
                (d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                alternative="two-sided")
            assert p == pytest.approx(float(reference.pvalue), rel=1e-12)


def test_sign_flip_floor_and_ties():
    # All differences positive: only the identity and full flip are as extreme.
    assert sign_flip_p_value([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    # Zero differences: every pattern ties with the observed one.
    assert sign_flip_p_value([0.0, 0.0]) == 1.0
    assert paired_t_test([0.5, 0.4], [0.5, 0.4]).sign_flip_p == 1.0


def test_degenerate_paired_cases_are_defined_not_nan():
    # Zero variance (SPEC §3.9): no t-test at all (never a p of 0), the sign-flip p only.
    same = paired_t_test([0.7, 0.8, 0.9], [0.7, 0.8, 0.9])
    assert same.zero_variance and same.t_p_value is None and same.t_statistic is None
    assert same.sign_flip_p == 1.0 and same.ci_low == same.ci_high == 0.0
    shifted = paired_t_test([0.8, 0.9, 1.0], [0.7, 0.8, 0.9])  # constant difference 0.1 (float noise)
    assert shifted.zero_variance and shifted.t_p_value is None and shifted.t_statistic is None
    assert shifted.sign_flip_p == pytest.approx(2 / 8)
    assert shifted.ci_low == pytest.approx(0.1) and shifted.ci_high == pytest.approx(0.1)
    # issue 13's case: one test sample of 36 on both of 2 seeds
    two = paired_t_test([0.5 + 1 / 36, 0.6 + 1 / 36], [0.5, 0.6])
    assert two.zero_variance and two.t_p_value is None and two.sign_flip_p == pytest.approx(0.5)
    one = paired_t_test([0.8], [0.7])
    assert one.t_p_value is None and one.sign_flip_p == 1.0 and one.ci_low is None and not one.zero_variance
    empty = paired_t_test([], [])
    assert empty.n == 0 and empty.t_p_value is None


def test_summarize():
    s = summarize([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2) and s.n == 3
    assert summarize([0.5]).std is None
    assert summarize([]).format() == "—"
    assert s.format(2) == "0.70 ± 0.20"


def test_bad_input_raises():
    with pytest.raises(ValueError, match="same length"):
        paired_t_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="x must be in"):
        regularized_incomplete_beta(1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="df"):
        student_t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="empty"):
        sign_flip_p_value([])


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 30])
def test_student_t_ppf_matches_scipy(df):
    for q in [0.001, 0.025, 0.1, 0.5, 0.8, 0.975, 0.995, 0.9999]:
        assert student_t_ppf(q, df) == pytest.approx(float(scipy_stats.t.ppf(q, df)), rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="q must be"):
        student_t_ppf(1.0, df)


def test_t_interval_matches_scipy_and_paired_test():
    rng = np.random.default_rng(11)
    for n in [2, 3, 5, 10]:
        d = rng.normal(0.01, 0.02, size=n)
        mean, sem = float(np.mean(d)), float(scipy_stats.sem(d))
        low, high = scipy_stats.t.interval(0.95, n - 1, loc=mean, scale=sem)
        assert t_interval(d) == pytest.approx((low, high), rel=1e-9)
        test = paired_t_test(d + 0.5, np.full(n, 0.5))
        assert (test.ci_low, test.ci_high) == pytest.approx((low, high), rel=1e-7)
        # the interval excludes 0 exactly when the two-sided t p is below 0.05
        assert (low > 0 or high < 0) == (float(scipy_stats.ttest_1samp(d, 0.0).pvalue) < 0.05)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.1])


def _holm_reference(p):
    """Holm written out from its definition (statsmodels multipletests(method="holm")):
    reject in ascending order while p_(j) <= alpha / (m - j + 1); adjusted p_(i) =
    max over j <= i of min(1, (m - j + 1) p_(j))."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for i_rank, i in enumerate(order):
        out[i] = max(min(1.0, (m - j_rank) * p[order[j_rank]]) for j_rank in range(i_rank + 1))
    return out


def test_holm_adjust_matches_its_definition():
    rng = np.random.default_rng(5)
    for m in [1, 2, 3, 6]:
        p = rng.uniform(0, 0.2, size=m).tolist()
        assert holm_adjust(p) == pytest.approx(_holm_reference(p))
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # None (no t-test) stays None and counts in m: 0.02 × 2 (not × 1)
    assert holm_adjust([0.02, None]) == [pytest.approx(0.04), None]
    assert holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"p_values\[1\]"):
        holm_adjust([0.1, 1.5])
