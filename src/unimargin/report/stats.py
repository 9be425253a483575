"""Statistics for comparing heads over seeds: mean ± std, paired differences, p-values.

Only the Python standard library and numpy are used at run time (scipy is a test-only
dependency; the tests check these functions against it).

- :func:`summarize` — mean and sample standard deviation (ddof = 1) of per-seed values.
- :func:`paired_t_test` — Student's paired t-test on d_i = a_i − b_i (two-sided):
  t = mean(d) / (std(d) / √n), df = n − 1, p = P(|T_df| ≥ |t|) = I_{df/(df+t²)}(df/2, 1/2).
- :func:`sign_flip_p_value` — exact two-sided sign-flip permutation test on the same
  differences: under H0 (no difference) every sign pattern of d is equally likely, so
  p = #{s ∈ {±1}^n : |mean(s·d)| ≥ |mean(d)|} / 2^n. It assumes nothing about the
  distribution of d; with n seeds its smallest possible value is 2 / 2^n (0.25 for 3
  seeds, 0.0625 for 5), which the report states.
- :func:`student_t_ppf` and :func:`t_interval` — the 95 % t-interval of the mean paired
  difference, mean(d) ± t_{0.975, n−1} · std(d) / √n (SPEC §3.9).
- :func:`holm_adjust` — Holm's step-down adjustment of the p-values of the heads compared
  with the baseline on one metric (SPEC §3.9).

Zero variance (every d_i identical, SPEC §3.9): the standard error is 0 and the t-test is
undefined, so :class:`PairedTest` has ``zero_variance=True``, ``t_statistic`` and
``t_p_value`` None, and only the sign-flip p; a t-test p of 0 is never produced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "Summary",
    "PairedTest",
    "summarize",
    "regularized_incomplete_beta",
    "student_t_cdf",
    "student_t_two_sided_p",
    "paired_t_test",
    "sign_flip_p_value",
    "student_t_ppf",
    "t_interval",
    "holm_adjust",
    "MAX_EXACT_SIGN_FLIP",
]

# 2^20 sign patterns (~8 MB of float64 per chunk row set) is the exact-enumeration limit;
# beyond it the test is Monte Carlo with a fixed seed (stated in the result).
MAX_EXACT_SIGN_FLIP = 20
_SIGN_FLIP_MC_DRAWS = 200_000
# Relative tolerance when comparing permuted means with the observed one: sums of the same
# floats in a different order may differ in the last bits, and a pattern equal to the
# observed one must count as "at least as extreme".
_TIE_RTOL = 1e-9


def _as_finite_vector(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name}: expected a sequence of numbers, got {values!r}") from error
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite, got {array.tolist()}")
    return array


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof = 1) of ``n`` values; ``std`` is None for n < 2."""

    mean: float | None
    std: float | None
    n: int
    values: tuple[float, ...] = field(default=())

    def format(self, digits: int = 4) -> str:
        """``"mean ± std"``; ``"mean (n=1)"`` for one value; ``"—"`` when there is none."""
        if self.n == 0 or self.mean is None:
            return "—"
        if self.std is None:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation (ddof = 1) of finite values (SPEC-free helper)."""
    array = _as_finite_vector(list(values), "values")
    n = int(array.size)
    if n == 0:
        return Summary(None, None, 0, ())
    mean = float(array.mean())
    std = float(array.std(ddof=1)) if n >= 2 else None
    return Summary(mean, std, n, tuple(float(v) for v in array))


def _incomplete_beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1.

    Uses the continued fraction on whichever of I_x(a, b) and 1 − I_{1−x}(b, a) converges
    fast (Numerical Recipes §6.4), with log-gamma for the prefactor.
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"regularized_incomplete_beta: a and b must be > 0, got a={a}, b={b}")
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"regularized_incomplete_beta: x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return float(x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _incomplete_beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _incomplete_beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if not df > 0:
        raise ValueError(f"student_t_two_sided_p: df must be > 0, got {df}")
    if math.isnan(t):
        raise ValueError("student_t_two_sided_p: t is NaN")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * student_t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with ``df`` degrees of freedom: the t with
    P(T ≤ t) = q, by bisection on :func:`student_t_cdf` (monotone, so it always converges;
    60+ halvings of a bracket found by doubling reach full double precision)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"student_t_ppf: q must be in (0, 1), got {q}")
    if not df > 0:
        raise ValueError(f"student_t_ppf: df must be > 0, got {df}")
    if q == 0.5:
        return 0.0
    if q < 0.5:  # symmetry: t_q = −t_{1−q}
        return -student_t_ppf(1.0 - q, df)
    high = 1.0
    while student_t_cdf(high, df) < q:
        high *= 2.0
    low = 0.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < q:
            low = middle
        else:
            high = middle
        if high - low <= 1e-15 * max(1.0, high):
            break
    return 0.5 * (low + high)


def t_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` t-interval of the mean of ``differences`` (n ≥ 2, SPEC §3.9):
    mean(d) ± t_{(1+level)/2, n−1} · std(d, ddof=1) / √n."""
    array = _as_finite_vector(list(differences), "differences")
    if array.size < 2:
        raise ValueError(f"t_interval: differences needs at least 2 values, got {array.size}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_interval: level must be in (0, 1), got {level}")
    n = int(array.size)
    mean = float(array.mean())
    half = student_t_ppf(0.5 * (1.0 + level), n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control), same order as given.

    With the m p-values sorted ascending p_(1) ≤ … ≤ p_(m):
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). A None entry (no t-test: one seed or
    zero variance) stays None but still counts in m, so the other heads are not adjusted
    less because one comparison had no test (conservative, SPEC §3.9).
    """
    values = list(p_values)
    m = len(values)
    for index, p in enumerate(values):
        if p is not None and not (0.0 <= float(p) <= 1.0):
            raise ValueError(f"holm_adjust: p_values[{index}] must be in [0, 1] or None, got {p}")
    order = sorted((i for i, p in enumerate(values) if p is not None), key=lambda i: float(values[i]))
    adjusted: list[float | None] = [None] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(values[index])))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing paired values a_i and b_i through d_i = a_i − b_i.

    ``t_p_value`` is the two-sided paired t-test p-value (None for n < 2 and under zero
    variance); ``ci_low``/``ci_high`` the 95 % t-interval of the mean difference (None for
    n < 2; both equal the mean under zero variance); ``zero_variance`` True when n ≥ 2 and
    every d_i is identical (SPEC §3.9: reported with the sign-flip p only);
    ``sign_flip_p`` the exact sign-flip permutation p-value (None for n = 0);
    ``sign_flip_exact`` False when n > MAX_EXACT_SIGN_FLIP (Monte Carlo instead).
    """

    differences: tuple[float, ...]
    mean_difference: float | None
    std_difference: float | None
    n: int
    t_statistic: float | None
    df: int | None
    t_p_value: float | None
    sign_flip_p: float | None
    sign_flip_exact: bool = True
    ci_low: float | None = None
    ci_high: float | None = None
    zero_variance: bool = False


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired comparison of ``a`` against ``b`` (same length, paired by position).

    d = a − b; t = mean(d) / (std(d, ddof=1) / √n), df = n − 1, two-sided p; 95 % interval
    mean(d) ± t_{0.975, df} · std(d) / √n (SPEC §3.9). Degenerate cases are defined rather
    than NaN: if every d_i is identical (zero variance) there is no t-test (t and p None,
    ``zero_variance`` True, the interval collapses to the mean). The exact sign-flip
    p-value of the same differences is always included.
    """
    first = _as_finite_vector(list(a), "a")
    second = _as_finite_vector(list(b), "b")
    if first.shape != second.shape:
        raise ValueError(
            f"paired_t_test: a and b must have the same length, got {first.size} and {second.size}"
        )
    differences = first - second
    n = int(differences.size)
    if n == 0:
        return PairedTest((), None, None, 0, None, None, None, None)
    mean = float(differences.mean())
    flip_p, exact = _sign_flip(differences)
    if n < 2:
        return PairedTest(tuple(differences.tolist()), mean, None, n, None, None, None, flip_p, exact)
    std = float(differences.std(ddof=1))
    df = n - 1
    # Identical differences up to float noise (the same metric difference computed on
    # different seeds may differ in the last bits): the t statistic would be ±∞ or 0/0.
    if std <= 1e-12 * max(1.0, abs(mean)):
        return PairedTest(tuple(differences.tolist()), mean, 0.0, n, None, df, None, flip_p, exact,
                          ci_low=mean, ci_high=mean, zero_variance=True)
    t_stat = mean / (std / math.sqrt(n))
    p_value = student_t_two_sided_p(t_stat, df)
    low, high = t_interval(differences)
    return PairedTest(tuple(differences.tolist()), mean, std, n, t_stat, df, p_value, flip_p, exact,
                      ci_low=low, ci_high=high)


def _sign_flip(differences: np.ndarray) -> tuple[float | None, bool]:
    n = int(differences.size)
    if n == 0:
        return None, True
    observed = abs(float(differences.sum()))
    tolerance = _TIE_RTOL * max(1.0, float(np.abs(differences).sum()))
    if n <= MAX_EXACT_SIGN_FLIP:
        # Row j of the sign matrix is the binary expansion of j mapped to ±1.
        patterns = np.arange(2**n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((patterns >> np.arange(n, dtype=np.int64)) & 1)
        flipped = np.abs(signs @ differences)
        return float(np.mean(flipped >= observed - tolerance)), True
    generator = np.random.default_rng(0)
    signs = generator.choice([-1.0, 1.0], size=(_SIGN_FLIP_MC_DRAWS, n))
    flipped = np.abs(signs @ differences)
    # +1 in numerator and denominator: the observed pattern is one of the draws' population.
    return float((np.sum(flipped >= observed - tolerance) + 1) / (_SIGN_FLIP_MC_DRAWS + 1)), False


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Two-sided sign-flip permutation p-value of paired differences (exact for n ≤ 20).

    p = #{s ∈ {±1}^n : |Σ s_i d_i| ≥ |Σ d_i|} / 2^n (sums and means give the same order).
    """
    array = _as_finite_vector(list(differences), "differences")
    if array.size == 0:
        raise ValueError("sign_flip_p_value: differences must not be empty")
    p_value, _ = _sign_flip(array)
    return float(p_value)
