"""Evaluation of a trained backbone + head: outputs, flat metric dict, metric directions.

The flat keys are what ``metrics.jsonl`` (``test``), ``summary.json`` (``final``) and
``unimargin evaluate`` report (SPEC §3): sw, cw, uni, t_star (§3.2), learned_threshold,
uni_at_learned, uni_loss_learned, threshold_distance, threshold_distance_rel (§3.4),
sep_auc (§3.5) and the feature-geometry keys of §3.6 unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unimargin import distributed as udist

# Directions of the keys this module adds (geometry keys come from unimargin.metrics).
_OWN_DIRECTIONS: dict[str, bool | None] = {
    "sw": True,
    "cw": True,
    "uni": True,
    "uni_at_learned": True,
    "sep_auc": True,
    "uni_loss_learned": False,
    "threshold_distance": False,
    "threshold_distance_rel": False,
    "t_star": None,
    "learned_threshold": None,
    "loss": False,
    "n": None,
}


def metric_higher_is_better(key: str) -> bool | None:
    """True / False when a larger value of ``key`` is better / worse; None when neither
    (thresholds, counts) or unknown. Loss terms (``loss``, ``train_loss``, ``terms.*``)
    are lower-is-better."""
    if key in _OWN_DIRECTIONS:
        return _OWN_DIRECTIONS[key]
    try:
        from unimargin.metrics import HIGHER_IS_BETTER
    except ImportError:
        HIGHER_IS_BETTER = {}
    if key in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[key]
    base = key.split(".")[-1]
    if key.startswith(("train_loss", "terms.", "train.terms.")) or base == "loss":
        return False
    return HIGHER_IS_BETTER.get(base, _OWN_DIRECTIONS.get(base))


def _feature_fn(model: nn.Module):
    """The callable that maps inputs to features: ``model.features`` for the engine's
    :class:`~unimargin.train.engine.UnimarginNet`, else ``model`` itself (a backbone)."""
    inner = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return getattr(inner, "features", inner)


@torch.no_grad()
def compute_outputs(model: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 1024,
                    distributed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, d) and scores S = head.scores(f) (N, K) of ``x``: eval mode, no grad,
    float32, on the CPU. ``model`` is a backbone or the engine's UnimarginNet (which also
    standardises the input).

    With ``distributed=True`` under torch.distributed, each process evaluates a contiguous
    1/P share of ``x`` and the results are gathered exactly (no padding duplicates), so
    every process returns the outputs of all N samples in order.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fn = _feature_fn(model)
    was_training = (model.training, head.training)
    model.eval()
    head.eval()
    try:
        device = next((p.device for p in head.parameters()), torch.device("cpu"))
        share = x
        if distributed and udist.is_distributed():
            share = torch.tensor_split(x, udist.world_size())[udist.rank()]
        feats, scores = [], []
        for start in range(0, share.shape[0], batch_size):
            f = fn(share[start:start + batch_size].to(device)).float()
            feats.append(f)
            scores.append(head.scores(f).float())
        if feats:
            features = torch.cat(feats)
            all_scores = torch.cat(scores)
        else:
            features = torch.empty(0, head.feat_dim, device=device)
            all_scores = torch.empty(0, head.num_classes, device=device)
        if distributed and udist.is_distributed():
            features = udist.all_gather_cat(features)
            all_scores = udist.all_gather_cat(all_scores)
        return features.cpu(), all_scores.cpu()
    finally:
        model.train(was_training[0])
        head.train(was_training[1])


def _float_or_none(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def evaluate_outputs(features: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                     head: nn.Module) -> dict:
    """Flat metric dict of SPEC §3 for one evaluated set.

    learned_threshold is ``head.threshold`` (None for heads without one; then the
    uni_at_learned / uni_loss_learned / threshold_distance* keys are None too).
    """
    from unimargin.metrics import feature_geometry, separability_auc, uniform_accuracy

    learned = head.threshold
    learned = None if learned is None else float(learned.detach().float().cpu())
    res = uniform_accuracy(scores, labels, threshold=learned)
    out = {
        "n": int(labels.shape[0]),
        "sw": res.sw,
        "cw": res.cw,
        "uni": res.uni,
        "t_star": _float_or_none(res.threshold),
        "learned_threshold": learned,
        "uni_at_learned": _float_or_none(res.uni_at_threshold),
        "uni_loss_learned": _float_or_none(res.uni_loss),
        "threshold_distance": _float_or_none(res.threshold_distance),
        "threshold_distance_rel": _float_or_none(res.threshold_distance_rel),
        "sep_auc": float(separability_auc(scores, labels)),
    }
    geometry = feature_geometry(features, labels, head=head)
    out.update({k: _float_or_none(v) for k, v in geometry.items()})
    return out
