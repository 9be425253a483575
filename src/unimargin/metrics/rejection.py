"""Rejection scores for open-set prediction (SPEC §2.9).

A rejection score r_i is one number per sample; open-set prediction accepts sample i
(label argmax_k S[i, k]) iff r_i > t and rejects it (label −1) otherwise. Higher r means
"more like a known class". The same threshold machinery (SPEC §3.7 rejection metrics,
§3.8 calibration) applies to every score.

- ``max_score`` (default): r_i = max_k S[i, k], in the units of the head's scores (so the
  learned threshold of bce-u / bce-d is directly comparable to it).
- ``centroid_cosine``: r_i = max_k cos(f_i, μ_k) ∈ [−1, 1], μ_k = mean of the *training*
  features of class k (:func:`class_means`), stored with the model. A feature-space score:
  the one compact, well-separated features should help.
- ``energy`` (CE heads, SPEC §2.9): r_i = logsumexp_k S[i, k], the negative free energy of
  the softmax over the logits S (Liu et al. 2020). It is defined for the heads trained with
  softmax cross-entropy (softmax, center, lmdl, normface, cosface, arcface:
  ``head.softmax_scores`` is True). The sigmoid heads (bce-u, bce-d) score every class by
  an independent sigmoid: no softmax, no free energy, so SPEC §2.9 gives them no energy
  score — :func:`check_score_for_head` refuses it and the open-set evaluation records None
  (the formula would only be a smooth maximum, max_k S ≤ lse ≤ max_k S + log K, i.e.
  ``max_score`` blurred).

Thresholds on a score (shared by the open-set evaluation and :mod:`unimargin.deploy.
calibrate`): :func:`threshold_candidates`, :func:`threshold_for_reject_rate`,
:func:`threshold_for_accept_rate` are exact (sorting, no grid). :func:`rejection_metrics`
gives the SPEC §3.7 rejection figures of any score at a threshold.

All functions are vectorised (no loops over samples or classes) and return float64.
"""

from __future__ import annotations

import torch

from . import _ranking
from ._checks import check_labels, check_matrix, check_nonempty, check_vector

REJECTION_SCORES = ("max_score", "centroid_cosine", "energy")

# feature-space scores need the features and the training class means
_NEEDS_FEATURES = {"centroid_cosine"}


def needs_features(name: str) -> bool:
    """True when ``name`` is computed from features (and class means), not from scores."""
    check_rejection_score(name)
    return name in _NEEDS_FEATURES


def check_rejection_score(name) -> str:
    """Return ``name`` if it is a known rejection score, else raise ValueError listing them."""
    if name not in REJECTION_SCORES:
        raise ValueError(f"rejection_score must be one of {', '.join(REJECTION_SCORES)}; "
                         f"got {name!r}")
    return name


def score_defined(name: str, head) -> bool:
    """False when SPEC §2.9 defines no score ``name`` for ``head``: ``energy`` needs softmax
    logits (``head.softmax_scores``; the bce heads have none)."""
    check_rejection_score(name)
    return name != "energy" or bool(head.softmax_scores)


def check_score_for_head(name: str, head) -> str:
    """``name`` when :func:`score_defined` for ``head``, else ValueError saying why."""
    if not score_defined(name, head):
        raise ValueError(f"rejection score {name!r} is defined for heads trained with softmax "
                         f"cross-entropy only (SPEC §2.9); head {head.name!r} scores classes by "
                         f"independent sigmoids: use max_score or centroid_cosine")
    return name


def class_means(features, labels, num_classes: int) -> torch.Tensor:
    """μ_k = mean of the features of class k, a (K, d) float64 tensor (SPEC §2.9).

    One ``index_add_`` over the samples. Every class must have at least one sample (the
    mean of no sample is undefined; an empty class raises ValueError naming it).
    """
    f = check_matrix(features, "features")
    check_nonempty(f.shape[0], "features")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    y = check_labels(labels, f.shape[0], num_classes, data_name="features")
    f = f.to(torch.float64)
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64).index_add_(0, y, f)
    counts = torch.bincount(y, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"class_means: class(es) {empty} have no sample, their mean is "
                         f"undefined (num_classes={num_classes})")
    return sums / counts[:, None].to(torch.float64)


def rejection_score(name: str, scores=None, features=None, class_means=None) -> torch.Tensor:
    """The rejection score ``name`` of every sample, an (N,) float64 tensor (SPEC §2.9).

    - ``max_score``: max_k S[i, k]; needs ``scores`` (N, K).
    - ``centroid_cosine``: max_k cos(f_i, μ_k) with f̂ = f/max(‖f‖, 1e-12) (the guard of
      SPEC §1); needs ``features`` (N, d) and ``class_means`` (K, d), from
      :func:`class_means` on the training features.
    - ``energy``: logsumexp_k S[i, k]; needs ``scores``.
    """
    check_rejection_score(name)
    if name == "centroid_cosine":
        if features is None or class_means is None:
            raise ValueError("rejection_score 'centroid_cosine' needs features and class_means "
                             "(the training class means, see unimargin.metrics.class_means)")
        f = check_matrix(features, "features").to(torch.float64)
        mu = check_matrix(class_means, "class_means").to(torch.float64)
        if mu.shape[1] != f.shape[1]:
            raise ValueError(f"class_means has width {mu.shape[1]} but features have width "
                             f"{f.shape[1]}")
        return rejection_score_unchecked(name, None, f, mu)
    if scores is None:
        raise ValueError(f"rejection_score {name!r} needs scores (N, K)")
    s = check_matrix(scores, "scores").to(torch.float64)
    return rejection_score_unchecked(name, s, None, None)


def rejection_score_unchecked(name: str, scores, features, class_means) -> torch.Tensor:
    """The formulas of :func:`rejection_score` without validation, in the input dtype.

    Pure tensor operations, so the exported inference graph (unimargin.deploy.export)
    traces exactly this code: one home for each formula.
    """
    if name == "centroid_cosine":
        normalize = torch.nn.functional.normalize
        cos = normalize(features, dim=1, eps=1e-12) @ normalize(class_means, dim=1, eps=1e-12).T
        return cos.amax(dim=1)  # fine for N = 0: the reduced dimension is K
    if name == "max_score":
        return scores.amax(dim=1)
    if name == "energy":
        return torch.logsumexp(scores, dim=1)
    raise ValueError(f"rejection_score must be one of {', '.join(REJECTION_SCORES)}; got {name!r}")


# --------------------------------------------------------------------------- thresholds
def threshold_candidates(*values: torch.Tensor) -> torch.Tensor:
    """Every threshold that can matter for decisions "accept iff r > t" on ``values``:
    midpoints of consecutive distinct finite values, plus (min − 1) and (max + 1); a
    single 0 when there is no finite value. A candidate never equals a value, so a float32
    recomputation of a score (ONNX) cannot flip a decision that sat on the boundary, and
    every t in the same open range between values gives identical figures."""
    v = torch.cat([torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in values])
    v = torch.unique(v[torch.isfinite(v)])  # sorted
    if v.numel() == 0:
        return torch.zeros(1, dtype=torch.float64)
    return torch.cat([v[:1] - 1.0, 0.5 * (v[1:] + v[:-1]), v[-1:] + 1.0])


def _check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _count_at_most(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """#{i : v_i ≤ t} for each t, int64 (one sort, one binary search per candidate)."""
    ordered = torch.sort(values.to(torch.float64).reshape(-1)).values
    return torch.searchsorted(ordered, t, right=True)


def threshold_for_reject_rate(values, rate: float, candidates=None) -> float | None:
    """The largest candidate t with mean_i 1[v_i ≤ t] ≤ ``rate``: the strictest threshold
    that rejects at most that fraction of ``values`` (e.g. FRR ≤ β of SPEC §3.8, with
    v = p_i). −∞ entries are always rejected; None when no candidate meets the rate.
    ``candidates`` default :func:`threshold_candidates` of ``values``."""
    rate = _check_rate(rate)
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0:
        raise ValueError("threshold_for_reject_rate: values is empty")
    cand = threshold_candidates(v) if candidates is None else candidates.to(torch.float64)
    # rates as exact count / n (1 − fraction would round 60/6000 above 0.01)
    rate_at = _count_at_most(v, cand).to(torch.float64) / v.numel()
    feasible = torch.nonzero(rate_at <= rate).flatten()
    return None if feasible.numel() == 0 else float(cand[int(feasible[-1])])


def threshold_for_accept_rate(values, rate: float, candidates=None) -> float:
    """The smallest candidate t with mean_i 1[v_i ≥ t] ≤ ``rate``: the most lenient
    threshold that accepts at most that fraction of ``values`` (FAR ≤ α of SPEC §3.8, with
    v = n_i or the unknown-class scores). Candidates never equal a value, so ≥ and > agree;
    the top candidate (max + 1) always qualifies."""
    rate = _check_rate(rate)
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0:
        raise ValueError("threshold_for_accept_rate: values is empty")
    cand = threshold_candidates(v) if candidates is None else candidates.to(torch.float64)
    rate_at = (v.numel() - _count_at_most(v, cand)).to(torch.float64) / v.numel()
    feasible = torch.nonzero(rate_at <= rate).flatten()
    return float(cand[int(feasible[0])])


# The open-set evaluation's rule for scores other than max_score (which keeps SPEC §2.9's
# learned threshold / validation t*): reject at most 5% of the known-class validation
# samples — the "95% TPR" operating point of out-of-distribution detection.
OPEN_SET_KNOWN_REJECT_RATE = 0.05


# --------------------------------------------------------------------------- figures
def rejection_metrics(known_r, known_correct, unknown_r, threshold=None) -> dict:
    """Unknown-class rejection by a score r (SPEC §3.7 with any §2.9 score).

    Known sample i is accepted iff r_i > t and then counts as correct iff its closed-set
    prediction is (``known_correct``: p_i > n_i, ties wrong as SW); unknown sample u is
    rejected iff r_u ≤ t.
    - ``auroc``: AUC of r over known (positive) vs unknown (negative) samples, exact with
      ties counted ½ (threshold-free).
    - ``open_set_accuracy`` = (#known accepted and correct + #unknown rejected) / (#known +
      #unknown); ``known_accept_rate``, ``unknown_reject_rate``; ``n_known``, ``n_unknown``.
    With ``threshold=None`` the three threshold figures are None.
    """
    kr = check_vector(known_r, "known_r").to(torch.float64)
    ur = check_vector(unknown_r, "unknown_r").to(torch.float64)
    check_nonempty(kr.numel(), "known_r")
    check_nonempty(ur.numel(), "unknown_r")
    correct = torch.as_tensor(known_correct).reshape(-1)
    if correct.dtype != torch.bool or correct.numel() != kr.numel():
        raise ValueError(f"known_correct must be a bool tensor of length {kr.numel()} (one per "
                         f"known sample), got dtype {correct.dtype} and length {correct.numel()}")
    out = {"auroc": _ranking.auc(kr, ur), "open_set_accuracy": None, "known_accept_rate": None,
           "unknown_reject_rate": None, "n_known": int(kr.numel()), "n_unknown": int(ur.numel())}
    if threshold is not None:
        t = float(threshold)
        if t != t or t in (float("inf"), float("-inf")):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        accepted = kr > t
        rejected = ur <= t
        hits = int((accepted & correct).sum()) + int(rejected.sum())
        out.update(open_set_accuracy=hits / (kr.numel() + ur.numel()),
                   known_accept_rate=int(accepted.sum()) / kr.numel(),
                   unknown_reject_rate=int(rejected.sum()) / ur.numel())
    return out


__all__ = ["REJECTION_SCORES", "check_rejection_score", "needs_features", "score_defined",
           "check_score_for_head", "class_means", "rejection_score", "rejection_score_unchecked",
           "threshold_candidates", "threshold_for_reject_rate", "threshold_for_accept_rate",
           "OPEN_SET_KNOWN_REJECT_RATE", "rejection_metrics"]
