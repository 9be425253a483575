"""Training-data conditions (issue 15): a long-tailed training set and symmetric label noise.

Both act on the training split only (validation and test stay clean and balanced), are
seeded, and are pure functions of (labels, parameter, seed); the engine applies them after
the train/validation split and records the parameters in the run's config.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["long_tail_counts", "long_tail_indices", "symmetric_label_noise"]


def _labels(y, name: str = "y") -> np.ndarray:
    arr = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu" or arr.min() < 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of non-negative integer labels, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def long_tail_counts(counts, rho: float) -> np.ndarray:
    """Samples class c keeps: min(n_c, max(1, floor(n_max · rho^(c/(K−1))))) for K classes.

    The usual exponential profile (Cao et al. 2019, LDAM): class 0 keeps n_max, class K−1
    keeps n_max·rho, so rho = n_min / n_max is the imbalance ratio; rho = 1 keeps everything.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"imbalance must be a ratio in (0, 1], got {rho!r}")
    k = len(counts)
    exponent = np.arange(k) / max(k - 1, 1)
    target = np.floor(counts.max() * float(rho) ** exponent + 1e-9).astype(np.int64)  # 1e-9: 100·0.1 is not 9.99…
    return np.minimum(counts, np.maximum(target, 1))


def long_tail_indices(y, rho: float, seed: int) -> np.ndarray:
    """Indices (sorted int64) of a long-tailed subset of ``y``: class c keeps
    ``long_tail_counts(bincount(y), rho)[c]`` of its samples, chosen by a seeded permutation.

    Vectorised like the stratified split: a permutation, a stable sort by label, and each
    sample's rank within its class (kept when rank < quota).
    """
    labels = _labels(y)
    counts = np.bincount(labels)
    keep = long_tail_counts(counts, rho)
    rng = np.random.default_rng(int(seed))
    perm = rng.permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    return np.flatnonzero(rank < keep[labels])


def symmetric_label_noise(y, p: float, num_classes: int, seed: int):
    """Each label is replaced, with probability ``p``, by a class drawn uniformly from the
    K − 1 OTHER classes: y' = (y + U{1..K−1}) mod K, so a flipped label never equals the
    original. Returns the same type as ``y`` (torch int64 tensor or numpy int64 array).
    """
    labels = _labels(y)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0 or math.isnan(p):
        raise ValueError(f"label_noise must be a probability in [0, 1], got {p!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {labels.max()}")
    rng = np.random.default_rng(int(seed))
    flip = rng.random(len(labels)) < float(p)
    shift = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flip, (labels + shift) % num_classes, labels)
    return torch.from_numpy(noisy) if isinstance(y, torch.Tensor) else noisy
