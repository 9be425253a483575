"""The one evaluation (SPEC §3): outputs of a model, the flat metric dict, open-set metrics
and the threshold choice. Used by the engine (per epoch and the final test evaluation),
``unimargin evaluate``, ``predict`` and ``compare``; every key it writes is in
:data:`unimargin.metrics.keys.KEYS`.

- :func:`compute_outputs`: features and scores of ``x`` (eval mode, no grad).
- :func:`evaluate_outputs`: closed-set keys (§3.1–§3.6).
- :func:`choose_threshold`: the head's learned threshold when it has one, else t* of the
  given split — callers pass the *validation* split, never the test split (§2.9, §3.9).
- :func:`open_set_metrics`: verification (``verif_*``) on unknown-class features and
  rejection (``reject_*``) of unknown samples (§3.7).
- :func:`evaluate_model`: all of the above for one model and one split, optionally with
  the nested ``per_class`` entry (accuracy per class, confusion matrix, worst confused
  pairs; :mod:`unimargin.metrics.confusion`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unimargin import distributed as udist

from .confusion import per_class_summary, predictions
from .geometry import feature_geometry
from .keys import flat_key
from .uniform import separability_auc, uniform_accuracy
from .verification import VERIFICATION_FIELDS, open_set_rejection, verification


@torch.no_grad()
def compute_outputs(model: nn.Module, head: nn.Module, x: torch.Tensor, batch_size: int = 256,
                    distributed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, d) = ``model(x)`` and scores S = ``head.scores(f)`` (N, K): eval mode, no
    grad, float32, on the CPU. ``model`` is any module whose ``forward(x)`` returns features
    (a bare backbone, or the engine's UnimarginNet, which also standardises the input).

    With ``distributed=True`` under torch.distributed, each process evaluates a contiguous
    1/P share of ``x`` and the results are gathered exactly (no padding duplicates).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
            f = model(share[start:start + batch_size].to(device)).float()
            feats.append(f)
            scores.append(head.scores(f).float())
        if feats:
            features, all_scores = torch.cat(feats), torch.cat(scores)
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


def learned_threshold(head: nn.Module) -> float | None:
    """The head's learned unified threshold as a float (bce-u: b, bce-d: 0), else None."""
    t = head.threshold
    return None if t is None else float(t.detach().float().cpu())


def evaluate_outputs(features: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                     head: nn.Module, *, deployed_threshold: float | None = None) -> dict:
    """Closed-set flat keys of SPEC §3 for one evaluated set: n, sw, cw, uni, t_star,
    learned_threshold (+ uni_at_learned, uni_loss_learned, threshold_distance[_rel]; None
    for heads without one), sep_auc, the §3.6 geometry keys, and — when
    ``deployed_threshold`` (t* fitted on validation) is given — ``val_t_star`` and
    ``uni_deployed`` = Uni of this set at that threshold."""
    learned = learned_threshold(head)
    res = uniform_accuracy(scores, labels, threshold=learned).to_dict()
    out = {"n": int(labels.shape[0]), "sw": res["sw"], "cw": res["cw"], "uni": res["uni"]}
    for field in ("threshold", "uni_at_threshold", "uni_loss", "threshold_distance",
                  "threshold_distance_rel"):
        out[flat_key("uniform", field)] = _float_or_none(res[field])
    out["learned_threshold"] = learned
    out["sep_auc"] = float(separability_auc(scores, labels))
    if deployed_threshold is not None:
        out["val_t_star"] = float(deployed_threshold)
        out["uni_deployed"] = float(
            uniform_accuracy(scores, labels, threshold=float(deployed_threshold)).uni_at_threshold)
    geometry = feature_geometry(features, labels, head=head)
    out.update({flat_key("geometry", k): _float_or_none(v) for k, v in geometry.items()})
    return out


def choose_threshold(head: nn.Module, scores: torch.Tensor, labels: torch.Tensor,
                     split: str = "validation") -> tuple[float, str]:
    """SPEC §2.9: the learned threshold when the head has one, else t* of ``scores`` /
    ``labels`` — pass the validation split; ``split`` names it in the returned source."""
    learned = learned_threshold(head)
    if learned is not None:
        return learned, "learned"
    return float(uniform_accuracy(scores, labels).threshold), f"t* ({split})"


def open_set_metrics(head: nn.Module, known_scores: torch.Tensor, known_labels: torch.Tensor,
                     unknown_features: torch.Tensor, unknown_scores: torch.Tensor,
                     unknown_labels: torch.Tensor, threshold: float | None = None,
                     threshold_source: str | None = None) -> dict:
    """SPEC §3.7 on held-out classes: verification (``verif_*``) of unknown-class feature
    pairs and rejection (``reject_*``) of unknown samples by max-score thresholding at
    ``threshold`` (default :func:`choose_threshold` on the known scores given). With fewer
    than 2 unknown classes no impostor pair exists: ``verif_available`` is False and the
    verification keys are None; rejection is still computed."""
    out: dict = {}
    n_unknown_classes = int(torch.unique(unknown_labels).numel()) if unknown_labels.numel() else 0
    out["verif_available"] = n_unknown_classes >= 2
    if out["verif_available"]:
        for key, value in verification(unknown_features, unknown_labels).items():
            out[flat_key("verification", key)] = value
    else:
        out.update({flat_key("verification", key): None for key in VERIFICATION_FIELDS})
    if threshold is None:
        threshold, threshold_source = choose_threshold(head, known_scores, known_labels)
    rejection = open_set_rejection(known_scores, known_labels, unknown_scores, threshold)
    for key, value in rejection.items():
        out[flat_key("open_set_rejection", key)] = value
    out["reject_threshold"] = float(threshold)
    out["reject_threshold_source"] = threshold_source or "given"
    return out


def evaluate_model(model: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                   x_unknown: torch.Tensor | None = None, y_unknown: torch.Tensor | None = None,
                   threshold: float | None = None, threshold_source: str | None = None,
                   deployed_threshold: float | None = None, batch_size: int = 256,
                   distributed: bool = False, per_class: bool = False) -> dict:
    """Closed-set keys of ``x``, ``y`` plus, when unknown-class data is given, the open-set
    keys (rejection at ``threshold``, default :func:`choose_threshold` on ``x`` itself —
    pass the validation threshold when ``x`` is the test split). With ``per_class=True``
    also ``out["per_class"]`` = :func:`~unimargin.metrics.confusion.per_class_summary` of
    the closed-set predictions (top class, ties wrong as in SW): a nested entry, not a
    flat key."""
    features, scores = compute_outputs(model, head, x, batch_size, distributed=distributed)
    out = evaluate_outputs(features, scores, y, head, deployed_threshold=deployed_threshold)
    if per_class:
        out["per_class"] = per_class_summary(y, predictions(scores, y), int(scores.shape[1]))
    if x_unknown is not None and y_unknown is not None and len(x_unknown) > 0:
        uf, us = compute_outputs(model, head, x_unknown, batch_size, distributed=distributed)
        out.update(open_set_metrics(head, scores, y, uf, us, y_unknown, threshold,
                                    threshold_source))
    return out
