"""Sample-wise, class-wise and uniform accuracy, the optimal unified threshold t*, and the
positive/negative separability AUC (SPEC §1, §3.1–§3.5).

Everything here is exact (no grid search) and vectorised: one pass over the score matrix to
extract the positive and hardest-negative metrics, then sorts and cumulative sums over the
2N interval endpoints, O(N·K + N log N).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .._native import rank_kernel
from . import _ranking
from ._checks import as_tensor, check_labels, check_matrix, check_nonempty

# Rows per block when masking the true-class column: a reused buffer of this many rows
# stays in cache, which is several times faster than masking a full copy of the matrix.
_ROW_BLOCK = 4096


def _check_scores_labels(scores, labels):
    scores = check_matrix(scores, "scores", min_cols=2)
    check_nonempty(scores.shape[0], "scores")
    labels = check_labels(labels, scores.shape[0], scores.shape[1])
    return scores, labels


def _positive_negative_unchecked(scores: torch.Tensor, labels: torch.Tensor):
    p = scores.gather(1, labels[:, None]).squeeze(1)
    n = torch.empty_like(p)
    buf = torch.empty((min(_ROW_BLOCK, scores.shape[0]), scores.shape[1]), dtype=scores.dtype)
    for start in range(0, scores.shape[0], _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, scores.shape[0])
        block = buf[: stop - start]
        block.copy_(scores[start:stop])
        block.scatter_(1, labels[start:stop, None], float("-inf"))
        torch.amax(block, dim=1, out=n[start:stop])
    return p, n


def positive_negative(scores, labels):
    """Positive and hardest-negative class metrics of every sample (SPEC §1).

    p_i = S[i, y_i], n_i = max_{k≠y_i} S[i, k]. ``scores`` is (N, K) with K >= 2 and
    finite values, ``labels`` (N,) integer class indices. Returns two (N,) tensors in the
    dtype of ``scores``.
    """
    scores, labels = _check_scores_labels(scores, labels)
    return _positive_negative_unchecked(scores, labels)


@dataclass
class UniformResult:
    """Result of :func:`uniform_accuracy` (plain Python numbers, SPEC §3.1–§3.4).

    - ``sw``: sample-wise (top-1) accuracy, ties wrong (§3.1).
    - ``cw``: class-wise uniform accuracy, one optimal threshold per class (§3.3).
    - ``uni``: uniform accuracy with the best single threshold (§3.2).
    - ``threshold``: t*, the midpoint of the lowest optimal range of t. When no sample is
      correct (Uni = 0) every t is optimal; the lowest range is (−inf, smallest p or n),
      and t* = (smallest p or n) − 1 is reported.
    - ``class_thresholds``: list of K entries, t*_c of each class by the same rule, or
      None for a class with no sample or with no correctly ranked sample (p_i <= n_i for
      all its samples: no threshold makes any of them correct).
    - ``n``: number of samples.
    - With a given threshold t (§3.4): ``threshold_given`` (t), ``uni_at_threshold``
      (Uni(t)), ``uni_loss`` (Uni − Uni(t) >= 0), ``threshold_distance`` (|t − t*|),
      ``threshold_distance_rel`` (|t − t*| / (median p − median n); None when that spread
      is not positive).
    """

    sw: float
    cw: float
    uni: float
    threshold: float
    class_thresholds: list
    n: int
    threshold_given: float | None = None
    uni_at_threshold: float | None = None
    uni_loss: float | None = None
    threshold_distance: float | None = None
    threshold_distance_rel: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _median(x: torch.Tensor) -> float:
    """Median with the two middle values averaged for even counts (numpy's convention)."""
    s = torch.sort(x).values
    m = s.numel()
    return 0.5 * (float(s[(m - 1) // 2]) + float(s[m // 2]))


def _uniform_from_pn(p: torch.Tensor, n: torch.Tensor, labels: torch.Tensor,
                     num_classes: int, threshold=None) -> UniformResult:
    """Core of :func:`uniform_accuracy` on the per-sample (p_i, n_i, y_i) (SPEC §3.1–§3.4)."""
    p = p.to(torch.float64)
    n = n.to(torch.float64)
    count = p.numel()
    correct = p > n
    n_correct = int(correct.sum())
    sw = n_correct / count

    # Each correct sample is the open interval (n_i, p_i): −1 at p_i, +1 at n_i. Ends are
    # concatenated before starts and the sort is stable, so at equal values an interval
    # ends before another starts (open intervals do not overlap at a shared endpoint).
    p_c, n_c = p.masked_select(correct), n.masked_select(correct)
    y_c = labels.masked_select(correct)
    class_thresholds: list = [None] * num_classes
    if n_correct == 0:
        uni_count = 0
        t_star = float(torch.minimum(p.min(), n.min())) - 1.0
        cw_count = 0
    else:
        values = torch.cat([p_c, n_c])
        # event j is an end iff j < n_correct (position in the concatenation)
        order = torch.sort(_ranking.orderable_int64(values), stable=True).indices
        d_sorted = torch.where(order < n_correct, -1, 1)
        running = torch.cumsum(d_sorted, 0)
        # First maximum = lowest optimal range; it is reached just after a start, and the
        # next event is an end at a strictly larger value, so the range is non-empty.
        best = int(torch.argmax(running))
        uni_count = int(running[best])
        ends = values.index_select(0, order[best:best + 2])
        t_star = 0.5 * (float(ends[0]) + float(ends[1]))

        # Class-wise: stable re-sort of the same events by class gives (class, value, type)
        # order. Every class's +1/−1 events balance, so the global running sum restarts
        # from 0 at each class boundary and equals the per-class running count.
        cls = torch.cat([y_c, y_c]).index_select(0, order)
        cls_sorted, order_c = torch.sort(cls, stable=True)
        running_c = torch.cumsum(d_sorted.index_select(0, order_c), 0)
        class_max = torch.zeros(num_classes, dtype=running_c.dtype).scatter_reduce(
            0, cls_sorted, running_c, reduce="amax", include_self=True)
        cw_count = int(class_max.sum())
        at_max = running_c == class_max.index_select(0, cls_sorted)
        never = running_c.numel()
        positions = torch.where(at_max, torch.arange(never), never)
        first = torch.full((num_classes,), never, dtype=torch.long).scatter_reduce(
            0, cls_sorted, positions, reduce="amin", include_self=True)
        has = torch.nonzero(class_max > 0).flatten()
        idx = first.index_select(0, has)
        # event index (in `values`) of each class's optimal start and of the next event
        lo = values.index_select(0, order.index_select(0, order_c.index_select(0, idx)))
        hi = values.index_select(0, order.index_select(0, order_c.index_select(0, idx + 1)))
        for c, t in zip(has.tolist(), (0.5 * (lo + hi)).tolist()):
            class_thresholds[c] = t

    result = UniformResult(
        sw=sw, cw=cw_count / count, uni=uni_count / count, threshold=t_star,
        class_thresholds=class_thresholds, n=count,
    )
    if threshold is not None:
        t = _as_threshold(threshold)
        at_t = int(((n < t) & (t < p)).sum()) / count
        spread = _median(p) - _median(n)
        dist = abs(t - t_star)
        result.threshold_given = t
        result.uni_at_threshold = at_t
        result.uni_loss = result.uni - at_t
        result.threshold_distance = dist
        result.threshold_distance_rel = dist / spread if spread > 0 else None
    return result


def _as_threshold(threshold) -> float:
    t = as_tensor(threshold, "threshold")
    if t.numel() != 1:
        raise ValueError(f"threshold must be a scalar, got shape {tuple(t.shape)}")
    t = float(t.reshape(()))
    if t != t or t in (float("inf"), float("-inf")):
        raise ValueError(f"threshold must be finite, got {t}")
    return t


def uniform_accuracy(scores, labels, threshold=None) -> UniformResult:
    """SW, CW, Uni, the optimal unified threshold t* and per-class thresholds (SPEC §3.1–§3.4).

    - SW = mean_i 1[p_i > n_i] (ties wrong).
    - Uni(t) = mean_i 1[n_i < t < p_i];  Uni = max_t Uni(t);  t* = midpoint of the lowest
      optimal range (exact endpoint sweep, §3.2).
    - CW = (1/N) Σ_c max_t #{i : y_i = c, n_i < t < p_i} (§3.3).  SW >= CW >= Uni.
    - With ``threshold`` t (e.g. a head's learned bias, §3.4): Uni(t), Uni − Uni(t),
      |t − t*| and |t − t*| / (median p − median n).

    ``scores``: (N, K) finite, K >= 2 (SPEC §1 class metrics); ``labels``: (N,) integer in
    [0, K). Cost: one blocked pass over the scores plus two sorts of the <= 2N endpoints.
    """
    scores, labels = _check_scores_labels(scores, labels)
    p, n = _positive_negative_unchecked(scores, labels)
    return _uniform_from_pn(p, n, labels, scores.shape[1], threshold)


def separability_auc(scores, labels) -> float:
    """AUC of all positive metrics {p_i} vs all negative metrics {S[i,k] : k ≠ y_i} (SPEC §3.5).

    The probability that a random positive exceeds a random negative (ties count ½), i.e.
    how well a single global threshold separates the two sets; 1.0 = a perfect unified
    threshold exists. Exact (integer counts), no N×K pair or mask temporary: one read of the
    scores by the compiled rank kernel, else a numpy sort (see :func:`_separability_unchecked`).
    Higher is better.
    """
    scores, labels = _check_scores_labels(scores, labels)
    return _separability_unchecked(scores, labels)


_KEY_BLOCK = 1 << 16   # elements per block: the temporaries of a block stay in cache


def _order_keys(values: np.ndarray) -> np.ndarray:
    """Flat integer keys with the order and ties of the float ``values`` (float32 -> int32,
    else int64): IEEE bit patterns of non-negative floats sort as integers, negative ones
    reversed, so their magnitude bits are flipped (x ^ ((x >> 31) & 0x7FF...F)); −0.0 is
    first made +0.0 so the two zeros tie. Sorting these integers is several times faster
    than sorting the floats. Written block by block into one output array: the only large
    allocation is that output (fresh large temporaries cost page faults on every call)."""
    if values.dtype == np.float32:
        ints, shift, mask = np.int32, 31, np.int32(0x7FFFFFFF)
    else:
        values = values.astype(np.float64, copy=False)
        ints, shift, mask = np.int64, 63, np.int64(0x7FFFFFFFFFFFFFFF)
    flat = values.reshape(-1)
    zero = values.dtype.type(0.0)
    out = np.empty(flat.size, dtype=ints)
    for start in range(0, flat.size, _KEY_BLOCK):
        bits = (flat[start:start + _KEY_BLOCK] + zero).view(ints)   # + 0.0 maps −0.0 to +0.0
        flip = bits >> shift                                         # −1 for negatives, else 0
        flip &= mask
        np.bitwise_xor(bits, flip, out=out[start:start + _KEY_BLOCK])
    return out


def _separability_unchecked(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann–Whitney U of positives vs negatives without forming the negatives (SPEC §3.5).

    Every negative is a score that is not a positive, so with the positives p_i and all
    N·K scores x: 2U = Σ_x (2·#{p > x} + #{p = x}) − N², the N² being the positives paired
    with each other and themselves (every ordered pair counts 2, 0 or 1+1). The compiled
    kernel (:mod:`unimargin._native.rank_kernel`: one read of the scores, each ranked among
    the sorted positives through a monotone bucket table) gives the sum; without it the
    numpy sort :func:`_separability_numpy` runs. Both count exactly in int64, so they
    return the identical float. AUC = 2U / (2 · N · N(K − 1)).
    """
    n, k = scores.shape
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.to(torch.float64)                   # float16/bfloat16: exact in float64
    values = scores.detach().cpu().numpy()
    if not rank_kernel.usable(values, n):
        return _separability_numpy(scores, labels)
    # −0.0 + 0.0 = +0.0: the kernel compares floats, where the two zeros are equal anyway
    pos = values[np.arange(n), labels.cpu().numpy()] + values.dtype.type(0.0)
    pos.sort()
    twice_u = rank_kernel.count(values, pos) - n * n
    return twice_u / (2.0 * n * (n * (k - 1)))


def _separability_numpy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann–Whitney U of positives vs negatives by one sort of the order keys (the reference
    and fallback of :func:`_separability_unchecked`).

    Every negative is a score that is not a positive, so for a positive p_i
    #{neg < p_i} = #{all scores < p_i} − #{positives < p_i}, and likewise for ties.
    One sort of the N·K order keys (in place, so the only large temporary is that one
    copy of the scores) and one sort of the N positives; both counts come from binary
    searches of the sorted positives (sorted queries walk the arrays forwards):
    2U = Σ_i 2·#{neg < p_i} + #{neg = p_i}, AUC = U / (N · N(K − 1)). Counts are int64.
    """
    n, k = scores.shape
    # keys of all scores; the positives' keys are read from it before it is sorted in place
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.to(torch.float64)                   # float16/bfloat16: exact in float64
    all_keys = _order_keys(scores.detach().cpu().numpy())
    pos = np.sort(all_keys[np.arange(n) * k + labels.cpu().numpy()])
    all_keys.sort()
    below_all = np.searchsorted(all_keys, pos, side="left")
    upto_all = np.searchsorted(all_keys, pos, side="right")
    below_pos = np.searchsorted(pos, pos, side="left")
    upto_pos = np.searchsorted(pos, pos, side="right")
    below = int((below_all - below_pos).sum(dtype=np.int64))
    equal = int(((upto_all - below_all) - (upto_pos - below_pos)).sum(dtype=np.int64))
    return (2 * below + equal) / (2.0 * n * (n * (k - 1)))


__all__ = ["UniformResult", "positive_negative", "uniform_accuracy", "separability_auc"]
