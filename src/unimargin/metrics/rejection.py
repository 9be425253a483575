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
- ``energy``: r_i = logsumexp_k S[i, k]. For the cross-entropy heads (softmax, center,
  lmdl, normface, cosface, arcface) S are the logits, and this is the negative free energy
  of the softmax (Liu et al. 2020). For the sigmoid heads (bce-u: bias-free metrics a_k;
  bce-d: z_k = a_k − b_k) the same formula is a *smooth maximum* of the scores:
  max_k S ≤ energy ≤ max_k S + log K. It is defined (not refused) so every head can be
  compared with every score, but it is not a free energy there, and a learned threshold
  b is not in its units (only in ``max_score``'s).

All functions are vectorised (no loops over samples or classes) and return float64.
"""

from __future__ import annotations

import torch

from ._checks import check_labels, check_matrix, check_nonempty

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


__all__ = ["REJECTION_SCORES", "check_rejection_score", "needs_features", "class_means",
           "rejection_score", "rejection_score_unchecked"]
