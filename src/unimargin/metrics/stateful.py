"""Stateful twins of the metric functions: ``update`` per batch, ``compute``, ``reset``.

Each meter keeps the exact per-sample values it needs (float64, CPU), so ``compute()``
equals one call of the functional metric on the concatenated data however the data was
batched. Under torch.distributed, ``compute()`` gathers those values from every process
with :func:`unimargin.distributed.all_gather_cat` (exact, no padding duplicates, rank
order) and every process returns the same result. ``compute()`` is a collective: call it
on every process. DESIGN.md, "Distributed".
"""

from __future__ import annotations

import torch

from .. import distributed as dist_utils
from ._checks import check_labels, check_matrix
from .geometry import feature_geometry
from .uniform import (UniformResult, _positive_negative_unchecked, _separability_unchecked,
                      _uniform_from_pn)
from .verification import DEFAULT_MAX_PAIRS, open_set_rejection, verification


def _agree_on_width(local: int | None, what: str) -> int | None:
    """The common column count over processes (None if no process has data)."""
    if not dist_utils.is_distributed():
        return local
    mine = torch.tensor([local] if local is not None else [], dtype=torch.long)
    widths = sorted(set(dist_utils.all_gather_cat(mine).tolist()))
    if len(widths) > 1:
        raise ValueError(f"{what} differ between processes: {widths}")
    return widths[0] if widths else None


def _scores_labels(scores, labels, name="scores", label_name="labels"):
    """As the functional checks, but an empty batch is allowed (uneven DDP shards)."""
    scores = check_matrix(scores, name, min_cols=2)
    labels = check_labels(labels, scores.shape[0], scores.shape[1], name=label_name,
                          data_name=name)
    return scores, labels


class _Meter:
    """Stores named per-sample tensors; 2-D ones share a column count ``width``."""

    _fields: tuple[str, ...] = ()

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._store = {name: [] for name in self._fields}
        self._width: int | None = None

    def _check_width(self, width: int, what: str) -> None:
        if self._width is not None and width != self._width:
            raise ValueError(f"{what}: got {width} columns, earlier batches had {self._width}")
        self._width = width

    def _append(self, **tensors) -> None:
        for name, t in tensors.items():
            self._store[name].append(t.detach().to("cpu").clone())

    def _local(self, name: str, dtype, width: int | None) -> torch.Tensor:
        parts = self._store[name]
        if parts:
            return torch.cat(parts)
        shape = (0,) if width is None else (0, width)
        return torch.empty(shape, dtype=dtype)

    def _gather(self, specs: dict) -> dict:
        """specs: name -> (dtype, is_matrix). Returns the concatenation over processes."""
        width = _agree_on_width(self._width, f"{type(self).__name__} column counts")
        out = {}
        for name, (dtype, is_matrix) in specs.items():
            local = self._local(name, dtype, width if is_matrix else None)
            out[name] = dist_utils.all_gather_cat(local)
        return out, width

    def _require(self, tensor: torch.Tensor, what: str) -> None:
        if tensor.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}.compute(): no {what} yet, call update() first")


class UniformAccuracy(_Meter):
    """Accumulating :func:`~unimargin.metrics.uniform_accuracy` (stores p_i, n_i, y_i only)."""

    _fields = ("p", "n", "labels")

    def __init__(self, threshold=None):
        self.threshold = threshold
        super().__init__()

    def update(self, scores, labels) -> None:
        scores, labels = _scores_labels(scores, labels)
        self._check_width(scores.shape[1], "scores")
        p, n = _positive_negative_unchecked(scores, labels)
        self._append(p=p.to(torch.float64), n=n.to(torch.float64), labels=labels)

    def compute(self) -> UniformResult:
        data, width = self._gather({"p": (torch.float64, False), "n": (torch.float64, False),
                                    "labels": (torch.long, False)})
        self._require(data["p"], "samples")
        return _uniform_from_pn(data["p"], data["n"], data["labels"], width, self.threshold)


class SeparabilityAUC(_Meter):
    """Accumulating :func:`~unimargin.metrics.separability_auc` (SPEC §3.5)."""

    _fields = ("scores", "labels")

    def update(self, scores, labels) -> None:
        scores, labels = _scores_labels(scores, labels)
        self._check_width(scores.shape[1], "scores")
        self._append(scores=scores.to(torch.float64), labels=labels)

    def compute(self) -> float:
        data, _ = self._gather({"scores": (torch.float64, True), "labels": (torch.long, False)})
        self._require(data["scores"], "samples")
        return _separability_unchecked(data["scores"], data["labels"])


class _FeatureMeter(_Meter):
    _fields = ("features", "labels")

    def update(self, features, labels) -> None:
        f = check_matrix(features, "features")
        y = check_labels(labels, f.shape[0], None, data_name="features")
        self._check_width(f.shape[1], "features")
        self._append(features=f.to(torch.float64), labels=y)

    def _all(self):
        data, _ = self._gather({"features": (torch.float64, True), "labels": (torch.long, False)})
        self._require(data["features"], "samples")
        return data["features"], data["labels"]


class FeatureGeometry(_FeatureMeter):
    """Accumulating :func:`~unimargin.metrics.feature_geometry` (SPEC §3.6)."""

    def __init__(self, head=None):
        self.head = head
        super().__init__()

    def compute(self) -> dict:
        f, y = self._all()
        return feature_geometry(f, y, self.head)


class Verification(_FeatureMeter):
    """Accumulating :func:`~unimargin.metrics.verification` (SPEC §3.7).

    Pairs are formed over all gathered samples (in rank order), so they include pairs
    across batches and processes, exactly as the one-shot call on the concatenation.
    """

    def __init__(self, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0,
                 block_rows: int | None = None):
        self.max_pairs, self.seed, self.block_rows = max_pairs, seed, block_rows
        super().__init__()

    def compute(self) -> dict:
        f, y = self._all()
        return verification(f, y, self.max_pairs, self.seed, self.block_rows)


class OpenSetRejection(_Meter):
    """Accumulating :func:`~unimargin.metrics.open_set_rejection` (SPEC §3.7).

    ``update(known_scores, known_labels)`` for known-class batches,
    ``update(unknown_scores=...)`` for unknown-class batches (both in one call is fine).
    """

    _fields = ("known", "labels", "unknown")

    def __init__(self, threshold):
        if threshold is None:
            raise ValueError("threshold is required (e.g. the head's learned threshold or t*)")
        self.threshold = threshold
        super().__init__()

    def update(self, known_scores=None, known_labels=None, unknown_scores=None) -> None:
        if known_scores is None and unknown_scores is None:
            raise ValueError("update() needs known_scores (with known_labels) and/or unknown_scores")
        if known_scores is not None:
            if known_labels is None:
                raise ValueError("known_labels is required with known_scores")
            ks, ky = _scores_labels(known_scores, known_labels, "known_scores", "known_labels")
            self._check_width(ks.shape[1], "known_scores")
            self._append(known=ks.to(torch.float64), labels=ky)
        if unknown_scores is not None:
            us = check_matrix(unknown_scores, "unknown_scores", min_cols=2)
            self._check_width(us.shape[1], "unknown_scores")
            self._append(unknown=us.to(torch.float64))

    def compute(self) -> dict:
        data, _ = self._gather({"known": (torch.float64, True), "labels": (torch.long, False),
                                "unknown": (torch.float64, True)})
        self._require(data["known"], "known samples")
        self._require(data["unknown"], "unknown samples")
        return open_set_rejection(data["known"], data["labels"], data["unknown"], self.threshold)
