"""Open-set verification and unknown-class rejection (SPEC §3.7).

Verification compares pairs of features by cosine similarity; a pair is *genuine* when both
samples share a class, an *impostor* pair otherwise. Memory is bounded, never N×N at once:

- N(N−1)/2 <= ``max_pairs``: every unordered pair i < j is used (exact). Similarities are
  computed block by block (``block_rows`` rows of the upper triangle at a time) and only
  the pair values are kept.
- More pairs than ``max_pairs``: ``max_pairs`` pairs are drawn uniformly (with replacement)
  from all pairs i ≠ j by a ``torch.Generator`` seeded with ``seed``, so the result is
  deterministic for a given (data order, seed); the output says ``sampled=True``.
"""

from __future__ import annotations

import torch

from . import _ranking
from ._checks import check_labels, check_matrix, check_nonempty
from .rejection import rejection_metrics
from .uniform import _as_threshold, _positive_negative_unchecked

DEFAULT_MAX_PAIRS = 2_000_000
FAR_LEVELS = (1e-1, 1e-2, 1e-3)
_EPS = 1e-12


def _far_key(far: float) -> str:
    return f"tar_at_far_{far:.0e}".replace("e-0", "e-")


# The fields :func:`verification` returns, in order (for "unavailable" results).
VERIFICATION_FIELDS = ("roc_auc", "eer", *(_far_key(f) for f in FAR_LEVELS), "pair_accuracy",
                       "pair_threshold", "n_genuine", "n_impostor", "sampled")


def _unit_rows(f: torch.Tensor) -> torch.Tensor:
    # zero vectors keep norm eps and therefore cosine 0 with everything (documented)
    return f / f.norm(dim=1, keepdim=True).clamp_min(_EPS)


def _all_pairs(f_hat, y, block_rows):
    n = f_hat.shape[0]
    genuine, impostor = [], []
    for start in range(0, n - 1, block_rows):
        stop = min(start + block_rows, n - 1)
        sims = f_hat[start:stop] @ f_hat[start:].T          # rows i, columns j >= start
        rows = torch.arange(start, stop)[:, None]
        cols = torch.arange(start, n)[None, :]
        upper = cols > rows                                  # each unordered pair once
        same = y[start:stop, None] == y[None, start:]
        genuine.append(sims.masked_select(upper & same))
        impostor.append(sims.masked_select(upper & ~same))
    return torch.cat(genuine), torch.cat(impostor)


def _sampled_pairs(f_hat, y, max_pairs, seed, block_pairs):
    n = f_hat.shape[0]
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (max_pairs,), generator=gen)
    j = torch.randint(0, n - 1, (max_pairs,), generator=gen)
    j = j + (j >= i).long()                                 # uniform over j ≠ i
    # Visiting pairs in order of i makes the row gathers of f_hat[i] cache-friendly; the
    # multiset of pairs (all the metrics depend on) is unchanged.
    i, by_i = torch.sort(i)
    j = j.index_select(0, by_i)
    sims = torch.empty(max_pairs, dtype=f_hat.dtype)
    for start in range(0, max_pairs, block_pairs):
        stop = min(start + block_pairs, max_pairs)
        sims[start:stop] = torch.linalg.vecdot(f_hat.index_select(0, i[start:stop]),
                                               f_hat.index_select(0, j[start:stop]))
    same = y.index_select(0, i) == y.index_select(0, j)
    return sims.masked_select(same), sims.masked_select(~same)


def pair_similarities(features, labels, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0,
                      block_rows: int | None = None):
    """(genuine, impostor, sampled): cosine similarities of genuine and impostor pairs.

    See the module docstring for the exact / sampled rule. Computed in float64.
    """
    f = check_matrix(features, "features")
    y = check_labels(labels, f.shape[0], None, data_name="features")
    if f.shape[0] < 2:
        raise ValueError(f"verification needs at least 2 samples, got {f.shape[0]}")
    if int(max_pairs) < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    n = f.shape[0]
    f_hat = _unit_rows(f.to(torch.float64))
    total = n * (n - 1) // 2
    if total <= max_pairs:
        # ~4M similarities per block keeps the working set small whatever N is
        rows = block_rows or max(1, min(n, 4_000_000 // n))
        genuine, impostor = _all_pairs(f_hat, y, rows)
        sampled = False
    else:
        # small blocks keep the gathered rows in cache (measured: 64k-pair blocks ~5x slower)
        genuine, impostor = _sampled_pairs(f_hat, y, int(max_pairs), int(seed), 1024)
        sampled = True
    return genuine, impostor, sampled


def verification(features, labels, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0,
                 block_rows: int | None = None) -> dict:
    """Pair verification by cosine similarity (SPEC §3.7), typically on unknown classes.

    Accept a pair iff cos(f_i, f_j) > thr. Returns plain numbers:
    - ``roc_auc``: P(genuine sim > impostor sim) + ½ P(tie), exact (higher better).
    - ``eer``: equal error rate, where the linearly interpolated ROC meets FAR = FRR
      (lower better).
    - ``tar_at_far_1e-1``, ``tar_at_far_1e-2``, ``tar_at_far_1e-3``: largest true accept
      rate with false accept rate <= FAR; None when n_impostor·FAR < 1 (higher better).
    - ``pair_accuracy``: best accuracy over all thresholds on all pairs (higher better),
      ``pair_threshold``: that threshold (midpoint between consecutive distinct
      similarities; highest among ties).
    - ``n_genuine``, ``n_impostor``; ``sampled`` (True when pairs were sampled, see module).
    """
    genuine, impostor, sampled = pair_similarities(features, labels, max_pairs, seed, block_rows)
    if genuine.numel() == 0 or impostor.numel() == 0:
        raise ValueError(
            f"verification needs genuine and impostor pairs (labels with at least one class "
            f"of >= 2 samples and at least 2 classes), got {genuine.numel()} genuine and "
            f"{impostor.numel()} impostor pair(s)"
        )
    tp, fp, thresholds = _ranking.roc_counts(genuine, impostor)
    fpr = fp.to(torch.float64) / impostor.numel()
    tpr = tp.to(torch.float64) / genuine.numel()
    acc, thr = _ranking.best_accuracy_from_counts(tp, fp, thresholds, genuine.numel(),
                                                  impostor.numel())
    out = {
        "roc_auc": _ranking.auc_from_counts(tp, fp),
        "eer": _ranking.eer(fpr, tpr),
    }
    for far in FAR_LEVELS:
        out[_far_key(far)] = _ranking.tar_at_far(fpr, tpr, far, impostor.numel())
    out.update({
        "pair_accuracy": acc,
        "pair_threshold": thr,
        "n_genuine": int(genuine.numel()),
        "n_impostor": int(impostor.numel()),
        "sampled": sampled,
    })
    return out


def open_set_rejection(known_scores, known_labels, unknown_scores, threshold) -> dict:
    """Unknown-class rejection with the maximum class metric (SPEC §3.7, §2.9).

    m_i = max_k S[i, k]. A sample is accepted iff m_i > t (``threshold``), then classified
    by argmax (correct iff p_i > n_i, ties wrong, as SW).
    - ``auroc``: AUC of m over known (positive) vs unknown (negative) samples (higher better).
    - ``open_set_accuracy``: (#known accepted and correctly classified + #unknown rejected)
      / (#known + #unknown) (higher better).
    - ``known_accept_rate`` = mean over known of 1[m > t]; ``unknown_reject_rate`` = mean
      over unknown of 1[m <= t] (both higher better). ``n_known``, ``n_unknown``.
    """
    ks = check_matrix(known_scores, "known_scores", min_cols=2)
    check_nonempty(ks.shape[0], "known_scores")
    ky = check_labels(known_labels, ks.shape[0], ks.shape[1], name="known_labels",
                      data_name="known_scores")
    us = check_matrix(unknown_scores, "unknown_scores", min_cols=2)
    check_nonempty(us.shape[0], "unknown_scores")
    if us.shape[1] != ks.shape[1]:
        raise ValueError(
            f"unknown_scores has {us.shape[1]} columns but known_scores has {ks.shape[1]}")
    if threshold is None:
        raise ValueError("threshold is required (e.g. the head's learned threshold or t*)")
    t = _as_threshold(threshold)
    p, n = _positive_negative_unchecked(ks, ky)
    # the figures of any rejection score live in one place (metrics.rejection)
    return rejection_metrics(torch.maximum(p, n), p > n, us.amax(dim=1), t)
